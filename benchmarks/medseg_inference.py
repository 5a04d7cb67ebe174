"""medseg inference: sliding window vs MONAI, end-to-end predict vs network-only time, peak RAM.

1. Our Gaussian sliding window (``medseg.sliding_window``) vs MONAI's ``sliding_window_inference(mode="gaussian",
   overlap=0.5)`` with the same ``sw_batch_size``, the same network (``unet3d``, eval mode, ``torch.inference_mode``)
   and the same volume; interleaved repeats, fastest of N -> ``speed_ratio_vs_monai`` (MONAI time / ours; target
   >= 1) and ``max_abs_diff_vs_monai`` (largest difference of the blended logits). The same comparison with a
   1x1x1 convolution as the "network" isolates the stitching cost (cropping, weighting, accumulation):
   ``stitch_speed_ratio_vs_monai``.
2. End-to-end prediction of a NIfTI file through the library (``read_case`` -> ``predict_case``: reorient,
   normalise, resample to the model's spacing, sliding window, softmax, resample back slab by slab, argmax ->
   ``write_labels``), the model already loaded, vs the sliding window alone on the already-preprocessed tensor,
   interleaved, fastest of N -> ``e2e_over_network`` (target <= 1.2).
3. Peak RSS of a fresh process running that end-to-end prediction once, minus the peak RSS of a fresh process that
   only imported torch and the library and loaded the model, divided by (input bytes + probabilities bytes) ->
   ``peak_ram_over_data``. Input bytes: the float32 image on the file's grid; probabilities: float32 class scores
   on the model's grid (K x z x y x). The network's own working set for one window batch (activations, measured
   the same way) is reported apart, so the data-proportional part can be read off.

Defaults (2 CPU cores, a few minutes): ``unet3d`` with 16 base channels and 4 classes, 64^3 windows, 2 windows per
batch; part 1 on a 1 x 1 x 96 x 160 x 160 volume (32 windows); parts 2-3 on a 256 x 256 x 80 phantom at
0.8 x 0.8 x 2.5 mm resampled to the model's 2.5 x 1.6 x 1.6 mm (z, y, x) grid of 80 x 128 x 128 (18 windows).

    python benchmarks/medseg_inference.py [--repeats 3] [--base-channels 16] [--patch 64] [--shape 96 160 160]
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np
import torch

from shared_backbones.timing import time_interleaved

CLASSES = ["background", "organ", "lesion", "vessel"]


def build_net(base_channels: int, num_classes: int) -> torch.nn.Module:
    from shared_backbones.registry import create_model

    torch.manual_seed(0)
    return create_model("unet3d", base_channels=base_channels, num_classes=num_classes).eval()


# ------------------------------------------------------------------------------------------ 1. vs MONAI
def compare_monai(
    net: torch.nn.Module, shape: tuple[int, int, int], patch: int, batch: int, repeats: int, num_classes: int
) -> dict[str, float]:
    from monai.inferers import sliding_window_inference

    from medseg.sliding_window import sliding_window

    torch.manual_seed(1)
    x = torch.randn(1, 1, *shape)
    window = (patch,) * 3
    out: dict[str, float] = {}
    with torch.inference_mode():
        for label, predictor in (("network", net), ("stitch", torch.nn.Conv3d(1, num_classes, 1).eval())):
            ours = lambda p=predictor: sliding_window(p, x, window, overlap=0.5, batch_size=batch)  # noqa: E731
            def monai(p=predictor):
                return sliding_window_inference(
                            x,
                            window,
                            batch,
                            p,
                            overlap=0.5,  # noqa: E731
                            mode="gaussian",
                            sigma_scale=0.125,
                        )
            diff = (ours() - monai()).abs().max().item()
            t = time_interleaved({"ours": ours, "monai": monai}, repeats if label == "network" else 2 * repeats + 1)
            out[f"{label}_ours_s"], out[f"{label}_monai_s"], out[f"{label}_diff"] = t["ours"], t["monai"], diff
    return out


# ------------------------------------------------------------------------------- 2. end-to-end predict
def write_inputs(
    root: Path,
    base_channels: int,
    num_classes: int,
    patch: int,
    file_shape: tuple[int, int, int],
    file_spacing: tuple[float, float, float],
    model_spacing: tuple[float, float, float],
) -> tuple[Path, Path]:
    from medseg.synthetic import make_phantom, save_nifti
    from shared_backbones.checkpoint import ModelFile, save_model_file

    net = build_net(base_channels, num_classes)
    kw = {"base_channels": base_channels, "num_classes": num_classes, "in_channels": 1}
    mf = ModelFile.from_model(
        net,
        task="medseg",
        arch="unet3d",
        arch_kwargs=kw,
        classes=CLASSES[:num_classes],
        preprocessing={
            "orientation": "RAS",
            "axis_order": "zyx",
            "spacing": list(model_spacing),
            "patch_size": [patch] * 3,
            "in_channels": 1,
            "normalization": [{"scheme": "zscore"}],
        },
    )
    model_path = save_model_file(root / "model.pt", mf)
    img, _, aff = make_phantom(file_shape, file_spacing, seed=0)
    return model_path, save_nifti(root / "case.nii.gz", img[0], aff)


def predict_file(models: list, in_path: Path, out_path: Path, batch: int) -> None:
    """What ``medseg predict`` does for one case once the model is loaded: read, predict, write."""
    from medseg.io import read_case, write_labels
    from medseg.predict import predict_case

    case = read_case(in_path)
    pred = predict_case(case, models, batch_size=batch)
    write_labels(out_path, pred.labels, case, overwrite=True)


def preprocessed(models: list, in_path: Path) -> torch.Tensor:
    """The network input predict_case builds (reoriented, normalised, resampled): ``[C, z, y, x]``."""
    from medseg.io import model_array, read_case
    from medseg.preprocess import normalise, resample, target_shape

    m = models[0]
    arr, geom = model_array(read_case(in_path), m.orientation)
    image = normalise(torch.from_numpy(arr), m.pre.get("normalization"))
    return resample(image, target_shape(arr.shape[1:], geom.spacing, m.spacing))


def network_only(models: list, image: torch.Tensor, batch: int) -> torch.Tensor:
    from medseg.sliding_window import sliding_window

    m = models[0]
    with torch.inference_mode():
        return sliding_window(
            m.net, image[None], m.window(image.shape[1:]), overlap=0.5, batch_size=batch, num_classes=len(m.classes)
        )


# ------------------------------------------------------------------------------------ 3. peak RAM (isolated)
def _load(model_path: str) -> list:
    from medseg.predict import load_models

    return load_models([model_path], "cpu", "fp32")


def idle_process(model_path: str) -> int:
    """Import torch and the library, load the model, do nothing else."""
    import medseg.io  # noqa: F401
    import medseg.predict  # noqa: F401

    _load(model_path)
    return 0


def one_window_batch(model_path: str, patch: int, batch: int) -> int:
    """The network's working set: one forward pass of a window batch, nothing else."""
    import medseg.io  # noqa: F401
    import medseg.predict  # noqa: F401

    m = _load(model_path)[0]
    with torch.inference_mode():
        m.net(torch.randn(batch, 1, patch, patch, patch))
    return 0


