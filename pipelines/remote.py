"""Lightning training for remote (Sentinel-2 crop stress): FFDNN / 1-D CNN on pixels, U-Net on chips.

Data: rasters + a label raster (labelled pixels, or chips for ``unet2d``), or a CSV table of per-pixel/per-field
time series (:mod:`remote.samples`). Splits are spatially blocked k-fold with a buffer (no neighbouring pixels on
both sides). The capsule model trains with the margin loss, the others with class-weighted cross-entropy; Adam with
weight decay; precision from the suite's policy. The best checkpoint of the fold is exported to the suite's model
file with its preprocessing (bands, regular date grid, index set, offset rule, SCL classes, normalisation) and the
fold's held-out metrics (overall accuracy, kappa, per-class F1).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset, TensorDataset
from torchmetrics import MeanMetric
from torchmetrics.classification import MulticlassAccuracy, MulticlassCohenKappa, MulticlassF1Score

from remote.evaluate import classification_metrics
from remote.fields import open_fields
from remote.models import CLASSES, DEFAULT_INDICES, margin_loss
from remote.naming import DEFAULT_BANDS, DEFAULT_SCL_INVALID
from remote.predict import RemoteModel
from remote.reader import OFFSET_RULE, S2Series
from remote.samples import (
    LABEL_NODATA,
    PixelSamples,
    field_samples,
    raster_chips,
    raster_samples,
    spatial_block_splits,
    table_samples,
)
from remote.timeseries import default_step, regular_grid
from shared_backbones.checkpoint import load_model_file, save_model_file
from shared_backbones.errors import InputError
from shared_backbones.folds import group_kfold_splits, kfold_splits
from shared_backbones.registry import create_model, model_entry

from .base import SuiteModule, eval_dataloader
from .trainer import child_ranks, resolve_accelerator, resolve_resume, seed_everything, train_run, work_folder


class ChipDataset(Dataset):
    """Chips [N, C, h, w] and labels [N, h, w]; ``augment`` applies random flips and 90-degree rotations."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor, augment: bool = False) -> None:
        self.x, self.y, self.augment = x, y, augment

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        x, y = self.x[i], self.y[i]
        if self.augment:
            k = int(torch.randint(0, 4, ()))
            x, y = torch.rot90(x, k, (1, 2)), torch.rot90(y, k, (0, 1))
            if bool(torch.randint(0, 2, ())):
                x, y = x.flip(2), y.flip(1)
        return x.contiguous(), y.contiguous()


class RemoteDataModule(L.LightningDataModule):
    """Train / validation tensors (already split): pixels [N, T, B] or chips [N, C, h, w]."""

    def __init__(self, train: tuple[torch.Tensor, torch.Tensor], val: tuple[torch.Tensor, torch.Tensor],
                 batch_size: int = 256, chips: bool = False) -> None:
        super().__init__()
        self.train, self.val, self.batch_size, self.chips = train, val, batch_size, chips

    def train_dataloader(self) -> DataLoader:
        ds = ChipDataset(*self.train, augment=True) if self.chips else TensorDataset(*self.train)
        return DataLoader(ds, batch_size=self.batch_size, shuffle=True, drop_last=len(ds) > self.batch_size)

    def val_dataloader(self) -> DataLoader:
        ds = ChipDataset(*self.val) if self.chips else TensorDataset(*self.val)
        return eval_dataloader(ds, batch_size=self.batch_size * (1 if self.chips else 4))


