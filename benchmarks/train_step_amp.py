"""Mixed precision for 3-D U-Net training: time one training step (forward + Dice/CE loss over the deep-supervision
outputs + backward + SGD step) of ``unet3d`` at fp32, bf16 and fp16 through the suite's precision policy (autocast,
and a GradScaler for fp16), and report peak CUDA memory and the speed-ups over fp32 measured in the same run.

On a GPU: ``python benchmarks/train_step_amp.py`` (128^3 patch, batch 2, 32 base channels; well under 2 minutes).
Without one it runs on the CPU at a reduced size (fp32 and bf16 only: CPU autocast has no fp16 training).
``--quick`` shrinks everything further (smoke test). The last line printed is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from medseg.models import unet3d  # noqa: E402
from pipelines.medseg import deep_supervision_weights  # noqa: E402
from shared_backbones.precision import PrecisionPolicy  # noqa: E402


def _loss(outputs: list[torch.Tensor], target: torch.Tensor) -> torch.Tensor:
    """Dice + CE over the deep-supervision outputs (as pipelines.medseg, without MONAI's overhead)."""
    total = outputs[0].new_zeros((), dtype=torch.float32)
    for w, out in zip(deep_supervision_weights(len(outputs)), outputs):
        t = target[:, None].float()
        if t.shape[2:] != out.shape[2:]:
            t = torch.nn.functional.interpolate(t, size=out.shape[2:], mode="nearest")
        t = t[:, 0].long()
        out = out.float()
        ce = torch.nn.functional.cross_entropy(out, t)
        p = out.softmax(1)
        onehot = torch.nn.functional.one_hot(t, out.shape[1]).movedim(-1, 1).float()
        inter = (p * onehot).sum((0, 2, 3, 4))
        dice = 1 - (2 * inter + 1e-5) / (p.sum((0, 2, 3, 4)) + onehot.sum((0, 2, 3, 4)) + 1e-5)
        total = total + w * (ce + dice[1:].mean())
    return total


def time_step(precision: str, device: torch.device, patch: int, batch: int, channels: int, classes: int,
              steps: int, warmup: int) -> dict[str, float]:
    """Seconds per training step and peak CUDA memory (GiB) at ``precision``."""
    torch.manual_seed(0)
    net = unet3d(in_channels=1, num_classes=classes, base_channels=channels, strides=[[2, 2, 2]] * 4).to(device)
    net.train()
    opt = torch.optim.SGD(net.parameters(), lr=1e-2, momentum=0.99, nesterov=True)
    policy = PrecisionPolicy.resolve(precision, device)
    scaler = policy.grad_scaler()
    x = torch.randn(batch, 1, patch, patch, patch, device=device)
    y = torch.randint(0, classes, (batch, patch, patch, patch), device=device)

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        with policy.autocast():
            out = net(x)
        loss = _loss(out if isinstance(out, list) else [out], y)
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.unscale_(opt)
            torch.nn.utils.clip_grad_norm_(net.parameters(), 12.0)
            scaler.step(opt)
            scaler.update()
        else:
            loss.backward()
            torch.nn.utils.clip_grad_norm_(net.parameters(), 12.0)
            opt.step()

    for _ in range(warmup):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    seconds = (time.perf_counter() - start) / steps
    peak = torch.cuda.max_memory_allocated() / 2 ** 30 if device.type == "cuda" else float("nan")
    return {"step_s": seconds, "peak_gib": peak}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="auto", help="auto | cpu | cuda")
    ap.add_argument("--patch", type=int, default=None, help="cubic patch edge (default 128 on GPU, 32 on CPU)")
    ap.add_argument("--batch", type=int, default=2, help="patches per step")
    ap.add_argument("--channels", type=int, default=None, help="first-stage channels (default 32 GPU, 8 CPU)")
    ap.add_argument("--classes", type=int, default=4, help="output classes")
    ap.add_argument("--steps", type=int, default=None, help="timed steps (default 10 GPU, 2 CPU)")
    ap.add_argument("--quick", action="store_true", help="smallest sizes (smoke test; figures not meaningful)")
    a = ap.parse_args(argv)
    device = torch.device("cuda" if (a.device == "auto" and torch.cuda.is_available()) else
                          ("cpu" if a.device == "auto" else a.device))
    gpu = device.type == "cuda"
    patch = a.patch or (128 if gpu else 32)
    channels = a.channels or (32 if gpu else 8)
    steps = a.steps or (10 if gpu else 2)
    if a.quick:
        patch, channels, steps = 32, 4, 1
    precisions = ["fp32", "bf16", "fp16"] if gpu else ["fp32", "bf16"]
    if gpu and not torch.cuda.is_bf16_supported():
        precisions.remove("bf16")
    results = {}
    for p in precisions:
        r = time_step(p, device, patch, a.batch, channels, a.classes, steps, warmup=2 if gpu else 1)
        if gpu:
            torch.cuda.empty_cache()
        results[p] = r
        mem = f", peak {r['peak_gib']:.2f} GiB" if gpu else ""
        print(f"{p:>5}: {r['step_s'] * 1000:8.1f} ms/step{mem}", file=sys.stderr)
    base = results["fp32"]
    summary = {
        "benchmark": "train_step_amp",
        "device": torch.cuda.get_device_name(device) if gpu else "cpu",
        "arch": "unet3d",
        "patch": [patch] * 3,
        "batch": a.batch,
        "base_channels": channels,
        "step_ms": {p: round(r["step_s"] * 1000, 2) for p, r in results.items()},
        "speedup_vs_fp32": {p: round(base["step_s"] / r["step_s"], 3) for p, r in results.items() if p != "fp32"},
        "peak_cuda_gib": {p: round(r["peak_gib"], 3) for p, r in results.items()} if gpu else None,
        "memory_ratio_vs_fp32": ({p: round(r["peak_gib"] / base["peak_gib"], 3) for p, r in results.items()
                                  if p != "fp32"} if gpu else None),
    }
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
