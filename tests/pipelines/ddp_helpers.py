"""Helpers of the training tests: a module the DDP tests load by class path in a subprocess (tests/pipelines is put
on PYTHONPATH there) and a small sample table for remote training."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from pipelines.example import ExampleModule


class FailingOnRank1(ExampleModule):
    """Raises in the second training step of rank 1 (a crashed process in a DDP run)."""

    def training_step(self, batch, batch_idx):
        if self.global_rank == 1 and batch_idx == 1:
            raise RuntimeError("rank 1 failed on purpose")
        return super().training_step(batch, batch_idx)


CLASSES = ["healthy", "yellow_rust", "nitrogen_deficiency"]


def write_table(path: Path, n: int = 60, seed: int = 0) -> Path:
    """A per-field table (6 dates x 6 bands, a field_id column for grouped folds)."""
    rng = np.random.default_rng(seed)
    dates = ["2024-04-01", "2024-04-11", "2024-04-21", "2024-05-01", "2024-05-11", "2024-05-21"]
    bands = ["B02", "B03", "B04", "B05", "B06", "B08"]
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["field_id", "label"] + [f"{b}_{d}" for d in dates for b in bands])
        for i in range(n):
            lab = i % 3
            vals = rng.uniform(0.02, 0.4, len(dates) * len(bands)) + 0.1 * lab
            w.writerow([i // 6, CLASSES[lab]] + [f"{v:.4f}" for v in vals])
    return path


def _die_on_rank1(self, batch, batch_idx):
    """A process of rank 1 killed in its second training step (as the kernel's OOM killer would end it)."""
    import os

    if self.global_rank == 1 and batch_idx == 1:
        os._exit(3)


if __name__ == "__main__":  # python -m ddp_helpers <cli module> ARGS: that command, rank 1 dying in training
    import importlib
    import sys

    import pipelines.base

    pipelines.base.SuiteModule.on_train_batch_start = _die_on_rank1
    sys.exit(importlib.import_module(sys.argv[1]).main(sys.argv[2:]))
