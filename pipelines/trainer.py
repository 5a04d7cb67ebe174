"""Trainer factory and fit-then-export, shared by every task's training.

What every task gets from :func:`build_trainer` and :func:`fit`:

- best (by ``monitor``) and ``last.ckpt`` checkpoints, CSV + TensorBoard logs, the suite's precision policy;
- distributed data parallel through Lightning (``devices`` > 1 or ``num_nodes`` > 1: DDP with
  ``find_unused_parameters=False``); Lightning detects ``torchrun`` (TorchElastic) and SLURM (``srun``) launches;
- ``max_time``: a time budget that includes validation (:class:`TimeBudget`);
- ``ckpt_path="last"``: resume from the work folder's ``last.ckpt`` (epoch, step, optimiser, scheduler);
- Ctrl-C raises :class:`KeyboardInterrupt` (the CLIs print "interrupted" and exit 130) instead of exiting with 1;
- exactly one model file, written by global rank 0 after every rank has finished (barrier).
"""

from __future__ import annotations

import atexit
import logging
import os
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import Callback, EarlyStopping, ModelCheckpoint, TQDMProgressBar
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger

from shared_backbones.errors import InputError
from shared_backbones.options import duration_seconds
from shared_backbones.precision import PrecisionPolicy

from .export import export_checkpoint


@dataclass
class FitResult:
    """Outcome of :func:`fit` (``model_file`` is None on ranks other than global rank 0)."""

    best_checkpoint: Path | None
    best_score: float | None
    model_file: Path | None
    metrics: dict[str, float] = field(default_factory=dict)
    is_global_zero: bool = True


def seed_everything(seed: int | None) -> None:
    """Seed Python, NumPy and torch (and data-loader workers) before anything random is built."""
    if seed is not None:
        L.seed_everything(int(seed), workers=True, verbose=False)


def is_global_zero() -> bool:
    """True on the process that writes outputs (global rank 0, or a run without distribution)."""
    for var in ("RANK", "SLURM_PROCID", "GLOBAL_RANK"):
        if os.environ.get(var, "").isdigit():
            return int(os.environ[var]) == 0
    # Lightning's own launcher sets LOCAL_RANK/NODE_RANK for the processes it starts
    return int(os.environ.get("LOCAL_RANK", "0") or 0) == 0 and int(os.environ.get("NODE_RANK", "0") or 0) == 0


def parse_duration(value: str | float | int | dict | None) -> float | None:
    """Seconds of a ``max_time`` budget in the suite's one syntax (``90s``, ``45m``, ``2h``, ``DD:HH:MM:SS``, a
    number of seconds, or Lightning's dict): :func:`shared_backbones.options.duration_seconds`."""
    return duration_seconds(value)


class TimeBudget(Callback):
    """Stop training so that the whole run, validation and checkpointing included, ends within ``seconds``.

    Lightning's ``max_time`` only checks between training batches, so the last validation (and on big volumes that
    is minutes) runs past the budget. Here the time of a validation is measured (estimated from the sanity check
    before the first one) and training stops as soon as one more training batch plus a validation would not fit;
    Lightning then validates and checkpoints that last epoch. The decision is taken on rank 0 and broadcast."""

    def __init__(self, seconds: float, safety: float = 1.1) -> None:
        self.seconds, self.safety = float(seconds), float(safety)
        self.start: float | None = None
        self.val_seconds = 0.0
        self.batch_seconds = 0.0
        self._t_batch: float | None = None
        self._t_val: float | None = None
        self.stopped = False

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.start = time.monotonic()

    def elapsed(self) -> float:
        return 0.0 if self.start is None else time.monotonic() - self.start

    def _stop_if(self, trainer: L.Trainer, needed: float) -> None:
        decision = self.elapsed() + self.safety * needed >= self.seconds
        decision = bool(trainer.strategy.broadcast(decision, src=0))
        if decision:
            trainer.should_stop = True
            self.stopped = True

    def on_train_batch_start(self, trainer: L.Trainer, *args: Any) -> None:
        self._t_batch = time.monotonic()

    def on_train_batch_end(self, trainer: L.Trainer, *args: Any) -> None:
        if self._t_batch is not None:
            took = time.monotonic() - self._t_batch
            self.batch_seconds = took if not self.batch_seconds else 0.8 * self.batch_seconds + 0.2 * took
        self._stop_if(trainer, self.batch_seconds + self.val_seconds)

    def on_validation_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._t_val = time.monotonic()

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._t_val is None:
            return
        took = time.monotonic() - self._t_val
        if trainer.sanity_checking:  # a few batches: scale to the whole validation set
            done = max(1, int(trainer.num_sanity_val_steps))
            total = sum(int(n) for n in (trainer.num_val_batches or [done]))
            self.val_seconds = max(self.val_seconds, took * total / done)
            return
        self.val_seconds = max(took, 0.5 * self.val_seconds)
        self._stop_if(trainer, 2 * self.batch_seconds + self.val_seconds)

    def state_dict(self) -> dict[str, Any]:
        return {}


