"""Evaluate a phase model on a labelled data folder: per-video and overall metrics (MS-TCN definitions), as a table
and a report file (CSV / TSV / JSON through :mod:`shared_backbones.report`)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from shared_backbones.cliutil import progress
from shared_backbones.errors import InputError
from shared_backbones.report import format_table as report_table
from shared_backbones.report import write_report

from .io import dataset_videos, label_path, load_features, load_labels, match_length, read_split
from .metrics import evaluate_videos

COLUMNS = ("accuracy", "edit", "f1@10", "f1@25", "f1@50", "withdrawal_error_s")


def evaluate_predictions(preds: list[np.ndarray], refs: list[np.ndarray], ids: list[str], classes: list[str],
                         fps: float, background: Sequence[int] = ()) -> tuple[list[dict], dict]:
    """Per-video rows and the overall metrics (F1 counts summed over videos, Edit averaged); ``background`` class
    indices are left out of Edit and F1."""
    rows = []
    for v, p, r in zip(ids, preds, refs):
        m = evaluate_videos([p], [r], len(classes), classes, fps, background=background)
        rows.append({"video": v, **{k: m[k] for k in COLUMNS if k in m}})
    return rows, evaluate_videos(preds, refs, len(classes), classes, fps, background=background)


def evaluate_dataset(pm, data_dir: str | Path, layout: str = "auto", quiet: bool = True,
                     background: Sequence[int] = (), split: str | Path | None = None,
                     notice: Callable[[str], None] | None = None) -> tuple[list[dict], dict]:
    """Predict every labelled video of ``data_dir`` (or those listed in an MS-TCN ``split`` bundle) with ``pm``
    (a :class:`~medseg.phases.predict.PhaseModel`) and score it. Label files follow
    :func:`~medseg.phases.io.match_length`; its notices go to ``notice``."""
    ids, feats_dir, labels_dir = dataset_videos(data_dir)
    if split is not None:
        wanted = read_split(split)
        missing = [v for v in wanted if v not in ids]
        if missing:
            raise InputError(f"video {missing[0]!r} has no features/labels in {data_dir}", split)
        ids = wanted
    preds, refs = [], []
    for vid in progress(ids, desc="videos", unit="video", quiet=quiet):
        feats = load_features(feats_dir / f"{vid}.npy", layout, pm.in_features)
        lp = label_path(labels_dir, vid)
        ref, note = match_length(load_labels(lp, pm.classes), len(feats), lp)
        if note and notice:
            notice(note)
        preds.append(pm.probabilities(feats).argmax(1))
        refs.append(ref)
    return evaluate_predictions(preds, refs, ids, pm.classes, pm.fps, background)


def metric_rows(rows: list[dict], total: dict) -> list[dict]:
    """Per-video rows followed by the overall ``ALL`` row, with the metric columns present."""
    return [*rows, {"video": "ALL", **{c: total[c] for c in COLUMNS if c in total}}]


def class_rows(total: dict) -> list[dict]:
    """Per-class precision / recall / F1 / Jaccard (%) and reference frame counts."""
    return [{"class": name, **{k: m[k] for k in ("precision", "recall", "f1", "jaccard", "frames")}}
            for name, m in total["per_class"].items()]


def format_table(rows: list[dict], total: dict) -> str:
    """Per-video lines, the overall line, then per-class precision / recall / F1 / Jaccard."""
    cols = ["video", *[c for c in COLUMNS if c in total]]
    return (report_table(metric_rows(rows, total), cols, digits=2) + "\n\n"
            + report_table(class_rows(total), digits=1))


def write_csv(rows: list[dict], total: dict, path: str | Path, overwrite: bool = False) -> Path:
    """Per-video rows and an ``ALL`` row (``.csv``, ``.tsv`` or ``.json`` by suffix)."""
    return write_report(path, metric_rows(rows, total), ["video", *[c for c in COLUMNS if c in total]],
                        overwrite=overwrite)
