"""Modules the DDP tests load by class path in a subprocess (tests/pipelines is put on PYTHONPATH there)."""

from __future__ import annotations

from pipelines.example import ExampleModule


class FailingOnRank1(ExampleModule):
    """Raises in the second training step of rank 1 (a crashed process in a DDP run)."""

    def training_step(self, batch, batch_idx):
        if self.global_rank == 1 and batch_idx == 1:
            raise RuntimeError("rank 1 failed on purpose")
        return super().training_step(batch, batch_idx)