def e2e_process(model_path: str, in_path: str, out_path: str, batch: int) -> int:
    predict_file(_load(model_path), Path(in_path), Path(out_path), batch)
    return 0


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__.splitlines()[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="\n".join(__doc__.splitlines()[1:]),
    )
    ap.add_argument("--repeats", type=int, default=3, help="timed runs per contender (fastest counts; default 3)")
    ap.add_argument("--base-channels", type=int, default=16, help="unet3d first-stage channels (default 16)")
    ap.add_argument("--classes", type=int, default=4, help="output classes (default 4)")
    ap.add_argument("--patch", type=int, default=64, help="cubic window edge, a multiple of 16 (default 64)")
    ap.add_argument("--batch-size", type=int, default=2, help="windows per forward pass, both sides (default 2)")
    ap.add_argument(
        "--shape",
        type=int,
        nargs=3,
        default=(96, 160, 160),
        metavar=("Z", "Y", "X"),
        help="part 1 volume (default 96 160 160)",
    )
    ap.add_argument(
        "--file-shape",
        type=int,
        nargs=3,
        default=(256, 256, 80),
        metavar=("X", "Y", "Z"),
        help="parts 2-3 NIfTI array shape (default 256 256 80)",
    )
    ap.add_argument(
        "--file-spacing",
        type=float,
        nargs=3,
        default=(0.8, 0.8, 2.5),
        metavar=("X", "Y", "Z"),
        help="parts 2-3 voxel size in mm (default 0.8 0.8 2.5)",
    )
    ap.add_argument(
        "--model-spacing",
        type=float,
        nargs=3,
        default=(2.5, 1.6, 1.6),
        metavar=("Z", "Y", "X"),
        help="the model's spacing in mm (default 2.5 1.6 1.6)",
    )
    ap.add_argument("--skip-monai", action="store_true", help="skip part 1")
    ap.add_argument("--skip-ram", action="store_true", help="skip part 3")
    args = ap.parse_args()
    from shared_backbones.memory import run_isolated

    summary: dict[str, float | int | list[int]] = {}
    bs, patch, k = args.batch_size, args.patch, args.classes
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, CPU, fp32; unet3d base {args.base_channels}, "
        f"{k} classes, window {patch}^3, {bs} windows per batch, overlap 0.5, Gaussian"
    )

    if not args.skip_monai:
        import monai

        net = build_net(args.base_channels, k)
        r = compare_monai(net, tuple(args.shape), patch, bs, args.repeats, k)
        print(f"\n1. sliding window on 1 x 1 x {' x '.join(map(str, args.shape))} (MONAI {monai.__version__})")
        print(f"{'predictor':<14} {'ours s':>8} {'MONAI s':>8} {'MONAI/ours':>10} {'max |diff|':>11}")
        for label, name in (("network", "unet3d"), ("stitch", "1x1x1 conv")):
            print(
                f"{name:<14} {r[f'{label}_ours_s']:>8.3f} {r[f'{label}_monai_s']:>8.3f} "
                f"{r[f'{label}_monai_s'] / r[f'{label}_ours_s']:>10.3f} {r[f'{label}_diff']:>11.2e}"
            )
        summary.update(
            speed_ratio_vs_monai=round(r["network_monai_s"] / r["network_ours_s"], 3),
            max_abs_diff_vs_monai=float(f"{r['network_diff']:.3g}"),
            stitch_speed_ratio_vs_monai=round(r["stitch_monai_s"] / r["stitch_ours_s"], 3),
            sliding_window_s=round(r["network_ours_s"], 3),
            monai_s=round(r["network_monai_s"], 3),
        )

    from medseg.predict import load_models
    from medseg.sliding_window import window_slices

    with tempfile.TemporaryDirectory() as d:
        root = Path(d)
        model_path, in_path = write_inputs(
            root,
            args.base_channels,
            k,
            patch,
            tuple(args.file_shape),
            tuple(args.file_spacing),
            tuple(args.model_spacing),
        )
        models = load_models([model_path], "cpu", "fp32")
        image = preprocessed(models, in_path)
        grid = tuple(image.shape[1:])
        t = time_interleaved(
            {
                "e2e": lambda: predict_file(models, in_path, root / "seg.nii.gz", bs),
                "network": lambda: network_only(models, image, bs),
            },
            args.repeats,
        )
        n_win = len(window_slices(tuple(max(s, patch) for s in grid), (patch,) * 3, 0.5))
        print(
            f"\n2. end-to-end predict: {' x '.join(map(str, args.file_shape))} NIfTI at "
            f"{' x '.join(f'{s:g}' for s in args.file_spacing)} mm -> model grid {' x '.join(map(str, grid))} "
            f"at {' x '.join(f'{s:g}' for s in args.model_spacing)} mm ({n_win} windows)"
        )
        print(
            f"network only (sliding window on the preprocessed tensor) {t['network']:.3f} s; "
            f"read + predict + write {t['e2e']:.3f} s -> {t['e2e'] / t['network']:.3f}x"
        )
        summary.update(
            e2e_over_network=round(t["e2e"] / t["network"], 3),
            e2e_s=round(t["e2e"], 3),
            network_s=round(t["network"], 3),
        )

        if not args.skip_ram:
            _, idle = run_isolated(idle_process, str(model_path))
            _, net_ws = run_isolated(one_window_batch, str(model_path), patch, bs)
            _, peak = run_isolated(e2e_process, str(model_path), str(in_path), str(root / "seg2.nii.gz"), bs)
            in_bytes = int(np.prod(args.file_shape)) * 4
            prob_bytes = k * int(np.prod(grid)) * 4
            data = in_bytes + prob_bytes
            mb = 2**20
            print(
                f"\n3. peak RSS (fresh processes): idle (torch + library + model) {idle / mb:.0f} MB; one window batch "
                f"{net_ws / mb:.0f} MB (+{(net_ws - idle) / mb:.0f} MB network working set); end-to-end "
                f"{peak / mb:.0f} MB (+{(peak - idle) / mb:.0f} MB)"
            )
            print(
                f"data: input {in_bytes / mb:.1f} MB + probabilities {prob_bytes / mb:.1f} MB = {data / mb:.1f} MB "
                f"-> peak above idle / data = {(peak - idle) / data:.2f}; beyond the network's working set "
                f"{(peak - net_ws) / data:.2f}"
            )
            summary.update(
                peak_ram_over_data=round((peak - idle) / data, 2),
                peak_ram_beyond_network_over_data=round((peak - net_ws) / data, 2),
                peak_ram_mb=round(peak / mb),
                idle_ram_mb=round(idle / mb),
                network_working_set_mb=round((net_ws - idle) / mb),
                data_mb=round(data / mb, 1),
            )
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
