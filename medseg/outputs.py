"""What ``medseg predict`` writes beside the label map: per-class statistics, one binary mask per class, a preview.

Statistics (``--stats``/``--statistics``, :func:`label_statistics`), per foreground class on the input grid:

``label``, ``voxels``; ``volume_mm3`` and ``volume_ml`` (voxel count x voxel volume, rounded to the voxel volume's
own precision: the voxel volume at 6 significant digits, the precision the float32 NIfTI voxel sizes carry, and a
volume to as many decimals as that voxel volume has, so ``0.8 x 0.8 x 1.0`` mm gives ``7580.16``, never
``7580.160034``); ``volume`` (= ``volume_mm3``) and ``intensity`` (the mean) as TotalSegmentator's
``statistics.json`` names them, so ``stats["classes"]`` reads like its file (an empty class: 0.0 for both, as there);
``intensity_std`` (population std, as :func:`scipy.ndimage.standard_deviation`), ``intensity_median``,
``intensity_min``, ``intensity_max``, ``intensity_p5``, ``intensity_p25``, ``intensity_p75``, ``intensity_p95``
(:func:`numpy.percentile`, linear interpolation; ``null`` for an empty class). Intensities are the input image's
values (its first channel; NaN/Inf voxels are labelled background and so never counted), computed in one pass:
the foreground voxels are sorted by label once (no full-volume mask per class).

The file is JSON (``.json``: ``{"voxel_volume_mm3", "voxel_size_mm", "classes": {name: {...}}}`` for one case, a
mapping case -> that object for several) or a table (``.csv``/``.tsv``: one row per case and class, columns
``case, class`` and the keys above in that order).

One file per class (``--split-classes``): ``<label map without .nii.gz>/<class name>.nii.gz``, binary uint8, with
the label map's affine and header geometry (as TotalSegmentator's output folder: one file per class, named by the
class). The preview PNG (``--preview``) shows three orthogonal slices and a colour legend of the classes present.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from decimal import Decimal
from pathlib import Path
from typing import Any

import numpy as np

from shared_backbones.cliutil import atomic_output
from shared_backbones.errors import InputError

from .io import OUTPUT_DESCRIP, Case, Geometry, write_like

#: the per-class percentiles of ``--stats`` (``intensity_p5`` ...)
PERCENTILES = (5, 25, 75, 95)
#: the per-class keys of ``--stats`` in column order (after ``case`` and ``class`` in a table)
STAT_KEYS = ("label", "voxels", "volume_mm3", "volume_ml", "volume", "intensity", "intensity_std",
             "intensity_median", "intensity_min", "intensity_max", *(f"intensity_p{q}" for q in PERCENTILES))
#: significant digits of a voxel volume from float32 voxel sizes
VOXEL_VOLUME_DIGITS = 6


def voxel_volume(voxel_sizes: Sequence[float]) -> tuple[float, int]:
    """The voxel volume (mm^3) at :data:`VOXEL_VOLUME_DIGITS` significant digits and its number of decimals: a
    volume of ``n`` voxels is ``round(n * v, decimals)``, exact to the grid's precision."""
    text = f"{float(np.prod(np.asarray(voxel_sizes, dtype=np.float64))):.{VOXEL_VOLUME_DIGITS}g}"
    exponent = Decimal(text).as_tuple().exponent
    return float(text), max(0, -int(exponent))  # type: ignore[arg-type]


def _intensity(values: np.ndarray) -> dict[str, float | None]:
    """Mean, population std, median, min, max and percentiles of one class's sorted values (float64 sums)."""
    if values.size == 0:
        return {"intensity": 0.0, "intensity_std": None, "intensity_median": None, "intensity_min": None,
                "intensity_max": None, **{f"intensity_p{q}": None for q in PERCENTILES}}
    v64 = values.astype(np.float64)
    mean = v64.mean()
    pct = np.percentile(values, [50, *PERCENTILES])
    return {"intensity": float(mean), "intensity_std": float(np.sqrt(np.mean((v64 - mean) ** 2))),
            "intensity_median": float(pct[0]), "intensity_min": float(values[0]), "intensity_max": float(values[-1]),
            **{f"intensity_p{q}": float(p) for q, p in zip(PERCENTILES, pct[1:])}}


