"""Trainer factory and fit-then-export, shared by every task's training.

What every task gets from :func:`build_trainer` and :func:`fit`:

- best (by ``monitor``) and ``last.ckpt`` checkpoints, CSV + TensorBoard logs, the suite's precision policy;
- distributed data parallel through Lightning (``devices`` > 1 or ``num_nodes`` > 1: DDP with
  ``find_unused_parameters=False``); Lightning detects ``torchrun`` (TorchElastic) and SLURM (``srun``) launches;
- ``max_time``: a time budget that includes validation (:class:`TimeBudget`);
- ``ckpt_path="last"``: resume from the work folder's ``last.ckpt`` (epoch, step, optimiser, scheduler);
- Ctrl-C raises :class:`KeyboardInterrupt` (the CLIs print "interrupted" and exit 130) instead of exiting with 1,
  after the progress bar is closed (the line stands on its own), also when SIGINT was ignored by the parent shell
  (a background job) or swallowed inside Lightning;
- exactly one model file, written by global rank 0 after every rank has finished (barrier);
- a failed rank: :class:`RankFailedError` (the CLIs print ``<prog>: error: training process of rank N failed
  (exit code C)`` and exit 1) instead of a gloo traceback.

:func:`train_run` is the one path every train command takes (``medseg train``, ``medseg phases train``, ``audiosep
train``, ``remote train``, the example): device check, seed before the model is built, trainer, validation-set
size check, resume, fit and export. The work folder follows one rule (:func:`work_folder`).
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import signal
import sys
import threading
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import Callback, EarlyStopping, ModelCheckpoint, TQDMProgressBar
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger

from shared_backbones.cliutil import allow_ctrl_c
from shared_backbones.errors import InputError, RankFailedError, UserError
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
    global_step: int = 0


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


class _SeedSet(logging.Filter):
    """Hide Lightning's "Seed set to N" (a config's seed_everything): the suite prints nothing on every call."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "Seed set to" not in record.getMessage()


_FILTERS_ADDED = False


def _quiet_lightning(quiet: bool) -> None:
    global _FILTERS_ADDED
    if not _FILTERS_ADDED:
        for name in ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero"):
            logging.getLogger(name).addFilter(_Interrupted())
        logging.getLogger("lightning.fabric.utilities.seed").addFilter(_SeedSet())
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


def work_folder(out: str | Path, work_dir: str | Path | None = None, *, fold: int | None = None) -> Path:
    """The one rule for a train command's work folder (checkpoints, logs, caches): ``--work-dir W`` when given
    (``W/fold<k>`` for the folds of ``--fold all``), else ``<output stem>_run/`` next to the model file (``out`` is
    the file being written, so a fold of ``--fold all`` gets ``<stem>_fold<k>_run/``)."""
    if work_dir:
        return Path(work_dir) / f"fold{fold}" if fold is not None else Path(work_dir)
    out = Path(out)
    stem = out.name[: -len(".nii.gz")] if out.name.endswith(".nii.gz") else out.stem
    return out.with_name(f"{stem}_run")


def legacy_work_folder(out: str | Path) -> Path:
    """``<output>.train/``: medseg's work folder before the one rule (still read by ``--resume`` for one release)."""
    return Path(out).with_name(Path(out).name + ".train")


def resolve_resume(ckpt_path: str | Path | None, work_dir: str | Path,
                   legacy: Sequence[str | Path] = (), notice: Callable[[str], None] | None = None) -> Path | None:
    """``None`` -> None; ``"last"`` -> ``<work_dir>/checkpoints/last.ckpt`` (or, with a notice, the one in a
    ``legacy`` work folder of an older release); a path must exist."""
    if ckpt_path in (None, ""):
        return None
    path = Path(work_dir) / "checkpoints" / "last.ckpt" if str(ckpt_path) == "last" else Path(ckpt_path)
    if str(ckpt_path) == "last" and not path.is_file():
        for old in legacy:
            old_last = Path(old) / "checkpoints" / "last.ckpt"
            if old_last.is_file():
                (notice or (lambda m: print(m, file=sys.stderr)))(
                    f"notice: resuming from {old_last}: work folders are now {Path(work_dir)}/ (the old location "
                    "is read for one more release; move the folder there)")
                return old_last
    if not path.is_file():
        what = "no checkpoint to resume from (no last.ckpt in the work folder; train without --resume first)" \
            if str(ckpt_path) == "last" else "checkpoint to resume from not found"
        raise InputError(what, path)
    return path


def resolve_accelerator(device: str | None = "auto", devices: int | str | list | None = "auto",
                        accelerator: str | None = None) -> dict[str, Any]:
    """Lightning's ``accelerator``/``devices`` for the contract's ``--device``/``--devices`` through
    :func:`shared_backbones.cliutil.lightning_device` (a device this machine cannot run, e.g. ``mps`` off Apple
    silicon or ``cuda`` without a GPU, is one line, exit 2). ``accelerator`` is the older keyword of the library
    functions (``cpu``, ``gpu``/``cuda``, ``mps``, ``auto``), used when ``device`` is not given."""
    from shared_backbones.cliutil import lightning_device

    if device in (None, "auto") and accelerator not in (None, "auto"):
        device = {"gpu": "cuda"}.get(str(accelerator), str(accelerator))
    if isinstance(devices, list):
        devices = ",".join(map(str, devices))
    return lightning_device(device or "auto", "auto" if devices is None else devices)


