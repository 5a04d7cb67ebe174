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


def nnunet_arch(features: tuple[int, int] = (2, 4)) -> dict:
    """``arch_kwargs`` of a two-stage PlainConvUNet as nnU-Net's plans write them (tiny widths)."""
    return {"n_stages": 2, "features_per_stage": list(features), "kernel_sizes": [[3, 3, 3], [3, 3, 3]],
            "strides": [[1, 1, 1], [2, 2, 2]], "n_conv_per_stage": [1, 1], "n_conv_per_stage_decoder": [1],
            "conv_bias": True, "norm_op": "torch.nn.modules.instancenorm.InstanceNorm3d",
            "norm_op_kwargs": {"eps": 1e-5, "affine": True}, "dropout_op": None, "dropout_op_kwargs": None,
            "nonlin": "torch.nn.LeakyReLU", "nonlin_kwargs": {"inplace": True},
            "conv_op": "torch.nn.modules.conv.Conv3d"}


def write_nnunet_folder(root: Path, dataset: str, labels: dict[str, int], *, arch: dict, patch: int,
                        spacing: list[float], channel: str, seed: int, trainer: str = "nnUNetTrainer",
                        mirror_axes=None, weight_scale: float = 1.0) -> Path:
    """A random-weight nnU-Net v2 3d_fullres model folder (dataset.json, plans.json, fold_0 checkpoint) as nnU-Net's
    trainer saves it; one ZScore-normalised channel."""
    import json

    import torch

    from medseg.nnunet_arch import NNUNetV2Net

    folder = root / dataset / "nnUNetTrainer__nnUNetPlans__3d_fullres"
    (folder / "fold_0").mkdir(parents=True)
    (folder / "dataset.json").write_text(json.dumps({"channel_names": {"0": channel}, "file_ending": ".nii.gz",
                                                     "labels": labels}))
    conf = {"patch_size": [patch] * 3, "spacing": list(spacing), "normalization_schemes": ["ZScoreNormalization"],
            "use_mask_for_norm": [False], "resampling_fn_data": "resample_data_or_seg_to_shape",
            "resampling_fn_data_kwargs": {"order": 3, "order_z": 0, "force_separate_z": None},
            "resampling_fn_probabilities": "resample_data_or_seg_to_shape",
            "resampling_fn_probabilities_kwargs": {"order": 1, "order_z": 0, "force_separate_z": None},
            "architecture": {"network_class_name": "dynamic_network_architectures.architectures.unet.PlainConvUNet",
                             "arch_kwargs": arch}}
    (folder / "plans.json").write_text(json.dumps({"plans_name": "nnUNetPlans", "dataset_name": dataset,
                                                   "transpose_forward": [0, 1, 2], "transpose_backward": [0, 1, 2],
                                                   "configurations": {"3d_fullres": conf}}))
    torch.manual_seed(seed)
    net = NNUNetV2Net("PlainConvUNet", arch, 1, len(labels))
    if weight_scale != 1.0:
        with torch.no_grad():
            for p in net.parameters():
                p.mul_(weight_scale)
    torch.save({"network_weights": net.state_dict(), "init_args": {"configuration": "3d_fullres"},
                "trainer_name": trainer,
                "inference_allowed_mirroring_axes": None if mirror_axes is None else tuple(mirror_axes)},
               folder / "fold_0" / "checkpoint_final.pth")
    return folder
