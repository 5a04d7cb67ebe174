"""Lightning training for colonoscopy phases (ColonTCN / MS-TCN), with k-fold and leave-one-group-out protocols.

Videos of different lengths are padded and masked; unlabeled frames are ignored; class weights total/count; random
temporal subsampling (stride 1-2, random offset) as augmentation; AdamW 5e-4 with linear warm-up.
"""

from __future__ import annotations

import csv
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset
from torchmetrics import MeanMetric
from torchmetrics.classification import MulticlassAccuracy

from medseg.phases.evaluate import COLUMNS, evaluate_predictions
from medseg.phases.io import (
    dataset_feature_width,
    dataset_videos,
    label_path,
    load_features,
    load_labels,
    match_length,
    read_mapping,
)
from medseg.phases.models import COLON_CLASSES, final_logits, mstcn_loss
from medseg.phases.segmetrics import SegmentalEdit, SegmentalF1
from shared_backbones.cliutil import prepare_outputs
from shared_backbones.errors import InputError
from shared_backbones.folds import group_kfold_splits, kfold_splits

from .base import SuiteModule, eval_sampler
from .trainer import RankFailedError, child_ranks, resolve_accelerator, resolve_resume, train_run, work_folder

__all__ = ["RankFailedError", "train_phases"]  # RankFailedError: shared by every train command (pipelines.trainer)

IGNORE = -100
OVERLAPS = (0.10, 0.25, 0.50)


class VideoDataset(Dataset):
    """(features [D, T], labels [T]) per video; ``augment`` subsamples time with a random stride and offset."""

    def __init__(self, videos: list[tuple[np.ndarray, np.ndarray]], augment: bool = False) -> None:
        self.videos, self.augment = videos, augment

    def __len__(self) -> int:
        return len(self.videos)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        f, y = self.videos[i]
        if self.augment:
            stride = int(np.random.randint(1, 3))
            off = int(np.random.randint(0, stride))
            f, y = f[off::stride], y[off::stride]
        y = np.where(y < 0, IGNORE, y)
        return torch.from_numpy(np.ascontiguousarray(f.T)), torch.from_numpy(y)


