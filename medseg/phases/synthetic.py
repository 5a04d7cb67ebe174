"""Synthetic colonoscopy procedures (no data sets can be downloaded): per-frame features and labels.

A procedure follows the colonoscopy order outside -> insertion -> cecum -> ileum (sometimes) -> ascending ->
transverse -> descending -> sigmoid -> rectum -> outside with random durations. Features are class prototypes plus
slowly varying (AR(1)) noise; transitions blend neighbouring prototypes over a few seconds (ambiguous boundaries);
insertion frames look partly like the anatomical sections the scope passes, so context is needed to tell them apart.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from .models import COLON_CLASSES

# (class, mean seconds, spread)
_SCHEDULE = [("outside", 20, 10), ("insertion", 300, 120), ("cecum", 60, 30), ("ileum", 40, 20),
             ("ascending", 90, 40), ("transverse", 120, 50), ("descending", 90, 40), ("sigmoid", 90, 40),
             ("rectum", 60, 25), ("outside", 20, 10)]


def make_procedure(rng: np.random.Generator, prototypes: np.ndarray, fps: float = 5.0, noise: float = 1.5,
                   time_scale: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """(features [T, D] float32, labels [T] int) for one procedure."""
    labels = []
    for name, mean, spread in _SCHEDULE:
        if name == "ileum" and rng.random() < 0.4:
            continue
        n = max(int(fps * 3), int(rng.normal(mean, spread / 2) * fps * time_scale))
        labels += [COLON_CLASSES.index(name)] * n
    labels = np.array(labels)
    t, d = len(labels), prototypes.shape[1]
    feats = prototypes[labels].copy()
    ins = COLON_CLASSES.index("insertion")
    anat = [COLON_CLASSES.index(c) for c in ("rectum", "sigmoid", "descending", "transverse", "ascending")]
    idx = np.flatnonzero(labels == ins)
    if idx.size:  # insertion passes the same anatomy in reverse order: blend in those prototypes
        part = np.minimum((np.arange(idx.size) / idx.size * len(anat)).astype(int), len(anat) - 1)
        feats[idx] = 0.5 * feats[idx] + 0.5 * prototypes[np.array(anat)[part]]
    width = int(4 * fps)  # ambiguous transitions
    for b in np.flatnonzero(np.diff(labels)) + 1:
        lo, hi = max(0, b - width), min(t, b + width)
        w = np.linspace(0, 1, hi - lo)[:, None]
        feats[lo:hi] = (1 - w) * prototypes[labels[lo]] + w * prototypes[labels[hi - 1]]
    ar = np.zeros((t, d), dtype=np.float32)  # slowly varying noise
    e = rng.standard_normal((t, d)).astype(np.float32)
    for i in range(1, t):
        ar[i] = 0.9 * ar[i - 1] + e[i] * np.sqrt(1 - 0.81)
    feats = feats + noise * ar + 0.3 * noise * rng.standard_normal((t, d))
    return feats.astype(np.float32), labels


def write_dataset(out_dir: str | Path, n_videos: int = 12, dim: int = 64, fps: float = 5.0, centres: int = 4,
                  seed: int = 0, time_scale: float = 1.0) -> Path:
    """``features/<id>.npy``, ``labels/<id>.txt`` (class names) and ``groups.csv`` (video, centre)."""
    out = Path(out_dir)
    (out / "features").mkdir(parents=True, exist_ok=True)
    (out / "labels").mkdir(exist_ok=True)
    rng = np.random.default_rng(seed)
    prototypes = rng.standard_normal((len(COLON_CLASSES), dim)).astype(np.float32)
    rows = []
    for i in range(n_videos):
        feats, labels = make_procedure(rng, prototypes, fps, time_scale=time_scale)
        vid = f"c{i % centres}_v{i:03d}"
        np.save(out / "features" / f"{vid}.npy", feats)
        (out / "labels" / f"{vid}.txt").write_text("\n".join(COLON_CLASSES[k] for k in labels) + "\n")
        rows.append((vid, f"centre{i % centres}"))
    with open(out / "groups.csv", "w", newline="") as fh:
        csv.writer(fh).writerows([("video", "group"), *rows])
    return out