def label_statistics(labels: np.ndarray, classes: Sequence[str], voxel_sizes: Sequence[float],
                     image: np.ndarray | None = None) -> dict[str, Any]:
    """Per-class voxel counts, volumes and (with ``image``, same shape as ``labels``) intensity statistics on the
    input grid; the keys are listed in the module docstring."""
    vox, decimals = voxel_volume(voxel_sizes)
    flat = labels.ravel()
    counts = np.bincount(flat.astype(np.int64, copy=False), minlength=len(classes))
    groups: dict[int, np.ndarray] = {}
    if image is not None:
        if image.shape != labels.shape:
            raise ValueError(f"image shape {image.shape} != label shape {labels.shape}")
        # one pass: the foreground voxels sorted by label (a stable radix sort for uint8/uint16 labels), then by value
        # within each class; no full-volume mask per class
        fg = np.flatnonzero(flat)
        lab = flat[fg]
        order = np.argsort(lab, kind="stable")
        values = image.ravel()[fg[order]]
        del fg
        bounds = np.concatenate([[0], np.cumsum(np.bincount(lab, minlength=len(classes))[1:])])
        for i in range(1, len(classes)):
            seg = values[bounds[i - 1]:bounds[i]]
            seg.sort()
            groups[i] = seg
    per = {}
    for i, name in enumerate(classes):
        if i == 0:
            continue
        n = int(counts[i]) if i < len(counts) else 0
        mm3 = round(n * vox, decimals)
        entry: dict[str, Any] = {"label": i, "voxels": n, "volume_mm3": mm3, "volume_ml": round(mm3 / 1000,
                                                                                                decimals + 3),
                                 "volume": mm3}
        if image is not None:
            entry.update(_intensity(groups[i]))
        per[name] = entry
    return {"voxel_volume_mm3": vox, "voxel_size_mm": [round(float(v), 6) for v in voxel_sizes], "classes": per}


