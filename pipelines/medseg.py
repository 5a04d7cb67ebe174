"""Lightning glue for 3-D segmentation on an nnU-Net/MSD dataset folder (``imagesTr/``, ``labelsTr/``,
``dataset.json``): the data (reading, planning, preprocessing cache, patch sampling) lives in :mod:`medseg.dataset`
and :mod:`medseg.planning`; this module holds

- :class:`MedsegDataModule`: a fold's patches (train) and whole volumes (validation), built from paths and numbers;
- :class:`MedsegModule`: Dice + cross-entropy on every deep-supervision output (weights 1/2^i, normalised; every
  output takes part, so DDP runs with ``find_unused_parameters=False``), validation by Gaussian sliding window over
  the held-out volumes with per-class Dice as torchmetrics (synced across ranks), logging ``val_dice``;
- :func:`train_medseg`: plan, train a fold (one process, DDP over ``devices``/``num_nodes``, torchrun or SLURM)
  and export the best checkpoint with all its preprocessing.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader
from torchmetrics import MeanMetric

from medseg.dataset import (  # noqa: F401  (re-exported: these lived here before)
    FOREGROUND_FRACTION,
    DatasetInfo,
    PatchDataset,
    Volume,
    VolumeDataset,
    cache_job,
    cached_case,
    crop_patch,
    plan_key,
    preprocess_case,
    read_dataset,
    seed_worker,
)
from medseg.planning import arch_kwargs_for, plan_strides, plan_training  # noqa: F401
from medseg.sliding_window import sliding_window
from shared_backbones.cliutil import progress, say
from shared_backbones.errors import InputError
from shared_backbones.folds import kfold_splits
from shared_backbones.registry import create_model

from .base import SuiteModule, eval_dataloader
from .trainer import (
    FitResult,
    child_ranks,
    is_global_zero,
    legacy_work_folder,
    resolve_accelerator,
    resolve_resume,
    seed_everything,
    train_run,
    work_folder,
)

TASK = "medseg"


class MedsegDataModule(L.LightningDataModule):
    """Preprocesses the dataset once and serves patches (train) and volumes (validation) of a fold.

    With ``cache_dir`` the preprocessed cases are saved in ``cache_dir/<plan hash>/`` as ``.npy`` files and
    memory-mapped, so RAM use does not grow with the dataset (each patch reads only its own voxels) and later runs
    with the same plan skip the preprocessing; without it they are kept in memory. Without ``plan`` the dataset is
    planned here (``spacing`` / ``patch_size`` override), as when the module is configured from a YAML file."""

    def __init__(self, data_dir: str, plan: dict[str, Any] | None = None, fold: int = 0, folds: int = 5,
                 batch_size: int = 2, steps_per_epoch: int = 50, workers: int = 0, seed: int = 0,
                 cache_dir: str | None = None, quiet: bool = True, spacing: list[float] | None = None,
                 patch_size: list[int] | None = None) -> None:
        super().__init__()
        info = read_dataset(data_dir)
        self.classes = info.classes
        plan = plan or plan_training(info, spacing, patch_size)  # planned here when used from a config file
        self.data_dir, self.plan, self.fold, self.folds = data_dir, plan, fold, folds
        self.batch_size, self.steps, self.workers, self.seed = batch_size, steps_per_epoch, workers, seed
        # one cache folder per plan: a changed spacing or normalisation never reuses stale arrays
        self.cache_dir = str(Path(cache_dir) / plan_key(plan)) if cache_dir else None
        self.quiet = quiet
        self.train_vols: list[Volume] = []
        self.val_vols: list[Volume] = []

    def split(self, n: int) -> tuple[list[int], list[int]]:
        """Train and validation indices of the fold (k-fold over cases, seeded)."""
        folds = min(self.folds, n)
        if not 0 <= self.fold < folds:
            raise InputError(f"--fold {self.fold} is out of range for {folds} folds")
        return kfold_splits(n, folds, seed=self.seed)[self.fold]

    def prepare_data(self) -> None:
        """Fill the cache once per node (Lightning runs this on one process; ``setup`` then only maps files), with
        ``workers`` processes when there are several cases."""
        if not self.cache_dir:
            return
        info = read_dataset(self.data_dir)
        jobs = [(self.cache_dir, f, lab, self.plan, name) for name, f, lab in info.cases]
        bar = progress(total=len(jobs), desc="preprocess", unit="case", quiet=self.quiet)
        if self.workers > 1 and len(jobs) > 1:
            import multiprocessing as mp
            from concurrent.futures import ProcessPoolExecutor

            with ProcessPoolExecutor(min(self.workers, len(jobs)), mp_context=mp.get_context("spawn"),
                                     initializer=torch.set_num_threads, initargs=(1,)) as ex:
                for _ in ex.map(cache_job, jobs):
                    bar.update(1)
        else:
            for job in jobs:
                cache_job(job)
                bar.update(1)
        bar.close()

    def setup(self, stage: str | None = None) -> None:
        if self.train_vols:
            return
        info = read_dataset(self.data_dir)
        tr, va = self.split(len(info.cases))
        vols = [cached_case(Path(self.cache_dir), f, lab, self.plan, name) if self.cache_dir
                else preprocess_case(f, lab, self.plan, name) for name, f, lab in info.cases]
        self.train_vols = [vols[i] for i in tr]
        self.val_vols = [vols[i] for i in va]

    def train_dataloader(self) -> DataLoader:
        # a resumed run (current_epoch restored before the loaders are built) draws new patches, not epoch 0's again
        epoch = int(self.trainer.current_epoch) if self.trainer is not None else 0
        ds = PatchDataset(self.train_vols, self.plan["patch_size"], self.steps * self.batch_size,
                          seed=self.seed + 1_000_003 * epoch)
        return DataLoader(ds, batch_size=self.batch_size, shuffle=False, num_workers=self.workers,
                          persistent_workers=self.workers > 0, worker_init_fn=seed_worker)

    def val_dataloader(self) -> DataLoader:
        return eval_dataloader(VolumeDataset(self.val_vols), batch_size=1)


# ----------------------------------------------------------------------------------------------------- module
def deep_supervision_weights(n: int) -> list[float]:
    """Weights 1/2^i of the deep-supervision outputs (full resolution first), normalised to sum to 1.

    nnU-Net gives the coarsest output weight 0; its head then takes no part in the loss, and DDP with
    ``find_unused_parameters=False`` stops at the first step (nnU-Net itself falls back to 1e-6 under DDP). Here
    every output the network builds is weighted, so all parameters receive gradients."""
    w = [1 / 2 ** i for i in range(n)]
    s = sum(w)
    return [v / s for v in w]


class MedsegModule(SuiteModule):
    """Dice + CE with deep supervision; validation by Gaussian sliding window, logging ``val_dice`` (mean over the
    volumes of the mean Dice of the classes present), ``val_dice_<class>`` and ``val_loss``: torchmetrics means,
    reduced over every rank, so N processes report what one process computes on the same volumes."""

    def __init__(self, arch: str = "unet3d", arch_kwargs: dict | None = None, classes: list[str] | None = None,
                 preprocessing: dict | None = None, optimizer: str = "sgd", lr: float = 1e-2,
                 weight_decay: float = 3e-5, scheduler: str | None = "poly", **kwargs: Any) -> None:
        super().__init__(task=TASK, arch=arch, arch_kwargs=arch_kwargs, classes=classes, preprocessing=preprocessing,
                         optimizer=optimizer, lr=lr, weight_decay=weight_decay, scheduler=scheduler,
                         monitor="val_dice", mode="max", **kwargs)
        from monai.losses import DiceCELoss

        self.loss_fn = DiceCELoss(include_background=False, to_onehot_y=True, softmax=True, batch=True,
                                  smooth_nr=1e-5, smooth_dr=1e-5)
        self.val_dice = MeanMetric()
        self.val_loss = MeanMetric()
        self.val_class_dice = torch.nn.ModuleList()
        self._make_class_metrics(len(classes or []))

    def _make_class_metrics(self, n: int) -> None:
        while len(self.val_class_dice) < max(0, n - 1):
            self.val_class_dice.append(MeanMetric())

    def setup(self, stage: str) -> None:
        """Without preprocessing given (e.g. ``pipelines fit -c pipelines/configs/medseg.yaml``), take the plan,
        classes and channels from the datamodule and build the network for them (``arch_kwargs`` from the config
        are kept: ``base_channels``, ``channels``, ...). Runs before checkpoint weights are restored."""
        dm = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        if self.suite_cfg["preprocessing"] or not isinstance(dm, MedsegDataModule):
            return
        cfg = self.suite_cfg
        kwargs = arch_kwargs_for(cfg["arch"], dm.plan, len(dm.classes), cfg["arch_kwargs"])
        cfg.update(arch_kwargs=kwargs, classes=list(dm.classes),
                   preprocessing={k: v for k, v in dm.plan.items() if k != "strides"})
        self.model = create_model(cfg["arch"], **kwargs)
        self._make_class_metrics(len(dm.classes))

    def loss(self, outputs: torch.Tensor | list[torch.Tensor], target: torch.Tensor) -> torch.Tensor:
        """Weighted Dice+CE over the deep-supervision outputs (target downsampled by nearest neighbour)."""
        outs = outputs if isinstance(outputs, (list, tuple)) else [outputs]
        total = outs[0].new_zeros((), dtype=torch.float32)
        for w, out in zip(deep_supervision_weights(len(outs)), outs):
            t = target[:, None].float()
            if t.shape[2:] != out.shape[2:]:
                t = F.interpolate(t, size=out.shape[2:], mode="nearest")
            total = total + w * self.loss_fn(out.float(), t)
        return total

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        x, y = batch
        loss = self.loss(self(x), y)
        self.log("train_loss", loss, prog_bar=True, batch_size=x.shape[0])
        return loss

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        x, y = batch
        pre = self.suite_cfg["preprocessing"]
        logits = sliding_window(self.model, x, pre["patch_size"], overlap=0.5, batch_size=2)
        pred = logits.max(1).indices  # = argmax(1), much faster on CPU
        dices = []
        for c in range(1, logits.shape[1]):
            p, t = pred == c, y == c
            if t.any():
                d = 2 * (p & t).sum().double() / (p.sum() + t.sum()).double()
                dices.append(d)
                if c - 1 < len(self.val_class_dice):
                    self.val_class_dice[c - 1].update(d)
        dice = torch.stack(dices).mean() if dices else torch.tensor(1.0 if not (pred > 0).any() else 0.0)
        self.val_dice.update(dice)
        self.val_loss.update(self.loss(logits, y))

    def on_validation_epoch_end(self) -> None:
        names = self.suite_cfg.get("classes") or []
        values = {"val_dice": self.val_dice.compute(), "val_loss": self.val_loss.compute()}
        for c, metric in enumerate(self.val_class_dice, start=1):
            # a class absent from every validation volume has no Dice (compute() of an empty mean is nan)
            v = metric.compute()
            if torch.isfinite(v):
                values[f"val_dice_{names[c] if c < len(names) else c}"] = v
            metric.reset()
        # computed values are equal on every rank (the same keys too); sync_dist only tells Lightning so
        self.log("val_dice", values.pop("val_dice"), prog_bar=True, sync_dist=True)
        self.log_dict(values, sync_dist=True)
        self.val_dice.reset()
        self.val_loss.reset()


def train_medseg(data_dir: str | Path, out: str | Path, *, arch: str = "unet3d", arch_kwargs: dict | None = None,
                 fold: int = 0, folds: int = 5, epochs: int = 50, steps_per_epoch: int = 50,
                 patch_size: list[int] | None = None, batch_size: int = 2, spacing: list[float] | None = None,
                 optimizer: str = "sgd", lr: float = 1e-2, scheduler: str | None = "poly", precision: str = "auto",
                 device: str = "auto", devices: int | str = "auto", workers: int = 0,
                 work_dir: str | Path | None = None, resume: str | Path | None = None, seed: int = 0,
                 quiet: bool = False, overwrite: bool = False, max_time: str | float | None = None,
                 base_channels: int | None = None, num_nodes: int = 1, strategy: str = "auto",
                 accelerator: str | None = None) -> FitResult:
    """Plan, train a fold and export the best checkpoint (by ``val_dice``) to ``out`` with its preprocessing,
    through the suite's one training path (:func:`pipelines.trainer.train_run`).

    ``devices``/``num_nodes`` > 1 train with DDP (Lightning relaunches the command in each process, or detects a
    torchrun / SLURM launch); only global rank 0 writes ``out``, after every rank has finished. The work folder is
    ``<output stem>_run/`` (or ``work_dir``); ``resume="last"`` continues from its ``checkpoints/last.ckpt`` (the
    older ``<output>.train/`` is still found, with a notice); ``max_time`` bounds the whole run, validation
    included."""
    if fold == "all":
        raise InputError("medseg train trains one fold at a time: give --fold K (run the command once per fold)")
    resolve_accelerator(device, devices, accelerator)  # an unavailable device: one line, before any work
    work = work_folder(out, work_dir)
    legacy = [] if work_dir else [legacy_work_folder(out)]
    resolve_resume(resume, work, legacy, notice=lambda m: None)  # a missing checkpoint: one line, before any work
    seed_everything(seed)  # before planning and before the network's weights are drawn
    info = read_dataset(data_dir)
    n_folds = min(folds, len(info.cases))
    if not 0 <= int(fold) < n_folds:
        raise InputError(f"--fold {fold} is out of range for {n_folds} folds")
    nonfinite: list[tuple[str, int]] = []
    plan = plan_training(info, spacing, patch_size, nonfinite=nonfinite)
    if nonfinite:
        say(f"{len(nonfinite)} of {len(info.cases)} training case(s) hold NaN/Inf voxels ("
            + ", ".join(f"{n}: {k}" for n, k in nonfinite[:3]) + (", ..." if len(nonfinite) > 3 else "")
            + "): treated as background, left out of the normalisation statistics", quiet or not is_global_zero())
    extra = dict(arch_kwargs or {})
    if base_channels:
        extra["base_channels"] = int(base_channels)
    kwargs = arch_kwargs_for(arch, plan, len(info.classes), extra)
    say(f"plan: {len(info.cases)} cases, {len(info.classes) - 1} classes, spacing "
        f"{' x '.join(f'{v:.3g}' for v in plan['spacing'])} mm (z, y, x), patch {plan['patch_size']}, "
        f"strides {plan['strides']}, normalisation {'/'.join(n['scheme'] for n in plan['normalization'])}",
        quiet or not is_global_zero())
    preprocessing = {k: v for k, v in plan.items() if k != "strides"}
    preprocessing.update({"dataset": info.root.name, "fold": int(fold), "folds": folds})
    dm = MedsegDataModule(str(data_dir), plan, fold=int(fold), folds=folds, batch_size=batch_size,
                          steps_per_epoch=steps_per_epoch, workers=workers, seed=seed,
                          cache_dir=str(work / "preprocessed"), quiet=quiet)
    val_size = len(dm.split(len(info.cases))[1])

    def make_module() -> MedsegModule:
        return MedsegModule(arch=arch, arch_kwargs=kwargs, classes=info.classes, preprocessing=preprocessing,
                            optimizer=optimizer, lr=lr, scheduler=scheduler)

    with child_ranks():
        return train_run(out, work, make_module, dm, val_size=val_size, val_what="validation case(s)", seed=seed,
                         device=device, devices=devices, accelerator=accelerator, precision=precision,
                         num_nodes=num_nodes, strategy=strategy, max_time=max_time, resume=resume,
                         legacy_work_dirs=legacy, quiet=quiet, overwrite=overwrite, max_epochs=epochs,
                         monitor="val_dice", mode="max", gradient_clip_val=12.0,
                         log_every_n_steps=min(10, steps_per_epoch),
                         notice=lambda m: say(m, quiet or not is_global_zero()))
