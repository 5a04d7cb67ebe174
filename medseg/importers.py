"""Import official STU-Net (nnU-Net v1) checkpoints: ``<name>.model`` (torch.save dict with ``state_dict``) and
``<name>.model.pkl`` (pickled training plans) -> the suite's model file.

Neither file is trusted: the ``.model`` file is read with ``torch.load(weights_only=True)`` plus an allow-list of
numpy scalar/array reconstructors, and the plans pickle with :class:`PlansUnpickler`, which resolves only
allow-listed globals (numpy array/scalar/dtype reconstruction, ``collections.OrderedDict`` and a few builtins).
Anything else (``os.system``, ``builtins.eval``, arbitrary classes) is refused before it could run.
"""

from __future__ import annotations

import io
import pickle
from pathlib import Path
from typing import Any

import numpy as np
import torch

from shared_backbones.checkpoint import ModelFile, read_torch_file, save_model_file
from shared_backbones.cliutil import check_output
from shared_backbones.errors import ModelFileError

from .models import STUNET_POOL, STUNET_SIZES, TASK

_NP_CORE = ("numpy.core.multiarray", "numpy._core.multiarray")
#: (module, name) pairs the plans unpickler resolves; everything else is refused.
ALLOWED_GLOBALS: dict[tuple[str, str], Any] = {
    **{(m, "_reconstruct"): np._core.multiarray._reconstruct for m in _NP_CORE},
    **{(m, "scalar"): np._core.multiarray.scalar for m in _NP_CORE},
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    ("collections", "OrderedDict"): __import__("collections").OrderedDict,
    ("_codecs", "encode"): __import__("codecs").encode,
    ("builtins", "set"): set,
    ("builtins", "frozenset"): frozenset,
    ("builtins", "tuple"): tuple,
    ("builtins", "list"): list,
    ("builtins", "dict"): dict,
    ("builtins", "slice"): slice,
    ("builtins", "complex"): complex,
    ("__builtin__", "set"): set,
}
for _name in dir(np.dtypes):  # numpy >= 1.25 dtype classes, pickled by some versions
    if _name.endswith("DType"):
        ALLOWED_GLOBALS[("numpy.dtypes", _name)] = getattr(np.dtypes, _name)


