"""Evaluate separated files against references (LibriMix layout): SI-SNR, SI-SNRi, SDR, SDRi per file and mean."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import soundfile as sf
import torch

from shared_backbones.cliutil import atomic_output
from shared_backbones.errors import InputError

from .metrics import separation_scores
from .separate import output_paths

METRICS = ("si_snr", "si_snri", "sdr", "sdri")


def _read_mono(path: Path) -> tuple[np.ndarray, int]:
    if not path.is_file():
        raise InputError("file not found", path)
    try:
        a, rate = sf.read(str(path), dtype="float32", always_2d=True)
    except (RuntimeError, sf.LibsndfileError):
        raise InputError("not a readable audio file", path) from None
    return a.mean(1), rate


def source_dirs(data_dir: Path) -> list[Path]:
    """``s1/``, ``s2/`` ... of a LibriMix-style folder."""
    dirs = []
    while (data_dir / f"s{len(dirs) + 1}").is_dir():
        dirs.append(data_dir / f"s{len(dirs) + 1}")
    if not (data_dir / "mix").is_dir() or not dirs:
        raise InputError("expected a LibriMix-style folder with mix/ and s1/, s2/, ...", data_dir)
    return dirs


def evaluate_folder(estimates_dir: str | Path, data_dir: str | Path) -> list[dict]:
    """One row per mixture in ``data_dir/mix``: the file name and the four metrics (best SI-SNR permutation).
    Estimates are ``<estimates_dir>/<stem>_s<k>.wav`` as ``audiosep separate`` writes them."""
    data_dir, estimates_dir = Path(data_dir), Path(estimates_dir)
    srcs = source_dirs(data_dir)
    rows = []
    for mix_path in sorted(p for p in (data_dir / "mix").iterdir() if p.suffix.lower() in (".wav", ".flac")):
        mix, rate = _read_mono(mix_path)
        refs = [_read_mono(d / mix_path.name)[0] for d in srcs]
        ests = [_read_mono(p)[0] for p in output_paths(mix_path, len(srcs), estimates_dir)]
        n = min(len(mix), *(len(r) for r in refs), *(len(e) for e in ests))
        def t(arrs: list[np.ndarray], n: int = n) -> torch.Tensor:
            return torch.from_numpy(np.stack([a[:n] for a in arrs]))[None].double()

        s = separation_scores(t(ests), t(refs), torch.from_numpy(mix[:n])[None, None].double())
        rows.append({"file": mix_path.name, **{k: float(s[k][0]) for k in METRICS}})
    if not rows:
        raise InputError("no mixtures in mix/", data_dir)
    return rows


def summarise(rows: list[dict]) -> dict[str, float]:
    """Mean of each metric."""
    return {k: float(np.mean([r[k] for r in rows])) for k in METRICS}


def write_csv(rows: list[dict], path: str | Path, overwrite: bool = False) -> Path:
    """Per-file rows and a final ``mean`` row."""
    with atomic_output(path, overwrite) as tmp, open(tmp, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=["file", *METRICS])
        w.writeheader()
        w.writerows(rows)
        w.writerow({"file": "mean", **summarise(rows)})
    return Path(path)


def format_table(rows: list[dict]) -> str:
    """A printable table with a mean line."""
    lines = [f"{'file':<30} " + " ".join(f"{k:>8}" for k in METRICS)]
    for r in rows + [{"file": "mean", **summarise(rows)}]:
        lines.append(f"{r['file'][:30]:<30} " + " ".join(f"{r[k]:8.2f}" for k in METRICS))
    return "\n".join(lines)
