"""Demo part for medseg: synthetic multi-class phantoms (anisotropic voxels, oblique affines) in an nnU-Net/MSD
folder, a small ``unet3d`` trained through the Lightning pipeline, ``medseg predict`` on the held-out phantoms and
``medseg evaluate`` (MONAI Dice, HD95, NSD)."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

from medseg.evaluate import evaluate_folders, write_csv
from medseg.synthetic import write_dataset
from medseg.volume_cli import main as medseg_main

from ..medseg import train_medseg
from . import DemoResult


def run(out_dir: Path, *, quick: bool = False, quiet: bool = False) -> DemoResult:
    start = time.perf_counter()
    out_dir = Path(out_dir)
    if out_dir.exists():
        shutil.rmtree(out_dir)
    data = write_dataset(out_dir / "data", n_train=3 if quick else 10, n_test=1 if quick else 4, seed=1)
    model = out_dir / "unet3d.pt"
    res = train_medseg(data, model, arch="unet3d", arch_kwargs={"base_channels": 4 if quick else 8},
                       folds=3 if quick else 5, epochs=1 if quick else 10, steps_per_epoch=2 if quick else 25,
                       optimizer="adamw", lr=1e-2, device="cpu", precision="fp32", quiet=quiet, overwrite=True)
    pred = out_dir / "predictions"
    args = ["predict", str(data / "imagesTs"), "-m", str(model), "-o", str(pred), "--device", "cpu",
            "--preview", str(out_dir / "previews"), "--stats", str(out_dir / "volumes.json"), "--overwrite"]
    if medseg_main(args + (["--quiet"] if quiet else [])) != 0:
        raise RuntimeError("medseg predict failed on the demo phantoms")
    ev = evaluate_folders(pred, data / "labelsTs")
    write_csv(out_dir / "scores.csv", ev, overwrite=True)
    mean = ev.mean()
    per_class = {f"dice_{k}": v["dice"] for k, v in ev.class_means().items()}
    return DemoResult(pipeline="medseg", figures={"mean_dice": mean["dice"], **per_class, "hd95_mm": mean["hd95"],
                                                  "nsd_2mm": mean["nsd"],
                                                  "val_dice": float(res.best_score or float("nan"))},
                      targets={"mean_dice": ">= 0.9"}, outputs=[str(pred), str(out_dir / "scores.csv"),
                                                                 str(out_dir / "previews")],
                      seconds=time.perf_counter() - start, not_judged=["mean_dice"] if quick else [],
                      notes="held-out phantoms (organ, lesion, vessel; 1x1x2.5 mm voxels, oblique affines), "
                            "unet3d trained on fold 0 of 5 through pipelines.medseg")
