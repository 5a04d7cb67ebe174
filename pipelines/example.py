"""A tiny self-contained task used by the example config and tests: classify noisy 1-D patterns with an MBConv net."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset
from torchmetrics import MeanMetric
from torchmetrics.classification import MulticlassAccuracy

from shared_backbones.blocks import ConvNormAct, reversible_mbconv_sequence
from shared_backbones.registry import register_model

from .base import SuiteModule, eval_dataloader
from .trainer import FitResult, child_ranks, train_run, work_folder


@register_model("example-revnet1d", task="example")
def example_revnet1d(
    in_channels: int = 1, channels: int = 16, depth: int = 2, num_classes: int = 3, reversible: bool = True
) -> nn.Module:
    """Stem conv -> reversible MBConv stack -> global pool -> linear."""
    return nn.Sequential(
        ConvNormAct(1, in_channels, channels, 3, norm="group", act="silu"),
        reversible_mbconv_sequence(1, channels, depth, reversible=reversible, expand_ratio=2),
        nn.AdaptiveAvgPool1d(1),
        nn.Flatten(),
        nn.Linear(channels, num_classes),
    )


class ExampleModule(SuiteModule):
    """Cross-entropy classification; logs train_loss, and val_loss / val_acc as torchmetrics synced across ranks."""

    def __init__(
        self, arch: str = "example-revnet1d", arch_kwargs: dict | None = None, lr: float = 3e-3, **kwargs
    ) -> None:
        super().__init__(
            task="example", arch=arch, arch_kwargs=arch_kwargs, classes=["sine", "square", "noise"], lr=lr, **kwargs
        )
        self.val_loss = MeanMetric()
        self.val_acc = MulticlassAccuracy(num_classes=3, average="micro")

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = F.cross_entropy(self(x), y)
        self.log("train_loss", loss, prog_bar=True)
        return loss

    def validation_step(self, batch, batch_idx):
        x, y = batch
        logits = self(x)
        self.val_loss.update(F.cross_entropy(logits.float(), y), weight=len(y))
        self.val_acc.update(logits.argmax(1), y)

    def on_validation_epoch_end(self) -> None:
        # compute() reduces the metric states over all ranks: every rank logs the same numbers
        # (sync_dist: the values are already equal on every rank; it only tells Lightning so)
        self.log_dict({"val_loss": self.val_loss.compute(), "val_acc": self.val_acc.compute()}, prog_bar=True,
                      sync_dist=True)
        self.val_loss.reset()
        self.val_acc.reset()


def make_patterns(n: int, length: int = 64, seed: int = 0) -> TensorDataset:
    """Sine, square and noise sequences with random frequency and phase."""
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 3, (n,), generator=g)
    t = torch.linspace(0, 1, length)
    freq = 2 + 4 * torch.rand(n, 1, generator=g)
    phase = 6.28 * torch.rand(n, 1, generator=g)
    s = torch.sin(6.28 * freq * t + phase)
    x = torch.where(
        y[:, None] == 0, s, torch.where(y[:, None] == 1, torch.sign(s), torch.randn(n, length, generator=g))
    )
    return TensorDataset((x + 0.1 * torch.randn(n, length, generator=g))[:, None], y)


class ExampleDataModule(L.LightningDataModule):
    """Synthetic train/val pattern sets."""

    def __init__(self, n_train: int = 256, n_val: int = 64, batch_size: int = 32, length: int = 64) -> None:
        super().__init__()
        self.save_hyperparameters()

    def setup(self, stage: str | None = None) -> None:
        self.train_set = make_patterns(self.hparams.n_train, self.hparams.length, seed=0)
        self.val_set = make_patterns(self.hparams.n_val, self.hparams.length, seed=1)

    def train_dataloader(self) -> DataLoader:
        return DataLoader(self.train_set, batch_size=self.hparams.batch_size, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return eval_dataloader(self.val_set, batch_size=self.hparams.batch_size)


def train_example(out: str | Path | None, *, epochs: int = 3, n_train: int = 256, n_val: int = 64,
                  batch_size: int = 32, lr: float = 3e-3, arch_kwargs: dict | None = None, seed: int = 0,
                  device: str = "auto", devices: int | str = "auto", precision: str = "auto", num_nodes: int = 1,
                  strategy: str = "auto", max_time: str | float | None = None, resume: str | None = None,
                  work_dir: str | Path | None = None, quiet: bool = False, overwrite: bool = False,
                  module_class: type[ExampleModule] = ExampleModule) -> FitResult:
    """The example task through the suite's one training path (as every train command): seeded before the model is
    built, time budget, resume from ``<out stem>_run/checkpoints/last.ckpt``, DDP, export of the best checkpoint to
    ``out`` (None: none; then ``work_dir`` is required)."""
    dm = ExampleDataModule(n_train=n_train, n_val=n_val, batch_size=batch_size)
    with child_ranks():
        return train_run(out, work_folder(out, work_dir) if out is not None else Path(work_dir),
                         lambda: module_class(arch_kwargs=arch_kwargs, lr=lr), dm, val_size=n_val,
                         val_what="validation pattern(s)", seed=seed, device=device, devices=devices,
                         precision=precision, num_nodes=num_nodes, strategy=strategy, max_time=max_time,
                         resume=resume, quiet=quiet, overwrite=overwrite, max_epochs=epochs, log_every_n_steps=2)
