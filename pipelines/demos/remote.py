"""Demo part for remote: a synthetic Sentinel-2 wheat season (healthy / yellow rust / nitrogen deficiency, clouds),
FFDNN trained on spatially blocked folds, the whole map predicted tile by tile, accuracy and kappa on the held-out
blocks."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import numpy as np
import rasterio

from remote.discovery import open_series
from remote.evaluate import classification_metrics
from remote.predict import PredictOutputs, RemoteModel, predict_series
from remote.reader import read_single_band
from remote.samples import choose_pixels, spatial_block_splits
from remote.synthetic import make_season

from ..remote import train_remote
from . import DemoResult


def run(out_dir: Path, *, quick: bool = False, quiet: bool = False) -> DemoResult:
    start = time.perf_counter()
    out_dir = Path(out_dir)
    if out_dir.exists():
        shutil.rmtree(out_dir)
    size = 64 if quick else 128
    scene = make_season(
        out_dir / "data", height=size, width=size, n_dates=10 if quick else 24, step_days=12 if quick else 6, seed=0
    )
    folds, block, buffer = 4, 32, 2
    series = open_series([scene.images])
    res = train_remote(
        out_dir / "ffdnn.pt",
        series=series,
        labels=scene.labels,
        arch="ffdnn",
        folds=folds,
        fold=0,
        block_size=block,
        buffer=buffer,
        epochs=1 if quick else 10,  # the budget: epochs, never wall time (the figures must not depend on the load)
        batch_size=256,
        accelerator="cpu",
        precision="fp32",
        quiet=quiet,
        overwrite=True,
        seed=0,
    )[0]
    rm = RemoteModel.from_file(res.model_file, "cpu", "fp32")
    outs = PredictOutputs.beside(out_dir / "stress_map.tif", probabilities=True, fields=True)
    summary = predict_series(
        open_series([scene.images]), rm, outs, tile=64, fields=scene.fields, quiet=quiet, overwrite=True
    )
    # the map's accuracy on the held-out blocks of fold 0 (the same blocks as in training)
    labels, _ = read_single_band(scene.labels)
    with rasterio.open(outs.class_map) as ds:
        pred = ds.read(1)
    rows, cols = choose_pixels(labels, len(rm.classes), None)
    _, test = spatial_block_splits(rows, cols, block, folds, buffer, seed=0)[0]
    r, c = rows[test], cols[test]
    ok = pred[r, c] != 255
    m = classification_metrics(pred[r, c][ok], labels[r, c][ok].astype(np.int64), rm.classes)
    figs = {
        "heldout_map_accuracy": round(m["overall_accuracy"], 4),
        "heldout_map_kappa": round(m["kappa"], 4),
        "fold_test_accuracy": round(res.metrics["overall_accuracy"], 4),
        "heldout_pixels": float(ok.sum()),
        "map_pixels": float(summary["pixels"]),
    }
    figs.update({f"f1_{k}": round(v["f1"], 4) for k, v in m["per_class"].items()})
    return DemoResult(
        pipeline="remote",
        figures=figs,
        targets={"heldout_map_accuracy": ">= 0.8"},
        outputs=[str(outs.class_map), str(outs.probabilities), str(outs.fields_csv), str(res.model_file)],
        seconds=time.perf_counter() - start,
        not_judged=["heldout_map_accuracy"] if quick else [],
        notes=f"synthetic {size}x{size} px season, {len(scene.dates)} dates with clouds; FFDNN trained on "
        f"{res.n_train} px of 3 of {folds} spatial folds ({block} px blocks, {buffer} px buffer)",
    )