class _Interrupted(logging.Filter):
    """Hide Lightning's Ctrl-C message: the CLIs print their own one-line "interrupted"."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "Detected KeyboardInterrupt" not in record.getMessage()


_FILTERS_ADDED = False


def _quiet_lightning(quiet: bool) -> None:
    global _FILTERS_ADDED
    if not _FILTERS_ADDED:
        for name in ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero"):
            logging.getLogger(name).addFilter(_Interrupted())
        _FILTERS_ADDED = True
    # Lightning 2.6 on torch 2.14 warns about its own pytree use on every run; nothing a user can act on
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\).*")
    if quiet:
        for name in ("lightning", "lightning.pytorch", "lightning.fabric", "pytorch_lightning"):
            logging.getLogger(name).setLevel(logging.ERROR)
        # --quiet: no advice about logging intervals or worker counts either
        warnings.filterwarnings("ignore", category=UserWarning, module=r"lightning(\.|$)")


def _device_count(devices: int | str | list | None) -> int:
    if isinstance(devices, int):
        return devices
    if isinstance(devices, (list, tuple)):
        return len(devices)
    if isinstance(devices, str) and devices.strip().lstrip("-").isdigit():
        return int(devices)
    if isinstance(devices, str) and "," in devices:
        return len([d for d in devices.split(",") if d.strip()])
    return 1


def ddp_strategy(strategy: Any = "auto", devices: int | str | list | None = "auto", num_nodes: int = 1,
                 find_unused_parameters: bool = False) -> Any:
    """Lightning's DDP (``find_unused_parameters=False``: every parameter must take part in the loss) when more
    than one process trains; ``strategy`` other than auto/ddp is passed through unchanged."""
    from lightning.pytorch.strategies import DDPStrategy

    if strategy in ("auto", None) and (_device_count(devices) > 1 or num_nodes > 1):
        strategy = "ddp"
    if strategy == "ddp":
        return DDPStrategy(find_unused_parameters=find_unused_parameters)
    return strategy


def build_trainer(out_dir: str | Path, *, max_epochs: int | None = None, max_steps: int = -1,
                  max_time: str | float | dict | None = None, precision: str = "auto", accelerator: str = "auto",
                  devices: int | str = "auto", num_nodes: int = 1, strategy: Any = "auto",
                  monitor: str = "val_loss", mode: str = "min", patience: int | None = None,
                  gradient_clip_val: float | None = None, quiet: bool = False, log_every_n_steps: int = 10,
                  check_val_every_n_epoch: int = 1, limit_train_batches: int | float | None = None,
                  limit_val_batches: int | float | None = None, seed: int | None = None,
                  device: str | None = None, find_unused_parameters: bool = False,
                  callbacks: list[Any] | None = None) -> L.Trainer:
    """A Trainer with best+last checkpoints, optional early stopping, CSV + TensorBoard logs, the suite's precision
    policy, a time budget that includes validation (``max_time``) and DDP when ``devices``/``num_nodes`` ask for
    more than one process (launch with Lightning's own launcher, ``torchrun`` or SLURM's ``srun``).

    ``device`` (the CLI's ``--device auto|cpu|cuda|cuda:N|mps``) overrides ``accelerator``/``devices`` through
    :func:`shared_backbones.cliutil.lightning_device`."""
    from shared_backbones.cliutil import lightning_device

    out_dir = Path(out_dir)
    seed_everything(seed)
    _quiet_lightning(quiet)
    if device is not None:
        mapped = lightning_device(device, devices)
        accelerator, devices = mapped["accelerator"], mapped["devices"]
    if isinstance(devices, str) and devices.isdigit():
        devices = int(devices)
    policy = PrecisionPolicy.resolve(precision, _accelerator_device(accelerator))
    # Best by ``monitor`` (first: ``trainer.checkpoint_callback``), and ``last.ckpt`` rewritten after every
    # validation (Lightning >= 2.5's ``save_last`` only writes when the best one changed, which breaks resuming).
    cbs: list[Any] = [ModelCheckpoint(dirpath=out_dir / "checkpoints", filename="best-{epoch}-{step}",
                                      monitor=monitor, mode=mode, save_top_k=1),
                      ModelCheckpoint(dirpath=out_dir / "checkpoints", filename="last", monitor=None,
                                      save_top_k=1, enable_version_counter=False)]
    if patience is not None:
        cbs.append(EarlyStopping(monitor=monitor, mode=mode, patience=patience))
    budget = parse_duration(max_time)
    if budget is not None:
        cbs.append(TimeBudget(budget))
    if not quiet:
        cbs.append(TQDMProgressBar(refresh_rate=1))
    cbs.extend(callbacks or [])
    loggers = [CSVLogger(out_dir, name="logs"), TensorBoardLogger(out_dir, name="tb", default_hp_metric=False)]
    return L.Trainer(default_root_dir=out_dir, max_epochs=max_epochs, max_steps=max_steps,
                     precision=policy.lightning, accelerator=accelerator, devices=devices, num_nodes=num_nodes,
                     strategy=ddp_strategy(strategy, devices, num_nodes, find_unused_parameters),
                     callbacks=cbs, logger=loggers, gradient_clip_val=gradient_clip_val,
                     enable_progress_bar=not quiet, enable_model_summary=not quiet,
                     log_every_n_steps=log_every_n_steps, check_val_every_n_epoch=check_val_every_n_epoch,
                     limit_train_batches=limit_train_batches, limit_val_batches=limit_val_batches)


def _accelerator_device(accelerator: str) -> str:
    import torch

    if accelerator in ("gpu", "cuda") or (accelerator == "auto" and torch.cuda.is_available()):
        return "cuda"
    return "cpu"


def resolve_resume(ckpt_path: str | Path | None, work_dir: str | Path) -> Path | None:
    """``None`` -> None; ``"last"`` -> ``<work_dir>/checkpoints/last.ckpt``; a path must exist."""
    if ckpt_path in (None, ""):
        return None
    path = Path(work_dir) / "checkpoints" / "last.ckpt" if str(ckpt_path) == "last" else Path(ckpt_path)
    if not path.is_file():
        what = "no last.ckpt in the work folder to resume from" if str(ckpt_path) == "last" else \
            "checkpoint to resume from not found"
        raise InputError(what, path)
    return path


def _wait_for_children(procs: list[Any]) -> None:
    """At exit of rank 0: wait for the ranks Lightning started, and fail if one of them failed."""
    failed = []
    for p in procs:
        try:
            rc = p.wait(timeout=600)
        except Exception:  # still running after 10 min: stop it, so no process outlives the command
            p.kill()
            rc = p.wait()
        if rc:
            failed.append(rc)
    if failed:
        print(f"{Path(sys.argv[0]).name}: error: {len(failed)} training process(es) failed (exit code "
              f"{', '.join(map(str, failed))})", file=sys.stderr)
        sys.stderr.flush()
        os._exit(1)


_WATCHED: set[int] = set()


def _stop_children(trainer: L.Trainer) -> None:
    """Rank 0 failed: end the processes Lightning started for the other ranks."""
    for p in list(getattr(getattr(trainer.strategy, "launcher", None), "procs", []) or []):
        if p.poll() is None:
            p.kill()
            p.wait()


def _watch_children(trainer: L.Trainer) -> None:
    launcher = getattr(trainer.strategy, "launcher", None)
    procs = list(getattr(launcher, "procs", []) or [])
    new = [p for p in procs if id(p) not in _WATCHED]
    if new:
        _WATCHED.update(id(p) for p in new)
        atexit.register(_wait_for_children, new)


def fit(module: L.LightningModule, datamodule: L.LightningDataModule | None, trainer: L.Trainer, *,
        export_to: str | Path | None = None, ckpt_path: str | Path | None = None,
        overwrite: bool = True) -> FitResult:
    """Fit (resuming from ``ckpt_path``; ``"last"`` = the work folder's ``last.ckpt``), then export the best
    checkpoint to ``export_to`` on global rank 0 after every rank has finished.

    Ctrl-C raises :class:`KeyboardInterrupt` (Lightning itself would call ``sys.exit(1)``)."""
    resume = resolve_resume(ckpt_path, trainer.default_root_dir)
    try:
        trainer.fit(module, datamodule=datamodule, ckpt_path=str(resume) if resume else None)
    except SystemExit:
        if trainer.interrupted:
            raise KeyboardInterrupt from None
        raise
    except BaseException:
        _stop_children(trainer)  # the other ranks would wait in a collective until the 30-minute timeout
        raise
    if trainer.interrupted:
        raise KeyboardInterrupt
    _watch_children(trainer)
    ckpt_cb = trainer.checkpoint_callback
    best = Path(ckpt_cb.best_model_path) if ckpt_cb is not None and ckpt_cb.best_model_path else None
    if best is None:  # nothing monitored was logged: fall back to the latest checkpoint
        latest = [cb.best_model_path for cb in trainer.checkpoint_callbacks[1:] if cb.best_model_path]
        best = Path(latest[0]) if latest else None
    score = float(ckpt_cb.best_model_score) if ckpt_cb is not None and ckpt_cb.best_model_score is not None else None
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if getattr(v, "numel", lambda: 1)() == 1}
    trainer.strategy.barrier("convsuite-fit-done")
    model_file = None
    if export_to is not None and best is not None and trainer.is_global_zero:
        model_file = export_checkpoint(best, export_to, overwrite=overwrite)
    trainer.strategy.barrier("convsuite-exported")
    return FitResult(best, score, model_file, metrics, bool(trainer.is_global_zero))
