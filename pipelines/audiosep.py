"""Lightning training for audiosep: Conv-TasNet with SI-SNR + utterance-level PIT.

Data: a LibriMix-style folder (``mix/``, ``s1/``, ``s2/`` ...) or dynamic mixing from a folder of single-speaker
files (random crops, random relative gains). Adam 1e-3 halved after 3 epochs without improvement, gradient
clipping at L2 norm 5 (the paper's recipe); precision from the suite's policy; export of the best model file.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import soundfile as sf
import torch
from torch.utils.data import DataLoader, Dataset

import audiosep.models  # noqa: F401  (registers the architectures)
from audiosep.evaluate import source_dirs
from audiosep.metrics import pit_si_snr_loss, separation_scores
from shared_backbones.errors import InputError

from .base import SuiteModule
from .kfold import kfold_splits
from .trainer import FitResult, build_trainer, fit


def _crop(arrays: list[np.ndarray], n: int | None, rng: np.random.Generator | None) -> list[np.ndarray]:
    length = min(len(a) for a in arrays)
    if n is None or length <= n:
        out = [a[:length] for a in arrays]
        return out if n is None else [np.pad(a, (0, n - length)) for a in out]
    start = int(rng.integers(0, length - n + 1)) if rng is not None else 0
    return [a[start : start + n] for a in arrays]


def _read(path: Path, rate: int) -> np.ndarray:
    a, r = sf.read(str(path), dtype="float32", always_2d=True)
    if r != rate:
        raise InputError(f"sample rate {r} Hz, expected {rate} Hz (resample the data set first)", path)
    return a.mean(1)


class LibriMixDataset(Dataset):
    """Mixtures and sources from ``mix/`` and ``s1/`` ... with random crops of ``segment`` seconds."""

    def __init__(
        self,
        root: str | Path,
        rate: int = 8000,
        segment: float | None = 4.0,
        files: list[str] | None = None,
        train: bool = True,
    ) -> None:
        self.root = Path(root)
        self.srcs = source_dirs(self.root)
        self.files = files or sorted(
            p.name for p in (self.root / "mix").iterdir() if p.suffix.lower() in (".wav", ".flac")
        )
        self.rate, self.train = rate, train
        self.n = None if segment is None else int(segment * rate)

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        name = self.files[i]
        arrays = [_read(self.root / "mix" / name, self.rate)] + [_read(d / name, self.rate) for d in self.srcs]
        rng = np.random.default_rng() if self.train else None
        arrays = _crop(arrays, self.n, rng)
        return torch.from_numpy(arrays[0])[None], torch.from_numpy(np.stack(arrays[1:]))


class DynamicMixDataset(Dataset):
    """On-the-fly mixtures of ``num_sources`` random single-speaker files (random crops, gains within +-5 dB)."""

    def __init__(
        self,
        folder: str | Path,
        rate: int = 8000,
        segment: float = 4.0,
        num_sources: int = 2,
        length: int = 1000,
        seed: int | None = None,
    ) -> None:
        self.files = sorted(p for p in Path(folder).rglob("*") if p.suffix.lower() in (".wav", ".flac"))
        if len(self.files) < num_sources:
            raise InputError(f"dynamic mixing needs at least {num_sources} audio files", folder)
        self.rate, self.n, self.k, self.length, self.seed = rate, int(segment * rate), num_sources, length, seed

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        rng = np.random.default_rng(None if self.seed is None else self.seed + i)
        picks = rng.choice(len(self.files), self.k, replace=False)
        srcs = _crop([_read(self.files[j], self.rate) for j in picks], self.n, rng)
        srcs = np.stack([s / (np.sqrt((s**2).mean()) + 1e-8) * 0.05 * 10 ** (rng.uniform(-5, 5) / 20) for s in srcs])
        return torch.from_numpy(srcs.sum(0).astype(np.float32))[None], torch.from_numpy(srcs.astype(np.float32))


class AudiosepDataModule(L.LightningDataModule):
    """Train/validation split of a LibriMix folder (``val_dir`` or a k-fold split), or dynamic mixing."""

    def __init__(
        self,
        data_dir: str,
        val_dir: str | None = None,
        dynamic_mixing: bool = False,
        rate: int = 8000,
        segment: float = 4.0,
        batch_size: int = 4,
        num_workers: int = 0,
        fold: int = 0,
        folds: int = 5,
        epoch_size: int = 1000,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()

    def setup(self, stage: str | None = None) -> None:
        hp = self.hparams
        if hp.val_dir:
            self.val_set = LibriMixDataset(hp.val_dir, hp.rate, None, train=False)
            self.train_set = (
                DynamicMixDataset(hp.data_dir, hp.rate, hp.segment, len(self.val_set.srcs), hp.epoch_size)
                if hp.dynamic_mixing
                else LibriMixDataset(hp.data_dir, hp.rate, hp.segment)
            )
            return
        if hp.dynamic_mixing:
            raise InputError("dynamic mixing needs --val-dir (a LibriMix folder) for validation", hp.data_dir)
        files = LibriMixDataset(hp.data_dir, hp.rate).files
        train_idx, val_idx = kfold_splits(len(files), hp.folds, seed=0)[hp.fold]
        self.train_set = LibriMixDataset(hp.data_dir, hp.rate, hp.segment, [files[i] for i in train_idx])
        self.val_set = LibriMixDataset(hp.data_dir, hp.rate, None, [files[i] for i in val_idx], train=False)

    def train_dataloader(self) -> DataLoader:
        return DataLoader(
            self.train_set,
            batch_size=self.hparams.batch_size,
            shuffle=True,
            num_workers=self.hparams.num_workers,
            drop_last=len(self.train_set) > self.hparams.batch_size,
        )

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.val_set, batch_size=1, num_workers=self.hparams.num_workers)


class AudiosepModule(SuiteModule):
    """Negative SI-SNR with utterance-level PIT; logs ``val_loss`` and ``val_si_snri``."""

    def __init__(
        self,
        arch: str = "convtasnet",
        arch_kwargs: dict | None = None,
        sample_rate: int = 8000,
        num_sources: int = 2,
        lr: float = 1e-3,
        **kwargs: Any,
    ) -> None:
        kw = {**(arch_kwargs or {}), "num_sources": num_sources}
        super().__init__(
            task="audiosep",
            arch=arch,
            arch_kwargs=kw,
            classes=[f"s{k + 1}" for k in range(num_sources)],
            preprocessing={"sample_rate": sample_rate},
            optimizer="adam",
            lr=lr,
            scheduler=kwargs.pop("scheduler", "plateau"),
            scheduler_patience=3,
            scheduler_factor=0.5,
            monitor="val_loss",
            mode="min",
            **kwargs,
        )

    def training_step(self, batch, batch_idx):
        mix, srcs = batch
        loss, _ = pit_si_snr_loss(self(mix).float(), srcs)
        self.log("train_loss", loss, prog_bar=True)
        return loss

    def validation_step(self, batch, batch_idx):
        mix, srcs = batch
        est = self(mix).float()
        loss, _ = pit_si_snr_loss(est, srcs)
        self.log("val_loss", loss, prog_bar=True)
        self.log("val_si_snri", separation_scores(est, srcs, mix)["si_snri"].mean(), prog_bar=True)


def train_audiosep(
    data_dir: str | Path,
    out: str | Path,
    *,
    arch: str = "convtasnet-small",
    arch_kwargs: dict | None = None,
    val_dir: str | Path | None = None,
    dynamic_mixing: bool = False,
    sample_rate: int = 8000,
    num_sources: int = 2,
    segment: float = 4.0,
    batch_size: int = 4,
    epochs: int = 50,
    max_steps: int = -1,
    max_time: str | None = None,
    lr: float = 1e-3,
    precision: str = "auto",
    accelerator: str = "auto",
    devices: int | str = "auto",
    fold: int = 0,
    folds: int = 5,
    run_dir: str | Path | None = None,
    resume: str | Path | None = None,
    quiet: bool = False,
    overwrite: bool = False,
    seed: int = 0,
) -> FitResult:
    """Train a separation model and export the best checkpoint to ``out`` (the suite's model file)."""
    module = AudiosepModule(arch=arch, arch_kwargs=arch_kwargs, sample_rate=sample_rate, num_sources=num_sources, lr=lr)
    dm = AudiosepDataModule(
        str(data_dir),
        None if val_dir is None else str(val_dir),
        dynamic_mixing,
        sample_rate,
        segment,
        batch_size,
        fold=fold,
        folds=folds,
    )
    run_dir = Path(run_dir) if run_dir else Path(out).with_suffix("").parent / (Path(out).stem + "_run")
    trainer = build_trainer(
        run_dir,
        max_epochs=epochs,
        max_steps=max_steps,
        max_time=max_time,
        precision=precision,
        accelerator=accelerator,
        devices=devices,
        monitor="val_loss",
        mode="min",
        gradient_clip_val=5.0,
        quiet=quiet,
        seed=seed,
        log_every_n_steps=5,
    )
    return fit(module, dm, trainer, export_to=out, ckpt_path=resume, overwrite=overwrite)
