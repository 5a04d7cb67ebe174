"""Base LightningModule for every task: model from the registry, optimiser/scheduler from hparams, export."""

from __future__ import annotations

import math
from typing import Any

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset

from shared_backbones.errors import InputError
from shared_backbones.registry import create_model


class _Cfg(dict):
    __getattr__ = dict.__getitem__


class SuiteModule(L.LightningModule):
    """Holds ``self.model = create_model(arch, **arch_kwargs)``; subclasses implement the steps and log ``monitor``.

    Keep constructor arguments primitive, so Lightning's ``.ckpt`` files load with ``torch.load(weights_only=True)``;
    the export metadata (task, arch, kwargs, classes, preprocessing) is saved under ``checkpoint[\"convsuite\"]``.
    """

    def __init__(self, task: str, arch: str, arch_kwargs: dict[str, Any] | None = None,
                 classes: list[str] | None = None, preprocessing: dict[str, Any] | None = None,
                 optimizer: str = "adam", lr: float = 1e-3, weight_decay: float = 0.0,
                 scheduler: str | None = None, scheduler_patience: int = 3, scheduler_factor: float = 0.5,
                 warmup_steps: int = 0, monitor: str = "val_loss", mode: str = "min") -> None:
        super().__init__()
        _check_optimiser(lr, weight_decay, warmup_steps, scheduler_patience, scheduler_factor)
        # Lightning records the concrete subclass's own arguments (so LightningCLI can rebuild it on resume);
        # the suite's export metadata and optimiser settings are kept here and written to checkpoint["convsuite"].
        self.save_hyperparameters()
        self.suite_cfg: dict[str, Any] = {
            "task": task, "arch": arch, "arch_kwargs": dict(arch_kwargs or {}), "classes": list(classes or []),
            "preprocessing": dict(preprocessing or {}), "optimizer": optimizer, "lr": lr, "weight_decay": weight_decay,
            "scheduler": scheduler, "scheduler_patience": scheduler_patience, "scheduler_factor": scheduler_factor,
            "warmup_steps": warmup_steps, "monitor": monitor, "mode": mode}
        self.model = create_model(arch, **(arch_kwargs or {}))

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return self.model(*args, **kwargs)

    def configure_optimizers(self) -> Any:
        hp = _Cfg(self.suite_cfg)
        params = [p for p in self.parameters() if p.requires_grad]
        if hp.optimizer == "adam":
            opt = torch.optim.Adam(params, lr=hp.lr, weight_decay=hp.weight_decay)
        elif hp.optimizer == "adamw":
            opt = torch.optim.AdamW(params, lr=hp.lr, weight_decay=hp.weight_decay)
        elif hp.optimizer == "sgd":
            opt = torch.optim.SGD(params, lr=hp.lr, momentum=0.99, nesterov=True, weight_decay=hp.weight_decay)
        else:
            raise ValueError(f"unknown optimizer {hp.optimizer!r}")
        scheds = []
        if hp.warmup_steps:
            warm = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / hp.warmup_steps))
            scheds.append({"scheduler": warm, "interval": "step"})
        if hp.scheduler == "plateau":
            s = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, mode=hp.mode, factor=hp.scheduler_factor,
                                                           patience=hp.scheduler_patience)
            scheds.append({"scheduler": s, "monitor": hp.monitor, "interval": "epoch"})
        elif hp.scheduler in ("cosine", "poly"):
            total = max(1, int(self.trainer.estimated_stepping_batches)) if self._trainer is not None else 1000
            if hp.scheduler == "cosine":
                s = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=total)
            else:
                s = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: max(0.0, 1 - step / total) ** 0.9)
            scheds.append({"scheduler": s, "interval": "step"})
        elif hp.scheduler is not None:
            raise ValueError(f"unknown scheduler {hp.scheduler!r}")
        return [opt], scheds

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["convsuite"] = dict(self.suite_cfg)

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if "convsuite" in checkpoint:
            self.suite_cfg = dict(checkpoint["convsuite"])


def _check_optimiser(lr: float, weight_decay: float, warmup_steps: int, patience: int, factor: float) -> None:
    """The optimiser settings of a config, checked when the module is built (one line, exit 2) rather than by the
    optimiser after the trainer started."""
    def finite(v: Any) -> bool:
        return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)

    if not (finite(lr) and 0 < lr <= 10):
        raise InputError(f"learning rate must be a number in (0, 10], got {lr!r}")
    if not (finite(weight_decay) and 0 <= weight_decay <= 1):
        raise InputError(f"weight_decay must be a number in [0, 1], got {weight_decay!r}")
    if not (isinstance(warmup_steps, int) and warmup_steps >= 0 and isinstance(patience, int) and patience >= 0):
        raise InputError(f"warmup_steps and scheduler_patience must be whole numbers >= 0, got {warmup_steps!r}, "
                         f"{patience!r}")
    if not (finite(factor) and 0 < factor < 1):
        raise InputError(f"scheduler_factor must be a number in (0, 1), got {factor!r}")


def eval_sampler(dataset: Dataset, num_replicas: int | None = None, rank: int | None = None) -> Any:
    """The validation sampler under DDP: each rank a disjoint shard, without the padding Lightning's default
    ``DistributedSampler`` adds (repeated samples would bias the metrics), so that with metrics synced across ranks
    (torchmetrics) N processes report exactly what one process computes. None without distribution. A set smaller
    than the number of processes is one line (exit 2), not an assertion deep in Lightning."""
    import torch.distributed as dist

    if num_replicas is None:
        if not (dist.is_available() and dist.is_initialized()):
            return None
        num_replicas, rank = dist.get_world_size(), dist.get_rank()
    if num_replicas <= 1:
        return None
    if len(dataset) < num_replicas:
        from shared_backbones.errors import InputError

        raise InputError(f"the validation set has {len(dataset)} item(s), fewer than the {num_replicas} training "
                         "processes: use a larger validation set or fewer processes")
    from lightning.pytorch.overrides.distributed import UnrepeatedDistributedSampler

    return UnrepeatedDistributedSampler(dataset, num_replicas=num_replicas, rank=rank, shuffle=False)


def eval_dataloader(dataset: Dataset, batch_size: int = 1, **kwargs: Any) -> DataLoader:
    """A validation/test loader with :func:`eval_sampler` under DDP (disjoint shards, exact synced metrics)."""
    sampler = eval_sampler(dataset)
    if sampler is not None:
        return DataLoader(dataset, batch_size=batch_size, sampler=sampler, **kwargs)
    return DataLoader(dataset, batch_size=batch_size, shuffle=False, **kwargs)
