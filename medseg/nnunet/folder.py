"""nnU-Net v2 model folders: ``dataset.json``, ``plans.json`` and fold checkpoints read safely into the suite's
:class:`~shared_backbones.checkpoint.ModelFile` (steps 0 of :mod:`medseg.nnunet`), and ``medseg import-nnunet``."""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from shared_backbones.checkpoint import ModelFile, read_torch_file, save_model_file
from shared_backbones.cliutil import check_output
from shared_backbones.errors import ModelFileError

from ..nnunet_arch import TASK

NORMALIZATIONS = ("CTNormalization", "ZScoreNormalization", "NoNormalization", "RescaleTo01Normalization",
                  "RGBTo01Normalization")
PIPELINE = "nnunetv2"


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
