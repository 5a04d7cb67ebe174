"""Intensity normalisation and resampling in the model's (z, y, x) frame.

Normalisation schemes (one dict per channel, stored in the model file's ``preprocessing["normalization"]``):
``{"scheme": "zscore"}`` (per image: subtract mean, divide by std) or ``{"scheme": "ct", "lower": p0.5,
"upper": p99.5, "mean": m, "std": s}`` (nnU-Net's CT normalisation: clip to dataset percentiles of foreground
intensities, then subtract the dataset's foreground mean and divide by its std), or ``{"scheme": "none"}``.

Resampling interpolates images and class scores (probabilities or logits) linearly; labels are never interpolated.
The way back to the file's grid runs slab by slab along z and argmaxes each slab, so the full-resolution
per-class volume never exists in memory at once (the RAM blow-up users meet in other tools).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from shared_backbones.errors import InputError

Shape3 = tuple[int, int, int]


def normalise(image: torch.Tensor, schemes: Sequence[dict[str, Any]], exclude: torch.Tensor | None = None
              ) -> torch.Tensor:
    """Normalise ``[C, z, y, x]`` channel by channel (new tensor, float32). ``exclude`` (bool ``[z, y, x]``) marks
    voxels left out of per-image statistics (e.g. voxels that were NaN in the file)."""
    if len(schemes) == 1 and image.shape[0] > 1:
        schemes = list(schemes) * image.shape[0]
    if len(schemes) != image.shape[0]:
        raise InputError(f"model defines normalisation for {len(schemes)} channel(s), image has {image.shape[0]}")
    out = torch.empty_like(image, dtype=torch.float32)
    for c, sch in enumerate(schemes):
        x = image[c].float()
        kind = sch.get("scheme", "zscore")
        if kind == "zscore":
            v = x if exclude is None else x[~exclude]
            mean, std = v.mean(), v.std(unbiased=False)
            out[c] = (x - mean) / (std + 1e-8)
        elif kind == "ct":
            out[c] = (x.clamp(float(sch["lower"]), float(sch["upper"])) - float(sch["mean"])) / max(
                float(sch["std"]), 1e-8
            )
        elif kind == "none":
            out[c] = x
        else:
            raise InputError(f"unknown normalisation scheme {kind!r} in the model file")
    return out


def ct_statistics(foreground_values: np.ndarray) -> dict[str, float]:
    """nnU-Net's CT normalisation parameters from foreground intensities pooled over the training set."""
    v = np.asarray(foreground_values, dtype=np.float64)
    lo, hi = np.percentile(v, [0.5, 99.5])
    clipped = np.clip(v, lo, hi)
    return {
        "scheme": "ct",
        "lower": float(lo),
        "upper": float(hi),
        "mean": float(clipped.mean()),
        "std": float(clipped.std()),
    }


def target_shape(shape: Sequence[int], spacing: Sequence[float], new_spacing: Sequence[float] | None) -> Shape3:
    """Shape after resampling from ``spacing`` to ``new_spacing`` (same extent in mm, at least 1 voxel)."""
    if new_spacing is None:
        return tuple(int(s) for s in shape)  # type: ignore[return-value]
    return tuple(max(1, int(round(n * s / t))) for n, s, t in zip(shape, spacing, new_spacing))  # type: ignore[return-value]


def resample(volume: torch.Tensor, shape: Sequence[int]) -> torch.Tensor:
    """Trilinear resampling of ``[C, z, y, x]`` to ``shape`` (identity when the shape already matches)."""
    if tuple(volume.shape[1:]) == tuple(shape):
        return volume
    return F.interpolate(
        volume[None].float(), size=tuple(int(s) for s in shape), mode="trilinear", align_corners=False
    )[0]


def _linear_source(n_out: int, n_in: int, start: int, stop: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Indices and weights of PyTorch's linear interpolation (align_corners=False) for outputs ``start:stop``."""
    scale = n_in / n_out
    src = ((torch.arange(start, stop, dtype=torch.float64) + 0.5) * scale - 0.5).clamp(min=0)
    i0 = src.floor().long().clamp(max=n_in - 1)
    i1 = (i0 + 1).clamp(max=n_in - 1)
    return i0, i1, (src - i0).float()


def resample_slabs(
    scores: torch.Tensor, shape: Sequence[int], reduce: Callable[[torch.Tensor], torch.Tensor], slab: int = 16
) -> list[torch.Tensor]:
    """Resample ``[K, z, y, x]`` to ``shape`` trilinearly, ``slab`` output z-slices at a time, and apply ``reduce``
    (e.g. argmax over classes) to each slab. Equals ``reduce(F.interpolate(..., mode="trilinear"))`` exactly up
    to float rounding: linear interpolation along z, then bilinear in-plane, is the same separable operator."""
    nz = int(shape[0])
    same_plane = tuple(scores.shape[2:]) == tuple(shape[1:])
    out = []
    for a in range(0, nz, slab):
        b = min(nz, a + slab)
        if scores.shape[1] == nz:
            part = scores[:, a:b].float()
        else:
            i0, i1, w = _linear_source(nz, scores.shape[1], a, b)
            lo, hi = scores[:, i0].float(), scores[:, i1].float()
            part = torch.lerp(lo, hi, w.view(1, -1, 1, 1).to(lo.dtype))
        if not same_plane:
            part = F.interpolate(
                part.permute(1, 0, 2, 3), size=tuple(int(s) for s in shape[1:]), mode="bilinear", align_corners=False
            ).permute(1, 0, 2, 3)
        out.append(reduce(part))
    return out


def class_labels(scores: torch.Tensor, dtype: torch.dtype = torch.int32) -> torch.Tensor:
    """Argmax over the class axis (dim 0) of ``[K, ...]``, first maximum on ties like ``argmax``. ``max(0)`` is used
    because it is about 10x faster than ``argmax(0)`` over the leading axis on CPU (PyTorch 2.x)."""
    return scores.max(0).indices.to(dtype)
