"""Lightning training for 3-D segmentation on an nnU-Net/MSD dataset folder (``imagesTr/``, ``labelsTr/``,
``dataset.json``), following nnU-Net's recipe at a small scale:

- planning: target spacing = median spacing of the training cases, normalisation per channel (CT: clip to the
  0.5/99.5 percentiles of foreground intensities, then dataset mean/std; otherwise per-image z-score), patch size
  from the median resampled shape, downsampling strides that skip the coarse axis of anisotropic data;
- patch sampling with foreground oversampling (a third of the patches centred on a random foreground voxel of a
  random class present in the case);
- MONAI augmentations: rotation/scaling, mirroring, intensity scaling, gamma, Gaussian noise;
- Dice + cross-entropy on every deep-supervision output (weights 1/2^i, coarsest dropped, normalised);
- validation: Gaussian sliding window over the whole held-out volumes, mean foreground Dice (``val_dice``);
- preprocessed cases cached as ``.npy`` under the work folder and memory-mapped (RAM does not grow with the dataset);
- k-fold splits from :mod:`pipelines.kfold`; the best checkpoint is exported with all its preprocessing.
"""

from __future__ import annotations

import json
import math
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

from medseg import models as _models  # noqa: F401  (registers the architectures)
from medseg.io import Case, is_nifti, model_array, read_case
from medseg.preprocess import ct_statistics, normalise, resample, target_shape
from medseg.sliding_window import sliding_window
from shared_backbones.cliutil import progress, say
from shared_backbones.errors import InputError
from shared_backbones.registry import create_model

from .base import SuiteModule
from .kfold import kfold_splits
from .trainer import FitResult, build_trainer, fit

TASK = "medseg"
FOREGROUND_FRACTION = 1 / 3


# ----------------------------------------------------------------------------------------------- dataset folder
@dataclass
class DatasetInfo:
    """An nnU-Net/MSD dataset: training cases (name, channel files, label file), class and channel names."""

    root: Path
    cases: list[tuple[str, list[Path], Path]]
    classes: list[str]
    channels: list[str]


def _channel_files(root: Path, listed: str, n_channels: int) -> list[Path]:
    path = (root / listed).resolve() if not Path(listed).is_absolute() else Path(listed)
    if path.is_file():
        return [path]
    stem = path.name[:-7] if path.name.endswith(".nii.gz") else path.stem
    files = [path.with_name(f"{stem}_{c:04d}.nii.gz") for c in range(n_channels)]
    missing = [f for f in files if not f.is_file()]
    if missing:
        raise InputError("image file of a training case not found", missing[0])
    return files


def read_dataset(root: str | Path) -> DatasetInfo:
    """Parse ``dataset.json`` (MSD / nnU-Net v1 ``training`` list, or nnU-Net v2 ``channel_names`` + files)."""
    root = Path(root)
    meta_path = root / "dataset.json"
    if not root.is_dir():
        raise InputError("dataset folder not found", root)
    if not meta_path.is_file():
        raise InputError("no dataset.json (expected an nnU-Net/MSD dataset folder)", root)
    try:
        meta = json.loads(meta_path.read_text())
    except json.JSONDecodeError as exc:
        raise InputError(f"invalid JSON ({exc.msg}, line {exc.lineno})", meta_path) from None
    chans = meta.get("channel_names") or meta.get("modality") or {"0": "image"}
    channels = [str(chans[k]) for k in sorted(chans, key=lambda k: int(k))]
    raw = meta.get("labels") or {}
    try:
        labels = {(int(k) if str(k).isdigit() else int(v)): (str(v) if str(k).isdigit() else str(k))
                  for k, v in raw.items()}
    except (TypeError, ValueError):
        raise InputError("'labels' must map label numbers to names", meta_path) from None
    if len(labels) < 2:
        raise InputError("'labels' must list background and at least one class", meta_path)
    classes = [labels.get(i, f"class_{i}") for i in range(max(labels) + 1)]
    cases = []
    if meta.get("training"):
        for entry in meta["training"]:
            img, lab = entry["image"], entry["label"]
            label = (root / lab).resolve()
            if not label.is_file():
                raise InputError("label file of a training case not found", label)
            name = Path(lab).name.replace(".nii.gz", "").replace(".nii", "")
            cases.append((name, _channel_files(root, img, len(channels)), label))
    else:
        for label in sorted(p for p in (root / "labelsTr").glob("*") if is_nifti(p)):
            name = label.name.replace(".nii.gz", "").replace(".nii", "")
            cases.append((name, _channel_files(root, f"imagesTr/{label.name}", len(channels)), label))
    if len(cases) < 2:
        raise InputError("need at least two training cases", meta_path)
    return DatasetInfo(root, cases, classes, channels)


