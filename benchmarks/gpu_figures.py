"""GPU figures in one run (needs CUDA; prints one JSON object last; writes it to $OUT/gpu_figures.json if set).

1. One 3-D U-Net training step (forward + deep-supervision loss + backward + SGD step), 128^3 patch, batch 2,
   fp32 vs bf16 autocast vs fp16 autocast + GradScaler: median step time and peak CUDA memory -> AMP speed-ups.
2. medseg sliding-window inference on a CT-sized volume (256x256x160, 128^3 windows, step 0.5) on the GPU:
   fp32 vs bf16, seconds and peak memory.
3. remote: FFDNN and the same-depth CNN forward, pixels per second on the GPU (batch of 65,536 pixel series).
4. audiosep: Conv-TasNet (paper configuration) forward on 60 s at 8 kHz: real-time factor fp32 and bf16.

Usage: ``python benchmarks/gpu_figures.py [--quick]``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def _sync() -> None:
    torch.cuda.synchronize()


def _autocast(dtype: torch.dtype | None):
    return torch.autocast("cuda", dtype=dtype or torch.float32, enabled=dtype is not None)


def _median_time(fn, repeats: int, warmup: int = 3) -> tuple[float, list[float]]:
    for _ in range(warmup):
        fn()
    _sync()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        _sync()
        times.append(time.perf_counter() - start)
    return statistics.median(times), times


def unet_train_step(quick: bool) -> dict:
    import torch.nn.functional as F

    from shared_backbones.registry import create_model

    dev = torch.device("cuda")
    patch = 96 if quick else 128
    out: dict = {"patch": patch, "batch": 2, "base_channels": 32}
    for mode in ("fp32", "bf16", "fp16"):
        torch.manual_seed(0)
        net = create_model("unet3d", in_channels=1, num_classes=4, base_channels=32, deep_supervision=True)
        net = net.to(dev).train()
        opt = torch.optim.SGD(net.parameters(), lr=1e-2, momentum=0.99, nesterov=True)
        scaler = torch.amp.GradScaler("cuda", enabled=mode == "fp16")
        x = torch.randn(2, 1, patch, patch, patch, device=dev)
        y = torch.randint(0, 4, (2, patch, patch, patch), device=dev)
        dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(mode)

        def step(net=net, opt=opt, scaler=scaler, x=x, y=y, dtype=dtype) -> None:
            opt.zero_grad(set_to_none=True)
            with _autocast(dtype):
                outs = net(x)
                outs = outs if isinstance(outs, list) else [outs]
                loss = sum(0.5 ** i * F.cross_entropy(o.float(), F.interpolate(y[:, None].float(), o.shape[2:],
                                                                               mode="nearest")[:, 0].long())
                           for i, o in enumerate(outs))
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()

        torch.cuda.reset_peak_memory_stats()
        med, times = _median_time(step, 5 if quick else 15)
        out[mode] = {"step_s": round(med, 4), "spread_s": [round(min(times), 4), round(max(times), 4)],
                     "peak_mb": round(torch.cuda.max_memory_allocated() / 2**20)}
        net = opt = x = y = step = None
        torch.cuda.empty_cache()
    out["bf16_speedup"] = round(out["fp32"]["step_s"] / out["bf16"]["step_s"], 2)
    out["fp16_speedup"] = round(out["fp32"]["step_s"] / out["fp16"]["step_s"], 2)
    out["bf16_memory_ratio"] = round(out["bf16"]["peak_mb"] / out["fp32"]["peak_mb"], 3)
    out["fp16_memory_ratio"] = round(out["fp16"]["peak_mb"] / out["fp32"]["peak_mb"], 3)
    return out


def medseg_inference(quick: bool) -> dict:
    from medseg.sliding_window import sliding_window
    from shared_backbones.registry import create_model

    dev = torch.device("cuda")
    shape = (96, 128, 128) if quick else (160, 256, 256)
    net = create_model("unet3d", in_channels=1, num_classes=4, base_channels=32).to(dev).eval()
    image = torch.randn(1, 1, *shape)
    out: dict = {"volume": list(shape), "window": [128, 128, 128]}
    for mode, dtype in (("fp32", None), ("bf16", torch.bfloat16)):
        def run(dtype=dtype) -> torch.Tensor:
            with torch.inference_mode(), _autocast(dtype):
                return sliding_window(net, image, (128, 128, 128), overlap=0.5, batch_size=2, device=dev,
                                      stitch_device=dev)

        torch.cuda.reset_peak_memory_stats()
        med, times = _median_time(run, 2 if quick else 3, warmup=1)
        out[mode] = {"seconds": round(med, 3), "peak_mb": round(torch.cuda.max_memory_allocated() / 2**20)}
    out["bf16_speedup"] = round(out["fp32"]["seconds"] / out["bf16"]["seconds"], 2)
    return out


def remote_pixels(quick: bool) -> dict:
    from shared_backbones.registry import create_model

    dev = torch.device("cuda")
    out: dict = {}
    n = 65536
    for name in ("ffdnn", "cnn1d"):
        net = create_model(name).to(dev).eval()
        bands = len(getattr(net, "bands", [])) or 10
        x = torch.rand(n, 24, bands, device=dev) * 0.5
        for mode, dtype in (("fp32", None), ("bf16", torch.bfloat16)):
            def run(net=net, x=x, dtype=dtype) -> None:
                with torch.inference_mode(), _autocast(dtype):
                    net(x)

            try:
                med, _ = _median_time(run, 5 if quick else 20)
                out[f"{name}_{mode}_pixels_per_s"] = round(n / med)
            except Exception as exc:  # report, do not hide the other figures
                out[f"{name}_{mode}_error"] = f"{type(exc).__name__}: {exc}"[:200]
    return out


def audiosep_rtf(quick: bool) -> dict:
    from shared_backbones.registry import create_model

    dev = torch.device("cuda")
    seconds = 10 if quick else 60
    net = create_model("convtasnet-base", num_sources=2).to(dev).eval()
    x = torch.randn(1, 1, 8000 * seconds, device=dev)
    out: dict = {"seconds": seconds}
    for mode, dtype in (("fp32", None), ("bf16", torch.bfloat16)):
        def run(dtype=dtype) -> None:
            with torch.inference_mode(), _autocast(dtype):
                net(x)

        torch.cuda.reset_peak_memory_stats()
        med, _ = _median_time(run, 3 if quick else 10)
        out[f"rtf_{mode}"] = round(med / seconds, 5)
        out[f"peak_mb_{mode}"] = round(torch.cuda.max_memory_allocated() / 2**20)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="small sizes (a smoke run)")
    args = ap.parse_args()
    if not torch.cuda.is_available():
        print(json.dumps({"error": "no CUDA device"}))
        return 0
    torch.backends.cudnn.benchmark = True
    res: dict = {"torch": torch.__version__, "gpu": torch.cuda.get_device_name(0)}
    for name, fn in (("unet3d_train_step", unet_train_step), ("medseg_inference", medseg_inference),
                     ("remote_forward", remote_pixels), ("audiosep_forward", audiosep_rtf)):
        start = time.perf_counter()
        try:
            res[name] = fn(args.quick)
        except Exception as exc:  # one failing part must not hide the others
            res[name] = {"error": f"{type(exc).__name__}: {exc}"[:300]}
        res[name]["wall_s"] = round(time.perf_counter() - start, 1)
        print(name, json.dumps(res[name]), flush=True)
    text = json.dumps(res)
    if os.environ.get("OUT"):
        Path(os.environ["OUT"], "gpu_figures.json").write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
