"""The suite's model file: a plain dict saved with ``torch.save``, loaded with ``weights_only=True``.

Fields: ``format`` ("convsuite-model"), ``format_version``, ``task``, ``arch`` (registry name),
``arch_kwargs``, ``state_dict``, ``classes``, ``preprocessing`` (spacing, normalisation, sample rate,
bands, index set, ...), ``metrics`` (training metrics), ``software_version``, ``created``, ``extra``.
Only tensors, numbers, strings, bools, None, lists, tuples and dicts are stored, so loading never
executes pickled code; a file that holds anything else is refused.
"""

from __future__ import annotations

import datetime as _dt
import pickle
import warnings
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from . import __version__
from .cliutil import atomic_output
from .errors import ModelFileError, first_line
from .registry import create_model

FORMAT = "convsuite-model"
FORMAT_VERSION = 1
_REQUIRED = ("task", "arch", "arch_kwargs", "state_dict")


@dataclass
class ModelFile:
    """In-memory form of the suite's model file."""

    task: str
    arch: str
    arch_kwargs: dict[str, Any]
    state_dict: dict[str, torch.Tensor]
    classes: list[str] = field(default_factory=list)
    preprocessing: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    software_version: str = __version__
    created: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_model(
        cls, model: nn.Module, *, task: str, arch: str, arch_kwargs: dict[str, Any], **fields: Any
    ) -> ModelFile:
        """Capture ``model``'s weights (moved to CPU, detached) with its description."""
        sd = {k: v.detach().to("cpu").clone() for k, v in model.state_dict().items()}
        return cls(task=task, arch=arch, arch_kwargs=dict(arch_kwargs), state_dict=sd, **fields)

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "task": self.task,
            "arch": self.arch,
            "arch_kwargs": _plain(self.arch_kwargs),
            "state_dict": self.state_dict,
            "classes": list(self.classes),
            "preprocessing": _plain(self.preprocessing),
            "metrics": _plain(self.metrics),
            "software_version": self.software_version,
            "created": self.created or _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "extra": _plain(self.extra),
        }

    def build(self, strict: bool = True) -> nn.Module:
        """Instantiate the architecture through the registry and load the weights (eval mode)."""
        model = create_model(self.arch, **self.arch_kwargs)
        try:
            model.load_state_dict(self.state_dict, strict=strict)
        except RuntimeError as exc:
            first = str(exc).strip().splitlines()
            raise ModelFileError(
                f"weights do not fit architecture {self.arch!r}: {first[1].strip() if len(first) > 1 else first[0]}"
            ) from None
        return model.eval()


def _plain(obj: Any) -> Any:
    """Convert numpy scalars/arrays, Paths and tuples to types ``weights_only`` loading accepts."""
    if isinstance(obj, dict):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, torch.Tensor) or obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    if hasattr(obj, "tolist"):  # numpy array or scalar
        return obj.tolist()
    raise TypeError(f"cannot store {type(obj).__name__} in a model file")


def save_model_file(path: str | Path, model_file: ModelFile, overwrite: bool = True) -> Path:
    """Write ``model_file`` atomically (temporary name, then rename). Returns the path."""
    path = Path(path)
    with atomic_output(path, overwrite=overwrite) as tmp:
        torch.save(model_file.to_dict(), tmp)
    return path


def read_torch_file(path: str | Path, safe_globals: Sequence[Any] = (), what: str = "model file") -> Any:
    """``torch.load(weights_only=True)`` on CPU with one-line errors for missing/truncated/unsafe files.

    ``safe_globals``: plain-data classes a foreign checkpoint may hold besides tensors (numpy scalars in nnU-Net
    checkpoints); nothing else is allowed, and nothing is executed."""
    path = Path(path)
    if not path.is_file():
        raise ModelFileError(f"{what} not found", path)
    try:
        with warnings.catch_warnings(), torch.serialization.safe_globals(list(safe_globals)):
            # a plain pickle (not a torch.save zip) makes torch warn "Detected pickle protocol N" before refusing
            # it: the refusal below is the one line the user sees
            warnings.filterwarnings("ignore", message=r"Detected pickle protocol", category=UserWarning)
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        msg = str(exc)
        if "Weights only load failed" in msg or "Unsupported global" in msg or "GLOBAL" in msg:
            raise ModelFileError(
                "refused: the file contains pickled objects that are not plain data (not executed)", path
            ) from None
        raise ModelFileError("not a PyTorch model file (unreadable pickle)", path) from None
    except (RuntimeError, zipfile.BadZipFile, EOFError, ValueError, OSError) as exc:
        text = str(exc)
        if "zip archive" in text or "central directory" in text or isinstance(exc, (EOFError, zipfile.BadZipFile)):
            raise ModelFileError("truncated or corrupt model file", path) from None
        raise ModelFileError(
            f"cannot read model file ({first_line(exc)})", path
        ) from None
    except Exception:  # the weights-only unpickler raises KeyError/IndexError/... on arbitrary bytes
        raise ModelFileError("not a PyTorch model file", path) from None


def load_model_file(path: str | Path, task: str | None = None) -> ModelFile:
    """Load and validate a suite model file; ``task`` (if given) must match the file's task."""
    path = Path(path)
    obj = read_torch_file(path)
    if not isinstance(obj, dict):
        raise ModelFileError("not a convsuite model file (top level is not a dict)", path)
    if obj.get("format") != FORMAT:
        if "pytorch-lightning_version" in obj:
            hint = "a Lightning checkpoint: export it with 'pipelines export CKPT -o model.pt'"
        elif "state_dict" in obj and ("epoch" in obj or "optimizer_state_dict" in obj):
            hint = "a foreign training checkpoint: use the task's import command (e.g. 'medseg import-stunet')"
        elif obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
            hint = "a bare state_dict: use the task's import command"
        else:
            hint = "unknown content"
        raise ModelFileError(f"not a convsuite model file ({hint})", path)
    missing = [k for k in _REQUIRED if k not in obj]
    if missing:
        raise ModelFileError(f"model file lacks required field(s): {', '.join(missing)}", path)
    if int(obj.get("format_version", 0)) > FORMAT_VERSION:
        raise ModelFileError(f"model file format {obj['format_version']} is newer than this convsuite supports", path)
    if task is not None and obj["task"] != task:
        raise ModelFileError(f"model file is for task {obj['task']!r}, not {task!r}", path)
    if not isinstance(obj["state_dict"], dict) or not all(
        isinstance(v, torch.Tensor) for v in obj["state_dict"].values()
    ):
        raise ModelFileError("model file's state_dict is not a dict of tensors", path)
    return ModelFile(
        task=obj["task"],
        arch=obj["arch"],
        arch_kwargs=dict(obj["arch_kwargs"]),
        state_dict=obj["state_dict"],
        classes=list(obj.get("classes") or []),
        preprocessing=dict(obj.get("preprocessing") or {}),
        metrics=dict(obj.get("metrics") or {}),
        software_version=str(obj.get("software_version", "")),
        created=str(obj.get("created", "")),
        extra=dict(obj.get("extra") or {}),
    )
