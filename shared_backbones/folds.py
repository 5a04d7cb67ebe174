"""Fold splitting for every task, in one place: plain k-fold, grouped k-fold, leave-one-group-out and spatially
blocked k-fold with a buffer (Roberts et al. 2017, "Cross-validation strategies for data with temporal, spatial,
hierarchical, or phylogenetic structure"). Splits are deterministic for a seed and can be saved as JSON.

Every function returns ``[(train_indices, validation_indices), ...]``, one pair per fold.
"""

from __future__ import annotations

import json
from collections.abc import Hashable, Sequence
from pathlib import Path

import numpy as np

from .errors import InputError

Split = tuple[list[int], list[int]]


def kfold_splits(n: int, k: int, seed: int = 0) -> list[Split]:
    """Shuffle ``range(n)`` with ``seed`` and cut it into ``k`` validation folds (sizes differ by at most one)."""
    if k < 2 or n < k:
        raise InputError(f"k-fold needs 2 <= k <= number of items (k={k}, items={n})")
    order = np.random.default_rng(seed).permutation(n)
    folds = np.array_split(order, k)
    return [(sorted(int(i) for j, f in enumerate(folds) if j != v for i in f), sorted(int(i) for i in folds[v]))
            for v in range(k)]


def group_kfold_splits(groups: Sequence[Hashable], k: int | None = None, seed: int = 0) -> list[Split]:
    """Folds that never split a group (a patient, a centre, a field); ``k=None`` is leave-one-group-out."""
    names = sorted(set(groups), key=str)
    if k is None:
        k = len(names)
    if k < 2 or len(names) < k:
        raise InputError(f"grouped k-fold needs 2 <= k <= number of groups (k={k}, groups={len(names)})")
    order = [names[i] for i in np.random.default_rng(seed).permutation(len(names))] if k != len(names) else names
    fold_of = {g: i % k for i, g in enumerate(order)}
    splits = []
    for v in range(k):
        val = [i for i, g in enumerate(groups) if fold_of[g] == v]
        train = [i for i, g in enumerate(groups) if fold_of[g] != v]
        splits.append((train, val))
    return splits


def leave_one_group_out(groups: Sequence[Hashable]) -> list[Split]:
    """One fold per group (sorted by name), holding that group out."""
    return group_kfold_splits(groups, None)


def spatial_block_splits(rows: Sequence[int] | np.ndarray, cols: Sequence[int] | np.ndarray, block_size: int,
                         k: int, buffer: int = 0, seed: int = 0) -> list[tuple[np.ndarray, np.ndarray]]:
    """Spatially blocked k-fold: samples at (``rows``, ``cols``) are grouped in ``block_size`` square blocks, the
    blocks are dealt to ``k`` folds (seeded shuffle), and training samples closer than ``buffer`` (Chebyshev
    distance, same units as rows/cols) to any validation block are dropped, so no training sample neighbours a
    validation sample. Returns ``[(train_idx, val_idx)]`` as integer arrays."""
    if block_size < 1:
        raise InputError("--block-size must be >= 1")
    if not 0 <= buffer <= block_size:
        raise InputError(f"--buffer must be between 0 and the block size ({block_size})")
    rows, cols = np.asarray(rows, np.int64), np.asarray(cols, np.int64)
    br, bc = rows // block_size, cols // block_size
    keys = np.unique(np.stack([br, bc], 1), axis=0) if len(rows) else np.zeros((0, 2), np.int64)
    if len(keys) < k:
        raise InputError(f"only {len(keys)} spatial block(s) of {block_size} px hold samples: fewer than {k} folds "
                         "(use a smaller --block-size or fewer --folds)")
    order = np.random.default_rng(seed).permutation(len(keys))
    fold_of = {(int(keys[i][0]), int(keys[i][1])): j % k for j, i in enumerate(order)}
    sample_fold = np.array([fold_of[(int(a), int(b))] for a, b in zip(br, bc)])
    splits = []
    for v in range(k):
        test = np.nonzero(sample_fold == v)[0]
        near = np.zeros(len(rows), dtype=bool)
        if buffer > 0:
            # a sample lies within `buffer` of a validation block only if that block is one of its 8 neighbours
            for dr in (-1, 0, 1):
                for dc in (-1, 0, 1):
                    if dr == dc == 0:
                        continue
                    nb = np.array([fold_of.get((int(a) + dr, int(b) + dc), -1) == v for a, b in zip(br, bc)],
                                  dtype=bool)
                    lo_r, lo_c = (br + dr) * block_size, (bc + dc) * block_size
                    dist_r = np.maximum(np.maximum(lo_r - rows, rows - (lo_r + block_size - 1)), 0)
                    dist_c = np.maximum(np.maximum(lo_c - cols, cols - (lo_c + block_size - 1)), 0)
                    near |= nb & (np.maximum(dist_r, dist_c) <= buffer)
        train = np.nonzero((sample_fold != v) & ~near)[0]
        splits.append((train, test))
    return splits


def save_splits(path: str | Path, splits: Sequence[tuple[Sequence[int], Sequence[int]]]) -> Path:
    """Write splits as JSON ``[{"train": [...], "val": [...]}, ...]``."""
    path = Path(path)
    path.write_text(json.dumps([{"train": [int(i) for i in t], "val": [int(i) for i in v]} for t, v in splits]))
    return path


def load_splits(path: str | Path) -> list[Split]:
    """Read splits written by :func:`save_splits`."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
        return [(list(map(int, d["train"])), list(map(int, d["val"]))) for d in data]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise InputError(f"not a splits file ({type(exc).__name__})", path) from None