class RemoteFilesDataModule(RemoteDataModule):
    """A fold of a training set given by paths and numbers, as a LightningCLI config writes it
    (``pipelines/configs/remote.yaml``): rasters (``inputs`` + ``labels``) or a sample ``table``, read, put on the
    regular time grid and split exactly as ``remote train`` does (:func:`prepare_remote_data`). The module takes
    classes, class weights, preprocessing and the network's input arguments from here."""

    def __init__(self, table: str | None = None, inputs: list[str] | None = None, labels: str | None = None,
                 arch: str = "ffdnn", classes: list[str] | None = None, bands: list[str] | None = None,
                 indices: list[str] | None = None, grid_days: int | None = None, folds: int = 5, fold: int = 0,
                 block_size: int = 32, buffer: int = 2, chip: int = 64, max_per_class: int | None = 20000,
                 batch_size: int = 256, seed: int = 0, dates: list[str] | None = None,
                 band_order: list[str] | None = None, offset: float | None = None) -> None:
        from remote.discovery import open_series
        from remote.naming import read_date_list

        classes = list(classes or CLASSES)
        series = None
        if inputs:
            series = open_series(inputs, dates=read_date_list(dates) if dates else None, band_order=band_order,
                                 offset=offset)
        data = prepare_remote_data(series=series, labels=labels, table=table, arch=arch, classes=classes,
                                   bands=bands, indices=indices or DEFAULT_INDICES, grid_days=grid_days,
                                   offset=offset, folds=folds, block_size=block_size, buffer=buffer, chip=chip,
                                   max_per_class=max_per_class, seed=seed)
        if not 0 <= fold < len(data.splits):
            raise InputError(f"fold {fold} out of range (0..{len(data.splits) - 1})")
        train_t, val_t, cw, pre = data.fold_tensors(fold, classes, buffer)
        super().__init__(train_t, val_t, batch_size, chips=data.chips is not None)
        self.arch, self.classes, self.class_weights = arch, classes, cw
        self.preprocessing = {**pre, "fold": fold, "folds": len(data.splits)}
        self.arch_kwargs = dict(data.arch_kwargs)