def check_validation_size(n: int, trainer: L.Trainer, what: str = "validation item(s)") -> None:
    """One line (exit 2) when the validation set is smaller than the number of training processes: every process
    must score at least one item for the metrics, synced across processes, to stay exact."""
    world = int(trainer.num_devices) * int(trainer.num_nodes)
    if int(n) < world:
        raise InputError(f"the validation set has {n} {what}, fewer than the {world} training processes "
                         "(--devices x --num-nodes): use a larger validation set or fewer processes")


# ------------------------------------------------------------------------------------- other ranks (DDP)
#: the processes Lightning's launcher started for the other ranks of this node (rank 0 of a local launch only)
_CHILDREN: list[Any] = []
_ATEXIT = False


def _exit_code(rc: int) -> int:
    return 128 - rc if rc < 0 else rc  # killed by signal N: 128 + N, as the shell shows it


def _collect_children(trainer: L.Trainer) -> None:
    global _ATEXIT
    launcher = getattr(trainer.strategy, "launcher", None)
    for p in list(getattr(launcher, "procs", None) or []):
        if all(p is not q for q in _CHILDREN):
            _CHILDREN.append(p)
    if _CHILDREN and not _ATEXIT:
        atexit.register(_wait_for_children_at_exit)
        _ATEXIT = True


def _failed_child(timeout: float) -> tuple[int, int] | None:
    """(rank, exit code) of the first other rank that ended with an error, waiting up to ``timeout`` s for them."""
    end = time.monotonic() + timeout
    while True:
        codes = [p.poll() for p in _CHILDREN]
        for i, rc in enumerate(codes):
            if rc:
                return i + 1, _exit_code(rc)
        if all(rc is not None for rc in codes) or time.monotonic() >= end:
            return None
        time.sleep(0.1)


def _kill_children() -> None:
    for p in _CHILDREN:
        if p.poll() is None:
            p.kill()
            p.wait()
    _CHILDREN.clear()


def _wait_children() -> None:
    """Wait for the other ranks (at most 10 min each, then stop them); :class:`RankFailedError` if one failed."""
    failed = None
    for i, p in enumerate(list(_CHILDREN)):
        try:
            rc = p.wait(timeout=600)
        except Exception:  # still running after 10 min: stop it, so no process outlives the command
            p.kill()
            rc = p.wait()
        if rc and failed is None:
            failed = (i + 1, _exit_code(rc))
    _CHILDREN.clear()
    if failed:
        raise RankFailedError(*failed)


def _wait_for_children_at_exit() -> None:
    """Fallback for library use without :func:`child_ranks`: the documented line and exit 1 if a rank failed."""
    try:
        _wait_children()
    except RankFailedError as exc:
        print(f"{Path(sys.argv[0]).name}: error: {exc}", file=sys.stderr)
        sys.stderr.flush()
        os._exit(1)  # the exit status run_cli gives a failed rank


@contextlib.contextmanager
def child_ranks() -> Iterator[None]:
    """Around a whole train command (all its folds): at the end, rank 0 waits for the ranks it launched and raises
    :class:`RankFailedError` if one failed; on an error of rank 0 they are stopped (never left waiting in a
    collective until the 30-minute timeout)."""
    try:
        yield
    except BaseException:
        _kill_children()
        raise
    _wait_children()


# ------------------------------------------------------------------------------------------------- Ctrl-C
class _SigintGuard(Callback):
    """Ctrl-C during fit always ends the fit with :class:`KeyboardInterrupt`: SIGINT is handled here even when the
    parent ignored it (a command started as a background job of a script inherits SIGINT ignored, and then went on
    training, or finished with exit 0); an interrupt swallowed on the way (inside Lightning, a finaliser, a data
    loader) is raised again at the next batch and after fit."""

    def __init__(self) -> None:
        self.hit = False
        self._previous: Any = None
        self._installed = False

    def _handler(self, signum: int, frame: Any) -> None:
        self.hit = True
        raise KeyboardInterrupt

    def __enter__(self) -> _SigintGuard:
        self.hit = False
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.getsignal(signal.SIGINT)
            signal.signal(signal.SIGINT, self._handler)
            self._installed = True
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._installed:
            signal.signal(signal.SIGINT, signal.default_int_handler if self._previous in (None, signal.SIG_IGN)
                          else self._previous)
            self._installed = False

    def _check(self, *args: Any) -> None:
        if self.hit:
            raise KeyboardInterrupt

    on_train_batch_end = on_validation_batch_end = on_train_epoch_end = on_validation_end = _check

    def state_dict(self) -> dict[str, Any]:
        return {}


