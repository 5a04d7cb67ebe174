"""Reading per-frame features and labels, and the data-set layout used for training and evaluation.

Layout: ``DATA/features/<video>.npy`` ([T, D] or [D, T]) and ``DATA/labels/<video>.txt`` (one label per line, class
name or index; empty, ``-1`` or ``unlabeled`` for unlabeled frames). The MS-TCN layout is read too:
``features/`` ([D, T] arrays), ``groundTruth/``, ``mapping.txt`` (``index name`` per line) and ``splits/``.

Time is told from features by the feature width D (the model's input width, or for training the width every video
shares), never by which axis is longer: a GTEA video of 300 frames with 2048-d features is [2048, 300].
A label file may differ from its features by at most one frame (:func:`match_length`): frame extraction often rounds
the last frame differently; anything more is refused.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from shared_backbones.errors import InputError, first_line

UNLABELED = -1
_UNLABELED_NAMES = {"", "-1", "unlabeled", "unlabelled", "none", "ignore"}


def _open_features(path: Path, mmap: bool = False) -> np.ndarray:
    if not path.is_file():
        raise InputError("file not found", path)
    try:
        arr = np.load(path, allow_pickle=False, mmap_mode="r" if mmap else None)
    except (ValueError, OSError) as exc:
        raise InputError(f"not a NumPy .npy feature file ({first_line(exc, 80)})", path) from None
    if not isinstance(arr, np.ndarray) or arr.ndim != 2:
        raise InputError(f"features must be a 2-D array [frames, dims], got shape {getattr(arr, 'shape', '?')}", path)
    if not np.issubdtype(arr.dtype, np.number):
        raise InputError(f"features must be numeric, got {arr.dtype}", path)
    return arr


def time_axis(shape: tuple[int, int], layout: str, dim: int | None, path: str | Path | None = None) -> int:
    """Which axis of a 2-D feature array is time (0 for [T, D], 1 for [D, T]).

    ``layout`` tc / ct says it; ``auto`` takes the axis that is not the feature width ``dim`` (the model's input
    width). Without a width, or when both axes equal it, auto refuses rather than guess."""
    if layout == "tc":
        return 0
    if layout == "ct":
        return 1
    if layout != "auto":
        raise InputError(f"unknown layout {layout!r} (tc, ct or auto)")
    if dim is None:
        raise InputError(f"cannot tell frames from feature dims in shape {tuple(shape)} without the feature width; "
                         "give --layout tc ([frames, dims]) or ct ([dims, frames])", path)
    if shape[1] == dim and shape[0] != dim:
        return 0
    if shape[0] == dim and shape[1] != dim:
        return 1
    if shape[0] == dim:
        raise InputError(f"shape {tuple(shape)}: as many frames as feature dims, the layout is ambiguous; "
                         "give --layout tc ([frames, dims]) or ct ([dims, frames])", path)
    raise InputError(f"features have shape {tuple(shape)}, neither axis is the model's {dim} dims per frame", path)


def dataset_feature_width(paths: Sequence[str | Path], layout: str = "auto") -> int:
    """The feature width D shared by every video of a data set (headers only are read).

    With ``layout`` tc / ct it is that axis, and every file must agree. With ``auto`` it is the axis size every
    video has (videos differ in length, not in width); a file without it is named. When all videos have the same
    shape the width cannot be told apart from the length, and ``--layout`` is asked for."""
    shapes = [(Path(p), _open_features(Path(p), mmap=True).shape) for p in paths]
    if not shapes:
        raise InputError("no feature files")
    if layout in ("tc", "ct"):
        axis = 1 if layout == "tc" else 0
        widths = [s[axis] for _, s in shapes]
    elif layout == "auto":
        counts: dict[int, int] = {}
        for _, s in shapes:
            for v in set(s):
                counts[v] = counts.get(v, 0) + 1
        best = max(counts.values())
        common = [v for v, c in counts.items() if c == best]
        if len(common) > 1:
            raise InputError(f"cannot tell frames from feature dims: the videos all have shape {shapes[0][1]}; "
                             "give --layout tc ([frames, dims]) or ct ([dims, frames])", shapes[0][0].parent)
        dim = common[0]
        for p, s in shapes:
            if dim not in s:
                raise InputError(f"features have shape {tuple(s)}, the other videos have {dim} dims per frame", p)
        return dim
    else:
        raise InputError(f"unknown layout {layout!r} (tc, ct or auto)")
    dim = max(set(widths), key=widths.count)
    for (p, s), w in zip(shapes, widths):
        if w != dim:
            raise InputError(f"features have {w} dims per frame with --layout {layout} (shape {tuple(s)}), the other "
                             f"videos have {dim}", p)
    return dim


def load_features(path: str | Path, layout: str = "auto", expected_dim: int | None = None) -> np.ndarray:
    """Features as float32 [T, D]. ``layout``: tc ([T, D]), ct ([D, T]) or auto (the axis equal to ``expected_dim``,
    the model's input width, is D; see :func:`time_axis`)."""
    path = Path(path)
    arr = _open_features(path)
    if time_axis(arr.shape, layout, expected_dim, path) == 1:
        arr = arr.T
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
        try:
            arr = np.load(path, allow_pickle=False)
        except (ValueError, OSError):
            raise InputError("not a NumPy .npy label file", path) from None
        if arr.ndim != 1 or not np.issubdtype(arr.dtype, np.integer):
            raise InputError(f"labels must be a 1-D integer array, got {arr.dtype} {arr.shape}", path)
        if arr.size and (arr.min() < -1 or arr.max() >= len(class_names)):
            raise InputError(f"label values must be -1 (unlabeled) or 0..{len(class_names) - 1}", path)
        return arr.astype(np.int64)
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


def match_length(labels: np.ndarray, frames: int, path: str | Path) -> tuple[np.ndarray, str | None]:
    """The one rule for a label file against its features (predict ``--reference``, evaluate, train).

    Equal lengths pass. One frame off is tolerated (frame extraction often rounds the last frame differently): a
    missing last label becomes unlabeled (ignored by every metric and the loss), an extra last label is dropped, and
    a notice says so (returned, for the caller to print). More than one frame off is refused, naming the label file.
    """
    diff = len(labels) - frames
    if diff == 0:
        return labels, None
    if abs(diff) > 1:
        raise InputError(f"{len(labels)} labels for {frames} feature frames (at most one frame of difference is "
                         "tolerated)", path)
    note = (f"{path}: notice: {len(labels)} labels for {frames} feature frames: "
            + ("the last frame is unlabeled (ignored)" if diff < 0 else "the extra last label is ignored"))
    if diff < 0:
        return np.concatenate([labels, [UNLABELED]]).astype(np.int64), note
    return labels[:frames], note


def read_split(path: str | Path) -> list[str]:
    """Video ids listed in an MS-TCN split bundle (``test.split1.bundle``: one file name per line)."""
    path = Path(path)
    if not path.is_file():
        raise InputError("split file not found", path)
    return [Path(line.strip()).stem for line in path.read_text().splitlines() if line.strip()]


def read_mapping(data_dir: Path) -> list[str] | None:
    """Class names from an MS-TCN ``mapping.txt`` (``index name`` lines), if present."""
    f = data_dir / "mapping.txt"
    if not f.is_file():
        return None
    pairs = [line.split() for line in f.read_text().splitlines() if line.strip()]
    try:
        return [name for _, name in sorted((int(i), n) for i, n in pairs)]
    except ValueError:
        raise InputError("expected 'index name' on every line", f) from None


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