# ---------------------------------------------------------------------------------------------------- planning
def plan_strides(patch: list[int], spacing: list[float], max_pools: int = 5, min_size: int = 4) -> list[list[int]]:
    """nnU-Net-like downsampling: halve an axis while it stays >= ``min_size`` voxels and its spacing is at most
    twice the finest current spacing (so thick-slice axes are pooled later)."""
    size, sp, strides = list(patch), list(spacing), []
    for _ in range(max_pools):
        finest = min(sp)
        s = [2 if size[a] / 2 >= min_size and sp[a] <= 2 * finest else 1 for a in range(3)]
        if s == [1, 1, 1]:
            break
        strides.append(s)
        size = [size[a] // s[a] for a in range(3)]
        sp = [sp[a] * s[a] for a in range(3)]
    return strides


def _round_up(v: int, m: int) -> int:
    return int(math.ceil(v / m) * m)


def plan_training(info: DatasetInfo, spacing: list[float] | None = None, patch_size: list[int] | None = None,
                  max_patch: int = 128) -> dict[str, Any]:
    """Target spacing, normalisation, patch size and strides from the training cases."""
    spacings, shapes, fg_values = [], [], []
    ct = [c.upper() == "CT" for c in info.channels]
    for _, files, label in info.cases:
        case = read_case(files)
        arr, geom = model_array(case)
        spacings.append(geom.spacing)
        shapes.append(arr.shape[1:])
        if any(ct):
            lab = model_array(read_case(label))[0][0] > 0
            fg_values.append(arr[:, lab][:, :: max(1, int(lab.sum()) // 10000)])
    target = [float(v) for v in (spacing or np.median(np.asarray(spacings), axis=0))]
    med_shape = np.median([target_shape(s, sp, target) for s, sp in zip(shapes, spacings)], axis=0)
    if patch_size:
        patch = [int(p) for p in patch_size]
    else:
        patch = [min(_round_up(int(m), 8), max_patch) for m in med_shape]
    strides = plan_strides(patch, target)
    total = [int(np.prod([s[a] for s in strides])) for a in range(3)]
    patch = [_round_up(p, t) for p, t in zip(patch, total)]
    norm = []
    for c, is_ct in enumerate(ct):
        norm.append(ct_statistics(np.concatenate([v[c] for v in fg_values])) if is_ct and fg_values
                    else {"scheme": "zscore"})
    return {"orientation": "RAS", "axis_order": "zyx", "spacing": target, "patch_size": patch,
            "normalization": norm, "in_channels": len(info.channels), "channel_names": list(info.channels),
            "strides": strides}


def arch_kwargs_for(arch: str, plan: dict[str, Any], num_classes: int, extra: dict[str, Any] | None = None) -> dict:
    """Constructor arguments of ``arch`` for the planned strides; ``extra`` overrides (``base_channels`` sets the
    first stage's width of ``unet3d`` and ``revunet3d``)."""
    extra = dict(extra or {})
    strides = plan["strides"]
    kw: dict[str, Any] = {"in_channels": plan["in_channels"], "num_classes": num_classes}
    if arch == "unet3d":
        kw["strides"] = strides
    elif arch.startswith("stunet"):
        extra.pop("base_channels", None)
        kw["pool_op_kernel_sizes"] = (strides + [[1, 1, 1]] * 5)[:5]
    elif arch.startswith("revunet3d"):
        base = int(extra.pop("base_channels", 16))
        kw["strides"] = strides
        kw["channels"] = [min(base * 2 ** i, 256) for i in range(len(strides) + 1)]
    kw.update(extra)
    return kw


# ------------------------------------------------------------------------------------------------------- data
@dataclass
class Volume:
    """A preprocessed training case in the model frame (arrays may be memory-mapped ``.npy`` files)."""

    name: str
    image: np.ndarray | torch.Tensor     # [C, z, y, x] float32, normalised, resampled
    label: np.ndarray | torch.Tensor     # [z, y, x] uint8
    foreground: list[torch.Tensor]       # per present class: [n, 3] voxel coordinates (subsampled)

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(int(v) for v in self.label.shape)  # type: ignore[return-value]


def preprocess_case(files: list[Path], label_file: Path | None, plan: dict[str, Any], name: str = "") -> Volume:
    """Reorient, normalise and resample image (trilinear) and label (nearest) to the planned spacing."""
    case: Case = read_case(files)
    arr, geom = model_array(case, plan["orientation"])
    image = normalise(torch.from_numpy(arr), plan["normalization"])
    shape = target_shape(arr.shape[1:], geom.spacing, plan["spacing"])
    image = resample(image, shape).contiguous()
    label = torch.zeros(shape, dtype=torch.uint8)
    fg: list[torch.Tensor] = []
    if label_file is not None:
        lab_case = read_case(label_file)
        if lab_case.spatial_shape != case.spatial_shape:
            raise InputError(f"label shape {lab_case.spatial_shape} differs from the image's {case.spatial_shape}",
                             label_file)
        lab = torch.from_numpy(model_array(lab_case, plan["orientation"])[0][0].round()).float()
        if tuple(lab.shape) != tuple(shape):
            lab = F.interpolate(lab[None, None], size=shape, mode="nearest")[0, 0]
        label = lab.to(torch.uint8)
        for k in torch.unique(label).tolist():
            if k:
                idx = torch.nonzero(label == k)
                fg.append(idx[torch.randperm(len(idx), generator=torch.Generator().manual_seed(k))[:5000]])
    return Volume(name, image, label, fg)


def plan_key(plan: dict[str, Any]) -> str:
    """A short hash of everything that changes the preprocessed arrays (cache folders are keyed by it)."""
    import hashlib

    keep = {k: plan[k] for k in ("orientation", "spacing", "normalization") if k in plan}
    return hashlib.sha1(json.dumps(keep, sort_keys=True, default=float).encode()).hexdigest()[:12]


def cached_case(cache: Path, files: list[Path], label_file: Path | None, plan: dict[str, Any],
                name: str) -> Volume:
    """The preprocessed case from ``cache`` (memory-mapped), preprocessing and saving it first if needed. Files are
    written under temporary names and renamed, so an interrupted run never leaves a half-written case."""
    cache.mkdir(parents=True, exist_ok=True)
    img_p, lab_p, fg_p = cache / f"{name}.npy", cache / f"{name}_seg.npy", cache / f"{name}_fg.pt"
    sources = [*files, *([label_file] if label_file else [])]
    fresh = all(p.is_file() for p in (img_p, lab_p, fg_p)) and \
        min(p.stat().st_mtime for p in (img_p, lab_p, fg_p)) >= max(p.stat().st_mtime for p in sources)
    if not fresh:
        vol = preprocess_case(files, label_file, plan, name)
        for path, arr in ((img_p, vol.image), (lab_p, vol.label)):
            tmp = path.with_name(f".{path.stem}.tmp.npy")
            np.save(tmp, np.asarray(arr))
            tmp.replace(path)
        tmp = fg_p.with_name(f".{fg_p.name}.tmp")
        torch.save([t.to(torch.int32) for t in vol.foreground], tmp)
        tmp.replace(fg_p)
    fg = [t.long() for t in torch.load(fg_p, weights_only=True)]
    return Volume(name, np.load(img_p, mmap_mode="r"), np.load(lab_p, mmap_mode="r"), fg)


def crop_patch(vol: Volume, start: list[int], patch: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """The patch at ``start`` (may lie partly outside the volume: zero padding there), read without loading the
    rest of a memory-mapped volume."""
    shape = vol.shape
    src = tuple(slice(max(s, 0), min(s + p, n)) for s, p, n in zip(start, patch, shape))
    img = torch.from_numpy(np.array(vol.image[(slice(None), *src)], dtype=np.float32))  # copies out of the map
    lab = torch.from_numpy(np.array(vol.label[src])).long()
    if tuple(lab.shape) != tuple(patch):
        before = [sl.start - s for sl, s in zip(src, start)]
        after = [p - b - (sl.stop - sl.start) for p, b, sl in zip(patch, before, src)]
        flat = [v for b, a in zip(reversed(before), reversed(after)) for v in (b, a)]
        img, lab = F.pad(img, flat), F.pad(lab, flat)
    return img, lab


def _augment(image: torch.Tensor, label: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    from monai.transforms import (
        Compose,
        RandAdjustContrastd,
        RandAffined,
        RandFlipd,
        RandGaussianNoised,
        RandScaleIntensityd,
    )

    global _AUG
    if _AUG is None:
        _AUG = Compose([
            RandAffined(keys=("image", "label"), prob=0.2, rotate_range=(0.26, 0.26, 0.26),
                        scale_range=(0.15, 0.15, 0.15), mode=("bilinear", "nearest"), padding_mode="zeros"),
            RandFlipd(keys=("image", "label"), prob=0.5, spatial_axis=0),
            RandFlipd(keys=("image", "label"), prob=0.5, spatial_axis=1),
            RandFlipd(keys=("image", "label"), prob=0.5, spatial_axis=2),
            RandScaleIntensityd(keys="image", factors=0.25, prob=0.15),
            RandAdjustContrastd(keys="image", gamma=(0.7, 1.5), prob=0.15),
            RandGaussianNoised(keys="image", std=0.1, prob=0.1),
        ])
    out = _AUG({"image": image, "label": label[None].float()})
    return torch.as_tensor(out["image"]).float().contiguous(), torch.as_tensor(out["label"])[0].round().long()


_AUG = None


class PatchDataset(Dataset):
    """Random patches with foreground oversampling; ``length`` patches per epoch."""

    def __init__(self, volumes: list[Volume], patch: list[int], length: int, augment: bool = True,
                 foreground_fraction: float = FOREGROUND_FRACTION) -> None:
        self.volumes, self.patch, self.length = volumes, [int(p) for p in patch], int(length)
        self.augment, self.fg = augment, foreground_fraction

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        vol = self.volumes[random.randrange(len(self.volumes))]
        shape = vol.shape
        # a volume smaller than the patch is centred in it (zero padding); otherwise patches lie inside
        lo = [min(0, (n - p) // 2) for n, p in zip(shape, self.patch)]
        hi = [max(l0, n - p) for l0, n, p in zip(lo, shape, self.patch)]
        if vol.foreground and random.random() < self.fg:
            coords = vol.foreground[random.randrange(len(vol.foreground))]
            c = coords[random.randrange(len(coords))]
            start = [min(max(int(c[a]) - self.patch[a] // 2, lo[a]), hi[a]) for a in range(3)]
        else:
            start = [random.randint(lo[a], hi[a]) for a in range(3)]
        x, y = crop_patch(vol, start, self.patch)
        if self.augment:
            x, y = _augment(x, y)
        return x, y


class VolumeDataset(Dataset):
    """Whole preprocessed volumes for sliding-window validation."""

    def __init__(self, volumes: list[Volume]) -> None:
        self.volumes = volumes

    def __len__(self) -> int:
        return len(self.volumes)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        v = self.volumes[i]
        return torch.from_numpy(np.array(v.image, dtype=np.float32)), torch.from_numpy(np.array(v.label)).long()


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
                for _ in ex.map(_cache_job, jobs):
                    bar.update(1)
        else:
            for job in jobs:
                _cache_job(job)
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
        ds = PatchDataset(self.train_vols, self.plan["patch_size"], self.steps * self.batch_size)
        return DataLoader(ds, batch_size=self.batch_size, shuffle=False, num_workers=self.workers,
                          persistent_workers=self.workers > 0, worker_init_fn=_seed_worker)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(VolumeDataset(self.val_vols), batch_size=1, num_workers=0)


def _cache_job(job: tuple[str, list[Path], Path | None, dict[str, Any], str]) -> None:
    """Preprocess one case into the cache (nothing returned: pool workers send no arrays back)."""
    cache, files, label, plan, name = job
    cached_case(Path(cache), files, label, plan, name)


def _seed_worker(worker_id: int) -> None:
    seed = torch.initial_seed() % 2 ** 32
    random.seed(seed)
    np.random.seed(seed)


# ----------------------------------------------------------------------------------------------------- module
def deep_supervision_weights(n: int) -> list[float]:
    """nnU-Net's weights 1/2^i with the coarsest output dropped (when there are more than two), normalised."""
    w = [1 / 2 ** i for i in range(n)]
    if n > 2:
        w[-1] = 0.0
    s = sum(w)
    return [v / s for v in w]


class MedsegModule(SuiteModule):
    """Dice + CE with deep supervision; validation by Gaussian sliding window, logging ``val_dice``."""

    def __init__(self, arch: str = "unet3d", arch_kwargs: dict | None = None, classes: list[str] | None = None,
                 preprocessing: dict | None = None, optimizer: str = "sgd", lr: float = 1e-2,
                 weight_decay: float = 3e-5, scheduler: str | None = "poly", **kwargs: Any) -> None:
        super().__init__(task=TASK, arch=arch, arch_kwargs=arch_kwargs, classes=classes, preprocessing=preprocessing,
                         optimizer=optimizer, lr=lr, weight_decay=weight_decay, scheduler=scheduler,
                         monitor="val_dice", mode="max", **kwargs)
        from monai.losses import DiceCELoss

        self.loss_fn = DiceCELoss(include_background=False, to_onehot_y=True, softmax=True, batch=True,
                                  smooth_nr=1e-5, smooth_dr=1e-5)

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

    def loss(self, outputs: torch.Tensor | list[torch.Tensor], target: torch.Tensor) -> torch.Tensor:
        """Weighted Dice+CE over the deep-supervision outputs (target downsampled by nearest neighbour)."""
        outs = outputs if isinstance(outputs, (list, tuple)) else [outputs]
        total = outputs[0].new_zeros(()) if isinstance(outputs, (list, tuple)) else outputs.new_zeros(())
        for w, out in zip(deep_supervision_weights(len(outs)), outs):
            if w == 0:
                continue
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
        k = logits.shape[1]
        dices = []
        names = self.suite_cfg.get("classes") or [f"class_{c}" for c in range(k)]
        for c in range(1, k):
            p, t = pred == c, y == c
            if t.any():
                d = 2 * (p & t).sum().float() / (p.sum() + t.sum()).float()
                dices.append(d)
                self.log(f"val_dice_{names[c] if c < len(names) else c}", d, batch_size=1, sync_dist=True)
        dice = torch.stack(dices).mean() if dices else torch.tensor(1.0 if not (pred > 0).any() else 0.0)
        self.log("val_dice", dice, prog_bar=True, batch_size=1, sync_dist=True)
        self.log("val_loss", self.loss(logits, y), batch_size=1, sync_dist=True)


def train_medseg(data_dir: str | Path, out: str | Path, *, arch: str = "unet3d", arch_kwargs: dict | None = None,
                 fold: int = 0, folds: int = 5, epochs: int = 50, steps_per_epoch: int = 50,
                 patch_size: list[int] | None = None, batch_size: int = 2, spacing: list[float] | None = None,
                 optimizer: str = "sgd", lr: float = 1e-2, scheduler: str | None = "poly", precision: str = "auto",
                 device: str = "auto", devices: int | str = "auto", workers: int = 0,
                 work_dir: str | Path | None = None, resume: str | Path | None = None, seed: int = 0,
                 quiet: bool = False, overwrite: bool = False, max_time: str | None = None) -> FitResult:
    """Plan, train a fold and export the best checkpoint (by ``val_dice``) to ``out`` with its preprocessing."""
    L.seed_everything(seed, workers=True, verbose=False)
    random.seed(seed)
    info = read_dataset(data_dir)
    plan = plan_training(info, spacing, patch_size)
    extra = dict(arch_kwargs or {})
    kwargs = arch_kwargs_for(arch, plan, len(info.classes), extra)
    say(f"plan: {len(info.cases)} cases, {len(info.classes) - 1} classes, spacing "
        f"{' x '.join(f'{v:.3g}' for v in plan['spacing'])} mm (z, y, x), patch {plan['patch_size']}, "
        f"strides {plan['strides']}, normalisation {'/'.join(n['scheme'] for n in plan['normalization'])}", quiet)
    preprocessing = {k: v for k, v in plan.items() if k != "strides"}
    preprocessing.update({"dataset": info.root.name, "fold": fold, "folds": folds})
    module = MedsegModule(arch=arch, arch_kwargs=kwargs, classes=info.classes, preprocessing=preprocessing,
                          optimizer=optimizer, lr=lr, scheduler=scheduler)
    accelerator = {"auto": "auto", "cpu": "cpu"}.get(device, "gpu")
    if devices not in ("auto", None) and str(devices).isdigit():
        devices = int(devices)
    work_dir = Path(work_dir) if work_dir else Path(out).with_name(Path(out).name + ".train")
    dm = MedsegDataModule(str(data_dir), plan, fold=fold, folds=folds, batch_size=batch_size,
                          steps_per_epoch=steps_per_epoch, workers=workers, seed=seed,
                          cache_dir=str(work_dir / "preprocessed"), quiet=quiet)
    trainer = build_trainer(work_dir, max_epochs=epochs, max_time=max_time, precision=precision,
                            accelerator=accelerator, devices=devices, monitor="val_dice", mode="max",
                            gradient_clip_val=12.0, quiet=quiet, seed=seed, log_every_n_steps=min(10, steps_per_epoch),
                            strategy="ddp" if isinstance(devices, int) and devices > 1 else "auto")
    return fit(module, dm, trainer, export_to=out, ckpt_path=resume, overwrite=overwrite)
