"""Reversible vs plain: activation bytes and forward+backward time, measured in the same run.

Stacks: a 3-D MBConv stack (the reversible U-Net's stage) and a 1-D Conv-TasNet TCN stack, at depths 4, 8, 16,
with the same weights run once reversibly and once as a plain network. Prints a table and, on the last line, one
JSON object with ``mem_ratio_depth8`` (plain / reversible bytes, 3-D MBConv) and ``time_ratio_depth8``
(reversible / plain time). Targets: memory ratio >= 4 at depth 8, time ratio <= 1.3 on CPU.

    python benchmarks/reversible_memory.py [--repeats 5] [--size 32]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from shared_backbones.blocks import TCNResidualBody, reversible_mbconv_sequence
from shared_backbones.memory import activation_bytes
from shared_backbones.reversible import ReversibleBlock, ReversibleSequence


def tcn_stack(channels: int, hidden: int, depth: int) -> ReversibleSequence:
    half = channels // 2
    return ReversibleSequence(
        [
            ReversibleBlock(
                TCNResidualBody(half, hidden, 3, 2 ** (i % 8)), TCNResidualBody(half, hidden, 3, 2 ** (i % 8))
            )
            for i in range(depth)
        ]
    )


def step_time(seq: ReversibleSequence, x: torch.Tensor, repeats: int) -> float:
    """Median seconds of forward + backward (after one warm-up)."""
    times = []
    for i in range(repeats + 1):
        seq.zero_grad(set_to_none=True)
        t0 = time.perf_counter()
        seq(x).square().mean().backward()
        if i:
            times.append(time.perf_counter() - t0)
    return statistics.median(times)


def measure(seq: ReversibleSequence, x: torch.Tensor, repeats: int) -> dict[str, float]:
    loss = lambda y: y.square().mean()  # noqa: E731
    out = {}
    for mode in ("plain", "rev"):
        seq.reversible = mode == "rev"
        out[f"bytes_{mode}"] = activation_bytes(seq, x, loss_fn=loss)
    # interleave the timing runs so load changes on the machine hit both alike
    tp, tr = [], []
    for _ in range(repeats):
        seq.reversible = False
        tp.append(step_time(seq, x, 1))
        seq.reversible = True
        tr.append(step_time(seq, x, 1))
    out["time_plain"], out["time_rev"] = statistics.median(tp), statistics.median(tr)
    out["mem_ratio"] = out["bytes_plain"] / out["bytes_rev"]
    out["time_ratio"] = out["time_rev"] / out["time_plain"]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--size", type=int, default=32, help="cube edge of the 3-D input")
    ap.add_argument("--seconds", type=float, default=4.0, help="1-D TCN input length in seconds at 8 kHz / L=16")
    args = ap.parse_args()
    torch.manual_seed(0)
    results: dict[str, dict[int, dict[str, float]]] = {"mbconv3d": {}, "tcn1d": {}}
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, CPU")
    print(
        f"{'stack':<9} {'depth':>5} {'plain MB':>9} {'rev MB':>8} {'mem x':>7} "
        f"{'plain s':>8} {'rev s':>7} {'time x':>7}"
    )
    frames = int(args.seconds * 8000 / 8)
    for depth in (4, 8, 16):
        for name, seq, x in (
            (
                "mbconv3d",
                reversible_mbconv_sequence(3, 32, depth, expand_ratio=4, norm="group"),
                torch.randn(1, 32, args.size, args.size, args.size),
            ),
            ("tcn1d", tcn_stack(128, 256, depth), torch.randn(1, 128, frames)),
        ):
            r = measure(seq, x, args.repeats)
            results[name][depth] = r
            print(
                f"{name:<9} {depth:>5} {r['bytes_plain'] / 2**20:>9.1f} {r['bytes_rev'] / 2**20:>8.1f} "
                f"{r['mem_ratio']:>7.1f} {r['time_plain']:>8.3f} {r['time_rev']:>7.3f} {r['time_ratio']:>7.2f}"
            )
    summary = {
        "mem_ratio_depth8": round(results["mbconv3d"][8]["mem_ratio"], 2),
        "time_ratio_depth8": round(results["mbconv3d"][8]["time_ratio"], 3),
        "tcn_mem_ratio_depth8": round(results["tcn1d"][8]["mem_ratio"], 2),
        "tcn_time_ratio_depth8": round(results["tcn1d"][8]["time_ratio"], 3),
        "mem_ratio_depth16": round(results["mbconv3d"][16]["mem_ratio"], 2),
        "time_ratio_depth16": round(results["mbconv3d"][16]["time_ratio"], 3),
    }
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
