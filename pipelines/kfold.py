"""Deterministic k-fold and grouped (leave-one-group-out) splits, saved as JSON."""

from __future__ import annotations

import json
from collections.abc import Hashable, Sequence
from pathlib import Path

import numpy as np

from shared_backbones.errors import InputError

Split = tuple[list[int], list[int]]


def kfold_splits(n: int, k: int, seed: int = 0) -> list[Split]:
    """Shuffle ``range(n)`` with ``seed`` and cut it into ``k`` validation folds."""
    if k < 2 or n < k:
        raise InputError(f"k-fold needs 2 <= k <= number of items (k={k}, items={n})")
    order = np.random.default_rng(seed).permutation(n)
    folds = np.array_split(order, k)
    return [(sorted(int(i) for j, f in enumerate(folds) if j != v for i in f), sorted(int(i) for i in folds[v]))
            for v in range(k)]


def group_kfold_splits(groups: Sequence[Hashable], k: int | None = None, seed: int = 0) -> list[Split]:
    """Folds that never split a group; ``k=None`` is leave-one-group-out."""
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


def save_splits(path: str | Path, splits: Sequence[Split]) -> Path:
    """Write splits as JSON ``[{"train": [...], "val": [...]}, ...]``."""
    path = Path(path)
    path.write_text(json.dumps([{"train": list(t), "val": list(v)} for t, v in splits]))
    return path


def load_splits(path: str | Path) -> list[Split]:
    """Read splits written by :func:`save_splits`."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
        return [(list(map(int, d["train"])), list(map(int, d["val"]))) for d in data]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise InputError(f"not a splits file ({type(exc).__name__})", path) from None