class PlansUnpickler(pickle.Unpickler):
    """An unpickler that builds plain data only: any global outside :data:`ALLOWED_GLOBALS` raises."""

    def find_class(self, module: str, name: str) -> Any:
        try:
            return ALLOWED_GLOBALS[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(f"refused global {module}.{name}") from None


def read_plans(path: str | Path) -> dict[str, Any]:
    """Read an nnU-Net v1 ``.model.pkl`` / ``plans.pkl`` without executing pickled code; returns the plans dict."""
    path = Path(path)
    if not path.is_file():
        raise ModelFileError("plans file not found (expected next to the .model file as <name>.model.pkl)", path)
    try:
        obj = PlansUnpickler(io.BytesIO(path.read_bytes())).load()
    except pickle.UnpicklingError as exc:
        msg = str(exc)
        if msg.startswith("refused global"):
            raise ModelFileError(
                f"refused: plans pickle references {msg[len('refused global ') :]} "
                f"(not executed; only plain data is accepted)",
                path,
            ) from None
        raise ModelFileError("not a readable plans pickle", path) from None
    except Exception:
        raise ModelFileError("not a readable plans pickle", path) from None
    if isinstance(obj, dict) and "plans" in obj and isinstance(obj["plans"], dict):
        obj = obj["plans"]
    if not isinstance(obj, dict) or "plans_per_stage" not in obj:
        raise ModelFileError("not nnU-Net plans (no 'plans_per_stage')", path)
    return obj


_NP_SAFE = [
    np._core.multiarray.scalar,
    np._core.multiarray._reconstruct,
    np.ndarray,
    np.dtype,
    (np._core.multiarray.scalar, "numpy.core.multiarray.scalar"),
    (np._core.multiarray._reconstruct, "numpy.core.multiarray._reconstruct"),
] + [getattr(np.dtypes, n) for n in dir(np.dtypes) if n.endswith("DType")]


def read_official_checkpoint(path: str | Path) -> dict[str, torch.Tensor]:
    """The ``state_dict`` of an nnU-Net v1 ``.model`` file (``module.`` prefixes stripped), read weights-only."""
    path = Path(path)
    ckpt = read_torch_file(path, _NP_SAFE, what="checkpoint")
    sd = ckpt.get("state_dict", ckpt.get("network_weights")) if isinstance(ckpt, dict) else None
    if sd is None and isinstance(ckpt, dict) and ckpt and all(isinstance(v, torch.Tensor) for v in ckpt.values()):
        sd = ckpt
    if not isinstance(sd, dict) or not sd:
        raise ModelFileError("checkpoint has no state_dict", path)
    return {(k[len("module.") :] if k.startswith("module.") else k): v for k, v in sd.items()}


def _stage_blocks(sd: dict[str, torch.Tensor], prefix: str) -> list[int]:
    counts: dict[int, int] = {}
    for k in sd:
        if k.startswith(prefix) and k.endswith(".conv1.weight"):
            stage, block = (int(v) for v in k[len(prefix) :].split(".")[:2])
            counts[stage] = max(counts.get(stage, 0), block + 1)
    return [counts[s] for s in sorted(counts)]


def stunet_config(sd: dict[str, torch.Tensor], plans: dict[str, Any] | None, path: Path) -> tuple[str, dict[str, Any]]:
    """Registry name and kwargs of the STU-Net that fits ``sd`` (sizes read from the weights themselves)."""
    if "conv_blocks_context.0.0.conv1.weight" not in sd or "seg_outputs.0.weight" not in sd:
        raise ModelFileError("not an STU-Net checkpoint (no conv_blocks_context/seg_outputs weights)", path)
    depth = _stage_blocks(sd, "conv_blocks_context.")
    dims = [int(sd[f"conv_blocks_context.{s}.0.conv1.weight"].shape[0]) for s in range(len(depth))]
    in_ch = int(sd["conv_blocks_context.0.0.conv1.weight"].shape[1])
    n_cls = int(sd["seg_outputs.0.weight"].shape[0])
    pools = STUNET_POOL
    if plans is not None:
        stage = plans["plans_per_stage"][max(plans["plans_per_stage"].keys())]
        pools = [[int(v) for v in p] for p in stage.get("pool_op_kernel_sizes", STUNET_POOL)]
    name = next((f"stunet-{k}" for k, (d, c) in STUNET_SIZES.items() if d == depth and c == dims), "stunet-b")
    return name, {
        "in_channels": in_ch,
        "num_classes": n_cls,
        "depth": depth,
        "dims": dims,
        "pool_op_kernel_sizes": pools,
    }


def plans_preprocessing(plans: dict[str, Any], in_channels: int) -> dict[str, Any]:
    """Spacing, patch size, normalisation and axis conventions from nnU-Net v1 plans."""
    stage = plans["plans_per_stage"][max(plans["plans_per_stage"].keys())]
    schemes = plans.get("normalization_schemes") or {}
    props = (plans.get("dataset_properties") or {}).get("intensityproperties") or {}
    norm = []
    for c in range(in_channels):
        kind = schemes.get(c, "nonCT")
        if kind == "CT" and c in props:
            p = props[c]
            norm.append(
                {
                    "scheme": "ct",
                    "lower": float(p["percentile_00_5"]),
                    "upper": float(p["percentile_99_5"]),
                    "mean": float(p["mean"]),
                    "std": float(p["sd"]),
                }
            )
        elif kind == "noNorm":
            norm.append({"scheme": "none"})
        else:
            norm.append({"scheme": "zscore"})
    transpose = [int(v) for v in plans.get("transpose_forward", [0, 1, 2])]
    spacing = np.asarray(stage["current_spacing"], dtype=float)[transpose]
    return {
        "orientation": "RAS",
        "axis_order": "zyx",
        "spacing": [float(s) for s in spacing],
        "patch_size": [int(v) for v in np.asarray(stage["patch_size"])],
        "normalization": norm,
        "in_channels": in_channels,
        "source": "nnU-Net v1 plans",
    }


def check_state_dict(mf: ModelFile, path: Path) -> None:
    """Refuse weights whose key names or shapes differ from the architecture (checked on the meta device, so
    even STU-Net H allocates nothing)."""
    from shared_backbones.registry import create_model

    with torch.device("meta"):
        expected = {k: tuple(v.shape) for k, v in create_model(mf.arch, **mf.arch_kwargs).state_dict().items()}
    got = {k: tuple(v.shape) for k, v in mf.state_dict.items()}
    missing, unexpected = sorted(set(expected) - set(got)), sorted(set(got) - set(expected))
    if missing or unexpected:
        raise ModelFileError(f"weights do not fit {mf.arch}: missing {missing[:2]}, unexpected {unexpected[:2]}", path)
    bad = next((k for k in expected if expected[k] != got[k]), None)
    if bad:
        raise ModelFileError(
            f"weights do not fit {mf.arch}: {bad} has shape {got[bad]}, expected {expected[bad]}", path
        )


def import_stunet(
    model_path: str | Path,
    out_path: str | Path | None = None,
    *,
    plans_path: str | Path | None = None,
    classes: list[str] | None = None,
    overwrite: bool = False,
) -> ModelFile:
    """Convert an official STU-Net checkpoint (+ plans) to a suite model file; the weights load strictly."""
    model_path = Path(model_path)
    if out_path is not None:
        check_output(out_path, overwrite)
    plans_path = Path(plans_path) if plans_path else model_path.with_name(model_path.name + ".pkl")
    plans = read_plans(plans_path)
    sd = read_official_checkpoint(model_path)
    arch, kwargs = stunet_config(sd, plans, model_path)
    n_cls = kwargs["num_classes"]
    if classes is not None and len(classes) != n_cls:
        raise ModelFileError(f"{len(classes)} class names given for a {n_cls}-class network", model_path)
    names = classes or ["background"] + [f"class_{i}" for i in range(1, n_cls)]
    mf = ModelFile(
        task=TASK,
        arch=arch,
        arch_kwargs=kwargs,
        state_dict=sd,
        classes=names,
        preprocessing=plans_preprocessing(plans, kwargs["in_channels"]),
        extra={"imported_from": model_path.name},
    )
    check_state_dict(mf, model_path)
    if out_path is not None:
        save_model_file(out_path, mf, overwrite=overwrite)
    return mf