def stats_rows(stats: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """Table rows (``case``, ``class`` and :data:`STAT_KEYS`) of per-case statistics ``{case: label_statistics}``."""
    return [{"case": case, "class": name, **{k: entry.get(k) for k in STAT_KEYS}}
            for case, st in stats.items() for name, entry in st["classes"].items()]


def write_json(path: str | Path, obj: Any, overwrite: bool = False) -> Path:
    """Write ``obj`` as indented JSON atomically."""
    with atomic_output(path, overwrite) as tmp:
        tmp.write_text(json.dumps(obj, indent=2) + "\n")
    return Path(path)


def write_stats(path: str | Path, stats: dict[str, dict[str, Any]], *, single: bool, overwrite: bool = False) -> Path:
    """Write per-case statistics: JSON (one case's object when ``single``, else case -> object) or a CSV/TSV table
    (:func:`stats_rows`)."""
    from shared_backbones.report import write_report

    if Path(path).suffix.lower() == ".json":
        return write_json(path, next(iter(stats.values())) if single else stats, overwrite=overwrite)
    return write_report(path, stats_rows(stats), ["case", "class", *STAT_KEYS], overwrite=overwrite)


# ------------------------------------------------------------------------------------------- one file per class
_UNSAFE = re.compile(r"[^A-Za-z0-9._+-]+")


def class_file_name(name: str) -> str:
    """The file name of a class's mask: ``<name>.nii.gz`` with characters other than letters, digits and ``._+-``
    replaced by ``_`` (a dataset.json name such as ``a/b`` cannot leave the folder)."""
    safe = _UNSAFE.sub("_", str(name)).strip("._") or "class"
    return f"{safe}.nii.gz"


def split_folder(labels_path: str | Path) -> Path:
    """The folder of ``--split-classes`` masks of a label map: its name without ``.nii.gz``/``.nii``."""
    p = Path(labels_path)
    return p.with_name(re.sub(r"\.nii(\.gz)?$", "", p.name, flags=re.IGNORECASE))


def split_outputs(labels_path: str | Path, classes: Sequence[str], keep: Sequence[int] | None = None
                  ) -> dict[str, Path]:
    """``{"class:<name>": <folder>/<name>.nii.gz}`` for every foreground class (only ``keep`` when given), the
    roles :func:`medseg.batch.plan_predict` plans."""
    folder = split_folder(labels_path)
    wanted = [i for i in range(1, len(classes)) if keep is None or i in keep]
    return {f"class:{classes[i]}": folder / class_file_name(classes[i]) for i in wanted}


def write_class_masks(outputs: dict[str, Path], labels: np.ndarray, classes: Sequence[str], ref: Case,
                      overwrite: bool = False) -> list[Path]:
    """One binary uint8 NIfTI per planned ``class:<name>`` output, with ``ref``'s affine and header geometry."""
    written = []
    index = {name: i for i, name in enumerate(classes)}
    for role, path in outputs.items():
        if not role.startswith("class:"):
            continue
        i = index[role[len("class:"):]]
        written.append(write_like(path, (labels == i).astype(np.uint8), ref, overwrite,
                                  descrip=f"{OUTPUT_DESCRIP} mask {classes[i]}"))
    return written


# ---------------------------------------------------------------------------------------------------- preview
def legend_entries(labels: np.ndarray, classes: Sequence[str]) -> list[tuple[int, str, tuple[float, ...]]]:
    """The preview's legend: (label, class name, RGBA colour) of every class present in ``labels``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colours = plt.get_cmap("tab10", 10)
    present = sorted(int(v) for v in np.unique(labels) if 0 < v < len(classes))
    return [(i, str(classes[i]), tuple(float(c) for c in colours((i - 1) % 10))) for i in present]


def write_preview(path: str | Path, case: Case, labels: np.ndarray, classes: Sequence[str],
                  overwrite: bool = False) -> list[tuple[int, str, tuple[float, ...]]]:
    """PNG with axial, coronal and sagittal slices (RAS display frame) through the foreground's centre, labels
    overlaid in colour, and a legend row below (class names and colours of the classes present: up to 5 per row).
    Returns the legend entries (:func:`legend_entries`)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import ListedColormap
    from matplotlib.patches import Patch

    geom = Geometry.from_affine(case.affine, case.spatial_shape, "RAS")
    img = geom.forward(case.data[:1])[0]              # (z, y, x) canonical RAS
    lab = geom.forward(labels[None].astype(np.int32))[0]
    fg = np.argwhere(lab > 0)
    cz, cy, cx = (fg.mean(0).round().astype(int) if len(fg) else np.array(lab.shape) // 2)
    sz, sy, sx = geom.spacing
    lo, hi = np.percentile(img, [0.5, 99.5])
    entries = legend_entries(labels, classes)
    colours = plt.get_cmap("tab10", 10)
    cmap = ListedColormap([(0, 0, 0, 0)] + [colours(i % 10) for i in range(max(1, len(classes) - 1))])
    views = [("axial", img[cz], lab[cz], sy / sx), ("coronal", img[:, cy], lab[:, cy], sz / sx),
             ("sagittal", img[:, :, cx], lab[:, :, cx], sz / sy)]
    per_row = 5
    rows = -(-len(entries) // per_row)
    legend_h = 0.3 * rows + (0.15 if rows else 0)
    fig, axes = plt.subplots(1, 3, figsize=(12, 4.4 + legend_h))
    for ax, (title, im, lb, aspect) in zip(axes, views):
        ax.imshow(im, cmap="gray", vmin=lo, vmax=hi, origin="lower", aspect=aspect, interpolation="nearest")
        ax.imshow(np.ma.masked_equal(lb, 0), cmap=cmap, vmin=0, vmax=len(classes) - 1 if len(classes) > 1 else 1,
                  origin="lower", aspect=aspect, alpha=0.45, interpolation="nearest")
        ax.set_title(title)
        ax.axis("off")
    fig.suptitle(f"{case.name}: {len(entries)} class(es) present" if entries else f"{case.name}: no foreground",
                 fontsize=9)
    if entries:
        fig.legend(handles=[Patch(facecolor=c, edgecolor="black", label=f"{i} {name}") for i, name, c in entries],
                   loc="lower center", ncol=min(per_row, len(entries)), fontsize=9, frameon=False)
        fig.tight_layout(rect=(0, legend_h / (4.4 + legend_h), 1, 1))
    else:
        fig.tight_layout()
    with atomic_output(path, overwrite) as tmp:
        fig.savefig(tmp, dpi=90, format="png")
    plt.close(fig)
    return entries


def check_class_names(classes: Sequence[str], where: str | Path | None = None) -> None:
    """Refuse two classes whose ``--split-classes`` files would have one name (e.g. ``a/b`` and ``a_b``)."""
    seen: dict[str, str] = {}
    for name in classes[1:]:
        f = class_file_name(name).lower()
        if f in seen:
            raise InputError(f"--split-classes: classes {seen[f]!r} and {name!r} would both be written to {f}", where)
        seen[f] = name