class RemoteModule(SuiteModule):
    """Margin loss (capsule outputs) or weighted cross-entropy (logits, 255 = ignore); logs val_loss, val_acc
    (overall accuracy), val_kappa (Cohen's kappa) and val_f1 (macro F1) as torchmetrics reduced over every rank,
    so N processes report what one process computes on the same validation samples."""

    def __init__(self, arch: str = "ffdnn", arch_kwargs: dict | None = None, classes: list[str] | None = None,
                 preprocessing: dict | None = None, class_weights: list[float] | None = None, lr: float = 3e-3,
                 weight_decay: float = 1e-4, **kwargs: Any) -> None:
        classes = list(classes or CLASSES)
        super().__init__(task="remote", arch=arch, arch_kwargs={**(arch_kwargs or {}), "num_classes": len(classes)},
                         classes=classes, preprocessing=preprocessing, optimizer="adamw", lr=lr,
                         weight_decay=weight_decay, monitor="val_loss", mode="min", **kwargs)
        self.register_buffer("class_weights", torch.tensor(class_weights or [1.0] * len(classes)))
        self.capsule = getattr(self.model, "output_kind", "logits") == "capsule"
        self.val_loss = MeanMetric()
        self._make_metrics(len(classes))

    def _make_metrics(self, k: int) -> None:
        self.val_acc = MulticlassAccuracy(k, average="micro", ignore_index=LABEL_NODATA)
        self.val_kappa = MulticlassCohenKappa(k, ignore_index=LABEL_NODATA)
        self.val_f1 = MulticlassF1Score(k, average="macro", ignore_index=LABEL_NODATA)

    def setup(self, stage: str) -> None:
        """Configured from a YAML file without preprocessing: take classes, class weights, preprocessing and the
        network's input arguments from a :class:`RemoteFilesDataModule` (``arch_kwargs`` of the config are kept)."""
        dm = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        if self.suite_cfg["preprocessing"] or not isinstance(dm, RemoteFilesDataModule):
            return
        if dm.arch != self.suite_cfg["arch"]:
            raise InputError(f"data.arch {dm.arch!r} differs from model.arch {self.suite_cfg['arch']!r}")
        cfg = self.suite_cfg
        user = {k: v for k, v in cfg["arch_kwargs"].items() if k != "num_classes"}
        kwargs = {**dm.arch_kwargs, **user, "num_classes": len(dm.classes)}
        cfg.update(arch_kwargs=kwargs, classes=list(dm.classes), preprocessing=dict(dm.preprocessing))
        self.model = create_model(cfg["arch"], **kwargs)
        self.capsule = getattr(self.model, "output_kind", "logits") == "capsule"
        self.class_weights = torch.tensor(dm.class_weights, dtype=torch.float32)
        self._make_metrics(len(dm.classes))

    def _loss(self, batch: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        x, y = batch
        scores = self.model(x)
        if self.capsule:
            loss = margin_loss(scores.float(), y, weight=self.class_weights)
        else:
            loss = F.cross_entropy(scores.float(), y, weight=self.class_weights, ignore_index=LABEL_NODATA)
        return loss, scores

    def training_step(self, batch, batch_idx):
        loss, _ = self._loss(batch)
        self.log("train_loss", loss, prog_bar=True, batch_size=len(batch[1]))
        return loss

    def validation_step(self, batch, batch_idx):
        loss, scores = self._loss(batch)
        self.val_loss.update(loss, weight=len(batch[1]))
        pred, y = scores.argmax(1).flatten(), batch[1].flatten().long()
        self.val_acc.update(pred, y)
        self.val_kappa.update(pred, y)
        self.val_f1.update(pred, y)

    def on_validation_epoch_end(self) -> None:
        metrics = {"val_loss": self.val_loss, "val_acc": self.val_acc, "val_kappa": self.val_kappa,
                   "val_f1": self.val_f1}
        # computed values are equal on every rank; sync_dist only tells Lightning so
        self.log_dict({k: m.compute() for k, m in metrics.items()}, prog_bar=True, sync_dist=True)
        for m in metrics.values():
            m.reset()


def class_weights_of(y: np.ndarray, k: int) -> list[float]:
    """total / (k * count) per class (classes absent from the training fold get weight 1)."""
    y = y[y != LABEL_NODATA].ravel()
    counts = np.bincount(y, minlength=k).astype(float)
    return [float(y.size / (k * c)) if c else 1.0 for c in counts]


@dataclass
class FoldResult:
    """One trained fold: the exported model file and its held-out metrics."""

    fold: int
    model_file: Path
    metrics: dict
    n_train: int
    n_test: int
    parameters: int = 0


def _pixel_splits(s: PixelSamples, folds: int, block_size: int, buffer: int, seed: int) -> list:
    if s.rows is not None:
        return spatial_block_splits(s.rows, s.cols, block_size, folds, buffer, seed)
    if s.groups is not None:
        return [(np.asarray(a), np.asarray(b)) for a, b in group_kfold_splits(list(s.groups), folds, seed)]
    return [(np.asarray(a), np.asarray(b)) for a, b in kfold_splits(len(s.y), folds, seed)]


def _buffer_chip_labels(y: np.ndarray, r0: np.ndarray, c0: np.ndarray, test: np.ndarray, chip: int, buffer: int,
                        shape: tuple[int, int]) -> np.ndarray:
    """Training chips' labels with pixels within ``buffer`` of a test chip set to ignore."""
    if buffer <= 0:
        return y
    from scipy.ndimage import maximum_filter

    mask = np.zeros(shape, dtype=bool)
    for i in test:
        mask[r0[i]:r0[i] + chip, c0[i]:c0[i] + chip] = True
    near = maximum_filter(mask, size=2 * buffer + 1)
    y = y.copy()
    for i in range(len(y)):
        y[i][near[r0[i]:r0[i] + chip, c0[i]:c0[i] + chip]] = LABEL_NODATA
    return y


@dataclass
class RemoteData:
    """Samples of a training set with their folds and the preprocessing the model file records: pixel/field
    samples (``samples``) or image chips (``chips`` = (x, y, row0, col0)) for the spatial model."""

    splits: list
    pre: dict[str, Any]
    arch_kwargs: dict[str, Any]
    samples: PixelSamples | None = None
    chips: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray] | None = None
    chip: int = 0
    shape: tuple[int, int] = (0, 0)

    @property
    def n_items(self) -> int:
        return len(self.chips[0]) if self.chips is not None else len(self.samples.y)

    def fold_tensors(self, k: int, classes: Sequence[str], buffer: int
                     ) -> tuple[tuple[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor], list[float],
                                dict[str, Any]]:
        """Train and validation tensors of fold ``k``, class weights and the preprocessing (with the fold's
        normalisation for chips)."""
        tr, te = self.splits[k]
        if not len(tr) or not len(te):
            raise InputError(f"fold {k} has an empty train or test part ({len(tr)}/{len(te)} of {self.n_items} "
                             "samples)")
        pre = dict(self.pre)
        if self.chips is not None:
            xs, ys, r0, c0 = self.chips
            chip = self.chip
            yb = _buffer_chip_labels(ys, r0, c0, te, chip, buffer, self.shape)
            xtr = xs[tr]
            mean = np.nan_to_num(np.nanmean(xtr, axis=(0, 1, 3, 4)))
            std = np.nan_to_num(np.nanstd(xtr, axis=(0, 1, 3, 4)), nan=1.0) + 1e-6
            pre.update(norm_mean=mean.tolist(), norm_std=std.tolist())

            def prep(a: np.ndarray) -> torch.Tensor:
                a = (a - mean[None, None, :, None, None]) / std[None, None, :, None, None]
                return torch.from_numpy(np.nan_to_num(a).reshape(len(a), -1, chip, chip).astype(np.float32))

            return ((prep(xtr), torch.from_numpy(yb[tr])), (prep(xs[te]), torch.from_numpy(ys[te])),
                    class_weights_of(yb[tr], len(classes)), pre)
        s = self.samples
        return ((torch.from_numpy(s.x[tr]), torch.from_numpy(s.y[tr])), (torch.from_numpy(s.x[te]),
                torch.from_numpy(s.y[te])), class_weights_of(s.y[tr], len(classes)), pre)


