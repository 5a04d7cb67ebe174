"""Training data of an nnU-Net/MSD dataset folder (``imagesTr/``, ``labelsTr/``, ``dataset.json``): reading the
folder and its label map, preprocessing cases into the model frame (reorient, normalise, resample; nnU-Net's
recipe, Isensee et al. 2021), a memory-mapped ``.npy`` cache, and patch sampling with foreground oversampling.

Plain PyTorch (no Lightning): ``pipelines.medseg`` wraps these in a LightningDataModule.
"""

from __future__ import annotations

import hashlib
import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from shared_backbones.errors import InputError

from .io import Case, is_nifti, model_array, read_case
from .preprocess import normalise, resample, target_shape

FOREGROUND_FRACTION = 1 / 3


def parse_label_map(raw: Any, path: str | Path | None = None) -> dict[int, str]:
    """``labels`` of a dataset.json as {label number: name}: MSD's ``{"0": "background", ...}`` or nnU-Net v2's
    ``{"background": 0, ...}``. Region-based labels (lists of numbers) are refused with a clear message."""
    if not isinstance(raw, dict):
        raise InputError("'labels' must map label numbers to names", path)
    out: dict[int, str] = {}
    for k, v in raw.items():
        if isinstance(v, (list, tuple)):
            raise InputError(f"region-based label {k!r} (a list of labels) is not supported; give one number "
                             "per class", path)
        try:
            num, name = (int(k), str(v)) if str(k).strip().isdigit() else (int(v), str(k))
        except (TypeError, ValueError):
            raise InputError("'labels' must map label numbers to names", path) from None
        out[num] = name
    return out


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
    labels = parse_label_map(meta.get("labels") or {}, meta_path)
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
    # NaN/Inf voxels (filled with the channel's minimum by read_case) are background: left out of the statistics,
    # as in prediction
    exclude = None if case.nonfinite is None else torch.from_numpy(np.ascontiguousarray(
        geom.forward(case.nonfinite[None])[0]))
    image = normalise(torch.from_numpy(arr), plan["normalization"], exclude)
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
    keep = {k: plan[k] for k in ("orientation", "spacing", "normalization") if k in plan}
    keep["nonfinite"] = "excluded from statistics"   # cases cached before non-finite voxels were left out differ
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


def augmentation(seed: int) -> Any:
    """nnU-Net-like MONAI augmentations (rotation/scaling, mirroring, intensity scaling, gamma, noise) with their
    own random state seeded by ``seed`` (MONAI's default state is shared and unseeded)."""
    from monai.transforms import (
        Compose,
        RandAdjustContrastd,
        RandAffined,
        RandFlipd,
        RandGaussianNoised,
        RandScaleIntensityd,
    )

    aug = Compose([
        RandAffined(keys=("image", "label"), prob=0.2, rotate_range=(0.26, 0.26, 0.26),
                    scale_range=(0.15, 0.15, 0.15), mode=("bilinear", "nearest"), padding_mode="zeros"),
        RandFlipd(keys=("image", "label"), prob=0.5, spatial_axis=0),
        RandFlipd(keys=("image", "label"), prob=0.5, spatial_axis=1),
        RandFlipd(keys=("image", "label"), prob=0.5, spatial_axis=2),
        RandScaleIntensityd(keys="image", factors=0.25, prob=0.15),
        RandAdjustContrastd(keys="image", gamma=(0.7, 1.5), prob=0.15),
        RandGaussianNoised(keys="image", std=0.1, prob=0.1),
    ])
    aug.set_random_state(seed=seed % 2 ** 32)
    return aug


def _process_seed(seed: int) -> int:
    """``seed`` made distinct per distributed rank and per data-loader worker (same run, same streams)."""
    import torch.distributed as dist

    rank = dist.get_rank() if dist.is_available() and dist.is_initialized() else 0
    info = torch.utils.data.get_worker_info()
    worker = info.id + 1 if info is not None else 0
    return (int(seed) * 1_000_003 + rank * 7919 + worker * 104_729) % 2 ** 32


class PatchDataset(Dataset):
    """Random patches with foreground oversampling (nnU-Net: a third centred on a random foreground voxel of a
    random class present in the case); ``length`` patches per epoch.

    Draws come from the dataset's own generators, seeded from ``seed``, the distributed rank and the loader worker
    on first use: two runs with the same seed see the same patches, and DDP ranks see different ones."""

    def __init__(self, volumes: list[Volume], patch: list[int], length: int, augment: bool = True,
                 foreground_fraction: float = FOREGROUND_FRACTION, seed: int = 0) -> None:
        self.volumes, self.patch, self.length = volumes, [int(p) for p in patch], int(length)
        self.augment, self.fg, self.seed = augment, foreground_fraction, int(seed)
        self._rng: random.Random | None = None
        self._aug: Any = None

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        if self._rng is None:
            s = _process_seed(self.seed)
            self._rng = random.Random(s)
            self._aug = augmentation(s) if self.augment else None
        rng = self._rng
        vol = self.volumes[rng.randrange(len(self.volumes))]
        shape = vol.shape
        # a volume smaller than the patch is centred in it (zero padding); otherwise patches lie inside
        lo = [min(0, (n - p) // 2) for n, p in zip(shape, self.patch)]
        hi = [max(l0, n - p) for l0, n, p in zip(lo, shape, self.patch)]
        if vol.foreground and rng.random() < self.fg:
            coords = vol.foreground[rng.randrange(len(vol.foreground))]
            c = coords[rng.randrange(len(coords))]
            start = [min(max(int(c[a]) - self.patch[a] // 2, lo[a]), hi[a]) for a in range(3)]
        else:
            start = [rng.randint(lo[a], hi[a]) for a in range(3)]
        x, y = crop_patch(vol, start, self.patch)
        if self._aug is not None:
            out = self._aug({"image": x, "label": y[None].float()})
            x = torch.as_tensor(out["image"]).float().contiguous()
            y = torch.as_tensor(out["label"])[0].round().long()
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


def cache_job(job: tuple[str, list[Path], Path | None, dict[str, Any], str]) -> None:
    """Preprocess one case into the cache (nothing returned: pool workers send no arrays back)."""
    cache, files, label, plan, name = job
    cached_case(Path(cache), files, label, plan, name)


def seed_worker(worker_id: int) -> None:
    seed = torch.initial_seed() % 2 ** 32
    random.seed(seed)
    np.random.seed(seed)


