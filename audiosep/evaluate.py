"""Evaluate separated files against references (the suite's mix/ layout, LibriMix, WHAM!: :mod:`audiosep.mixtures`):
SI-SNR, SI-SNRi, SDR, SDRi per file.

Tables and report files go through :mod:`shared_backbones.report` (one writer for every evaluator)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf
import torch

from shared_backbones.cliutil import progress, run_batch
from shared_backbones.errors import InputError
from shared_backbones.planning import plan_outputs
from shared_backbones.report import REPORT

from .metrics import separation_scores
from .mixtures import Mixtures, find_mixtures
from .separate import output_paths

METRICS = ("si_snr", "si_snri", "sdr", "sdri")


def length_tolerance(rate: int) -> int:
    """Samples by which an estimate may differ in length from its reference: one Conv-TasNet encoder stride
    (L/2 = 1 ms: 8 samples at 8 kHz, 16 at 16 kHz)."""
    return max(1, round(rate / 1000))


def _read_mono(path: Path) -> tuple[np.ndarray, int]:
    if not path.is_file():
        raise InputError("file not found", path)
    try:
        a, rate = sf.read(str(path), dtype="float32", always_2d=True)
    except (RuntimeError, sf.LibsndfileError):
        raise InputError("not a readable audio file", path) from None
    if not np.isfinite(a).all():
        raise InputError("contains non-finite (NaN/inf) samples", path)
    return a.mean(1), rate


def _check_pair(est: Path, est_audio: tuple[np.ndarray, int], ref: Path, ref_audio: tuple[np.ndarray, int]) -> None:
    """Refuse pairs that would be scored wrongly: other sample rate, or lengths apart by more than a stride."""
    (a, ra), (b, rb) = est_audio, ref_audio
    if ra != rb:
        raise InputError(f"sample rate {ra} Hz but its reference {ref} is {rb} Hz (not comparable)", est)
    if abs(len(a) - len(b)) > length_tolerance(rb):
        raise InputError(
            f"{len(a)} samples but its reference {ref} has {len(b)} (more than one encoder stride, "
            f"{length_tolerance(rb)} samples, apart: not the same utterance or cut)",
            est,
        )


def list_mixtures(estimates_dir: str | Path, data_dir: str | Path, mix_type: str = "clean") -> Mixtures:
    """The mixtures and reference sources of ``data_dir`` (:func:`audiosep.mixtures.find_mixtures`: the suite's
    ``mix/``, LibriMix's or WHAM!'s ``mix_<mix_type>/``), after checking that the estimates folder exists."""
    found = find_mixtures(data_dir, mix_type)
    if not Path(estimates_dir).is_dir():
        raise InputError("estimates folder not found", estimates_dir)
    return found


def score_mixture(mix_path: Path, ref_paths: list[Path], estimates_dir: str | Path) -> dict:
    """One row: the mixture's file name and the four metrics (best SI-SNR permutation) of its estimates
    ``<estimates_dir>/<stem>_s<k>.wav`` against the references ``ref_paths`` (``s1``, ``s2``, ...); a missing or
    unreadable file, or a pair with another sample rate or a length more than one encoder stride apart, raises
    :class:`InputError` naming the file."""
    mix = _read_mono(mix_path)
    refs = [_read_mono(p) for p in ref_paths]
    for p, r in zip(ref_paths, refs):
        _check_pair(p, r, mix_path, mix)
    est_paths = output_paths(mix_path, len(ref_paths), Path(estimates_dir))
    ests = [_read_mono(p) for p in est_paths]
    for p, e in zip(est_paths, ests):
        _check_pair(p, e, ref_paths[0], refs[0])
    n = min(len(mix[0]), *(len(r[0]) for r in refs), *(len(e[0]) for e in ests))

    def t(arrs: list[tuple[np.ndarray, int]]) -> torch.Tensor:
        return torch.from_numpy(np.stack([a[:n] for a, _ in arrs]))[None].double()

    s = separation_scores(t(ests), t(refs), torch.from_numpy(mix[0][:n])[None, None].double())
    return {"file": mix_path.name, **{k: float(s[k][0]) for k in METRICS}}


def evaluate_folder(estimates_dir: str | Path, data_dir: str | Path, quiet: bool = True,
                    mix_type: str = "clean") -> list[dict]:
    """One row per mixture of ``data_dir`` (:func:`score_mixture`); the first bad mixture raises. Estimates are
    ``<estimates_dir>/<stem>_s<k>.wav`` as ``audiosep separate`` writes them. ``audiosep evaluate`` instead scores
    every good mixture and lists the bad ones at the end."""
    return score_folder(estimates_dir, data_dir, quiet=quiet, mix_type=mix_type).rows


def summarise(rows: list[dict]) -> dict[str, float]:
    """Mean of each metric."""
    return {k: float(np.mean([r[k] for r in rows])) for k in METRICS}


@dataclass
class Evaluation:
    """The result of :func:`score_folder`: one row per scored mixture, the exit status (0, or 2 when a mixture
    failed), the table with its mean row, the report written (if any) and the references read."""

    rows: list[dict]
    total: int
    rc: int = 0
    report: Path | None = None
    data: Mixtures | None = None

    @property
    def table(self) -> list[dict]:
        from shared_backbones.report import mean_row

        return [*self.rows, mean_row(self.rows, "file")] if self.rows else []


def score_folder(
    estimates_dir: str | Path,
    data_dir: str | Path,
    output: str | Path | None = None,
    *,
    overwrite: bool = False,
    quiet: bool = True,
    keep_going: bool = False,
    prog: str = "audiosep",
    mix_type: str = "clean",
) -> Evaluation:
    """Score every mixture of ``data_dir`` (:func:`score_mixture`; the suite's ``mix/``, or LibriMix's / WHAM!'s
    ``mix_<mix_type>/`` with its metadata CSV where present: :func:`audiosep.mixtures.find_mixtures`) and write the
    report ``output`` (.csv, .tsv or .json: per-file rows and the mean) — the report is checked before any scoring (its
    kind, not an input, absent unless ``overwrite``, its folder writable). A bad mixture raises :class:`UserError`,
    unless ``keep_going`` and there are several: then it is reported on stderr under ``prog`` and listed at the end
    (:func:`shared_backbones.cliutil.run_batch`), ``rc`` is 2, the rest is scored and the mean covers those."""
    from shared_backbones.report import write_report

    found = list_mixtures(estimates_dir, data_dir, mix_type)
    mixes, refs = found.mixtures, dict(zip(found.mixtures, found.sources))
    if output is not None:
        plan_outputs([], shared={"report": output}, writers={"report": REPORT}, overwrite=overwrite,
                     other_inputs=[*mixes, *(s for ss in found.sources for s in ss),
                                   *(o for m in mixes for o in output_paths(m, found.num_sources,
                                                                            Path(estimates_dir)))])
    ev = Evaluation([], len(mixes), data=found)
    with progress(total=len(mixes), desc="scoring", unit="file", quiet=quiet) as bar:

        def work(mix: Path) -> None:
            bar.update(1)
            ev.rows.append(score_mixture(mix, refs[mix], estimates_dir))

        if keep_going:
            ev.rc = run_batch(mixes, work, prog=prog, quiet=quiet)
        else:
            for mix in mixes:
                work(mix)
    if output is not None and ev.rows:
        ev.report = write_report(output, ev.table, ["file", *METRICS], overwrite=overwrite)
    return ev
