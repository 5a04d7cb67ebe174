"""Evaluate a phase model on a labelled data folder: per-video and overall metrics, table and CSV."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from shared_backbones.cliutil import atomic_output, progress

from .io import dataset_videos, label_path, load_features, load_labels
from .metrics import evaluate_videos

COLUMNS = ("accuracy", "edit", "f1@10", "f1@25", "f1@50", "withdrawal_error_s")


def evaluate_predictions(preds: list[np.ndarray], refs: list[np.ndarray], ids: list[str], classes: list[str],
                         fps: float) -> tuple[list[dict], dict]:
    """Per-video rows and the overall metrics (F1 counts summed over videos, Edit averaged)."""
    rows = [{"video": v, **{k: m[k] for k in COLUMNS if k in m}}
            for v, p, r in zip(ids, preds, refs) for m in [evaluate_videos([p], [r], len(classes), classes, fps)]]
    return rows, evaluate_videos(preds, refs, len(classes), classes, fps)


def evaluate_dataset(pm, data_dir: str | Path, layout: str = "auto", quiet: bool = True) -> tuple[list[dict], dict]:
    """Predict every labelled video of ``data_dir`` with ``pm`` (a PhaseModel) and score it."""
    ids, feats_dir, labels_dir = dataset_videos(data_dir)
    preds, refs = [], []
    for vid in progress(ids, desc="videos", unit="video", quiet=quiet):
        preds.append(pm.probabilities(load_features(feats_dir / f"{vid}.npy", layout, pm.in_features)).argmax(1))
        refs.append(load_labels(label_path(labels_dir, vid), pm.classes)[: len(preds[-1])])
    return evaluate_predictions(preds, refs, ids, pm.classes, pm.fps)


def format_table(rows: list[dict], total: dict) -> str:
    """Per-video lines, the overall line, then per-class precision / recall / F1 / Jaccard."""
    cols = [c for c in COLUMNS if c in total]
    lines = [f"{'video':<24}" + "".join(f"{c:>20}" for c in cols)]
    for r in rows + [{"video": "ALL", **total}]:
        lines.append(f"{r['video'][:24]:<24}" + "".join(f"{r.get(c, float('nan')):>20.2f}" for c in cols))
    lines.append(f"\n{'class':<14}{'precision':>10}{'recall':>10}{'f1':>10}{'jaccard':>10}{'frames':>10}")
    for name, m in total["per_class"].items():
        lines.append(f"{name:<14}{m['precision']:>10.1f}{m['recall']:>10.1f}{m['f1']:>10.1f}{m['jaccard']:>10.1f}"
                     f"{m['frames']:>10d}")
    return "\n".join(lines)


def write_csv(rows: list[dict], total: dict, path: str | Path, overwrite: bool = False) -> Path:
    """Per-video rows and an ``ALL`` row."""
    cols = [c for c in COLUMNS if c in total]
    with atomic_output(path, overwrite) as tmp, open(tmp, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=["video", *cols], extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)
        w.writerow({"video": "ALL", **total})
    return Path(path)
