"""Moved to :mod:`shared_backbones.folds` (kept as a re-export for existing imports)."""

from shared_backbones.folds import (  # noqa: F401
    Split,
    group_kfold_splits,
    kfold_splits,
    leave_one_group_out,
    load_splits,
    save_splits,
    spatial_block_splits,
)
