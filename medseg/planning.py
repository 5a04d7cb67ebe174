"""nnU-Net-style experiment planning at a small scale (Isensee et al. 2021, "nnU-Net: a self-configuring
method for deep learning-based biomedical image segmentation"): target spacing = median spacing of the training
cases, per-channel normalisation (CT: clip to the 0.5/99.5 percentiles of foreground intensities, then the dataset's
mean/std; otherwise per-image z-score), patch size from the median resampled shape, and downsampling strides that
skip the coarse axis of anisotropic data; plus the constructor arguments of each architecture for a plan.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from .dataset import DatasetInfo
from .io import model_array, read_case
from .preprocess import ct_statistics, target_shape


def plan_strides(patch: list[int], spacing: list[float], max_pools: int = 5, min_size: int = 4) -> list[list[int]]:
    """nnU-Net-like downsampling: halve an axis while it stays >= ``min_size`` voxels and its spacing is at most
    twice the finest current spacing (so thick-slice axes are pooled later)."""
    size, sp, strides = list(patch), list(spacing), []
    for _ in range(max_pools):
        finest = min(sp)
        s = [2 if size[a] / 2 >= min_size and sp[a] <= 2 * finest else 1 for a in range(3)]
        if s == [1, 1, 1]:
            break
        strides.append(s)
        size = [size[a] // s[a] for a in range(3)]
        sp = [sp[a] * s[a] for a in range(3)]
    return strides


def _round_up(v: int, m: int) -> int:
    return int(math.ceil(v / m) * m)


def plan_training(info: DatasetInfo, spacing: list[float] | None = None, patch_size: list[int] | None = None,
                  max_patch: int = 128, nonfinite: list[tuple[str, int]] | None = None) -> dict[str, Any]:
    """Target spacing, normalisation, patch size and strides from the training cases. Cases with NaN/Inf voxels
    (background: left out of the CT foreground statistics) are appended to ``nonfinite`` as (name, voxels)."""
    spacings, shapes, fg_values = [], [], []
    ct = [c.upper() == "CT" for c in info.channels]
    for name, files, label in info.cases:
        case = read_case(files)
        arr, geom = model_array(case)
        spacings.append(geom.spacing)
        shapes.append(arr.shape[1:])
        if case.nonfinite is not None and nonfinite is not None:
            nonfinite.append((name, case.nonfinite_count))
        if any(ct):
            lab = model_array(read_case(label))[0][0] > 0
            if case.nonfinite is not None:
                lab &= ~geom.forward(case.nonfinite[None])[0]
            fg_values.append(arr[:, lab][:, :: max(1, int(lab.sum()) // 10000)])
    target = [float(v) for v in (spacing or np.median(np.asarray(spacings), axis=0))]
    med_shape = np.median([target_shape(s, sp, target) for s, sp in zip(shapes, spacings)], axis=0)
    if patch_size:
        patch = [int(p) for p in patch_size]
    else:
        patch = [min(_round_up(int(m), 8), max_patch) for m in med_shape]
    strides = plan_strides(patch, target)
    total = [int(np.prod([s[a] for s in strides])) for a in range(3)]
    patch = [_round_up(p, t) for p, t in zip(patch, total)]
    norm = []
    for c, is_ct in enumerate(ct):
        norm.append(ct_statistics(np.concatenate([v[c] for v in fg_values])) if is_ct and fg_values
                    else {"scheme": "zscore"})
    return {"orientation": "RAS", "axis_order": "zyx", "spacing": target, "patch_size": patch,
            "normalization": norm, "in_channels": len(info.channels), "channel_names": list(info.channels),
            "strides": strides}


def arch_kwargs_for(arch: str, plan: dict[str, Any], num_classes: int, extra: dict[str, Any] | None = None) -> dict:
    """Constructor arguments of ``arch`` for the planned strides; ``extra`` overrides (``base_channels`` sets the
    first stage's width of ``unet3d`` and ``revunet3d``)."""
    extra = dict(extra or {})
    strides = plan["strides"]
    kw: dict[str, Any] = {"in_channels": plan["in_channels"], "num_classes": num_classes}
    if arch == "unet3d":
        kw["strides"] = strides
    elif arch.startswith("stunet"):
        extra.pop("base_channels", None)
        kw["pool_op_kernel_sizes"] = (strides + [[1, 1, 1]] * 5)[:5]
    elif arch.startswith("revunet3d"):
        base = int(extra.pop("base_channels", 16))
        kw["strides"] = strides
        kw["channels"] = [min(base * 2 ** i, 256) for i in range(len(strides) + 1)]
    kw.update(extra)
    return kw