def _close_progress_bars(trainer: L.Trainer) -> None:
    """Close Lightning's tqdm bars, so the CLI's "interrupted" line starts on a line of its own and no bar is
    redrawn after it (a bar closed later, when garbage collected, would draw itself again)."""
    for cb in trainer.callbacks:
        if isinstance(cb, TQDMProgressBar):
            for name in ("_val_progress_bar", "_test_progress_bar", "_predict_progress_bar", "_train_progress_bar"):
                bar = getattr(cb, name, None)
                if bar is not None and not getattr(bar, "disable", True):
                    bar.close()
    sys.stderr.flush()


@contextlib.contextmanager
def fitting(trainer: L.Trainer) -> Iterator[None]:
    """Around ``trainer.fit`` (or a LightningCLI subcommand): Ctrl-C, also when SIGINT was ignored or swallowed,
    raises :class:`KeyboardInterrupt` (not Lightning's ``sys.exit(1)``) after the progress bars are closed; when rank
    0 fails because another rank failed first (its error is then the collective's "Connection closed by peer"),
    :class:`RankFailedError` instead. The other ranks are stopped on any failure (they would wait in a collective
    until the 30-minute timeout) and collected for :func:`child_ranks` otherwise."""
    guard = next((cb for cb in trainer.callbacks if isinstance(cb, _SigintGuard)), None)
    if guard is None:
        guard = _SigintGuard()
        trainer.callbacks.append(guard)
    try:
        with guard:
            yield
    except (KeyboardInterrupt, SystemExit) as exc:
        _collect_children(trainer)
        if isinstance(exc, KeyboardInterrupt) or trainer.interrupted or guard.hit:
            _close_progress_bars(trainer)
            _kill_children()
            raise KeyboardInterrupt from None
        raise
    except BaseException as exc:
        _collect_children(trainer)
        failed = None if isinstance(exc, UserError) else _failed_child(timeout=5.0)
        _kill_children()
        if failed:
            raise RankFailedError(*failed) from None
        raise
    _collect_children(trainer)
    if trainer.interrupted or guard.hit:
        _close_progress_bars(trainer)
        _kill_children()
        raise KeyboardInterrupt


def fit(module: L.LightningModule, datamodule: L.LightningDataModule | None, trainer: L.Trainer, *,
        export_to: str | Path | None = None, ckpt_path: str | Path | None = None,
        overwrite: bool = True) -> FitResult:
    """Fit (resuming from ``ckpt_path``; ``"last"`` = the work folder's ``last.ckpt``), then export the best
    checkpoint to ``export_to`` on global rank 0 after every rank has finished.

    Ctrl-C raises :class:`KeyboardInterrupt` (Lightning itself would call ``sys.exit(1)``), after the progress bars
    are closed. When another rank failed, rank 0 raises :class:`RankFailedError` instead of the collective's error."""
    resume = ckpt_path if isinstance(ckpt_path, Path) and ckpt_path.is_file() else \
        resolve_resume(ckpt_path, trainer.default_root_dir)
    with fitting(trainer):
        trainer.fit(module, datamodule=datamodule, ckpt_path=str(resume) if resume else None)
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
    return FitResult(best, score, model_file, metrics, bool(trainer.is_global_zero), int(trainer.global_step))


def train_run(out: str | Path | None, work_dir: str | Path, make_module: Callable[[], L.LightningModule],
              datamodule: L.LightningDataModule | None, *, val_size: int | None = None,
              val_what: str = "validation item(s)", seed: int | None = 0, device: str | None = "auto",
              devices: int | str | list | None = "auto", accelerator: str | None = None, precision: str = "auto",
              num_nodes: int = 1, strategy: Any = "auto", max_time: str | float | None = None,
              resume: str | Path | None = None, legacy_work_dirs: Sequence[str | Path] = (), quiet: bool = False,
              overwrite: bool = False, notice: Callable[[str], None] | None = None,
              **trainer_kwargs: Any) -> FitResult:
    """The one training path of the suite: check the device (one line where this machine cannot run it), find the
    checkpoint to resume from (before any work), seed, build the module (after seeding: identical seeds give
    identical weights), build the trainer in ``work_dir`` (time budget, checkpoints, logs, DDP), refuse a validation
    set smaller than the number of processes (``val_size``), fit and export the best checkpoint to ``out`` (None: no
    export) on global rank 0. ``trainer_kwargs`` go to :func:`build_trainer` (``max_epochs``, ``monitor`` ...)."""
    allow_ctrl_c()
    mapped = resolve_accelerator(device, devices, accelerator)
    ckpt = resolve_resume(resume, work_dir, legacy_work_dirs, notice)
    seed_everything(seed)
    module = make_module()
    trainer = build_trainer(work_dir, max_time=max_time, precision=precision, accelerator=mapped["accelerator"],
                            devices=mapped["devices"], num_nodes=num_nodes, strategy=strategy, quiet=quiet,
                            **trainer_kwargs)
    if val_size is not None:
        check_validation_size(val_size, trainer, val_what)
    return fit(module, datamodule, trainer, export_to=out, ckpt_path=ckpt,
               overwrite=overwrite or ckpt is not None)
