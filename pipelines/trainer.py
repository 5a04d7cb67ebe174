"""Trainer factory and fit-then-export, shared by every task's training."""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint, TQDMProgressBar
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger

from shared_backbones.precision import PrecisionPolicy

from .export import export_checkpoint


@dataclass
class FitResult:
    """Outcome of :func:`fit`."""

    best_checkpoint: Path | None
    best_score: float | None
    model_file: Path | None
    metrics: dict[str, float] = field(default_factory=dict)


def _accelerator_device(accelerator: str) -> str:
    import torch

    if accelerator in ("gpu", "cuda") or (accelerator == "auto" and torch.cuda.is_available()):
        return "cuda"
    return "cpu"


def build_trainer(out_dir: str | Path, *, max_epochs: int | None = None, max_steps: int = -1,
                  max_time: str | None = None, precision: str = "auto", accelerator: str = "auto",
                  devices: int | str = "auto", num_nodes: int = 1, strategy: str = "auto",
                  monitor: str = "val_loss", mode: str = "min", patience: int | None = None,
                  gradient_clip_val: float | None = None, quiet: bool = False, log_every_n_steps: int = 10,
                  check_val_every_n_epoch: int = 1, limit_train_batches: int | float | None = None,
                  limit_val_batches: int | float | None = None, seed: int | None = None) -> L.Trainer:
    """A Trainer with best+last checkpoints, optional early stopping, CSV + TensorBoard logs and the suite's
    precision policy. Multi-GPU/multi-node: pass ``devices``/``num_nodes``/``strategy="ddp"`` and launch with
    torchrun or SLURM's srun; Lightning's DDP does the rest."""
    out_dir = Path(out_dir)
    if seed is not None:
        L.seed_everything(seed, workers=True, verbose=False)
    if quiet:
        # Lightning 2.6 on torch 2.14 warns about its own pytree use on every run; nothing a user can act on
        warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\).*")
        for name in ("lightning", "lightning.pytorch", "lightning.fabric", "pytorch_lightning"):
            logging.getLogger(name).setLevel(logging.ERROR)
    policy = PrecisionPolicy.resolve(precision, _accelerator_device(accelerator))
    # Best by ``monitor`` (first: ``trainer.checkpoint_callback``), and ``last.ckpt`` rewritten after every
    # validation (Lightning >= 2.5's ``save_last`` only writes when the best one changed, which breaks resuming).
    callbacks: list[Any] = [ModelCheckpoint(dirpath=out_dir / "checkpoints", filename="best-{epoch}-{step}",
                                            monitor=monitor, mode=mode, save_top_k=1),
                            ModelCheckpoint(dirpath=out_dir / "checkpoints", filename="last", monitor=None,
                                            save_top_k=1, enable_version_counter=False)]
    if patience is not None:
        callbacks.append(EarlyStopping(monitor=monitor, mode=mode, patience=patience))
    if not quiet:
        callbacks.append(TQDMProgressBar(refresh_rate=1))
    loggers = [CSVLogger(out_dir, name="logs"), TensorBoardLogger(out_dir, name="tb", default_hp_metric=False)]
    return L.Trainer(default_root_dir=out_dir, max_epochs=max_epochs, max_steps=max_steps, max_time=max_time,
                     precision=policy.lightning, accelerator=accelerator, devices=devices, num_nodes=num_nodes,
                     strategy=strategy, callbacks=callbacks, logger=loggers, gradient_clip_val=gradient_clip_val,
                     enable_progress_bar=not quiet, enable_model_summary=not quiet,
                     log_every_n_steps=log_every_n_steps, check_val_every_n_epoch=check_val_every_n_epoch,
                     limit_train_batches=limit_train_batches, limit_val_batches=limit_val_batches)


def fit(module: L.LightningModule, datamodule: L.LightningDataModule | None, trainer: L.Trainer, *,
        export_to: str | Path | None = None, ckpt_path: str | Path | None = None,
        overwrite: bool = True) -> FitResult:
    """Fit (resuming from ``ckpt_path``), then export the best checkpoint to ``export_to``."""
    trainer.fit(module, datamodule=datamodule, ckpt_path=str(ckpt_path) if ckpt_path else None)
    ckpt_cb = trainer.checkpoint_callback
    best = Path(ckpt_cb.best_model_path) if ckpt_cb is not None and ckpt_cb.best_model_path else None
    if best is None:  # nothing monitored was logged: fall back to the latest checkpoint
        latest = [cb.best_model_path for cb in trainer.checkpoint_callbacks[1:] if cb.best_model_path]
        best = Path(latest[0]) if latest else None
    score = float(ckpt_cb.best_model_score) if ckpt_cb is not None and ckpt_cb.best_model_score is not None else None
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if getattr(v, "numel", lambda: 1)() == 1}
    model_file = None
    if export_to is not None and best is not None and trainer.is_global_zero:
        model_file = export_checkpoint(best, export_to, overwrite=overwrite)
    return FitResult(best, score, model_file, metrics)