def prepare_remote_data(*, series: S2Series | None = None, labels: str | Path | None = None,
                        table: str | Path | None = None, arch: str = "ffdnn", arch_kwargs: dict | None = None,
                        classes: Sequence[str] = CLASSES, bands: Sequence[str] | None = None,
                        indices: Sequence[str] = DEFAULT_INDICES, grid_days: int | None = None,
                        scl_invalid: Sequence[int] = DEFAULT_SCL_INVALID, offset: float | None = None,
                        folds: int = 5, block_size: int = 32, buffer: int = 2, chip: int = 64,
                        max_per_class: int | None = 20000, seed: int = 0, fields: str | Path | None = None,
                        field_id_attr: str | None = None, per_field: bool = False, quiet: bool = True) -> RemoteData:
    """Read the training samples (rasters + labels, or a table), put them on the regular time grid and split them
    (spatially blocked k-fold with a buffer; grouped by field or plain k-fold for tables without positions)."""
    classes = list(classes)
    entry = model_entry(arch)
    if entry.task != "remote":
        raise InputError(f"architecture {arch!r} is not a remote model")
    spatial = arch == "unet2d"
    if (series is None) == (table is None):
        raise InputError("give either input rasters with --labels, or --table")
    if series is not None and labels is None:
        raise InputError("training from rasters needs --labels LABELS.tif (class index per pixel, 255 = none)")
    if spatial and series is None:
        raise InputError("unet2d trains on image chips: give rasters and --labels, not a table")
    if per_field and (series is None or fields is None):
        raise InputError("--per-field trains on field means from rasters: give rasters, --labels and --fields")
    if per_field and spatial:
        raise InputError("--per-field needs a per-pixel model (ffdnn or cnn1d), not the spatial unet2d")
    pre: dict[str, Any] = {"scale": 10000, "offset": offset, "scl_invalid": list(scl_invalid),
                           "offset_rule": OFFSET_RULE,
                           "indices": list(indices),
                           "input": "spatial" if spatial else ("field" if per_field else "pixel")}
    if series is not None:
        bands = list(bands or [b for b in DEFAULT_BANDS if b in series.bands])
        series.require_bands(bands)
        step = grid_days or default_step(series.dates)
        grid = regular_grid(series.dates[0], series.dates[-1], step)
    else:
        grid = None
    pre.update(bands=bands)
    data: dict[str, Any] = {}
    if spatial:
        chip = max(32, chip)
        xs, ys, r0, c0 = raster_chips(series, labels, grid, bands, classes, chip, scl_invalid)
        splits = spatial_block_splits(r0, c0, chip, folds, 0, seed)
        data.update(chips=(xs, ys, r0, c0), chip=chip, shape=(series.grid.height, series.grid.width))
    else:
        if per_field:
            s = field_samples(series, open_fields(fields, series.grid, field_id_attr), labels, grid, bands, classes,
                              scl_invalid=scl_invalid, quiet=quiet)
        elif series is not None:
            s = raster_samples(series, labels, grid, bands, classes, max_per_class=max_per_class, seed=seed,
                               scl_invalid=scl_invalid)
        else:
            s = table_samples(table, classes, None, bands)
            bands, grid = s.bands, s.dates
            pre.update(bands=bands)
            step = default_step(grid)
            if len(set(np.diff([d.toordinal() for d in grid]))) > 1:
                grid = regular_grid(grid[0], grid[-1], step)
                s = table_samples(table, classes, grid, bands)
        splits = _pixel_splits(s, folds, block_size, buffer, seed)
        data.update(samples=s)
    pre.update(dates=[d.isoformat() for d in grid], grid_days=int(step))
    kw = dict(arch_kwargs or {})
    if spatial:
        kw.setdefault("in_channels", len(grid) * len(bands))
    else:
        kw.setdefault("bands", list(bands))
        if arch in ("ffdnn", "cnn1d"):
            kw.setdefault("indices", list(indices))
    return RemoteData(splits=splits, pre=pre, arch_kwargs=kw, **data)


