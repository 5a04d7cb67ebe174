"""nnU-Net v2 model folders: reading them safely and running their preprocessing and export exactly.

A trained nnU-Net v2 model is a folder ``<results>/DatasetXXX_Name/<Trainer>__<Plans>__<configuration>/`` holding
``dataset.json``, ``plans.json`` and ``fold_<k>/checkpoint_final.pth`` (TotalSegmentator and most published nnU-Net
models ship in this form). :func:`read_model_folder` turns it into the suite's :class:`ModelFile` (architecture
``nnunetv2``, see :mod:`medseg.nnunet_arch`; folds ensembled) without importing nnU-Net and without executing pickled
code (checkpoints are read with ``torch.load(weights_only=True)``; the numpy scalars their training logs hold are
the only extra types allowed). :func:`predict_nnunet` runs the pipeline the plans describe (nnunetv2's
``DefaultPreprocessor``, ``nnUNetPredictor`` and ``export_prediction``):

1. read the image as nnU-Net's reader does (SimpleITK/nibabel: voxel order, no reorientation; ``NibabelIOWithReorient``:
   RAS first), axes (z, y, x); ``transpose_forward``;
2. crop to the bounding box of the non-zero voxels of all channels (holes filled for the normalisation mask);
3. normalise per channel: ``CTNormalization`` (clip to the stored foreground 0.5/99.5 percentiles, subtract the
   foreground mean, divide by its std), ``ZScoreNormalization`` (per image, inside the non-zero mask when
   ``use_mask_for_norm``), ``NoNormalization``, ``RescaleTo01Normalization``, ``RGBTo01Normalization``;
4. resample to the configuration's spacing: third-order spline (``resampling_fn_data_kwargs``), in-plane only plus
   nearest neighbour across slices when the spacing is anisotropic (max/min > 3);
5. Gaussian sliding window with nnU-Net's tile positions (step 0.5 of the patch), Gaussian (sigma 1/8 of the patch),
   mirroring over the trainer's ``inference_allowed_mirroring_axes``, folds' logits averaged;
6. logits resampled back to the cropped shape (``resampling_fn_probabilities_kwargs``: linear, separate z),
   softmax (sigmoid for region-based models), argmax (regions painted in ``regions_class_order``), pasted into the
   uncropped volume, ``transpose_backward``, written on the input's grid.

Lighter than nnU-Net: steps 5-6 stream (:mod:`medseg.engine`): windows run in order along the axis the way back
resamples, and each slab of logits is resampled, turned into probabilities and labels as soon as no later window
touches it, so memory is bounded by one window's extent of class scores, not by classes x voxels; the working set
is estimated before the first window (float16 accumulators when float32 would not fit, else a one-line refusal).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from shared_backbones.checkpoint import ModelFile, read_torch_file, save_model_file
from shared_backbones.cliutil import StageTimer, check_output
from shared_backbones.errors import ModelFileError

from .engine import Windows
from .nnunet_arch import TASK

ANISO_THRESHOLD = 3.0
NORMALIZATIONS = ("CTNormalization", "ZScoreNormalization", "NoNormalization", "RescaleTo01Normalization",
                  "RGBTo01Normalization")
PIPELINE = "nnunetv2"


# ------------------------------------------------------------------------------------------------ reading
def is_model_folder(path: str | Path) -> bool:
    """True for a folder holding ``plans.json`` (an nnU-Net v2 trained-model folder)."""
    p = Path(path)
    return p.is_dir() and (p / "plans.json").is_file()


def _read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise ModelFileError(f"not an nnU-Net model folder: {path.name} is missing", path.parent)
    try:
        obj = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ModelFileError(f"not valid JSON ({exc.__class__.__name__})", path) from None
    if not isinstance(obj, dict):
        raise ModelFileError("expected a JSON object", path)
    return obj


def available_folds(folder: str | Path, checkpoint: str = "checkpoint_final.pth") -> list[int | str]:
    """Folds whose ``fold_<k>/<checkpoint>`` exists, numbered ones first (``all`` only when no numbered fold)."""
    folder = Path(folder)
    numbered = sorted(int(m.group(1)) for p in folder.glob("fold_*")
                      if (m := re.fullmatch(r"fold_(\d+)", p.name)) and (p / checkpoint).is_file())
    if numbered:
        return list(numbered)
    return ["all"] if (folder / "fold_all" / checkpoint).is_file() else []


def _np_safe_globals() -> list[Any]:
    core = np._core.multiarray  # numpy >= 2
    out: list[Any] = [core.scalar, core._reconstruct, np.ndarray, np.dtype,
                      (core.scalar, "numpy.core.multiarray.scalar"),
                      (core._reconstruct, "numpy.core.multiarray._reconstruct")]
    return out + [getattr(np.dtypes, n) for n in dir(np.dtypes) if n.endswith("DType")]


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """An nnU-Net v2 ``checkpoint_*.pth`` read weights-only (plain data and numpy scalars; nothing executed)."""
    path = Path(path)
    ckpt = read_torch_file(path, _np_safe_globals(), what="checkpoint")
    if not isinstance(ckpt, dict) or not isinstance(ckpt.get("network_weights"), dict):
        raise ModelFileError("not an nnU-Net v2 checkpoint (no network_weights)", path)
    if not all(isinstance(v, torch.Tensor) for v in ckpt["network_weights"].values()):
        raise ModelFileError("network_weights is not a dict of tensors", path)
    return ckpt


def configuration(plans: dict[str, Any], name: str, path: Path | None = None) -> dict[str, Any]:
    """A configuration of plans.json with ``inherits_from`` resolved and old-format architecture entries converted."""
    confs = plans.get("configurations") or {}
    if name not in confs:
        raise ModelFileError(f"configuration {name!r} not in plans.json (has: {', '.join(confs)})", path)
    chain, conf = [name], dict(confs[name])
    while "inherits_from" in conf:
        parent = conf.pop("inherits_from")
        if parent in chain or parent not in confs:
            raise ModelFileError(f"configuration {name!r} inherits from unknown or circular {parent!r}", path)
        chain.append(parent)
        conf = {**confs[parent], **conf}
    if "architecture" not in conf:  # nnU-Net <= 2.2 plans (e.g. TotalSegmentator v2)
        try:
            cls = conf["UNet_class_name"]
            n = len(conf["n_conv_per_stage_encoder"])
            dim = len(conf["patch_size"])
            conf["architecture"] = {
                "network_class_name": cls,
                "arch_kwargs": {
                    "n_stages": n,
                    "features_per_stage": [min(conf["UNet_base_num_features"] * 2 ** i, conf["unet_max_num_features"])
                                           for i in range(n)],
                    "conv_op": f"torch.nn.modules.conv.Conv{dim}d",
                    "kernel_sizes": conf["conv_kernel_sizes"],
                    "strides": conf["pool_op_kernel_sizes"],
                    ("n_conv_per_stage" if cls == "PlainConvUNet" else "n_blocks_per_stage"):
                        conf["n_conv_per_stage_encoder"],
                    "n_conv_per_stage_decoder": conf["n_conv_per_stage_decoder"],
                    "conv_bias": True,
                    "norm_op": f"torch.nn.modules.instancenorm.InstanceNorm{dim}d",
                    "norm_op_kwargs": {"eps": 1e-05, "affine": True},
                    "dropout_op": None, "dropout_op_kwargs": None,
                    "nonlin": "torch.nn.LeakyReLU", "nonlin_kwargs": {"inplace": True},
                },
            }
        except KeyError as exc:
            raise ModelFileError(f"configuration {name!r} has no architecture entry (missing {exc})", path) from None
    return conf


def label_info(dataset: dict[str, Any], path: Path | None = None) -> dict[str, Any]:
    """Class names, number of network outputs and the region definition from dataset.json's ``labels``.

    Region-based models (a label whose value is a list) get a sigmoid per region; the label map is painted region by
    region in ``regions_class_order`` (nnU-Net's convention) and label value ``c`` is named after the region that
    paints it.
    """
    labels = dataset.get("labels")
    if not isinstance(labels, dict) or not labels:
        raise ModelFileError("dataset.json has no 'labels' mapping", path)
    items = [(k, v) for k, v in labels.items() if k != "ignore"]
    regions = any(isinstance(v, (list, tuple)) and len(v) > 1 for _, v in items)
    if not regions:
        by_value = {}
        for k, v in items:
            val = int(v[0] if isinstance(v, (list, tuple)) else v)
            by_value[val] = k
        n = max(by_value) + 1
        if sorted(by_value) != list(range(n)):
            raise ModelFileError("dataset.json labels must be consecutive integers 0..n-1", path)
        return {"classes": [by_value[i] for i in range(n)], "num_outputs": n, "regions": None,
                "regions_class_order": None}
    fg = [(k, [int(x) for x in (v if isinstance(v, (list, tuple)) else [v])]) for k, v in items
          if k != "background"]
    order = dataset.get("regions_class_order")
    if not isinstance(order, list) or len(order) != len(fg):
        raise ModelFileError("region-based dataset.json needs regions_class_order with one entry per region", path)
    order = [int(c) for c in order]
    classes = ["background"] + [f"label_{i}" for i in range(1, max(order) + 1)]
    for (name, _), c in zip(fg, order):
        classes[c] = name
    return {"classes": classes, "num_outputs": len(fg), "regions": [r for _, r in fg], "regions_class_order": order}


def _normalization(conf: dict[str, Any], plans: dict[str, Any], channels: int, path: Path) -> list[dict[str, Any]]:
    schemes = conf.get("normalization_schemes") or []
    masks = conf.get("use_mask_for_norm") or [False] * len(schemes)
    props = plans.get("foreground_intensity_properties_per_channel") \
        or plans.get("foreground_intensity_properties_by_modality") or {}
    if len(schemes) != channels:
        raise ModelFileError(f"plans.json has {len(schemes)} normalization scheme(s) for {channels} channel(s)", path)
    out = []
    for c, (scheme, mask) in enumerate(zip(schemes, masks)):
        if scheme not in NORMALIZATIONS:
            raise ModelFileError(f"unsupported normalization scheme {scheme!r} (supported: "
                                 f"{', '.join(NORMALIZATIONS)})", path)
        entry: dict[str, Any] = {"scheme": scheme, "use_mask": bool(mask)}
        if scheme == "CTNormalization":
            p = props.get(str(c), props.get(c))
            if not p:
                raise ModelFileError(f"CTNormalization of channel {c} needs foreground intensity properties", path)
            entry.update(mean=float(p["mean"]), std=float(p["std"]), lower=float(p["percentile_00_5"]),
                         upper=float(p["percentile_99_5"]))
        out.append(entry)
    return out


def _resampling(conf: dict[str, Any], key: str, default_order: int) -> dict[str, Any]:
    kw = dict(conf.get(f"{key}_kwargs") or {})
    fn = str(conf.get(key, "resample_data_or_seg_to_shape"))
    if fn not in ("resample_data_or_seg_to_shape", "resample_data_or_seg_to_spacing"):
        raise ModelFileError(f"unsupported resampling function {fn!r} in plans.json")
    return {"order": int(kw.get("order", default_order)), "order_z": int(kw.get("order_z", 0)),
            "force_separate_z": kw.get("force_separate_z")}


def read_model_folder(folder: str | Path, folds: Sequence[int | str] | None = None,
                      checkpoint: str = "checkpoint_final.pth") -> ModelFile:
    """An nnU-Net v2 trained-model folder as a suite :class:`ModelFile` (architecture ``nnunetv2``).

    Args:
        folder: ``<Trainer>__<Plans>__<configuration>`` folder with ``dataset.json``, ``plans.json``, ``fold_<k>/``.
        folds: fold numbers (or ``["all"]`` for ``fold_all``); ``None`` = every fold present, as nnU-Net does.
        checkpoint: ``checkpoint_final.pth`` (default) or ``checkpoint_best.pth`` ...
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise ModelFileError("model folder not found", folder)
    dataset = _read_json(folder / "dataset.json")
    plans = _read_json(folder / "plans.json")
    if folds is None or list(folds) == ["all"] and not (folder / "fold_all" / checkpoint).is_file():
        found = available_folds(folder, checkpoint)
        if not found:
            raise ModelFileError(f"no fold_<k>/{checkpoint} in the model folder", folder)
        folds = found if folds is None else folds
    folds = [f if f == "all" else int(f) for f in folds]
    ckpts = []
    for f in folds:
        p = folder / f"fold_{f}" / checkpoint
        if not p.is_file():
            have = available_folds(folder, checkpoint)
            raise ModelFileError(f"fold {f} has no {checkpoint} (folds with it: "
                                 f"{', '.join(map(str, have)) or 'none'})", folder)
        ckpts.append((p, read_checkpoint(p)))
    first_path, first = ckpts[0]
    conf_name = str((first.get("init_args") or {}).get("configuration") or _conf_from_name(folder))
    for p, ck in ckpts[1:]:
        other = (ck.get("init_args") or {}).get("configuration")
        if other and other != conf_name:
            raise ModelFileError(f"checkpoint is for configuration {other!r}, fold {folds[0]}'s for {conf_name!r}", p)
    conf = configuration(plans, conf_name, folder / "plans.json")
    if conf.get("previous_stage"):
        raise ModelFileError(f"configuration {conf_name!r} is a cascade stage (needs the segmentation of "
                             f"{conf['previous_stage']!r} as input); run the 3d_lowres or 3d_fullres model instead",
                             folder)
    channels = dataset.get("channel_names") or dataset.get("modality") or {}
    in_ch = len(channels) or 1
    labels = label_info(dataset, folder / "dataset.json")
    arch = conf["architecture"]
    kwargs = {"network_class_name": str(arch["network_class_name"]), "arch_kwargs": dict(arch["arch_kwargs"]),
              "in_channels": in_ch, "num_classes": labels["num_outputs"], "n_folds": len(ckpts)}
    if len(ckpts) == 1:
        sd = dict(first["network_weights"])
    else:
        sd = {f"folds.{i}.{k}": v for i, (_, ck) in enumerate(ckpts) for k, v in ck["network_weights"].items()}
    mirror = first.get("inference_allowed_mirroring_axes")
    dims = len(conf["patch_size"])
    pre = {
        "pipeline": PIPELINE,
        "configuration": conf_name,
        "in_channels": in_ch,
        "channel_names": [str(v) for _, v in sorted(channels.items(), key=lambda kv: int(kv[0]))],
        "patch_size": [int(v) for v in conf["patch_size"]],
        "spacing": [float(v) for v in conf["spacing"]],
        "transpose_forward": [int(v) for v in plans.get("transpose_forward", [0, 1, 2])],
        "transpose_backward": [int(v) for v in plans.get("transpose_backward", [0, 1, 2])],
        "normalization": _normalization(conf, plans, in_ch, folder / "plans.json"),
        "resampling_data": _resampling(conf, "resampling_fn_data", 3),
        "resampling_probabilities": _resampling(conf, "resampling_fn_probabilities", 1),
        "mirror_axes": None if mirror is None else [int(a) for a in mirror if int(a) < dims],
        "reader": str(plans.get("image_reader_writer", "SimpleITKIO")),
        "regions": labels["regions"],
        "regions_class_order": labels["regions_class_order"],
        "file_ending": str(dataset.get("file_ending", ".nii.gz")),
    }
    extra = {"source": "nnU-Net v2 model folder", "folder": str(folder), "folds": [str(f) for f in folds],
             "checkpoint": checkpoint, "trainer": str(first.get("trainer_name", "")),
             "plans_name": str(plans.get("plans_name", "")), "dataset_name": str(plans.get("dataset_name", ""))}
    mf = ModelFile(task=TASK, arch="nnunetv2", arch_kwargs=kwargs, state_dict=sd, classes=labels["classes"],
                   preprocessing=pre, extra=extra)
    _check_fits(mf, first_path)
    return mf


def _conf_from_name(folder: Path) -> str:
    parts = folder.name.split("__")
    if len(parts) == 3:
        return parts[2]
    raise ModelFileError("checkpoint does not name its configuration and the folder name is not "
                         "<Trainer>__<Plans>__<configuration>", folder)


def _check_fits(mf: ModelFile, path: Path) -> None:
    """Weights must fit the network the plans describe (checked on the meta device: nothing allocated)."""
    from shared_backbones.registry import create_model

    with torch.device("meta"):
        expected = {k: tuple(v.shape) for k, v in create_model(mf.arch, **mf.arch_kwargs).state_dict().items()}
    got = {k: tuple(v.shape) for k, v in mf.state_dict.items()}
    missing, unexpected = sorted(set(expected) - set(got)), sorted(set(got) - set(expected))
    if missing or unexpected:
        raise ModelFileError(f"weights do not fit the plans' network: missing {missing[:2]}, unexpected "
                             f"{unexpected[:2]}", path)
    bad = next((k for k in expected if expected[k] != got[k]), None)
    if bad:
        raise ModelFileError(f"weights do not fit the plans' network: {bad} has shape {got[bad]}, plans give "
                             f"{expected[bad]}", path)


def import_nnunet(folder: str | Path, out_path: str | Path | None = None, *, folds: Sequence[int | str] | None = None,
                  checkpoint: str = "checkpoint_final.pth", overwrite: bool = False) -> ModelFile:
    """Convert an nnU-Net v2 model folder (its folds ensembled) to one suite model file."""
    if out_path is not None:
        check_output(out_path, overwrite)
    mf = read_model_folder(folder, folds, checkpoint)
    if out_path is not None:
        save_model_file(out_path, mf, overwrite=overwrite)
    return mf


# ------------------------------------------------------------------------------------------- preprocessing
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


def _zoom(img: np.ndarray, shape: Sequence[int], order: int) -> np.ndarray:
    """skimage ``resize(mode="edge", anti_aliasing=False)`` as nnU-Net calls it: spline of ``order`` on the grid
    centres, edges repeated, output clipped to the input's range."""
    from scipy import ndimage

    if tuple(img.shape) == tuple(shape):
        return img.astype(np.float32, copy=True)
    out = ndimage.zoom(img, [o / i for o, i in zip(shape, img.shape)], order=order, mode="nearest", grid_mode=True,
                       output=np.float32)
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


# -------------------------------------------------------------------------------------------- prediction
def gaussian_importance(patch: Sequence[int], sigma_scale: float = 1.0 / 8) -> torch.Tensor:
    """nnU-Net's importance map: a unit impulse at ``size // 2`` blurred by a Gaussian of sigma ``size * sigma_scale``
    (truncated at 4 sigma), scaled to a peak of 10 and stored in float16; zeros replaced by the smallest value."""
    from scipy.ndimage import gaussian_filter

    tmp = np.zeros(tuple(patch))
    tmp[tuple(p // 2 for p in patch)] = 1
    g = gaussian_filter(tmp, [p * sigma_scale for p in patch], 0, mode="constant", cval=0)
    g = torch.from_numpy(g / (g.max() / 10)).to(torch.float16)
    g[g == 0] = g[g != 0].min()
    return g.float()


def nnunet_steps(size: int, tile: int, step: float) -> list[int]:
    """nnU-Net's tile starts along one axis: ``ceil((size - tile) / (tile * step)) + 1`` tiles, evenly spread."""
    n = int(np.ceil((size - tile) / (tile * step))) + 1
    if n <= 1:
        return [0]
    actual = (size - tile) / (n - 1)
    return [int(np.round(actual * i)) for i in range(n)]


def count_windows(shape: Sequence[int], patch: Sequence[int], step: float) -> int:
    """Network evaluations (without mirroring) for a preprocessed image of ``shape`` (spatial)."""
    shape = [max(s, p) for s, p in zip(shape[-len(patch):], patch)] if len(patch) == len(shape) else \
        [shape[0]] + [max(s, p) for s, p in zip(shape[1:], patch)]
    n = 1
    if len(patch) < len(shape):
        n, shape = shape[0], shape[1:]
    for s, p in zip(shape, patch):
        n *= len(nnunet_steps(s, p, step))
    return n


def _mirror_flips(axes: Sequence[int] | None, dims: int) -> list[tuple[int, ...]]:
    """nnU-Net's passes: the identity, then every non-empty subset of the allowed axes (tensor dims)."""
    import itertools

    if not axes:
        return [()]
    tdims = [int(a) + 2 for a in axes if int(a) < dims]
    return [()] + [c for r in range(1, len(tdims) + 1) for c in itertools.combinations(tdims, r)]


def _nonlin_and_labels(logits: torch.Tensor, regions: bool, order: Sequence[int] | None,
                       label_dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """Probabilities (softmax, or sigmoid per region) and the label map of one slab of logits ``[K, ...]``."""
    if regions:
        probs = torch.sigmoid(logits)
        labels = torch.zeros(logits.shape[1:], dtype=label_dtype)
        for i, c in enumerate(order or []):
            labels[probs[i] > 0.5] = int(c)
        return probs, labels
    probs = torch.softmax(logits, 0)
    return probs, probs.max(0).indices.to(label_dtype)


def winning_probability(probs: torch.Tensor, regions: bool, order: Sequence[int] | None) -> torch.Tensor:
    """The probability of the class each voxel is labelled with (:func:`_nonlin_and_labels`' labels): the softmax
    maximum; for region-based models the sigmoid of the region that painted the voxel last (0 where none did). What
    a multi-folder task (:mod:`medseg.tasks`) keeps of a folder instead of all its class probabilities."""
    if not regions:
        return probs.max(0).values
    win = torch.zeros(probs.shape[1:], dtype=torch.float32)
    for i, _ in enumerate(order or []):
        painted = probs[i] > 0.5
        win[painted] = probs[i][painted].float()
    return win


def case_windows(case: Any, pre: dict[str, Any], step: float) -> int:
    """Network evaluations :func:`predict_nnunet` will run on ``case`` (crop and resampled shape from the header
    and one pass over the voxels): the total of a progress bar."""
    from .io import Geometry

    geom = Geometry.from_affine(case.affine, case.spatial_shape, reader_orientation(pre, case.affine))
    nonzero = (case.data != 0).any(0)[None]
    box = crop_to_nonzero(geom.forward(nonzero).transpose([0, *[i + 1 for i in pre["transpose_forward"]]]))[1]
    shape = [b.stop - b.start for b in box]
    spacing = [geom.spacing[i] for i in pre["transpose_forward"]]
    target = list(pre["spacing"])
    if len(target) < len(shape):
        target = [spacing[0]] + target
    return count_windows(new_shape(shape, spacing, target), pre["patch_size"], step)


def reader_orientation(pre: dict[str, Any], affine: np.ndarray) -> str:
    """The orientation nnU-Net's image reader leaves the array in: RAS for ``NibabelIOWithReorient``, otherwise
    the file's own voxel order (SimpleITK and plain nibabel do not reorient)."""
    import nibabel as nib

    if "Reorient" in str(pre.get("reader", "")):
        return "RAS"
    return "".join(nib.aff2axcodes(affine))


def nnunet_windows(shape: Sequence[int], patch: Sequence[int], step: float,
                   mirror_axes: Sequence[int] | None) -> Windows:
    """nnU-Net's windows over a (padded) image of spatial ``shape``: tile starts (:func:`nnunet_steps`), its
    importance map and mirror passes. A 2-D ``patch`` on a 3-D image becomes ``(1, *patch)``: slice by slice."""
    patch = tuple(int(p) for p in patch)
    flips = _mirror_flips(mirror_axes, len(patch))
    weight = gaussian_importance(patch)
    if len(patch) == len(shape) - 1:
        flips = [tuple(d + 1 for d in f) for f in flips]
        starts = [tuple(range(int(shape[0])))] + [tuple(nnunet_steps(s, p, step)) for s, p in zip(shape[1:], patch)]
        return Windows((1, *patch), tuple(starts), weight[None], tuple(flips))
    return Windows(patch, tuple(tuple(nnunet_steps(s, p, step)) for s, p in zip(shape, patch)), weight,
                   tuple(flips))


def _network_bytes(model: Any, patch: Sequence[int], batch_size: int) -> int:
    """Rough working set of one forward pass: the two largest feature maps of the first stage (plus the input)."""
    kw = model.file.arch_kwargs
    feats = kw.get("features_per_stage") or kw.get("features") or [32]
    first = int(feats[0]) if isinstance(feats, (list, tuple)) else int(feats)
    return int(np.prod(patch)) * 4 * max(1, batch_size) * (4 * first + int(kw.get("in_channels", 1)))


def stream_nnunet(model: Any, data: np.ndarray, pre: dict[str, Any], k: int, cropped_shape: Sequence[int],
                  target: Sequence[float], spacing: Sequence[float], *, step: float,
                  mirror_axes: Sequence[int] | None, batch_size: int, probabilities: bool, regions: bool,
                  label_dtype: torch.dtype, acc_dtype: str = "auto",
                  on_window: Callable[[int], None] | None = None, winner: bool = False
                  ) -> tuple[torch.Tensor, torch.Tensor | None, int]:
    """Steps 5-6 streamed (:mod:`medseg.engine`): windows in order along the axis the way back resamples slab by
    slab, every finished slab of logits resampled to ``cropped_shape``, turned into probabilities and labels at
    once. Returns labels (and probabilities when asked; with ``winner``, instead of them, the ``[1, ...]``
    :func:`winning_probability`) on the cropped grid and the window count."""
    from .engine import SlabResampler, plan_memory, stream_windows
    from .sliding_window import pad_to_window

    kw = pre["resampling_probabilities"]
    axis = separate_z(target, spacing, kw.get("force_separate_z"))
    order, order_z = min(int(kw.get("order", 1)), 1), min(int(kw.get("order_z", 0)), 1)
    lead = axis if axis is not None else 0
    lead_order = order_z if axis is not None else order
    patch = tuple(int(p) for p in pre["patch_size"])
    image = torch.from_numpy(data)
    two_d = len(patch) == image.ndim - 2
    x, crop = pad_to_window(image[None], (1, *patch) if two_d else patch)
    x = x[0]
    windows = nnunet_windows(tuple(x.shape[1:]), patch, step, mirror_axes)
    out_shape = tuple(int(s) for s in cropped_shape)
    plane_out = [s for a, s in enumerate(out_shape) if a != lead]
    mem = plan_memory(classes=k, network_shape=tuple(x.shape[1:]), patch=windows.patch, lead=lead,
                      channels=int(x.shape[0]), output_voxels=int(np.prod(out_shape)), probabilities=probabilities,
                      batch_size=batch_size, mirror_passes=len(windows.flips),
                      activation_bytes=_network_bytes(model, windows.patch, batch_size), acc_dtype=acc_dtype)
    labels = torch.empty((out_shape[lead], *plane_out), dtype=label_dtype)
    probs = torch.empty((k, out_shape[lead], *plane_out), dtype=torch.float32) if probabilities else None
    if winner:  # a multi-folder task: one probability per voxel, not K
        probs = torch.empty((1, out_shape[lead], *plane_out), dtype=torch.float32)

    def to_labels(a: int, part: torch.Tensor) -> None:
        p, lab = _nonlin_and_labels(part, regions, pre.get("regions_class_order"), label_dtype)
        labels[a:a + lab.shape[0]] = lab
        if winner:
            probs[0, a:a + lab.shape[0]] = winning_probability(p, regions, pre.get("regions_class_order"))
        elif probs is not None:
            probs[:, a:a + lab.shape[0]] = p

    back = SlabResampler(crop[lead].stop - crop[lead].start, out_shape[lead], plane_out, to_labels,
                         lead_order=lead_order, plane_order=order)
    plane_crop = tuple(c for a, c in enumerate(crop) if a != lead)

    def emit(first: int, rows: torch.Tensor) -> None:
        lo, hi = max(first, crop[lead].start), min(first + rows.shape[1], crop[lead].stop)
        if hi > lo:
            back.push(lo - crop[lead].start, rows[(slice(None), slice(lo - first, hi - first), *plane_crop)])

    fmt = torch.channels_last_3d if (torch.device(model.device).type == "cpu" and len(patch) == 3) else None
    if fmt is not None:
        model.net.to(memory_format=fmt)

    def net(w: torch.Tensor) -> torch.Tensor:
        if two_d:
            w = w[:, :, 0]
        with model.policy.autocast():
            out = model.net(w if fmt is None else w.contiguous(memory_format=fmt))
        if isinstance(out, (list, tuple)):
            out = out[0]
        return out[:, :, None] if two_d else out

    with torch.inference_mode():
        stream_windows(net, x, windows, num_outputs=k, emit=emit, lead=lead, acc_dtype=mem.acc_dtype,
                       batch_size=batch_size, device=model.device, on_window=on_window)
    assert back.done()
    labels = labels.movedim(0, lead)
    probs = probs.movedim(1, lead + 1) if probs is not None else None
    return labels, probs, windows.count


def predict_nnunet(case: Any, model: Any, *, mirror: bool = True, step: float = 0.5, batch_size: int = 1,
                   probabilities: bool = False, timer: StageTimer | None = None,
                   on_window: Callable[[int], None] | None = None, acc_dtype: str = "auto",
                   winner: bool = False) -> dict[str, Any]:
    """Run an nnU-Net v2 model (a :class:`medseg.predict.VolumeModel` whose preprocessing is ``nnunetv2``) on a
    :class:`medseg.io.Case`; returns ``labels`` ``[X, Y, Z]`` on the input grid, optional ``probabilities``
    ``[X, Y, Z, K]`` and ``windows``. ``winner``: ``probabilities`` is instead ``[X, Y, Z]``, the probability of
    each voxel's label (:func:`winning_probability`; 0 outside the crop), what :mod:`medseg.tasks` merges."""
    from .io import Geometry

    timer = timer or StageTimer()
    pre = model.pre
    with timer("preprocess"):
        geom = Geometry.from_affine(case.affine, case.spatial_shape, reader_orientation(pre, case.affine))
        data = geom.forward(case.data)                            # [C, z, y, x], the reader's axes
        spacing = list(geom.spacing)
        tf = pre["transpose_forward"]
        data = data.transpose([0, *[i + 1 for i in tf]])
        spacing = [spacing[i] for i in tf]
        shape_before_crop = data.shape[1:]
        data, box, mask = crop_to_nonzero(data)
        if np.shares_memory(data, case.data):
            data = data.copy()
        data = np.ascontiguousarray(data, dtype=np.float32)     # one working copy, normalised in place
        cropped_shape = data.shape[1:]
        target = list(pre["spacing"])
        if len(target) < len(cropped_shape):
            target = [spacing[0]] + target
        shape = new_shape(cropped_shape, spacing, target)
        if any(n.get("use_mask") for n in pre["normalization"]):
            from scipy.ndimage import binary_fill_holes

            mask = binary_fill_holes(mask)
        for c, entry in enumerate(pre["normalization"]):
            normalise_channel(data[c], entry, mask)
        del mask
        data = resample_image(data, shape, spacing, target, pre["resampling_data"])
    with timer("network"):
        k = int(model.file.arch_kwargs["num_classes"])
        regions = pre.get("regions") is not None
        ldt = torch.uint8 if len(model.classes) <= 256 else torch.int32
        mirror_axes = pre.get("mirror_axes") if mirror else None
        labels, probs, windows = stream_nnunet(model, data, pre, k, cropped_shape, target, spacing, step=step,
                                               mirror_axes=mirror_axes, batch_size=batch_size,
                                               probabilities=probabilities, regions=regions, label_dtype=ldt,
                                               acc_dtype=acc_dtype, on_window=on_window, winner=winner)
        del data
    with timer("resample back"):
        full = np.zeros(shape_before_crop, dtype=labels.numpy().dtype)
        full[box] = labels.numpy()
        del labels
        tb = pre["transpose_backward"]
        lab = geom.backward(full.transpose(tb))
        prob_out = None
        if probs is not None:
            pfull = np.zeros((probs.shape[0], *shape_before_crop), dtype=np.float32)
            if not regions and not winner:
                pfull[0] = 1
            pfull[(slice(None), *box)] = probs.numpy()
            del probs
            prob_out = geom.backward(pfull.transpose([0, *[i + 1 for i in tb]]))
            if winner:
                prob_out = prob_out[..., 0]
    return {"labels": lab, "probabilities": prob_out, "windows": windows}
