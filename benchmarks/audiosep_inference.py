"""audiosep inference: speed vs torchaudio's ConvTasNet (same weights), bf16 autocast, RAM flat in file length.

1. Real-time factor of our Conv-TasNet vs ``torchaudio.models.conv_tasnet_base`` with the same weights on the same
   10 s input, CPU fp32 (fastest of interleaved repeats) -> ``rtf_ratio_vs_torchaudio``
   (torchaudio time / ours; target >= 1).
2. bf16 autocast vs fp32 for our model -> ``bf16_speedup`` and ``bf16_sisnr_db`` (bf16 output vs fp32 output;
   target >= 30 dB).
3. Peak RSS of a fresh process running ``separate_file`` on a 1-minute and a 30-minute 8 kHz file (streamed,
   10 s chunks) -> ``ram_ratio_30min_vs_1min`` (target <= 1.5). This part uses the small preset so that 30 minutes of
   audio runs in seconds on a 2-core CPU; the separator's memory does not depend on the model's width.
4. ``stream_over_whole_file``: wall time of ``audiosep separate`` on a ``--minutes`` long 16 kHz PCM_16 file (read,
   resample to 8 kHz, chunks, alignment, two-pass write at 16 kHz) over one whole-file forward of the same model on
   the same signal already in memory at 8 kHz (target <= 1.05), and ``loa_over_stream``: Asteroid's
   ``LambdaOverlapAdd`` (window = our chunk, hop = half of it, Hann, chunk reordering) on the same weights and the
   same in-memory 8 kHz signal, over ``audiosep separate``'s whole run (when asteroid is installed).
5. ``auto_precision_cpu``: what ``--precision auto`` picks on CPU (fp32: bf16 autocast is slower on the fused
   CPU inference path, see 2.).

    python benchmarks/audiosep_inference.py                  # 10-minute file for part 4
    python benchmarks/audiosep_inference.py --minutes 10 60  # and an hour
    python benchmarks/audiosep_inference.py --quick --arch convtasnet-small --minutes 10 60 --repeats 1 \
        --loa-minutes 2                                      # part 4 in ~10 min on 2 loaded cores
    python benchmarks/audiosep_inference.py --minutes 1 --quick  # development: small model, parts 4-5 only
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile as sf
import torch

from audiosep.metrics import si_snr
from shared_backbones.checkpoint import ModelFile, save_model_file
from shared_backbones.memory import run_isolated
from shared_backbones.registry import create_model
from shared_backbones.timing import time_interleaved


def separate_in_fresh_process(model_path: str, wav: str, out_dir: str) -> float:
    from audiosep.separate import Separator, separate_file

    t0 = time.perf_counter()
    separate_file(wav, Separator.from_file(model_path, "cpu", "fp32"), out_dir, overwrite=True, quiet=True)
    return time.perf_counter() - t0


def write_test_file(path: Path, minutes: float, rate: int = 16000) -> None:
    """A long 16-bit file of speech-like noise, written in blocks."""
    rng = np.random.default_rng(0)
    with sf.SoundFile(path, "w", rate, 1, "PCM_16") as f:
        left = int(minutes * 60 * rate)
        while left > 0:
            n = min(left, 10 * rate)
            f.write((0.1 * rng.standard_normal(n) * np.sin(np.arange(n) / rate * 3) ** 2).astype("float32"))
            left -= n


def available_bytes() -> int:
    """MemAvailable from /proc/meminfo (Linux), else 8 GiB."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 8 * 2**30


def whole_forward_samples(net: torch.nn.Module, total: int) -> int:
    """How much of the signal one whole-file forward can take in the RAM available: the peak is about four
    [frames, max(S*N, H)] float32 tensors (measured order of magnitude for the inference path)."""
    gen = net.mask_generator
    width = max(gen.input_dim * gen.num_sources, gen.conv_layers[0].conv_layers[0].out_channels)
    per_sample = 4 * width * 4 / net.enc_stride
    return min(total, int(0.6 * available_bytes() / per_sample))