def _arch_kwargs(arch: str, arch_kwargs: dict | None, channels: int | None, depth: int | None,
                 n_modes: int | None, encoder: str | None) -> dict[str, Any]:
    kw = dict(arch_kwargs or {})
    for key, value in (("channels", channels), ("depth", depth), ("n_modes", n_modes), ("encoder_name", encoder)):
        if value is not None and not (key == "n_modes" and arch == "cnn1d"):
            kw[key] = value
    return kw


def train_remote(out: str | Path, *, series: S2Series | None = None, labels: str | Path | None = None,
                 table: str | Path | None = None, arch: str = "ffdnn", arch_kwargs: dict | None = None,
                 classes: Sequence[str] | None = CLASSES, bands: Sequence[str] | None = None,
                 indices: Sequence[str] | None = DEFAULT_INDICES, grid_days: int | None = None,
                 scl_invalid: Sequence[int] | None = DEFAULT_SCL_INVALID, offset: float | None = None,
                 folds: int = 5, fold: int | str | None = 0, block_size: int = 32, buffer: int = 2, chip: int = 64,
                 max_per_class: int | None = 20000, epochs: int = 30, batch_size: int = 256, lr: float = 3e-3,
                 precision: str = "auto", accelerator: str | None = None, devices: int | str = "auto",
                 max_time: str | float | None = None, quiet: bool = False, overwrite: bool = False,
                 seed: int = 0, fields: str | Path | None = None, field_id_attr: str | None = None,
                 per_field: bool = False, device: str | None = None, num_nodes: int = 1, strategy: str = "auto",
                 resume: str | Path | None = None, work_dir: str | Path | None = None,
                 channels: int | None = None, depth: int | None = None, n_modes: int | None = None,
                 encoder: str | None = None, no_cloud_mask: bool = False) -> list[FoldResult]:
    """Train ``arch`` on rasters (``series`` + ``labels``) or a CSV/Parquet ``table``; one fold (``fold``) or all
    (``fold=None`` or ``"all"``; ``out`` gets ``_fold<k>``). With ``per_field`` (rasters + ``fields``) each field's
    mean time series is one sample, labelled with its majority class; folds are spatial blocks of field centroids.

    ``devices``/``num_nodes`` > 1 train with DDP; only global rank 0 writes model files and returns results (other
    ranks return an empty list). The work folder is ``<output stem>_run/`` (``--fold all``: ``<stem>_fold<k>_run/``,
    or ``<work_dir>/fold<k>``); ``resume="last"`` continues the fold from its ``checkpoints/last.ckpt``. Every fold
    takes the suite's one training path (:func:`pipelines.trainer.train_run`). Returns each fold's model file and
    held-out metrics."""
    classes = list(classes or CLASSES)
    if no_cloud_mask:
        if scl_invalid not in (None, DEFAULT_SCL_INVALID) and list(scl_invalid):
            raise InputError("give either --scl-invalid or --no-cloud-mask, not both")
        scl_invalid = []
    scl_invalid = DEFAULT_SCL_INVALID if scl_invalid is None else scl_invalid
    fold = None if fold in (None, "all") else int(fold)
    if fold is None and resume:
        raise InputError("--resume continues one fold: give --fold K")
    resolve_accelerator(device, devices, accelerator)  # an unavailable device: one line, before any work
    out = Path(out)
    if fold is not None:
        resolve_resume(resume, work_folder(out, work_dir))  # a missing checkpoint: one line, before any work
    seed_everything(seed)
    data = prepare_remote_data(series=series, labels=labels, table=table, arch=arch,
                               arch_kwargs=_arch_kwargs(arch, arch_kwargs, channels, depth, n_modes, encoder),
                               classes=classes, bands=bands, indices=indices or DEFAULT_INDICES, grid_days=grid_days,
                               scl_invalid=scl_invalid, offset=offset, folds=folds, block_size=block_size,
                               buffer=buffer, chip=chip, max_per_class=max_per_class, seed=seed, fields=fields,
                               field_id_attr=field_id_attr, per_field=per_field, quiet=quiet)
    splits, spatial = data.splits, data.chips is not None
    if fold is not None and not 0 <= fold < len(splits):
        raise InputError(f"--fold {fold} out of range (0..{len(splits) - 1})")
    results = []
    with child_ranks():
        for k in (range(len(splits)) if fold is None else [fold]):
            tr, te = splits[k]
            train_t, val_t, cw, pre = data.fold_tensors(k, classes, buffer)
            path = out if fold is not None else out.with_name(f"{out.stem}_fold{k}{out.suffix}")
            res = train_run(path, work_folder(path, work_dir, fold=None if fold is not None else k),
                            lambda pre=pre, cw=cw: RemoteModule(arch, data.arch_kwargs, classes, pre, cw, lr),
                            RemoteDataModule(train_t, val_t, batch_size, chips=spatial), val_size=len(te),
                            val_what="held-out sample(s)" if not spatial else "held-out chip(s)", seed=seed + k,
                            device=device, devices=devices, accelerator=accelerator, precision=precision,
                            num_nodes=num_nodes, strategy=strategy, max_time=max_time, resume=resume, quiet=quiet,
                            overwrite=overwrite, max_epochs=epochs, log_every_n_steps=5, monitor="val_loss",
                            mode="min")
            if res.is_global_zero:
                results.append(_score_fold(res.model_file, data, k, classes, block_size, buffer))
    return results


