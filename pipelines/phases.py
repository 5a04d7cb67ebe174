"""Lightning training for colonoscopy phases (ColonTCN / MS-TCN), with k-fold and leave-one-group-out protocols.

Videos of different lengths are padded and masked; unlabeled frames are ignored; class weights total/count; random
temporal subsampling (stride 1-2, random offset) as augmentation; AdamW 5e-4 with linear warm-up.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from medseg.phases.evaluate import COLUMNS, evaluate_predictions
from medseg.phases.io import dataset_videos, label_path, load_features, load_labels, read_mapping
from medseg.phases.metrics import evaluate_videos
from medseg.phases.models import COLON_CLASSES, final_logits, mstcn_loss
from shared_backbones.errors import InputError

from .base import SuiteModule
from .kfold import group_kfold_splits, kfold_splits
from .trainer import build_trainer, fit

IGNORE = -100


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


def load_dataset(data_dir: str | Path, classes: list[str] | None = None) -> tuple[list[str], list, list[str]]:
    """(video ids, [(features [T, D], labels [T])], class names)."""
    ids, fdir, ldir = dataset_videos(data_dir)
    classes = classes or read_mapping(Path(data_dir)) or list(COLON_CLASSES)
    videos = []
    for vid in ids:
        f = load_features(fdir / f"{vid}.npy")
        y = load_labels(label_path(ldir, vid), classes)
        if len(y) != len(f):
            raise InputError(f"{len(y)} labels for {len(f)} feature frames", label_path(ldir, vid))
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
    """Train / validation videos (already split)."""

    def __init__(self, train: list, val: list, batch_size: int = 2) -> None:
        super().__init__()
        self.train, self.val, self.batch_size = train, val, batch_size

    def train_dataloader(self) -> DataLoader:
        return DataLoader(
            VideoDataset(self.train, augment=True), batch_size=self.batch_size, shuffle=True, collate_fn=pad_collate
        )

    def val_dataloader(self) -> DataLoader:
        return DataLoader(VideoDataset(self.val), batch_size=1, collate_fn=pad_collate)


class PhasesModule(SuiteModule):
    """Weighted CE (+ MS-TCN smoothing for ``mstcn``) over valid frames; logs val_loss, val_acc, val_edit, val_f1@50."""

    def __init__(
        self,
        arch: str = "colontcn",
        arch_kwargs: dict | None = None,
        classes: list[str] | None = None,
        class_weights: list[float] | None = None,
        fps: float = 5.0,
        lr: float = 5e-4,
        warmup_steps: int = 20,
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
        self._val: list[tuple[np.ndarray, np.ndarray]] = []

    def _loss(self, batch):
        x, y, mask = batch
        out = self.model(x, mask)
        return mstcn_loss(out, y, mask, self.class_weights, IGNORE, self.smooth), final_logits(out)

    def training_step(self, batch, batch_idx):
        loss, _ = self._loss(batch)
        self.log("train_loss", loss, prog_bar=True)
        return loss

    def validation_step(self, batch, batch_idx):
        loss, logits = self._loss(batch)
        self.log("val_loss", loss, prog_bar=True)
        n = int(batch[2].sum())
        y = batch[1][0, :n].cpu().numpy()
        self._val.append((logits[0, :, :n].argmax(0).cpu().numpy(), np.where(y == IGNORE, -1, y)))

    def on_validation_epoch_end(self) -> None:
        if self._val:
            m = evaluate_videos([p for p, _ in self._val], [r for _, r in self._val], len(self.suite_cfg["classes"]))
            self.log_dict({"val_acc": m["accuracy"], "val_edit": m["edit"], "val_f1@50": m["f1@50"]}, prog_bar=True)
        self._val.clear()


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


def train_phases(
    data_dir: str | Path,
    out: str | Path,
    *,
    arch: str = "colontcn",
    arch_kwargs: dict | None = None,
    folds: int = 4,
    fold: int | None = 0,
    groups: str | Path | None = None,
    split_dir: str | Path | None = None,
    epochs: int = 50,
    batch_size: int = 2,
    lr: float = 5e-4,
    fps: float = 5.0,
    precision: str = "auto",
    accelerator: str = "auto",
    devices: int | str = "auto",
    max_time: str | None = None,
    quiet: bool = False,
    overwrite: bool = False,
    seed: int = 0,
) -> list[FoldResult]:
    """Train one fold (``fold``) or all folds (``fold=None``): ``out`` gets ``_fold<k>`` inserted for each fold.
    With ``groups`` (CSV video,group) folds never split a group; ``folds=0`` with groups is leave-one-group-out;
    ``split_dir`` takes fixed MS-TCN split bundles instead."""
    ids, videos, classes = load_dataset(data_dir)
    dim = videos[0][0].shape[1]
    if split_dir:
        splits = bundle_splits(split_dir, ids)
    elif groups:
        splits = group_kfold_splits(read_groups(groups, ids), None if folds == 0 else folds, seed)
    else:
        splits = kfold_splits(len(ids), folds, seed)
    todo = range(len(splits)) if fold is None else [fold]
    if fold is not None and not 0 <= fold < len(splits):
        raise InputError(f"--fold {fold} out of range (0..{len(splits) - 1})")
    out = Path(out)
    results = []
    for k in todo:
        tr, va = splits[k]
        train_v, val_v = [videos[i] for i in tr], [videos[i] for i in va]
        kw = {"in_features": dim, **(arch_kwargs or {})}
        module = PhasesModule(arch, kw, classes, class_weights_of(train_v), fps, lr)
        path = out if fold is not None else out.with_name(f"{out.stem}_fold{k}{out.suffix}")
        trainer = build_trainer(
            path.parent / f"{path.stem}_run",
            max_epochs=epochs,
            max_time=max_time,
            precision=precision,
            accelerator=accelerator,
            devices=devices,
            quiet=quiet,
            seed=seed,
            log_every_n_steps=1,
        )
        res = fit(module, PhasesDataModule(train_v, val_v, batch_size), trainer, export_to=path, overwrite=overwrite)
        from medseg.phases.predict import PhaseModel

        pm = PhaseModel.from_file(res.model_file, "cpu", "fp32")
        preds = [pm.probabilities(f).argmax(1) for f, _ in val_v]
        _, total = evaluate_predictions(preds, [y for _, y in val_v], [ids[i] for i in va], classes, fps)
        results.append(FoldResult(k, res.model_file, {c: total[c] for c in COLUMNS if c in total}))
    return results


class PhasesFilesDataModule(PhasesDataModule):
    """A fold of a phases dataset folder (``features/<id>.npy``, ``labels/<id>.txt``) given by paths and numbers, as
    a LightningCLI config writes it (``pipelines/configs/phases.yaml``): k-fold, grouped (``groups`` CSV;
    ``folds=0`` = leave-one-group-out) or fixed MS-TCN split bundles (``split_dir``), as ``medseg phases train``."""

    def __init__(self, data_dir: str, folds: int = 4, fold: int = 0, groups: str | None = None,
                 split_dir: str | None = None, batch_size: int = 2, seed: int = 0) -> None:
        ids, videos, classes = load_dataset(data_dir)
        if split_dir:
            splits = bundle_splits(split_dir, ids)
        elif groups:
            splits = group_kfold_splits(read_groups(groups, ids), None if folds == 0 else folds, seed)
        else:
            splits = kfold_splits(len(ids), folds, seed)
        if not 0 <= fold < len(splits):
            raise InputError(f"fold {fold} out of range (0..{len(splits) - 1})")
        tr, va = splits[fold]
        super().__init__([videos[i] for i in tr], [videos[i] for i in va], batch_size)
        self.classes, self.in_features = classes, int(videos[0][0].shape[1])
