"""Evaluate label maps against references with MONAI's metrics: Dice, 95th-percentile Hausdorff distance (mm) and
normalised surface Dice (NSD at a tolerance in mm), per class and per case, spacing-aware.

Conventions: a class absent from the reference gives NaN for every metric of that case (it is skipped in the
means); a class present in the reference but missing from the prediction gives Dice 0, NSD 0 and HD95 = NaN
(reported as missing); means are over the finite values. Prediction labels outside the class list (e.g. 5 when
dataset.json names 4 classes) belong to no class: those voxels count as wrong (a missed reference voxel, never a
hit) and the evaluation notes them; a reference label outside the class list is refused.
"""

from __future__ import annotations

import json
import math
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from shared_backbones.errors import InputError

from .io import Case, case_name, is_nifti, read_case

METRICS = ("dice", "hd95", "nsd")


@dataclass
class Evaluation:
    """Per case and class metrics plus means per class and overall."""

    classes: list[str]
    rows: list[dict[str, Any]] = field(default_factory=list)  # case, class, label, dice, hd95, nsd
    notes: list[str] = field(default_factory=list)  # one line per case with labels outside the class list

    def class_means(self) -> dict[str, dict[str, float]]:
        out = {}
        for name in self.classes[1:]:
            vals = {m: [r[m] for r in self.rows if r["class"] == name and math.isfinite(r[m])] for m in METRICS}
            out[name] = {m: (float(np.mean(v)) if v else float("nan")) for m, v in vals.items()}
        return out

    def mean(self) -> dict[str, float]:
        means = self.class_means()
        return {m: _nanmean([v[m] for v in means.values()]) for m in METRICS}


def _nanmean(values: list[float]) -> float:
    finite = [v for v in values if math.isfinite(v)]
    return float(np.mean(finite)) if finite else float("nan")


def _labels(case: Case) -> np.ndarray:
    data = case.data[0]
    if not np.allclose(data, np.round(data)) or data.min() < 0:
        raise InputError("not a label map (non-integer or negative values)", case.paths[0])
    return data.astype(np.int64)


def case_metrics(
    pred: np.ndarray, ref: np.ndarray, n_classes: int, spacing: tuple[float, ...], tolerance_mm: float = 2.0
) -> dict[str, np.ndarray]:
    """Dice, HD95 (mm) and NSD for labels 1..n_classes-1 of one case (arrays of length n_classes-1). Voxels with a
    label outside 0..n_classes-1 belong to no class (in the prediction they count as wrong)."""
    from monai.metrics import DiceMetric, HausdorffDistanceMetric, SurfaceDiceMetric
    from monai.networks.utils import one_hot

    # labels outside 0..n_classes-1 go to an extra channel that is dropped: they match no class
    p = one_hot(torch.from_numpy(np.where((pred >= 0) & (pred < n_classes), pred, n_classes))[None, None],
                n_classes + 1)[:, :n_classes]
    r = one_hot(torch.from_numpy(np.where((ref >= 0) & (ref < n_classes), ref, n_classes))[None, None],
                n_classes + 1)[:, :n_classes]
    present_ref = r[0, 1:].flatten(1).any(1).numpy()
    present_pred = p[0, 1:].flatten(1).any(1).numpy()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dice = DiceMetric(include_background=False, reduction="none", ignore_empty=True)(p, r)[0].numpy()
        hd = HausdorffDistanceMetric(include_background=False, percentile=95, reduction="none")(
            p, r, spacing=list(spacing)
        )[0].numpy()
        nsd = SurfaceDiceMetric([tolerance_mm] * (n_classes - 1), include_background=False, reduction="none")(
            p, r, spacing=list(spacing)
        )[0].numpy()
    hd = np.where(present_ref & present_pred, hd, np.nan)
    nsd = np.where(present_ref, np.where(present_pred, nsd, 0.0), np.nan)
    dice = np.where(present_ref, dice, np.nan)
    return {"dice": dice.astype(float), "hd95": hd.astype(float), "nsd": nsd.astype(float)}


def _pairs(pred_dir: Path, ref_dir: Path) -> list[tuple[str, Path, Path]]:
    for d in (pred_dir, ref_dir):
        if not d.is_dir():
            raise InputError("not a folder", d)
    preds = {
        case_name(p): p for p in pred_dir.iterdir() if is_nifti(p) and not p.name.endswith("_probabilities.nii.gz")
    }
    refs = sorted((case_name(p), p) for p in ref_dir.iterdir() if is_nifti(p))
    if not refs:
        raise InputError("no reference .nii/.nii.gz files", ref_dir)
    out = []
    for name, ref in refs:
        if name not in preds:
            raise InputError(f"no prediction for reference {ref.name}", pred_dir / ref.name)
        out.append((name, preds[name], ref))
    return out