def _score_fold(model_file: Path, data: RemoteData, k: int, classes: list[str], block_size: int,
                buffer: int) -> FoldResult:
    """Held-out metrics of fold ``k``'s exported model, written into its model file."""
    tr, te = data.splits[k]
    spatial = data.chips is not None
    rm = RemoteModel.from_file(model_file, "cpu", "fp32")
    if spatial:
        xs, ys = data.chips[0], data.chips[1]
        pred = np.stack([rm.spatial_probabilities(xs[i]).argmax(0) for i in te])
        ref = ys[te]
        keep = ref != LABEL_NODATA
        m = classification_metrics(pred[keep], ref[keep], classes)
    else:
        s = data.samples
        m = classification_metrics(rm.pixel_probabilities(s.x[te]).argmax(1), s.y[te], classes)
    n_params = int(sum(p.numel() for p in rm.model.parameters()))
    mf = load_model_file(model_file, task="remote")
    mf.metrics.update(fold=k, folds=len(data.splits), test_overall_accuracy=m["overall_accuracy"],
                      test_kappa=m["kappa"], test_macro_f1=m["macro_f1"],
                      test_f1={c: v["f1"] for c, v in m["per_class"].items()}, n_train=int(len(tr)),
                      n_test=int(len(te)), block_size=block_size if not spatial else data.chip, buffer=buffer,
                      parameters=n_params)
    save_model_file(model_file, mf, overwrite=True)
    return FoldResult(k, Path(model_file), m, int(len(tr)), int(len(te)), n_params)
