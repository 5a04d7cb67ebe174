"""Reading per-frame features and labels, and the data-set layout used for training and evaluation.

Layout: ``DATA/features/<video>.npy`` ([T, D] or [D, T]) and ``DATA/labels/<video>.txt`` (one label per line, class
name or index; empty, ``-1`` or ``unlabeled`` for unlabeled frames). The MS-TCN layout is read too:
``features/``, ``groundTruth/``, ``mapping.txt`` (``index name`` per line) and ``splits/``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from shared_backbones.errors import InputError

UNLABELED = -1
_UNLABELED_NAMES = {"", "-1", "unlabeled", "unlabelled", "none", "ignore"}


def load_features(path: str | Path, layout: str = "auto", expected_dim: int | None = None) -> np.ndarray:
    """Features as float32 [T, D]. ``layout``: tc ([T, D]), ct ([D, T]) or auto (the axis equal to ``expected_dim``
    is D; without one, the longer axis is time)."""
    path = Path(path)
    if not path.is_file():
        raise InputError("file not found", path)
    try:
        arr = np.load(path, allow_pickle=False)
    except (ValueError, OSError) as exc:
        raise InputError(f"not a NumPy .npy feature file ({str(exc).splitlines()[0][:80]})", path) from None
    if not isinstance(arr, np.ndarray) or arr.ndim != 2:
        raise InputError(f"features must be a 2-D array [frames, dims], got shape {getattr(arr, 'shape', '?')}", path)
    if not np.issubdtype(arr.dtype, np.number):
        raise InputError(f"features must be numeric, got {arr.dtype}", path)
    if layout == "ct":
        arr = arr.T
    elif layout == "auto":
        if expected_dim is not None and arr.shape[0] == expected_dim and arr.shape[1] != expected_dim:
            arr = arr.T
        elif expected_dim is None and arr.shape[1] > arr.shape[0]:
            arr = arr.T
    elif layout != "tc":
        raise InputError(f"unknown layout {layout!r} (tc, ct or auto)")
    if expected_dim is not None and arr.shape[1] != expected_dim:
        raise InputError(
            f"features have {arr.shape[1]} dims per frame, the model expects {expected_dim} "
            f"(shape {arr.shape}; use --layout if the axes are swapped)",
            path,
        )
    if arr.shape[0] == 0:
        raise InputError("no frames", path)
    arr = arr.astype(np.float32, copy=False)
    if not np.isfinite(arr).all():
        raise InputError("features contain NaN or infinite values", path)
    return arr


def load_labels(path: str | Path, class_names: Sequence[str]) -> np.ndarray:
    """Per-frame labels [T] as class indices, ``UNLABELED`` (-1) where unlabeled. Text (one per line) or .npy."""
    path = Path(path)
    if not path.is_file():
        raise InputError("label file not found", path)
    if path.suffix == ".npy":
        return np.load(path, allow_pickle=False).astype(np.int64)
    index = {n.lower(): i for i, n in enumerate(class_names)}
    out = []
    for lineno, line in enumerate(path.read_text().splitlines(), 1):
        tok = line.strip().split(",")[-1].strip()
        if tok.lower() in _UNLABELED_NAMES:
            out.append(UNLABELED)
        elif tok.lower() in index:
            out.append(index[tok.lower()])
        elif tok.lstrip("-").isdigit() and -1 <= int(tok) < len(class_names):
            out.append(int(tok))
        else:
            raise InputError(f"line {lineno}: unknown label {tok!r} (classes: {', '.join(class_names)})", path)
    return np.array(out, dtype=np.int64)


def read_mapping(data_dir: Path) -> list[str] | None:
    """Class names from an MS-TCN ``mapping.txt`` (``index name`` lines), if present."""
    f = data_dir / "mapping.txt"
    if not f.is_file():
        return None
    pairs = [line.split() for line in f.read_text().splitlines() if line.strip()]
    return [name for _, name in sorted((int(i), n) for i, n in pairs)]


def dataset_videos(data_dir: str | Path) -> tuple[list[str], Path, Path]:
    """Video ids with both features and labels, and the two folders."""
    data_dir = Path(data_dir)
    feats = data_dir / "features"
    labels = next((data_dir / d for d in ("labels", "groundTruth") if (data_dir / d).is_dir()), None)
    if not feats.is_dir() or labels is None:
        raise InputError("expected features/ and labels/ (or groundTruth/) folders", data_dir)
    ids = sorted(
        p.stem for p in feats.glob("*.npy") if any((labels / (p.stem + s)).is_file() for s in (".txt", ".npy"))
    )
    if not ids:
        raise InputError("no video has both a features/<id>.npy and a labels/<id>.txt file", data_dir)
    return ids, feats, labels


def label_path(labels_dir: Path, vid: str) -> Path:
    txt = labels_dir / f"{vid}.txt"
    return txt if txt.is_file() else labels_dir / f"{vid}.npy"