def class_names_from(dataset_json: str | Path | None, n_classes: int) -> list[str]:
    """Names from an MSD/nnU-Net dataset.json (``labels``: {"0": "background", ...} or {"background": 0, ...})."""
    from .dataset import parse_label_map
    labels: dict[int, str] = {}
    if dataset_json and Path(dataset_json).is_file():
        try:
            raw = json.loads(Path(dataset_json).read_text()).get("labels", {})
            labels = parse_label_map(raw, dataset_json)
        except (ValueError, AttributeError, TypeError):
            raise InputError("unreadable 'labels' in dataset.json", dataset_json) from None
    n = max(n_classes, max(labels, default=0) + 1)
    return [labels.get(i, "background" if i == 0 else f"class_{i}") for i in range(n)]


def evaluate_folders(
    pred_dir: str | Path,
    ref_dir: str | Path,
    *,
    tolerance_mm: float = 2.0,
    dataset_json: str | Path | None = None,
    on_case: Any = None,
) -> Evaluation:
    """Compare every reference in ``ref_dir`` with the same-named prediction in ``pred_dir``."""
    pred_dir, ref_dir = Path(pred_dir), Path(ref_dir)
    pairs = _pairs(pred_dir, ref_dir)
    if dataset_json is None and (ref_dir.parent / "dataset.json").is_file():
        dataset_json = ref_dir.parent / "dataset.json"
    classes = class_names_from(dataset_json, 2) if dataset_json else []
    if len(classes) <= 2:  # no (useful) dataset.json: classes = labels seen in the references and predictions
        n = 2
        for _, p, r in pairs:
            n = max(n, int(_labels(read_case(p)).max()) + 1, int(_labels(read_case(r)).max()) + 1)
        classes = class_names_from(dataset_json, n)
    ev = Evaluation(classes)
    for name, p, r in pairs:
        pc, rc = read_case(p), read_case(r)
        if pc.spatial_shape != rc.spatial_shape:
            raise InputError(f"shape {pc.spatial_shape} differs from the reference's {rc.spatial_shape}", p)
        if not np.allclose(pc.affine, rc.affine, atol=1e-3):
            raise InputError("affine differs from the reference's (prediction not on the reference grid)", p)
        pl, rl = _labels(pc), _labels(rc)
        if int(rl.max(initial=0)) >= len(classes):
            raise InputError(
                f"reference label {int(rl.max())} is not in the class list of {dataset_json} ({len(classes)} "
                f"classes: {', '.join(classes)})",
                r,
            )
        unknown = pl >= len(classes)
        if unknown.any():
            ev.notes.append(
                f"{p}: {int(unknown.sum())} voxels with labels {sorted(int(v) for v in np.unique(pl[unknown]))} "
                f"outside the {len(classes)} classes count as wrong"
            )
        m = case_metrics(pl, rl, len(classes), tuple(float(v) for v in rc.voxel_sizes), tolerance_mm)
        for k in range(1, len(classes)):
            ev.rows.append(
                {"case": name, "class": classes[k], "label": k, **{key: float(m[key][k - 1]) for key in METRICS}}
            )
        if on_case is not None:
            on_case(name)
    return ev


def format_table(ev: Evaluation) -> str:
    """Printed summary: one line per class (means over cases) and the overall mean."""
    lines = [f"{'class':<20}{'Dice':>8}{'HD95 mm':>10}{'NSD':>8}"]
    for name, v in ev.class_means().items():
        lines.append(f"{name:<20}{v['dice']:>8.4f}{v['hd95']:>10.2f}{v['nsd']:>8.4f}")
    m = ev.mean()
    lines.append(f"{'mean':<20}{m['dice']:>8.4f}{m['hd95']:>10.2f}{m['nsd']:>8.4f}")
    return "\n".join(lines)


def write_csv(path: str | Path, ev: Evaluation, overwrite: bool = False) -> Path:
    """Per case/class rows, then per-class means (case ``mean``) and the overall mean (class ``mean``), written by
    the suite's report writer (CSV, TSV or JSON by the file's suffix; non-finite values left empty)."""
    from shared_backbones.report import write_report

    rows = [{"case": r["case"], "class": r["class"], "label": r["label"], **{m: r[m] for m in METRICS}}
            for r in ev.rows]
    rows += [{"case": "mean", "class": name, "label": i, **v} for i, (name, v) in enumerate(ev.class_means().items(),
                                                                                          start=1)]
    rows.append({"case": "mean", "class": "mean", "label": "", **ev.mean()})
    return write_report(path, rows, ["case", "class", "label", *METRICS], overwrite=overwrite)
