"""audiosep streaming: per-block compute time and real-time factor of the stateful StreamingSeparator against a
buffered implementation, on one CPU core, fp32, random weights.

Models: the paper's causal configuration (Luo & Mesgarani 2019: N=512 L=16 B=128 H=512 P=3 X=8 R=3, cLN;
``convtasnet-causal``) and ``convtasnet-small`` with ``causal=True`` and cLN. For blocks of 1, 4, 16 and 64 ms at
8 kHz:

- ``stream``: :class:`audiosep.streaming.StreamingSeparator` over a ``--seconds`` long signal, every block timed
  (wall clock): median and p99 per block, real-time factor = median block time / block duration; also the thread's
  CPU time per block (``cpu_median_ms``, ``cpu_rtf``), which other jobs on a shared machine inflate less;
- ``buffered``: what a user without state would write: keep the last receptive field of input (every frame that
  can reach the block's output through the dilated convolutions, plus the block) and rerun the offline model over it
  for every block, keeping the block's outputs. Its cost per block does not depend on the position in the stream, so
  ``--buffered-blocks`` blocks are timed once the buffer is full. (With cLN it is not even equal to the offline
  forward: its cumulative statistics restart at the buffer's start; its max difference is printed for reference.)
- ``speedup`` = buffered median / stream median; ``max_abs_diff_vs_offline``: streamed output vs the offline causal
  forward of the whole signal, over every model and block size.

Targets: RTF <= 0.5 at 4 ms for the paper's configuration and <= 0.1 for the small one; >= 20x less compute per
block than buffered at 4 ms; max difference vs offline <= 1e-5. Repeats are interleaved (every model and block size
once per round). Prints a table with the targets marked, and ONE JSON object last.

    python benchmarks/audiosep_stream.py                 # 10 s streams, 3 rounds
    python benchmarks/audiosep_stream.py --seconds 30 --repeats 5
    python benchmarks/audiosep_stream.py --quick         # development: 1 s streams, 1 round, few buffered blocks
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):  # one core (before numpy loads BLAS)
    os.environ[_var] = "1"

import argparse  # noqa: E402
import json  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402

from audiosep.streaming import StreamingSeparator  # noqa: E402
from shared_backbones.registry import create_model  # noqa: E402

RATE = 8000
TARGETS = {"rtf_paper_4ms": 0.5, "rtf_small_4ms": 0.1, "speedup_vs_buffered_4ms": 20.0, "max_abs_diff": 1e-5}


def models() -> dict[str, torch.nn.Module]:
    torch.manual_seed(0)
    return {
        "paper": create_model("convtasnet-causal").eval(),  # N=512 L=16 B=128 H=512 P=3 X=8 R=3, cLN
        "small": create_model("convtasnet-small", norm="cln", causal=True).eval(),
    }


def receptive_field(model: torch.nn.Module) -> int:
    """Input samples that can reach an output sample: the dilated convolutions' frames, plus one window."""
    frames = 1 + sum(b.pad for b in model.mask_generator.conv_layers)
    return frames * model.enc_stride + model.enc_kernel_size


