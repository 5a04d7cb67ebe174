"""nnU-Net v2's preprocessing, steps 2-4 of :mod:`medseg.nnunet`: crop to the non-zero box, per-channel
normalisation, resampling to the plans' spacing (and the index arithmetic the way back shares)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

ANISO_THRESHOLD = 3.0


def crop_to_nonzero(data: np.ndarray) -> tuple[np.ndarray, tuple[slice, ...], np.ndarray]:
    """Crop ``[C, *S]`` to the bounding box of voxels non-zero in any channel; returns the crop, the box and the
    cropped non-zero mask (not yet hole-filled)."""
    mask = data[0] != 0
    for c in range(1, data.shape[0]):
        mask |= data[c] != 0
    if not mask.any():
        box = tuple(slice(0, s) for s in mask.shape)
    else:
        box = []
        for ax in range(mask.ndim):
            other = tuple(a for a in range(mask.ndim) if a != ax)
            idx = np.flatnonzero(mask.any(axis=other))
            box.append(slice(int(idx[0]), int(idx[-1]) + 1))
        box = tuple(box)
    return data[(slice(None), *box)], box, mask[box]


def normalise_channel(x: np.ndarray, entry: dict[str, Any], mask: np.ndarray | None) -> np.ndarray:
    """One channel normalised in place (float32) as nnU-Net's scheme named in ``entry``."""
    scheme = entry["scheme"]
    if scheme == "CTNormalization":
        np.clip(x, entry["lower"], entry["upper"], out=x)
        x -= entry["mean"]
        x /= max(entry["std"], 1e-8)
    elif scheme == "ZScoreNormalization":
        if entry.get("use_mask") and mask is not None:
            vals = x[mask]
            mean, std = vals.mean(), vals.std()
            x[mask] = (vals - mean) / max(std, 1e-8)
        else:
            mean, std = x.mean(), x.std()
            x -= mean
            x /= max(std, 1e-8)
    elif scheme == "RescaleTo01Normalization":
        x -= x.min()
        x /= max(float(x.max()), 1e-8)
    elif scheme == "RGBTo01Normalization":
        x /= 255.0
    return x


def new_shape(shape: Sequence[int], spacing: Sequence[float], target: Sequence[float]) -> tuple[int, ...]:
    """nnU-Net's shape after resampling: ``round(old_spacing / new_spacing * size)`` per axis."""
    return tuple(int(round(s / t * n)) for s, t, n in zip(spacing, target, shape))


def separate_z(current: Sequence[float], new: Sequence[float], force: bool | None) -> int | None:
    """The axis resampled separately (nearest/``order_z``) for anisotropic data, or None (nnU-Net's rule)."""
    def lowres(sp: Sequence[float]) -> list[int]:
        sp = np.asarray(sp, dtype=float)
        return list(np.where(max(sp) / sp == 1)[0])

    def aniso(sp: Sequence[float]) -> bool:
        return max(sp) / min(sp) > ANISO_THRESHOLD

    if force is not None:
        axes = lowres(current) if force else None
    elif aniso(current):
        axes = lowres(current)
    elif aniso(new):
        axes = lowres(new)
    else:
        axes = None
    return int(axes[0]) if axes is not None and len(axes) == 1 else None


def _axis_indices(n_out: int, n_in: int, order: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Source indices (i0, i1) and weights along one axis for ``order`` 0 (nearest) or 1 (linear), edges clamped."""
    c = (float(n_in) / n_out) * (np.arange(n_out) + 0.5) - 0.5
    if order == 0:
        i0 = np.clip(np.floor(c + 0.5).astype(np.int64), 0, n_in - 1)
        return i0, i0, np.zeros(n_out, dtype=np.float32)
    c = np.clip(c, 0, n_in - 1)
    i0 = np.floor(c).astype(np.int64)
    i1 = np.minimum(i0 + 1, n_in - 1)
    return i0, i1, (c - i0).astype(np.float32)


#: above this many bytes of float64 spline coefficients (what ``scipy.ndimage.zoom`` makes of the whole volume for
#: order > 1: 1.7 GB for a 512 x 512 x 800 CT), a 3-D zoom runs as 2-D zooms plane by plane (:func:`_zoom_planes`)
ZOOM_PLANES_BYTES = 256 << 20


def _zoom_planes(img: np.ndarray, shape: Sequence[int], order: int) -> np.ndarray:
    """The 3-D spline zoom of :func:`_zoom` in two passes of 2-D zooms: axes 1-2 plane by plane along axis 0, then
    axis 0 plane by plane along axis 2 (axis 1 kept: a spline evaluated on its own nodes returns the values). The
    tensor-product spline, its prefilter and the edge padding are all separable, so this is the same operator
    (equal within float rounding) with memory of one plane's coefficients instead of the volume's."""
    from scipy import ndimage

    kw = {"order": order, "mode": "nearest", "grid_mode": True, "output": np.float32}
    mid = np.empty((img.shape[0], int(shape[1]), int(shape[2])), np.float32)
    for i in range(img.shape[0]):
        mid[i] = ndimage.zoom(img[i], [shape[1] / img.shape[1], shape[2] / img.shape[2]], **kw)
    out = np.empty(tuple(int(s) for s in shape), np.float32)
    for k in range(out.shape[2]):
        out[:, :, k] = ndimage.zoom(np.ascontiguousarray(mid[:, :, k]), [shape[0] / img.shape[0], 1.0], **kw)
    return out


def _zoom(img: np.ndarray, shape: Sequence[int], order: int) -> np.ndarray:
    """skimage ``resize(mode="edge", anti_aliasing=False)`` as nnU-Net calls it: spline of ``order`` on the grid
    centres, edges repeated, output clipped to the input's range."""
    from scipy import ndimage

    if tuple(img.shape) == tuple(shape):
        return img.astype(np.float32, copy=True)
    if order > 1 and img.ndim == 3 and img.size * 8 > ZOOM_PLANES_BYTES:
        out = _zoom_planes(img, shape, order)
    else:
        out = ndimage.zoom(img, [o / i for o, i in zip(shape, img.shape)], order=order, mode="nearest",
                           grid_mode=True, output=np.float32)
    if order > 0:
        np.clip(out, img.min(), img.max(), out=out)
    return out


def resample_image(data: np.ndarray, shape: Sequence[int], current: Sequence[float], new: Sequence[float],
                   kw: dict[str, Any]) -> np.ndarray:
    """Resample ``[C, *S]`` to ``shape`` as nnU-Net's ``resample_data_or_seg`` (float32 out)."""
    shape = tuple(int(s) for s in shape)
    if tuple(data.shape[1:]) == shape:
        return data
    axis = separate_z(current, new, kw.get("force_separate_z"))
    order, order_z = int(kw.get("order", 3)), int(kw.get("order_z", 0))
    out = np.empty((data.shape[0], *shape), dtype=np.float32)
    for c in range(data.shape[0]):
        if axis is None:
            out[c] = _zoom(data[c], shape, order)
            continue
        x = np.moveaxis(data[c], axis, 0)
        target = [s for a, s in enumerate(shape) if a != axis]
        planes = np.stack([_zoom(x[i], target, order) for i in range(x.shape[0])])
        if planes.shape[0] != shape[axis]:
            i0, i1, w = _axis_indices(shape[axis], planes.shape[0], min(order_z, 1))
            lo = planes[i0]
            planes = lo if order_z == 0 else lo + (planes[i1] - lo) * w[:, None, None]
        out[c] = np.moveaxis(planes, 0, axis)
    return out
