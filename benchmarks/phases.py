"""medseg phases: ColonTCN inference on a 100,000-frame video and reversible training memory.

1. Inference time and peak RSS (fresh process) for ColonTCN (N=12, 2048-d features, 9 classes) on 100,000 frames
   (~5.5 hours at 5 fps) in one pass on the CPU -> ``seconds_100k_frames``, ``peak_ram_mb``.
2. Activation bytes of one training step at T = 20,000 frames, reversible vs plain ColonTCN (same weights) ->
   ``activation_ratio`` (target >= 3). The reversible model couples two half-width bodies per block.

    python benchmarks/phases.py                                   # the figures in the README
    python benchmarks/phases.py --frames 10000 --train-frames 2000   # a quick run while developing
"""

from __future__ import annotations

import argparse
import json
import time

import torch


def infer(frames: int = 100_000) -> float:
    import numpy as np

    from medseg.phases.models import ColonTCN

    torch.manual_seed(0)
    model = ColonTCN(2048, 9, num_blocks=12).eval()
    feats = np.random.default_rng(0).standard_normal((frames, 2048), dtype=np.float32)
    t0 = time.perf_counter()
    with torch.inference_mode():
        model(torch.from_numpy(feats.T.copy())[None]).argmax(1)
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description="ColonTCN inference time/RAM and reversible training memory")
    ap.add_argument("--frames", type=int, default=100_000, help="frames of the inference video")
    ap.add_argument("--train-frames", type=int, default=20_000, help="frames of the training step")
    args = ap.parse_args()
    frames = args.frames
    from medseg.phases.models import ColonTCN
    from shared_backbones.memory import activation_bytes, run_isolated

    secs, rss = run_isolated(infer, frames)
    feats_mb = frames * 2048 * 4 / 2**20
    print(
        f"ColonTCN N=12, {frames:,} frames x 2048: {secs:.1f} s, peak RSS {rss / 2**20:.0f} MB "
        f"(features alone {feats_mb:.0f} MB, held twice: numpy + the [D, T] tensor)"
    )
    torch.manual_seed(0)
    model = ColonTCN(2048, 9, num_blocks=12, reversible=True).train()
    t = args.train_frames
    x = torch.randn(1, 2048, t)
    y = torch.randint(0, 9, (1, t))
    loss = lambda out: torch.nn.functional.cross_entropy(out, y)  # noqa: E731
    res = {}
    x_bytes = x.numel() * x.element_size()
    for mode in ("plain", "reversible"):
        model.blocks.reversible = mode == "reversible"
        res[mode] = activation_bytes(model, x, loss_fn=loss)
    ratio_all = res["plain"] / res["reversible"]
    ratio = (res["plain"] - x_bytes) / (res["reversible"] - x_bytes)
    print(
        f"training step at T={t:,}: plain {res['plain'] / 2**20:.0f} MB, reversible {res['reversible'] / 2**20:.0f} MB"
        f" ({ratio_all:.2f}x); beyond the {x_bytes / 2**20:.0f} MB input features: "
        f"{(res['plain'] - x_bytes) / 2**20:.0f} MB vs {(res['reversible'] - x_bytes) / 2**20:.0f} MB -> {ratio:.2f}x"
    )
    print(
        json.dumps(
            {
                "frames": frames,
                ("seconds_100k_frames" if frames == 100_000 else "seconds"): round(secs, 2),
                "peak_ram_mb": round(rss / 2**20),
                "activation_ratio": round(ratio, 2),
                "ratio_including_input": round(ratio_all, 2),
                "plain_mb": round(res["plain"] / 2**20),
                "reversible_mb": round(res["reversible"] / 2**20),
            }
        )
    )


if __name__ == "__main__":
    main()