def run_stream(sep: StreamingSeparator, x: np.ndarray, block: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every block timed; returns (wall seconds per block, CPU seconds of this thread per block, the whole output
    [n_src, n])."""
    sep.reset()
    times, cpu, outs = [], [], []
    clock, thread = time.perf_counter, time.thread_time
    for i in range(0, x.shape[0], block):
        b = x[i : i + block]
        c0, t0 = thread(), clock()
        y = sep.process(b)
        times.append(clock() - t0)
        cpu.append(thread() - c0)
        outs.append(y)
    outs.append(sep.flush())
    return np.asarray(times), np.asarray(cpu), torch.cat(outs, 1).numpy()


def run_buffered(model: torch.nn.Module, x: np.ndarray, block: int, n_blocks: int) -> tuple[np.ndarray, float]:
    """The stateless way: each block, the offline model over the last receptive field of input plus the block
    (timed once the buffer is full). Returns (seconds per block, max |difference| of its outputs vs the offline
    forward of the whole signal over the timed blocks)."""
    rf = receptive_field(model)
    start = -(-rf // block) * block  # the first block whose buffer is full
    xt = torch.from_numpy(x)
    with torch.inference_mode():
        full = model(xt[None, None])[0]
        times, diff = [], 0.0
        hop = model.enc_stride
        for k in range(n_blocks):
            i = start + k * block  # the block x[i : i + block] arrives; output is complete up to i + block - hop
            if i + block > x.shape[0]:
                break
            t0 = time.perf_counter()
            y = model(xt[None, None, i - rf : i + block])[0, :, -block - hop : -hop]
            times.append(time.perf_counter() - t0)
            diff = max(diff, float((y - full[:, i - hop : i + block - hop]).abs().max()))
    return np.asarray(times), diff


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=10.0, help="stream length (default 10 s)")
    ap.add_argument("--blocks-ms", type=float, nargs="+", default=[1, 4, 16, 64], help="block sizes in ms")
    ap.add_argument("--repeats", type=int, default=3, help="interleaved rounds (default 3)")
    ap.add_argument("--buffered-blocks", type=int, default=30, help="buffered blocks timed per round")
    ap.add_argument("--quick", action="store_true", help="1 s streams, 1 round, 5 buffered blocks (development)")
    args = ap.parse_args()
    if args.quick:
        args.seconds, args.repeats, args.buffered_blocks = min(args.seconds, 1.0), 1, min(args.buffered_blocks, 5)
    torch.set_num_threads(1)
    nets = models()
    n = int(args.seconds * RATE)
    x = (np.random.default_rng(0).standard_normal(n) * 0.1).astype(np.float32)
    # the buffered way needs a full receptive field before its first timed block
    xb = (np.random.default_rng(1).standard_normal(max(n, 2 * max(map(receptive_field, nets.values())))) * 0.1)
    xb = xb.astype(np.float32)
    blocks = {ms: max(1, round(ms * RATE / 1000)) for ms in args.blocks_ms}
    seps = {name: StreamingSeparator(m, model_rate=RATE) for name, m in nets.items()}
    offline = {}
    with torch.inference_mode():
        for name, m in nets.items():
            offline[name] = m(torch.from_numpy(x)[None, None])[0].numpy()
    times: dict[tuple[str, float, str], list[np.ndarray]] = {}
    max_diff, buffered_diff = 0.0, 0.0
    for _ in range(args.repeats):  # interleaved rounds
        for name, m in nets.items():
            for ms, blk in blocks.items():
                t, c, y = run_stream(seps[name], x, blk)
                max_diff = max(max_diff, float(np.abs(y - offline[name]).max()))
                times.setdefault((name, ms, "stream"), []).append(t)
                times.setdefault((name, ms, "cpu"), []).append(c)
                tb, d = run_buffered(m, xb, blk, args.buffered_blocks)
                buffered_diff = max(buffered_diff, d)
                times.setdefault((name, ms, "buffered"), []).append(tb)
    res: dict = {}
    print(f"one core (torch threads {torch.get_num_threads()}, BLAS threads 1), fp32, {RATE} Hz, random weights; "
          f"{args.seconds:g} s streams, {args.repeats} interleaved round(s); times in ms per block, wall clock (cpu:"
          " this thread's CPU time, what the block costs when the machine is shared)")
    print(f"{'model':<6} {'block':>6} {'stream median':>14} {'p99':>8} {'RTF':>7} {'cpu median':>11} {'cpu RTF':>8} "
          f"{'buffered median':>16} {'p99':>8} {'speed-up':>9}  targets")
    for name in nets:
        res[name] = {}
        for ms in blocks:
            ts = np.concatenate(times[(name, ms, "stream")])
            tb = np.concatenate(times[(name, ms, "buffered")])
            med, p99 = float(np.median(ts)), float(np.percentile(ts, 99))
            cmed = float(np.median(np.concatenate(times[(name, ms, "cpu")])))
            bmed, bp99 = float(np.median(tb)), float(np.percentile(tb, 99))
            rtf, speed = med / (ms / 1000), bmed / med
            marks = []
            if ms == 4:
                limit = TARGETS[f"rtf_{name}_4ms"]
                marks.append(f"RTF <= {limit:g} {'met' if rtf <= limit else 'MISSED'}")
                if name == "paper":
                    ok = speed >= TARGETS["speedup_vs_buffered_4ms"]
                    marks.append(f"speed-up >= 20x {'met' if ok else 'MISSED'}")
            print(f"{name:<6} {ms:>4g}ms {med * 1e3:>14.3f} {p99 * 1e3:>8.3f} {rtf:>7.3f} {cmed * 1e3:>11.3f} "
                  f"{cmed / (ms / 1000):>8.3f} {bmed * 1e3:>16.2f} "
                  f"{bp99 * 1e3:>8.2f} {speed:>8.0f}x  {'; '.join(marks)}")
            res[name][f"{ms:g}ms"] = {"median_ms": round(med * 1e3, 4), "p99_ms": round(p99 * 1e3, 4),
                                      "rtf": round(rtf, 4), "cpu_median_ms": round(cmed * 1e3, 4),
                                      "cpu_rtf": round(cmed / (ms / 1000), 4),
                                      "buffered_median_ms": round(bmed * 1e3, 3),
                                      "buffered_p99_ms": round(bp99 * 1e3, 3), "speedup_vs_buffered": round(speed, 1)}
    ok = max_diff <= TARGETS["max_abs_diff"]
    print(f"max |stream - offline forward| over all models and blocks: {max_diff:.2e} (target <= 1e-5: "
          f"{'met' if ok else 'MISSED'}); buffered vs offline (cLN statistics restart at the buffer): "
          f"{buffered_diff:.2e}")
    four = "4ms" if 4 in blocks else None
    out = {
        "max_abs_diff_vs_offline": max_diff,
        "rtf_paper_4ms": res["paper"][four]["rtf"] if four else None,
        "rtf_small_4ms": res["small"][four]["rtf"] if four else None,
        "speedup_vs_buffered_4ms": res["paper"][four]["speedup_vs_buffered"] if four else None,
        "speedup_vs_buffered_small_4ms": res["small"][four]["speedup_vs_buffered"] if four else None,
        "cpu_rtf_paper_4ms": res["paper"][four]["cpu_rtf"] if four else None,
        "cpu_rtf_small_4ms": res["small"][four]["cpu_rtf"] if four else None,
        "buffered_max_abs_diff_vs_offline": buffered_diff,
        "latency_ms": {name: round(s.latency_seconds * 1e3, 3) for name, s in seps.items()},
        "seconds": args.seconds,
        "repeats": args.repeats,
        "per_block": res,
    }
    if four:
        out["targets_met"] = {
            "rtf_paper_4ms": out["rtf_paper_4ms"] <= TARGETS["rtf_paper_4ms"],
            "rtf_small_4ms": out["rtf_small_4ms"] <= TARGETS["rtf_small_4ms"],
            "speedup_vs_buffered_4ms": out["speedup_vs_buffered_4ms"] >= TARGETS["speedup_vs_buffered_4ms"],
            "max_abs_diff_vs_offline": ok,
        }
    print(json.dumps(out))


if __name__ == "__main__":
    main()
