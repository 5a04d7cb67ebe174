"""audiosep inference: speed vs torchaudio's ConvTasNet (same weights), bf16 autocast, RAM flat in file length.

1. Real-time factor of our Conv-TasNet vs ``torchaudio.models.conv_tasnet_base`` with the same weights on the same
   10 s input, CPU fp32 (fastest of interleaved repeats) -> ``rtf_ratio_vs_torchaudio``
   (torchaudio time / ours; target >= 1).
2. bf16 autocast vs fp32 for our model -> ``bf16_speedup`` and ``bf16_sisnr_db`` (bf16 output vs fp32 output;
   target >= 30 dB).
3. Peak RSS of a fresh process running ``separate_file`` on a 1-minute and a 30-minute 8 kHz file (streamed,
   10 s chunks) -> ``ram_ratio_30min_vs_1min`` (target <= 1.5). This part uses the small preset so that 30 minutes of
   audio runs in seconds on a 2-core CPU; the separator's memory does not depend on the model's width.

    python benchmarks/audiosep_inference.py
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile as sf
import torch

import audiosep.models  # noqa: F401  (registers the architectures)
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


def main() -> None:
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
            }
        )
    )


if __name__ == "__main__":
    main()