def stream_vs_whole(minutes: float, arch: str, chunk: float, overlap: float, repeats: int = 2,
                    loa_minutes: float = 10.0) -> dict:
    """Part 4: audiosep separate vs one whole-file forward (and Asteroid's LambdaOverlapAdd), same weights."""
    from audiosep.cli import main as cli
    from audiosep.importers import import_convtasnet
    from audiosep.separate import Separator

    out: dict = {}
    with tempfile.TemporaryDirectory() as d:
        d = Path(d)
        wav = d / "long.wav"
        write_test_file(wav, minutes)
        model_path = d / "model.pt"
        ast_model = None
        try:
            from asteroid.models import ConvTasNet as AsteroidConvTasNet

            size = {"convtasnet-small": dict(n_filters=64, bn_chan=32, hid_chan=64, skip_chan=32, n_blocks=4,
                                             n_repeats=2)}.get(arch, {})
            torch.manual_seed(0)
            ast_model = AsteroidConvTasNet(n_src=2, mask_act="relu", sample_rate=8000, **size).eval()
            torch.save(ast_model.serialize(), d / "pytorch_model.bin")
            import_convtasnet(d / "pytorch_model.bin", model_path)  # the same weights for both
        except ImportError:
            torch.manual_seed(0)
            save_model_file(model_path, ModelFile.from_model(create_model(arch), task="audiosep", arch=arch,
                                                             arch_kwargs={"num_sources": 2},
                                                             preprocessing={"sample_rate": 8000}))
        sep = Separator.from_file(model_path, "cpu", "auto")
        out["auto_precision_cpu"] = sep.policy.name
        x16 = torch.from_numpy(sf.read(wav, dtype="float32")[0])
        import torchaudio.functional as AF

        x8 = AF.resample(x16, 16000, 8000)[None, None]
        del x16
        argv = ["separate", str(wav), "-m", str(model_path), "-o", str(d / "out"), "-q", "--overwrite",
                "--device", "cpu", "--chunk-seconds", str(chunk), "--overlap-seconds", str(overlap)]
        fits = whole_forward_samples(sep.net, x8.shape[-1])
        scale = x8.shape[-1] / fits  # > 1: the whole-file forward does not fit in RAM; time a prefix, scale linearly
        if scale > 1:
            print(f"a whole-file forward of {minutes:g} min does not fit in the RAM available: timing the first "
                  f"{fits / 8000 / 60:.1f} min and scaling linearly (extrapolated)")
        out[f"whole_file_forward_fits_{minutes:g}min"] = scale <= 1
        if scale > 1:
            out[f"whole_file_forward_timed_minutes_{minutes:g}min"] = round(fits / 8000 / 60, 2)
        loa_n = min(x8.shape[-1], max(int(loa_minutes * 60 * 8000), int(4 * chunk * 8000)))  # >= 4 windows
        loa_scale = x8.shape[-1] / loa_n  # > 1: LambdaOverlapAdd timed on a prefix and scaled (it is linear in length)
        times: dict[str, list[float]] = {"stream": [], "whole": [], "loa": []}
        for _ in range(repeats):  # interleaved, fastest of the repeats
            t0 = time.perf_counter()
            assert cli(argv) == 0
            times["stream"].append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            with torch.inference_mode():
                sep.net(x8[..., :fits])
            times["whole"].append((time.perf_counter() - t0) * scale)
            if ast_model is not None:
                from asteroid.dsp.overlap_add import LambdaOverlapAdd

                win = int(chunk * 8000)
                loa = LambdaOverlapAdd(ast_model, n_src=2, window_size=win, hop_size=win // 2, window="hann")
                t0 = time.perf_counter()
                with torch.inference_mode():
                    loa(x8[..., :loa_n])
                times["loa"].append((time.perf_counter() - t0) * loa_scale)
        t = {k: min(v) for k, v in times.items() if v}
        print(f"{minutes:g} min 16 kHz file, {arch}: audiosep separate {t['stream']:.1f} s, "
              f"whole-file forward at 8 kHz {t['whole']:.1f} s -> stream_over_whole_file "
              f"{t['stream'] / t['whole']:.3f} (chunks {chunk:g} s, overlap {overlap:g} s)")
        key = f"stream_over_whole_file_{minutes:g}min" + ("_extrapolated" if scale > 1 else "")
        out[key] = round(t["stream"] / t["whole"], 3)
        if "loa" in t:
            note = f" (first {loa_n / 8000 / 60:g} min timed, scaled linearly)" if loa_scale > 1 else ""
            print(f"Asteroid LambdaOverlapAdd (window {chunk:g} s, hop {chunk / 2:g} s) {t['loa']:.1f} s{note} -> "
                  f"{t['loa'] / t['stream']:.2f}x the time of audiosep separate")
            key = f"loa_over_stream_{minutes:g}min" + ("_extrapolated" if loa_scale > 1 else "")
            out[key] = round(t["loa"] / t["stream"], 3)
        out[f"stream_seconds_{minutes:g}min"] = round(t["stream"], 2)
        print(f"--precision auto on CPU -> {out['auto_precision_cpu']}")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--minutes", type=float, nargs="+", action="extend",
                    help="file length(s) for part 4 (default: 10), e.g. --minutes 10 60")
    ap.add_argument("--arch", default="convtasnet-base", help="model for part 4")
    ap.add_argument("--chunk-seconds", type=float, default=30.0, help="audiosep separate's chunk for part 4")
    ap.add_argument("--overlap-seconds", type=float, default=1.0, help="audiosep separate's overlap for part 4")
    ap.add_argument("--repeats", type=int, default=2, help="interleaved repeats of part 4 (fastest kept)")
    ap.add_argument("--loa-minutes", type=float, default=10.0,
                    help="time Asteroid's LambdaOverlapAdd on at most this much of the file, scaled linearly")
    ap.add_argument("--quick", action="store_true", help="parts 4-5 only (development)")
    args = ap.parse_args()
    part4: dict = {}
    for minutes in args.minutes or [10.0]:
        part4 |= stream_vs_whole(minutes, args.arch, args.chunk_seconds, args.overlap_seconds, args.repeats,
                                 args.loa_minutes)
    if args.quick:
        print(json.dumps(part4))
        return
    from torchaudio.models import conv_tasnet_base

    torch.manual_seed(0)
    ref = conv_tasnet_base(num_sources=2).eval()
    ours = create_model("convtasnet-base").eval()
    ours.load_state_dict(ref.state_dict())
    seconds = 10.0
    x = torch.randn(1, 1, int(seconds * 8000)) * 0.1

    def bf16():
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return ours(x)

    with torch.inference_mode():
        t = time_interleaved({"ref": lambda: ref(x), "ours": lambda: ours(x), "bf16": bf16}, repeats=7)
        t_ref, t_ours, t_bf16 = t["ref"], t["ours"], t["bf16"]
        y32 = ours(x)
        y16 = bf16().float()
    sisnr_bf16 = si_snr(y16.double(), y32.double()).mean().item()
    print(f"10 s at 8 kHz, CPU, {torch.get_num_threads()} threads")
    print(
        f"torchaudio fp32 {t_ref:.3f} s (RTF {t_ref / seconds:.3f}); "
        f"ours fp32 {t_ours:.3f} s (RTF {t_ours / seconds:.3f})"
    )
    print(f"ours bf16 autocast {t_bf16:.3f} s -> speed-up {t_ours / t_bf16:.2f}x, SI-SNR vs fp32 {sisnr_bf16:.1f} dB")

    with tempfile.TemporaryDirectory() as d:
        d = Path(d)
        small = create_model("convtasnet-small")
        save_model_file(
            d / "small.pt",
            ModelFile.from_model(
                small,
                task="audiosep",
                arch="convtasnet-small",
                arch_kwargs={"num_sources": 2},
                preprocessing={"sample_rate": 8000},
            ),
        )
        rss = {}
        for minutes in (1, 30):
            wav = d / f"in_{minutes}.wav"
            with sf.SoundFile(wav, "w", 8000, 1, "PCM_16") as f:
                rng = np.random.default_rng(0)
                for _ in range(minutes * 6):
                    f.write((0.1 * rng.standard_normal(80000)).astype("float32"))
            secs, rss[minutes] = run_isolated(separate_in_fresh_process, str(d / "small.pt"), str(wav), str(d / "out"))
            print(
                f"{minutes:>2} min file: peak RSS {rss[minutes] / 2**20:.0f} MB, {secs:.1f} s "
                f"({minutes * 60 / secs:.0f}x real time, small preset)"
            )
    print(
        json.dumps(
            {
                "rtf_ratio_vs_torchaudio": round(t_ref / t_ours, 3),
                "bf16_speedup": round(t_ours / t_bf16, 3),
                "bf16_sisnr_db": round(sisnr_bf16, 1),
                "ram_ratio_30min_vs_1min": round(rss[30] / rss[1], 3),
                "rtf_ours_fp32": round(t_ours / seconds, 4),
                **part4,
            }
        )
    )


if __name__ == "__main__":
    main()
