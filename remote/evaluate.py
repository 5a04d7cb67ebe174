"""Classification metrics for crop-stress maps: overall accuracy, per-class precision/recall/F1, confusion matrix,
Cohen's kappa; map-against-reference evaluation; reports through :mod:`shared_backbones.report`."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from shared_backbones.errors import InputError
from shared_backbones.report import format_table, write_report

from .reader import open_raster as _open
from .reader import read_single_band
from .resample import Grid


def confusion_matrix(pred: np.ndarray, ref: np.ndarray, k: int) -> np.ndarray:
    """[k, k] counts, rows = reference class, columns = predicted class."""
    pred, ref = np.asarray(pred).ravel().astype(np.int64), np.asarray(ref).ravel().astype(np.int64)
    return np.bincount(ref * k + pred, minlength=k * k).reshape(k, k)


def metrics_from_confusion(cm: np.ndarray, classes: Sequence[str]) -> dict[str, Any]:
    """Overall accuracy, Cohen's kappa, macro F1 and per-class precision / recall / F1 / support."""
    cm = np.asarray(cm, dtype=np.float64)
    n = cm.sum()
    oa = float(np.trace(cm) / n) if n else float("nan")
    pe = float((cm.sum(0) * cm.sum(1)).sum() / n ** 2) if n else float("nan")
    kappa = float((oa - pe) / (1 - pe)) if n and pe < 1 else (1.0 if n else float("nan"))
    tp = np.diag(cm)
    with np.errstate(divide="ignore", invalid="ignore"):
        prec = np.where(cm.sum(0) > 0, tp / cm.sum(0), 0.0)
        rec = np.where(cm.sum(1) > 0, tp / cm.sum(1), 0.0)
        f1 = np.where(prec + rec > 0, 2 * prec * rec / (prec + rec), 0.0)
    present = cm.sum(1) > 0
    per_class = {c: {"precision": float(prec[i]), "recall": float(rec[i]), "f1": float(f1[i]),
                     "support": int(cm[i].sum())} for i, c in enumerate(classes)}
    return {"overall_accuracy": oa, "kappa": kappa,
            "macro_f1": float(f1[present].mean()) if present.any() else float("nan"),
            "per_class": per_class, "confusion_matrix": cm.astype(np.int64).tolist(), "classes": list(classes),
            "samples": int(n)}


def classification_metrics(pred: np.ndarray, ref: np.ndarray, classes: Sequence[str]) -> dict[str, Any]:
    """Metrics of :func:`metrics_from_confusion` from label arrays (values 0..K-1)."""
    return metrics_from_confusion(confusion_matrix(pred, ref, len(classes)), classes)


def _classes_of(path: Path) -> list[str] | None:
    with _open(path) as src:
        tag = src.tags().get("CLASSES")
    return tag.split(",") if tag else None


def evaluate_maps(pred_path: str | Path, ref_path: str | Path, classes: Sequence[str] | None = None,
                  ignore: Sequence[int] = (255,)) -> dict[str, Any]:
    """Compare a class map with a reference label raster (same CRS; the reference is resampled with nearest
    neighbour when grids differ). Pixels with nodata/``ignore`` in either raster are left out."""
    pred_path, ref_path = Path(pred_path), Path(ref_path)
    with _open(pred_path) as src:
        grid = Grid(src.crs, src.transform, src.width, src.height)
        pred, p_nodata = src.read(1), src.nodata
    ref, r_nodata = read_single_band(ref_path, grid)
    classes = list(classes or _classes_of(pred_path) or _classes_of(ref_path) or [])
    if not classes:
        k = int(max(pred.max(initial=0), ref.max(initial=0))) + 1
        classes = [str(i) for i in range(k)]
    k = len(classes)
    bad = np.isin(pred, list(ignore)) | np.isin(ref, list(ignore))
    for arr, nd in ((pred, p_nodata), (ref, r_nodata)):
        if nd is not None:
            bad |= arr == nd
    out_of_range = (~bad) & ((ref < 0) | (ref >= k) | (pred < 0) | (pred >= k))
    if out_of_range.any():
        v = int(ref[out_of_range][0]) if ((ref < 0) | (ref >= k))[out_of_range].any() else int(pred[out_of_range][0])
        raise InputError(f"class value {v} outside 0..{k - 1} ({', '.join(classes)}); pass --classes", ref_path)
    keep = ~bad
    if not keep.any():
        raise InputError("no pixel has both a prediction and a reference label", ref_path)
    return classification_metrics(pred[keep], ref[keep], classes)


def report_rows(m: dict[str, Any]) -> list[dict[str, Any]]:
    """Rows of the report: one per class (precision, recall, F1, support, confusion-matrix row as ``pred_<class>``)
    and an ``overall`` row (overall accuracy, kappa, macro F1, pixel count)."""
    rows: list[dict[str, Any]] = []
    for (c, v), cm_row in zip(m["per_class"].items(), m["confusion_matrix"]):
        rows.append({"class": c, "precision": v["precision"], "recall": v["recall"], "f1": v["f1"],
                     "support": v["support"], **{f"pred_{p}": int(n) for p, n in zip(m["classes"], cm_row)}})
    rows.append({"class": "overall", "f1": m["macro_f1"], "support": m["samples"],
                 "overall_accuracy": m["overall_accuracy"], "kappa": m["kappa"]})
    return rows


def format_report(m: dict[str, Any]) -> str:
    """A short human-readable report (printed by ``remote evaluate``), tables by :mod:`shared_backbones.report`."""
    rows = report_rows(m)
    head = (f"overall accuracy {m['overall_accuracy']:.4f}  kappa {m['kappa']:.4f}  macro F1 {m['macro_f1']:.4f}  "
            f"({m['samples']} pixels)")
    scores = format_table(rows[:-1], ["class", "precision", "recall", "f1", "support"])
    cm = format_table([{"reference": r["class"], **{c[:8]: r[f"pred_{c}"] for c in m["classes"]}} for r in rows[:-1]])
    return f"{head}\n{scores}\nconfusion matrix (rows = reference, columns = predicted):\n{cm}"


def write_reports(m: dict[str, Any], paths: Sequence[str | Path] = (), overwrite: bool = False) -> list[Path]:
    """Write the report rows to every path (.csv, .tsv or .json by suffix, :func:`shared_backbones.report.
    write_report`)."""
    cols = ["class", "precision", "recall", "f1", "support", *[f"pred_{c}" for c in m["classes"]],
            "overall_accuracy", "kappa"]
    return [write_report(p, report_rows(m), cols, overwrite=overwrite) for p in paths]
