"""Fold splitting (shared_backbones.folds): k-fold, grouped, leave-one-group-out, spatially blocked with a buffer."""

from __future__ import annotations

import numpy as np
import pytest

from shared_backbones.errors import InputError
from shared_backbones.folds import (
    group_kfold_splits,
    kfold_splits,
    leave_one_group_out,
    load_splits,
    save_splits,
    spatial_block_splits,
)


def test_kfold_properties(tmp_path):
    splits = kfold_splits(23, 5, seed=3)
    assert splits == kfold_splits(23, 5, seed=3) and splits != kfold_splits(23, 5, seed=4)
    vals = [v for _, v in splits]
    assert sorted(i for v in vals for i in v) == list(range(23))
    for t, v in splits:
        assert not set(t) & set(v) and len(t) + len(v) == 23
    groups = ["a", "a", "b", "c", "c", "c", "d", "b"]
    logo = group_kfold_splits(groups)
    assert len(logo) == 4
    for t, v in logo:
        assert len({groups[i] for i in v}) == 1 and not {groups[i] for i in v} & {groups[i] for i in t}
    for t, v in group_kfold_splits(groups, k=2):
        assert not {groups[i] for i in v} & {groups[i] for i in t}
    p = save_splits(tmp_path / "s.json", splits)
    assert load_splits(p) == splits
    with pytest.raises(InputError):
        kfold_splits(3, 5)
    with pytest.raises(InputError):
        group_kfold_splits(["a", "a"])
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(InputError, match="bad.json"):
        load_splits(tmp_path / "bad.json")


def test_leave_one_group_out_and_reexports():
    groups = ["c2", "c1", "c2", "c3"]
    assert leave_one_group_out(groups) == [([0, 2, 3], [1]), ([1, 3], [0, 2]), ([0, 1, 2], [3])]
    import remote.samples

    rows, cols = np.divmod(np.arange(400), 20)
    a, b = remote.samples.spatial_block_splits(rows, cols, 5, 4, 1, 0), spatial_block_splits(rows, cols, 5, 4, 1, 0)
    assert all(np.array_equal(x[0], y[0]) and np.array_equal(x[1], y[1]) for x, y in zip(a, b))


def test_spatial_blocks_with_buffer():
    rows, cols = np.divmod(np.arange(40 * 40), 40)
    splits = spatial_block_splits(rows, cols, block_size=10, k=4, buffer=2, seed=0)
    val_all = np.concatenate([v for _, v in splits])
    assert sorted(val_all.tolist()) == list(range(1600))  # every sample validated exactly once
    for train, val in splits:
        assert not set(train.tolist()) & set(val.tolist())
        # Chebyshev distance from every training sample to every validation sample exceeds the buffer
        d = np.maximum(np.abs(rows[train][:, None] - rows[val][None]), np.abs(cols[train][:, None] - cols[val][None]))
        assert d.min() > 2
        blocks = {(r // 10, c // 10) for r, c in zip(rows[val], cols[val])}
        assert len(blocks) == 4  # whole blocks: 16 blocks dealt to 4 folds
    no_buffer = spatial_block_splits(rows, cols, 10, 4, 0, 0)
    assert sum(len(t) for t, _ in no_buffer) == 3 * 1600 > sum(len(t) for t, _ in splits)
    with pytest.raises(InputError, match="fewer than 5 folds"):
        spatial_block_splits(rows[:100], cols[:100], 10, 5)
    with pytest.raises(InputError, match="buffer"):
        spatial_block_splits(rows, cols, 10, 4, buffer=11)