def pad_collate(batch: list[tuple[torch.Tensor, torch.Tensor]]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Pad to the longest video: features [N, D, T], labels [N, T] (IGNORE on padding), mask [N, 1, T]."""
    t = max(f.shape[1] for f, _ in batch)
    feats = torch.zeros(len(batch), batch[0][0].shape[0], t)
    labels = torch.full((len(batch), t), IGNORE, dtype=torch.long)
    mask = torch.zeros(len(batch), 1, t)
    for i, (f, y) in enumerate(batch):
        feats[i, :, : f.shape[1]], labels[i, : len(y)], mask[i, :, : f.shape[1]] = f, y, 1
    return feats, labels, mask


def load_dataset(data_dir: str | Path, classes: list[str] | None = None, layout: str = "auto",
                 notice: Callable[[str], None] | None = None) -> tuple[list[str], list, list[str]]:
    """(video ids, [(features [T, D], labels [T])], class names).

    The feature width D is the one every video shares (:func:`medseg.phases.io.dataset_feature_width`), so videos
    shorter than D (GTEA-sized MS-TCN data: 2048 x 300..1500) are read as they are. Label files follow
    :func:`medseg.phases.io.match_length` (one frame of difference tolerated, with a notice)."""
    ids, fdir, ldir = dataset_videos(data_dir)
    classes = classes or read_mapping(Path(data_dir)) or list(COLON_CLASSES)
    dim = dataset_feature_width([fdir / f"{vid}.npy" for vid in ids], layout)
    videos = []
    for vid in ids:
        f = load_features(fdir / f"{vid}.npy", layout, dim)
        lp = label_path(ldir, vid)
        y, note = match_length(load_labels(lp, classes), len(f), lp)
        if note and notice:
            notice(note)
        videos.append((f, y))
    return ids, videos, classes


def read_groups(path: str | Path, ids: list[str]) -> list[str]:
    """Group (centre/study) of each video from a CSV ``video,group``."""
    table = {}
    with open(path) as fh:
        for row in csv.reader(fh):
            if len(row) >= 2 and row[0] != "video":
                table[row[0]] = row[1]
    missing = [v for v in ids if v not in table]
    if missing:
        raise InputError(f"no group for video(s) {', '.join(missing[:3])}", path)
    return [table[v] for v in ids]


class PhasesDataModule(L.LightningDataModule):
    """Train / validation videos (already split). Under DDP every validation video is seen exactly once (no padding
    of the last rank with repeated videos), so the synced validation metrics equal a single process's."""

    def __init__(self, train: list, val: list, batch_size: int = 2) -> None:
        super().__init__()
        self.train, self.val, self.batch_size = train, val, batch_size

    def train_dataloader(self) -> DataLoader:
        return DataLoader(
            VideoDataset(self.train, augment=True), batch_size=self.batch_size, shuffle=True, collate_fn=pad_collate
        )

    def val_dataloader(self) -> DataLoader:
        ds = VideoDataset(self.val)
        trainer = self.trainer
        if trainer is not None and trainer.world_size > 1:
            sampler = eval_sampler(ds, trainer.world_size, trainer.global_rank)
            return DataLoader(ds, batch_size=1, sampler=sampler, collate_fn=pad_collate)
        return DataLoader(ds, batch_size=1, collate_fn=pad_collate)


class PhasesModule(SuiteModule):
    """Weighted CE (+ MS-TCN smoothing for ``mstcn``) over valid frames.

    Validation metrics are torchmetrics objects synced across ranks: ``val_loss`` (mean over videos), ``val_acc``
    (frame accuracy, %), ``val_edit`` and ``val_f1@{10,25,50}`` (MS-TCN segmental metrics, ``background`` class
    indices left out)."""

    def __init__(
        self,
        arch: str = "colontcn",
        arch_kwargs: dict | None = None,
        classes: list[str] | None = None,
        class_weights: list[float] | None = None,
        fps: float = 5.0,
        lr: float = 5e-4,
        warmup_steps: int = 20,
        background: list[int] | None = None,
        **kwargs: Any,
    ) -> None:
        classes = list(classes or COLON_CLASSES)
        super().__init__(
            task="phases",
            arch=arch,
            arch_kwargs={**(arch_kwargs or {}), "num_classes": len(classes)},
            classes=classes,
            preprocessing={"fps": fps},
            optimizer="adamw",
            lr=lr,
            weight_decay=1e-4,
            warmup_steps=warmup_steps,
            monitor="val_loss",
            mode="min",
            **kwargs,
        )
        self.register_buffer(
            "class_weights", torch.tensor(class_weights) if class_weights else torch.ones(len(classes))
        )
        self.smooth = 0.15 if arch == "mstcn" else 0.0
        bg = tuple(background or ())
        self.val_loss = MeanMetric()
        self.val_acc = MulticlassAccuracy(len(classes), average="micro", ignore_index=IGNORE)
        self.val_edit = SegmentalEdit(IGNORE, bg)
        self.val_f1 = torch.nn.ModuleDict({str(int(round(k * 100))): SegmentalF1(k, IGNORE, bg) for k in OVERLAPS})

    def _loss(self, batch):
        x, y, mask = batch
        out = self.model(x, mask)
        return mstcn_loss(out, y, mask, self.class_weights, IGNORE, self.smooth), final_logits(out)

    def training_step(self, batch, batch_idx):
        loss, _ = self._loss(batch)
        self.log("train_loss", loss, prog_bar=True, batch_size=batch[0].shape[0])
        return loss

    def validation_step(self, batch, batch_idx):
        loss, logits = self._loss(batch)
        pred, target = logits.argmax(1), batch[1]
        self.val_loss.update(loss)
        self.val_acc.update(pred, target)
        self.val_edit.update(pred, target)
        for m in self.val_f1.values():
            m.update(pred, target)

    def on_validation_epoch_end(self) -> None:
        # compute() syncs the sum states over every rank, so every rank logs the same numbers (sync_dist's mean of
        # equal values changes nothing; it keeps Lightning's epoch-level logging consistent under DDP)
        values = {"val_loss": self.val_loss.compute(), "val_acc": self.val_acc.compute() * 100,
                  "val_edit": self.val_edit.compute(),
                  **{f"val_f1@{k}": m.compute() for k, m in self.val_f1.items()}}
        self.log_dict({k: v.float() for k, v in values.items()}, prog_bar=True, sync_dist=True)
        for m in (self.val_loss, self.val_acc, self.val_edit, *self.val_f1.values()):
            m.reset()


def class_weights_of(videos: list) -> list[float]:
    """total / (num_classes * count) per class over labelled frames (unseen classes get weight 1)."""
    labels = np.concatenate([y[y >= 0] for _, y in videos])
    counts = np.bincount(labels, minlength=int(labels.max()) + 1).astype(float)
    return [float(labels.size / (len(counts) * c)) if c else 1.0 for c in counts]


def bundle_splits(split_dir: str | Path, ids: list[str]) -> list[tuple[list[int], list[int]]]:
    """Fixed splits from MS-TCN bundle files ``train.split<k>.bundle`` / ``test.split<k>.bundle`` (video file names)."""
    split_dir = Path(split_dir)
    pos = {v: i for i, v in enumerate(ids)}
    splits = []
    k = 1
    while (split_dir / f"train.split{k}.bundle").is_file():
        parts = []
        for kind in ("train", "test"):
            f = split_dir / f"{kind}.split{k}.bundle"
            if not f.is_file():
                raise InputError(f"{kind}.split{k}.bundle missing", split_dir)
            names = [Path(line.strip()).stem for line in f.read_text().splitlines() if line.strip()]
            unknown = [n for n in names if n not in pos]
            if unknown:
                raise InputError(f"unknown video {unknown[0]!r} (no features/labels)", f)
            parts.append([pos[n] for n in names])
        splits.append((parts[0], parts[1]))
        k += 1
    if not splits:
        raise InputError("no train.split1.bundle found", split_dir)
    return splits


@dataclass
class FoldResult:
    fold: int
    model_file: Path
    metrics: dict


def fold_splits(ids: list[str], folds: int, groups: str | Path | None, split_dir: str | Path | None,
                seed: int) -> list[tuple[list[int], list[int]]]:
    """(train, validation) indices per fold: fixed MS-TCN bundles (``split_dir``), grouped k-fold (``groups``;
    ``folds=0`` = leave-one-group-out) or k-fold."""
    if split_dir:
        return bundle_splits(split_dir, ids)
    if groups:
        return group_kfold_splits(read_groups(groups, ids), None if folds == 0 else folds, seed)
    return kfold_splits(len(ids), folds, seed)


def phases_arch_kwargs(arch: str, blocks: int | None = None, stages: int | None = None, causal: bool = False,
                       reversible: bool = False) -> dict[str, Any]:
    """The network's keyword arguments from the train options (``--blocks``/``--reversible``: ColonTCN only,
    ``--stages``: MS-TCN only)."""
    kw: dict[str, Any] = {"causal": True} if causal else {}
    if arch == "colontcn":
        if stages:
            raise InputError("--stages applies to --arch mstcn")
        kw.update({k: v for k, v in (("num_blocks", blocks), ("reversible", reversible or None)) if v is not None})
    elif blocks or reversible:
        raise InputError("--blocks and --reversible apply to --arch colontcn")
    elif stages:
        kw["num_stages"] = stages
    return kw


def train_phases(
    data_dir: str | Path,
    out: str | Path,
    *,
    arch: str = "colontcn",
    arch_kwargs: dict | None = None,
    blocks: int | None = None,
    stages: int | None = None,
    causal: bool = False,
    reversible: bool = False,
    folds: int = 4,
    fold: int | str | None = 0,
    groups: str | Path | None = None,
    split_dir: str | Path | None = None,
    epochs: int = 50,
    batch_size: int = 2,
    lr: float = 5e-4,
    fps: float = 5.0,
    layout: str = "auto",
    background: Sequence[str] | None = (),
    precision: str = "auto",
    device: str | None = None,
    accelerator: str | None = None,
    devices: int | str | list[int] = "auto",
    num_nodes: int = 1,
    strategy: str = "auto",
    max_time: str | float | None = None,
    work_dir: str | Path | None = None,
    resume: str | None = None,
    quiet: bool = False,
    overwrite: bool = False,
    seed: int = 0,
    notice: Callable[[str], None] | None = None,
) -> list[FoldResult]:
    """Train one fold (``fold``) or all folds (``fold=None`` or ``"all"``): ``out`` gets ``_fold<k>`` inserted for
    each fold, through the suite's one training path (:func:`pipelines.trainer.train_run`).

    With ``groups`` (CSV video,group) folds never split a group; ``folds=0`` with groups is leave-one-group-out;
    ``split_dir`` takes fixed MS-TCN split bundles instead (fold k = ``*.split<k+1>.bundle``). ``seed`` is set before
    each fold's model is built, so two runs with the same seed give the same weights. The work folder of a fold is
    ``<model stem>_run/`` next to its model file (or ``work_dir``, ``work_dir/fold<k>`` for every fold);
    ``resume``: ``"last"`` (each fold's ``checkpoints/last.ckpt``) or a checkpoint file (one fold only).

    Under DDP (``devices`` > 1) every rank runs this function; rank 0 alone exports one model file per fold and
    scores it, the other ranks return ``[]``; rank 0 waits for the ranks it launched and raises
    :class:`~pipelines.trainer.RankFailedError` when one of them failed."""
    fold = None if fold in (None, "all") else int(fold)
    resolve_accelerator(device, devices, accelerator)  # an unavailable device: one line, before any work
    if folds == 0 and not groups and not split_dir:
        raise InputError("--folds 0 (leave-one-group-out) needs --groups")
    kw = {**phases_arch_kwargs(arch, blocks, stages, causal, reversible), **(arch_kwargs or {})}
    ids, videos, classes = load_dataset(data_dir, layout=layout, notice=notice)
    background = list(background or ())
    index = {c.lower(): i for i, c in enumerate(classes)}
    unknown = [b for b in background if b.lower() not in index]
    if unknown:
        raise InputError(f"--background: unknown class {unknown[0]!r} (classes: {', '.join(classes)})")
    bg = [index[b.lower()] for b in background]
    dim = videos[0][0].shape[1]
    splits = fold_splits(ids, folds, groups, split_dir, seed)
    todo = range(len(splits)) if fold is None else [fold]
    if fold is not None and not 0 <= fold < len(splits):
        raise InputError(f"--fold {fold} out of range (0..{len(splits) - 1})")
    if resume not in (None, "last") and len(todo) > 1:
        raise InputError("--resume with a checkpoint file needs one --fold (or --resume alone for every fold)")
    out = Path(out)
    paths = {k: out if fold is not None else out.with_name(f"{out.stem}_fold{k}{out.suffix}") for k in todo}
    works = {k: work_folder(paths[k], work_dir, fold=None if fold is not None else k) for k in todo}
    prepare_outputs(paths.values(), overwrite=overwrite or resume is not None)  # before any fold is trained
    for k in todo:
        resolve_resume(resume, works[k])  # every checkpoint to resume from exists, before any fold is trained
    results: list[FoldResult] = []
    with child_ranks():
        for k in todo:
            tr, va = splits[k]
            train_v, val_v = [videos[i] for i in tr], [videos[i] for i in va]
            path, work = paths[k], works[k]
            try:
                res = train_run(path, work, lambda train_v=train_v: PhasesModule(
                                    arch, {"in_features": dim, **kw}, classes, class_weights_of(train_v), fps, lr,
                                    background=bg),
                                PhasesDataModule(train_v, val_v, batch_size), val_size=len(val_v),
                                val_what=f"validation video(s) in fold {k}", seed=seed, device=device,
                                devices=devices, accelerator=accelerator, precision=precision, num_nodes=num_nodes,
                                strategy=strategy, max_time=max_time, resume=resume, quiet=quiet,
                                overwrite=overwrite, max_epochs=epochs, log_every_n_steps=1)
            except RuntimeError as exc:
                if resume is not None and "state_dict" in str(exc):
                    raise InputError("the checkpoint does not fit this model (another --arch, --blocks, --stages, "
                                     "feature width or class list?)", resolve_resume(resume, work)) from None
                raise
            if not res.is_global_zero:
                continue
            if res.model_file is None:
                raise InputError(f"fold {k}: no checkpoint was saved (training stopped before its first validation; "
                                 "allow more --max-time or --epochs)", work)
            from medseg.phases.predict import PhaseModel

            pm = PhaseModel.from_file(res.model_file, "cpu", "fp32")
            preds = [pm.probabilities(f).argmax(1) for f, _ in val_v]
            _, total = evaluate_predictions(preds, [y for _, y in val_v], [ids[i] for i in va], classes, fps, bg)
            results.append(FoldResult(k, res.model_file, {c: total[c] for c in COLUMNS if c in total}))
    return results


class PhasesFilesDataModule(PhasesDataModule):
    """A fold of a phases dataset folder (``features/<id>.npy``, ``labels/<id>.txt``) given by paths and numbers, as
    a LightningCLI config writes it (``pipelines/configs/phases.yaml``): k-fold, grouped (``groups`` CSV;
    ``folds=0`` = leave-one-group-out) or fixed MS-TCN split bundles (``split_dir``), as ``medseg phases train``."""

    def __init__(self, data_dir: str, folds: int = 4, fold: int = 0, groups: str | None = None,
                 split_dir: str | None = None, batch_size: int = 2, seed: int = 0) -> None:
        ids, videos, classes = load_dataset(data_dir)
        splits = fold_splits(ids, folds, groups, split_dir, seed)
        if not 0 <= fold < len(splits):
            raise InputError(f"fold {fold} out of range (0..{len(splits) - 1})")
        tr, va = splits[fold]
        super().__init__([videos[i] for i in tr], [videos[i] for i in va], batch_size)
        self.classes, self.in_features = classes, int(videos[0][0].shape[1])
