"""Synthetic multi-class phantoms written as an nnU-Net/MSD dataset folder (tests, demo, benchmarks).

Each phantom is a noisy "body" ellipsoid holding three structures with their own intensities: an ``organ``
(large ellipsoid), a ``lesion`` (dark sphere) and a ``vessel`` (bright cylinder segment). Voxels are anisotropic
(thick slices by default) and the affine is oblique (a random rotation plus an offset), as in clinical series.
"""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np

CLASSES = ["background", "organ", "lesion", "vessel"]
#: Mean intensity of body, organ, lesion, vessel (channel 0); channel 1 uses a different contrast.
_CONTRAST = np.array([[0.3, 1.0, -0.6, 2.0], [0.8, 0.2, 1.6, -0.4]])


def oblique_affine(spacing: tuple[float, float, float], rng: np.random.Generator, max_deg: float = 25.0,
                   flip_lps: bool = False) -> np.ndarray:
    """Rotation (up to ``max_deg`` about each axis) times the voxel sizes, plus a random offset."""
    angles = np.deg2rad(rng.uniform(-max_deg, max_deg, 3))
    cx, cy, cz = np.cos(angles)
    sx, sy, sz = np.sin(angles)
    rx = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    rz = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    aff = np.eye(4)
    aff[:3, :3] = rz @ ry @ rx @ np.diag(spacing)
    if flip_lps:
        aff[:2] *= -1
    aff[:3, 3] = rng.uniform(-50, 50, 3)
    return aff


def make_phantom(shape: tuple[int, int, int] = (48, 48, 20), spacing: tuple[float, float, float] = (1.0, 1.0, 2.5),
                 seed: int = 0, channels: int = 1, noise: float = 0.2,
                 oblique: bool = True) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One phantom: image ``[C, X, Y, Z]`` float32, labels ``[X, Y, Z]`` uint8, affine 4x4.

    Structures are defined in millimetres, so their voxel footprint follows the (anisotropic) spacing."""
    rng = np.random.default_rng(seed)
    sp = np.asarray(spacing, dtype=float)
    ext = np.asarray(shape) * sp                       # field of view (mm)
    grid = np.stack(np.meshgrid(*[(np.arange(n) + 0.5) * s for n, s in zip(shape, sp)], indexing="ij"), -1)
    centre = ext / 2 + rng.uniform(-0.05, 0.05, 3) * ext

    def ellipsoid(c: np.ndarray, radii: np.ndarray) -> np.ndarray:
        return (((grid - c) / radii) ** 2).sum(-1) <= 1.0

    labels = np.zeros(shape, dtype=np.uint8)
    body = ellipsoid(centre, ext * np.array([0.47, 0.45, 0.6]))
    organ_c = centre + rng.uniform(-0.08, 0.08, 3) * ext * [1, 1, 0.3] - [ext[0] * 0.1, 0, 0]
    organ_r = ext * rng.uniform(0.2, 0.26, 3) * [1, 1, 1.2]
    labels[ellipsoid(organ_c, organ_r)] = 1
    lesion_c = centre + np.array([ext[0] * rng.uniform(0.15, 0.22), ext[1] * rng.uniform(-0.15, 0.15), 0])
    labels[ellipsoid(lesion_c, np.full(3, rng.uniform(0.1, 0.13) * ext[0]).clip(min=1.6 * sp))] = 2
    # vessel: a cylinder along z (radius in mm), through the lower part of the body
    vc = centre[:2] + np.array([-ext[0] * rng.uniform(0.05, 0.15), -ext[1] * rng.uniform(0.2, 0.28)])
    vr = max(rng.uniform(0.06, 0.08) * ext[0], 1.6 * sp[0])
    vessel = (((grid[..., :2] - vc) ** 2).sum(-1) <= vr ** 2) & (np.abs(grid[..., 2] - centre[2]) <= 0.35 * ext[2])
    labels[vessel & (labels == 0)] = 3
    labels[~body] = 0
    bias = 1 + 0.1 * np.sin(grid[..., 0] / ext[0] * np.pi + rng.uniform(0, 6)) * np.cos(grid[..., 1] / ext[1] * np.pi)
    image = np.zeros((channels, *shape), dtype=np.float32)
    for c in range(channels):
        contrast = _CONTRAST[c % len(_CONTRAST)]
        vals = np.where(body, contrast[0], 0.0)
        for k in (1, 2, 3):
            vals = np.where(labels == k, contrast[k], vals)
        image[c] = (vals * bias + rng.normal(0, noise, shape)) * 100 + 40
    affine = oblique_affine(tuple(sp), rng) if oblique else np.diag([*sp, 1.0])
    return image, labels, affine


def save_nifti(path: str | Path, data: np.ndarray, affine: np.ndarray) -> Path:
    """Save ``data`` with ``affine`` (sform and qform code 1, scanner space; mm units)."""
    img = nib.Nifti1Image(data, affine)
    img.header.set_xyzt_units("mm")
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    nib.save(img, str(path))
    return Path(path)


def write_dataset(out_dir: str | Path, n_train: int = 8, n_test: int = 2, *, shape: tuple[int, int, int] = (48, 48, 20),
                  spacing: tuple[float, float, float] = (1.0, 1.0, 2.5), channels: int = 1, seed: int = 0,
                  noise: float = 0.2) -> Path:
    """Write ``imagesTr/ labelsTr/ imagesTs/ labelsTs/ dataset.json`` (nnU-Net naming: ``<case>_0000.nii.gz`` per
    channel; MSD-style dataset.json with ``labels``, ``modality``, ``training`` and ``test`` lists)."""
    out = Path(out_dir)
    for sub in ("imagesTr", "labelsTr", "imagesTs", "labelsTs"):
        (out / sub).mkdir(parents=True, exist_ok=True)
    training, test = [], []
    for i in range(n_train + n_test):
        img, lab, aff = make_phantom(shape, spacing, seed=seed * 1000 + i, channels=channels, noise=noise)
        split = "Tr" if i < n_train else "Ts"
        name = f"phantom_{i:03d}"
        for c in range(channels):
            save_nifti(out / f"images{split}" / f"{name}_{c:04d}.nii.gz", img[c], aff)
        save_nifti(out / f"labels{split}" / f"{name}.nii.gz", lab, aff)
        entry = {"image": f"./images{split}/{name}.nii.gz", "label": f"./labels{split}/{name}.nii.gz"}
        (training if split == "Tr" else test).append(entry)
    meta = {"name": "phantoms", "description": "convsuite synthetic multi-class phantoms",
            "tensorImageSize": "4D" if channels > 1 else "3D",
            "modality": {str(c): ("MR" if c else "MR") for c in range(channels)},
            "labels": {str(i): n for i, n in enumerate(CLASSES)}, "numTraining": n_train, "numTest": n_test,
            "training": training, "test": test}
    (out / "dataset.json").write_text(json.dumps(meta, indent=2) + "\n")
    return out
