"""Helpers: tiny model files and phantom volumes (kept small so the folder runs in seconds)."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import torch

from medseg.synthetic import CLASSES, make_phantom, save_nifti
from shared_backbones.checkpoint import ModelFile, save_model_file
from shared_backbones.registry import create_model

TINY = {"base_channels": 2, "strides": [[1, 2, 2]]}


def make_model_file(path: Path, in_channels: int = 1, num_classes: int = 4, task: str = "medseg",
                    spacing=None, patch=(8, 16, 16), seed: int = 0) -> Path:
    """A randomly initialised tiny unet3d saved as a suite model file."""
    torch.manual_seed(seed)
    kw = {**TINY, "in_channels": in_channels, "num_classes": num_classes}
    net = create_model("unet3d", **kw)
    classes = (CLASSES + [f"c{i}" for i in range(10)])[:num_classes]
    mf = ModelFile.from_model(net, task=task, arch="unet3d", arch_kwargs=kw, classes=classes,
                              preprocessing={"orientation": "RAS", "axis_order": "zyx", "spacing": spacing,
                                             "patch_size": list(patch), "in_channels": in_channels,
                                             "normalization": [{"scheme": "zscore"}] * in_channels})
    return save_model_file(path, mf)


def write_volume(path: Path, shape=(20, 18, 10), affine=None, channels: int = 1, seed: int = 0) -> Path:
    img, _, aff = make_phantom(shape, (1.0, 1.2, 2.5), seed=seed, channels=channels)
    data = img[0] if channels == 1 else np.moveaxis(img, 0, -1)
    return save_nifti(path, data, aff if affine is None else affine)


def load(path: Path) -> nib.Nifti1Image:
    return nib.load(str(path))
