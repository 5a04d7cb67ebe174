"""Separate audio files of any length with bounded memory.

The input is read from disk in chunks (soundfile), each chunk is resampled to the model's rate, separated, resampled
back, and overlap-added with a linear cross-fade. Each chunk's sources are first put in the order of the previous
chunk's by the best permutation of their correlations over the overlap, so speaker 1 stays speaker 1 for the whole
file. Sources go to temporary float files as they are produced; a second pass writes the final files in the input's
subtype with one gain per source: the mixture's level is kept, and a source whose peak would clip is scaled down as a
whole (peak at -0.1 dBFS). Memory is O(chunk), independent of the file's length.
"""

from __future__ import annotations

import contextlib
import math
import sys
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
import torchaudio.functional as AF

from shared_backbones.checkpoint import ModelFile, load_model_file
from shared_backbones.cliutil import atomic_output, check_output, progress, run_batch
from shared_backbones.errors import InputError
from shared_backbones.loaded import LoadedModel
from shared_backbones.options import require
from shared_backbones.planning import Job, Plan, drop_own_outputs, plan_outputs

from .metrics import best_permutation

AUDIO_SUFFIXES = {
    ".wav", ".flac", ".ogg", ".oga", ".opus", ".mp3", ".aiff", ".aif", ".au", ".caf", ".w64", ".rf64",
}  # fmt: skip
PEAK = 10 ** (-0.1 / 20)
#: input sample formats the WAV outputs keep; anything else (MP3, Vorbis, Opus, ADPCM, A-law ...) is written as PCM_16
WAV_SUBTYPES = {"PCM_U8", "PCM_16", "PCM_24", "PCM_32", "FLOAT", "DOUBLE"}
#: non-finite input samples are repaired (set to 0, with a notice) when they come in runs of at most this many
#: samples and make up at most MAX_NONFINITE_FRACTION of the file; otherwise the file is refused
MAX_NONFINITE_RUN = 16
MAX_NONFINITE_FRACTION = 1e-3
#: chunk lengths a run accepts (seconds): shorter than MIN_CHUNK_SECONDS is shorter than the model's receptive field,
#: longer than MAX_CHUNK_SECONDS no longer bounds memory; the overlap must be shorter than half a chunk
MIN_CHUNK_SECONDS = 0.1
MAX_CHUNK_SECONDS = 3600.0


def check_chunking(chunk_seconds: float, overlap_seconds: float) -> None:
    """Refuse (one line, :class:`InputError`) a chunk length outside [MIN_CHUNK_SECONDS, MAX_CHUNK_SECONDS], a negative
    or non-finite overlap, and an overlap that is not shorter than half a chunk."""
    require(isinstance(chunk_seconds, (int, float)) and math.isfinite(chunk_seconds)
            and MIN_CHUNK_SECONDS <= chunk_seconds <= MAX_CHUNK_SECONDS,
            f"--chunk-seconds must be in [{MIN_CHUNK_SECONDS:g}, {MAX_CHUNK_SECONDS:g}], got {chunk_seconds!r}")
    require(isinstance(overlap_seconds, (int, float)) and math.isfinite(overlap_seconds) and overlap_seconds >= 0,
            f"--overlap-seconds must be a finite number >= 0, got {overlap_seconds!r}")
    require(overlap_seconds < chunk_seconds / 2,
            f"--overlap-seconds ({overlap_seconds:g}) must be less than half of --chunk-seconds ({chunk_seconds:g})")


def num_sources_of(model_file: ModelFile) -> int:
    """Number of sources a separation model file produces (its ``num_sources``, else its class count, else 2)."""
    return int(model_file.arch_kwargs.get("num_sources", len(model_file.classes) or 2))


@dataclass
class Separator(LoadedModel):
    """A loaded separation model (suite model file of task ``audiosep``) with its sample rate, device and precision.

    ``--precision auto`` is fp32 on CPU: bf16 autocast measured 0.86x fp32 speed on the fused CPU inference path."""

    TASK = "audiosep"

    @property
    def sample_rate(self) -> int:
        """The model's rate in Hz (stored in the model file)."""
        return int(self.file.preprocessing.get("sample_rate", 8000))

    @property
    def num_sources(self) -> int:
        return num_sources_of(self.file)

    def describe(self) -> str:
        """One line: architecture, rate, sources, device, precision."""
        causal = "causal" if self.file.arch_kwargs.get("causal") else "non-causal"
        return (
            f"{self.file.arch} ({causal}), {self.sample_rate} Hz, {self.num_sources} sources, "
            f"{self.device}, {self.policy.name}"
        )

    @torch.inference_mode()
    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """[C, T] at the model's rate -> [C, S, T] (float32, CPU)."""
        with self.policy.autocast():
            y = self.net(x.to(self.device, torch.float32).unsqueeze(1))
        return y.float().cpu()


def align_to_previous(prev_tail: torch.Tensor, cur_head: torch.Tensor) -> torch.Tensor:
    """Permutation [C, S] of ``cur_head``'s sources ([C, S, n]) that best matches ``prev_tail`` ([C, S, n]) by
    normalised correlation: perm[c, j] = index of the current source that continues previous source j."""
    a = prev_tail - prev_tail.mean(-1, keepdim=True)
    b = cur_head - cur_head.mean(-1, keepdim=True)
    num = torch.einsum("cjt,cit->cij", a, b)  # [C, cur, prev]
    den = a.norm(dim=-1)[:, None, :] * b.norm(dim=-1)[:, :, None] + 1e-12
    _, perm = best_permutation(num / den)
    return perm


def _resample(x: torch.Tensor, src: int, dst: int, length: int | None = None) -> torch.Tensor:
    if src != dst:
        x = AF.resample(x, src, dst)
    if length is not None:
        x = x[..., :length] if x.shape[-1] >= length else torch.nn.functional.pad(x, (0, length - x.shape[-1]))
    return x


def separate_chunks(
    read,
    total: int,
    rate: int,
    separator: Separator,
    chunk: int,
    overlap: int,
    channels: int,
    write,
    quiet: bool = True,
) -> None:
    """Core loop. ``read(start, n) -> [C, n]`` float32 tensor at ``rate``; ``write(block [C, S, n])`` receives the
    separated signal in order, ``total`` samples in all."""
    if chunk <= overlap:
        raise InputError(f"chunk ({chunk} samples) must be longer than the overlap ({overlap})")
    hop = chunk - overlap
    starts = list(range(0, max(total - overlap, 1), hop))
    fade = torch.linspace(0.0, 1.0, overlap + 2)[1:-1] if overlap else torch.zeros(0)
    tail: torch.Tensor | None = None
    bar = progress(
        total=total / rate,
        desc="separating",
        unit="s",
        quiet=quiet,
        bar_format="{l_bar}{bar}| {n:.0f}/{total:.0f} s audio [{elapsed}<{remaining}, {rate_fmt}]",
    )
    with bar:
        for i, start in enumerate(starts):
            n = min(chunk, total - start)
            x = read(start, n)
            m_len = max(1, round(n * separator.sample_rate / rate))
            y = separator(_resample(x, rate, separator.sample_rate, m_len))
            y = _resample(y, separator.sample_rate, rate, n)  # [C, S, n]
            last = i == len(starts) - 1
            if tail is not None:
                ov = tail.shape[-1]
                perm = align_to_previous(tail, y[..., :ov])
                y = torch.gather(y, 1, perm[..., None].expand(-1, -1, n))
                y[..., :ov] = tail * (1 - fade[:ov]) + y[..., :ov] * fade[:ov]
            keep = n if last else n - overlap
            write(y[..., :keep])
            tail = None if last else y[..., keep:].clone()
            bar.update(keep / rate)


def _info(path: Path) -> sf._SoundFileInfo:
    if not path.is_file():
        raise InputError("file not found", path)
    try:
        info = sf.info(str(path))
    except (RuntimeError, sf.LibsndfileError) as exc:
        raise InputError(
            f"not a readable audio file ({str(exc).split(':')[-1].strip() or 'unknown format'})", path
        ) from None
    if info.frames == 0:
        raise InputError("audio is empty (0 samples)", path)
    return info


class NonFinite:
    """Counts and repairs non-finite (NaN/inf) samples while a file streams; refuses what cannot be repaired."""

    def __init__(self, path: Path, total: int, rate: int) -> None:
        self.path, self.total, self.rate, self.count, self.seen = path, total, rate, 0, 0

    def repair(self, start: int, a: np.ndarray) -> np.ndarray:
        """``a`` [n, C] read at ``start``: isolated non-finite samples set to 0 (counted once per position)."""
        bad = ~np.isfinite(a)
        if not bad.any():
            self.seen = max(self.seen, start + len(a))
            return a
        col = bad.any(1).astype(np.int8)
        edges = np.flatnonzero(np.diff(np.concatenate(([0], col, [0]))))
        runs = edges[1::2] - edges[::2]
        longest, first = int(runs.max()), int(edges[::2][runs.argmax()])  # the longest run and where it starts
        new = int(bad[max(0, self.seen - start) :].sum())
        self.count += new
        self.seen = max(self.seen, start + len(a))
        if longest > MAX_NONFINITE_RUN or self.count > max(1, MAX_NONFINITE_FRACTION * self.total):
            what = f"a run of {longest} non-finite samples" if longest > MAX_NONFINITE_RUN else (
                f"{self.count} non-finite samples so far"
            )
            raise InputError(
                f"{what} (NaN/inf) from {(start + first) / self.rate:.3f} s; refusing to separate (only "
                f"isolated ones, runs <= {MAX_NONFINITE_RUN}, are repaired)",
                self.path,
            )
        return np.where(bad, np.float32(0), a)


def output_paths(path: str | Path, num_sources: int, out_dir: str | Path | None = None) -> list[Path]:
    """``<stem>_s1.wav`` ... in ``out_dir`` (default: next to the input)."""
    path = Path(path)
    folder = Path(out_dir) if out_dir is not None else path.parent
    return [folder / f"{path.stem}_s{k + 1}.wav" for k in range(num_sources)]


def separate_file(
    path: str | Path,
    separator: Separator,
    out_dir: str | Path | None = None,
    *,
    chunk_seconds: float = 30.0,
    overlap_seconds: float = 1.0,
    per_channel: bool = False,
    overwrite: bool = False,
    quiet: bool = True,
) -> list[Path]:
    """Separate one file; returns the written paths. Stereo/multichannel is downmixed unless ``per_channel``."""
    check_chunking(chunk_seconds, overlap_seconds)
    path = Path(path)
    info = _info(path)
    outs = output_paths(path, separator.num_sources, out_dir)
    for o in outs:
        check_output(o, overwrite)
    rate, total = info.samplerate, info.frames
    channels = info.channels if per_channel else 1
    subtype = info.subtype if info.subtype in WAV_SUBTYPES else "PCM_16"  # MP3, Vorbis, Opus, ADPCM ... -> PCM_16
    chunk = max(2, round(chunk_seconds * rate))
    overlap = min(round(overlap_seconds * rate), (chunk - 1) // 2)  # < chunk / 2 in seconds; this only rounds
    repair = NonFinite(path, total * info.channels, rate)
    with contextlib.ExitStack() as stack:
        try:
            src = stack.enter_context(sf.SoundFile(str(path)))
        except (RuntimeError, sf.LibsndfileError) as exc:
            raise InputError(f"not a readable audio file ({str(exc).split(':')[-1].strip()})", path) from None
        tmpdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix=".audiosep-", dir=outs[0].parent)))
        tmps = [
            stack.enter_context(sf.SoundFile(str(tmpdir / f"s{k}.wav"), "w", rate, channels, "FLOAT"))
            for k in range(separator.num_sources)
        ]
        peaks = np.zeros(separator.num_sources)

        def read(start: int, n: int) -> torch.Tensor:
            try:
                src.seek(start)
                a = src.read(n, dtype="float32", always_2d=True)  # [n, channels]
            except (RuntimeError, sf.LibsndfileError) as exc:
                raise InputError(f"cannot read samples {start}..{start + n} ({exc})", path) from None
            if len(a) < n:  # a few formats (MP3) report an approximate length
                a = np.pad(a, ((0, n - len(a)), (0, 0)))
            a = repair.repair(start, a)
            a = a if per_channel else a.mean(1, keepdims=True)
            return torch.from_numpy(np.ascontiguousarray(a.T))

        def write(block: torch.Tensor) -> None:
            arr = block.numpy()  # [C, S, n]
            if not np.isfinite(arr).all():  # never write NaN/inf audio (max(peak, nan) would drop the NaN)
                model = separator.path if separator.path is not None else "the model"
                raise InputError(f"model {model} gave non-finite output (NaN/inf) for this input; nothing written",
                                 path)
            for k, f in enumerate(tmps):
                f.write(arr[:, k].T)
                peaks[k] = max(peaks[k], float(np.abs(arr[:, k]).max(initial=0.0)))

        separate_chunks(read, total, rate, separator, chunk, overlap, channels, write, quiet=quiet)
        for f in tmps:
            f.close()
        if repair.count:
            print(
                f"audiosep: warning: {path}: {repair.count} isolated non-finite (NaN/inf) sample(s) set to 0 before "
                "separating",
                file=sys.stderr,
            )
        for k, out in enumerate(outs):
            gain = min(1.0, PEAK / peaks[k]) if peaks[k] > 0 else 1.0
            with (
                atomic_output(out, overwrite) as tmp,
                sf.SoundFile(str(tmpdir / f"s{k}.wav")) as r,
                sf.SoundFile(str(tmp), "w", rate, channels, subtype, format="WAV") as w,
            ):
                for block in r.blocks(blocksize=1 << 16, dtype="float32", always_2d=True):
                    w.write(np.clip(block * gain, -1.0, 1.0))
    return outs


def _expand(paths: Sequence[str | Path]) -> list[tuple[Path, bool]]:
    """(file, found in a given folder) for the files as given and the audio files (by extension) inside given folders,
    sorted; a file given twice (or also found in a given folder) once."""
    found: list[tuple[Path, bool]] = []
    for p in map(Path, paths):
        if p.is_dir():
            found += [(q, True) for q in sorted(p.iterdir()) if q.suffix.lower() in AUDIO_SUFFIXES and q.is_file()]
        else:
            found.append((p, False))
    if not found:
        raise InputError("no audio files found", paths[0] if paths else ".")
    seen: dict[Path, int] = {}
    unique: list[tuple[Path, bool]] = []
    for f, in_folder in found:
        key = f.resolve()
        if key in seen:  # keep the first spelling; given explicitly wins over found in a folder
            i = seen[key]
            unique[i] = (unique[i][0], unique[i][1] and in_folder)
            continue
        seen[key] = len(unique)
        unique.append((f, in_folder))
    return unique


@dataclass
class SeparationPlan:
    """What :func:`separate_files` will do: the checked :class:`~shared_backbones.planning.Plan` (one job per input
    file, outputs by role ``s1`` .. ``sN``) and the folder files left out as this command's own outputs."""

    plan: Plan
    own_outputs: list[Path] = field(default_factory=list)

    def notices(self) -> list[str]:
        """Lines to show before the work: skipped own outputs, skipped finished inputs."""
        lines = []
        if self.own_outputs:
            n, example = len(self.own_outputs), self.own_outputs[0].name
            lines.append(f"skipping {n} file(s) of the input folder(s) that are this command's outputs for other "
                         f"inputs (e.g. {example}); give them by name to separate them")
        if self.plan.skipped:
            lines.append(self.plan.skipped_notice())
        return lines


def plan_separation(
    inputs: Sequence[str | Path],
    num_sources: int,
    output: str | Path | None = None,
    *,
    overwrite: bool = False,
    num_parts: int = 1,
    part_id: int = 0,
    model_path: str | Path | None = None,
    preview: str | Path | None = None,
) -> SeparationPlan:
    """Expand folders, leave out their files that this command writes for other inputs (``meeting_s1.wav`` beside
    ``meeting.wav``), and plan every input's ``<stem>_s1.wav`` ... in ``output`` (default: beside the input).

    Refused in one line (:class:`InputError`), before anything is written: two inputs with one output (``a.flac`` and
    ``a.wav``, even with ``overwrite``), an output that is an input or the model file, an existing output without
    ``overwrite`` (in a batch — several files, a folder or ``num_parts`` > 1 — an input whose outputs all exist is
    skipped instead), an output folder that cannot be created. ``preview``: a folder for ``<stem>.png`` per input
    (role ``preview``)."""
    expanded = _expand(inputs)
    files = [f for f, _ in expanded]
    in_folder = {f for f, from_folder in expanded if from_folder}

    def outputs_of(f: Path) -> list[Path]:  # where this command puts f's sources, with -o and without
        outs = output_paths(f, num_sources, output)
        return outs + (output_paths(f, num_sources) if output is not None else [])

    _, own = drop_own_outputs(files, outputs_of)
    own = [f for f in own if f in in_folder]  # a file given by name is an input (and refused if also an output)
    dropped = set(own)
    files = [f for f in files if f not in dropped]
    jobs = [Job(str(f), [f], {f"s{k + 1}": o for k, o in enumerate(output_paths(f, num_sources, output))}
                | ({"preview": Path(preview) / f"{f.stem}.png"} if preview is not None else {}))
            for f in files]
    batch = len(jobs) > 1 or bool(in_folder) or num_parts > 1
    plan = plan_outputs(
        jobs,
        folders=[Path(d) for d in (output, preview) if d is not None],
        other_inputs=[model_path] if model_path is not None else [],
        overwrite=overwrite,
        skip_done=batch,
        num_parts=num_parts,
        part_id=part_id,
    )
    return SeparationPlan(plan, own)


@dataclass
class SeparationRun:
    """The result of :func:`separate_files`: outputs by input, the plan, and the exit status (0, or 2 when an input
    failed)."""

    planned: SeparationPlan
    written: dict[Path, list[Path]] = field(default_factory=dict)
    rc: int = 0

    @property
    def total(self) -> int:
        """Inputs this run (this part) had to do."""
        return len(self.planned.plan.jobs)


def separate_files(
    inputs: Sequence[str | Path],
    model: str | Path | ModelFile | Separator,
    output: str | Path | None = None,
    *,
    chunk_seconds: float = 30.0,
    overlap_seconds: float = 1.0,
    per_channel: bool = False,
    preview: str | Path | None = None,
    overwrite: bool = False,
    num_parts: int = 1,
    part_id: int = 0,
    device: str = "auto",
    precision: str = "auto",
    quiet: bool = True,
    log: Callable[[str], None] | None = None,
    on_done: Callable[[Path, list[Path]], None] | None = None,
    keep_going: bool = False,
    prog: str = "audiosep",
) -> SeparationRun:
    """Separate audio files and folders of audio files into ``<stem>_s1.wav`` ... (in ``output``, default beside each
    input), the batch checked whole before any work (:func:`plan_separation`): options first, then the model file's
    source count, then every output; the network is built and folders are created only after every check passed.

    ``model``: a model file path, a loaded :class:`ModelFile`, or a :class:`Separator` (``device``/``precision`` then
    unused). ``preview``: a folder for one spectrogram PNG per input (``<stem>.png``: the mixture and its sources,
    :mod:`audiosep.preview`). ``num_parts``/``part_id``: this run's share of the batch (every share is checked).
    ``log`` receives the notices (skipped files, the model's description); ``on_done(input, outputs)`` follows each
    input. A bad input raises :class:`UserError` — unless ``keep_going`` and the batch has several inputs: then it
    is reported on stderr under ``prog``, the batch goes on, the failures are listed at the end and ``rc`` is 2
    (:func:`shared_backbones.cliutil.run_batch`)."""
    check_chunking(chunk_seconds, overlap_seconds)
    say = log or (lambda _message: None)
    model_path: Path | None = None
    if isinstance(model, Separator):
        separator: Separator | None = model
        mf = model.file
        model_path = model.path
    else:
        separator = None
        if isinstance(model, ModelFile):
            mf = model
        else:
            model_path = Path(model)
            mf = load_model_file(model_path, task=Separator.TASK)
    planned = plan_separation(inputs, num_sources_of(mf), output, overwrite=overwrite, num_parts=num_parts,
                              part_id=part_id, model_path=model_path, preview=preview)
    for line in planned.notices():
        say(line)
    run = SeparationRun(planned)
    jobs = planned.plan.jobs
    if not jobs:
        return run
    if separator is None:
        separator = Separator.from_model_file(mf, device, precision, path=model_path)
    say(f"model: {separator.describe()}")
    planned.plan.make_folders()

    def work(job: Job) -> None:
        path = job.inputs[0]
        outs = separate_file(path, separator, output, chunk_seconds=chunk_seconds, overlap_seconds=overlap_seconds,
                             per_channel=per_channel, overwrite=overwrite, quiet=quiet)
        if preview is not None:
            from .preview import preview_files

            preview_files(job.outputs["preview"], path, outs, overwrite=overwrite)
        run.written[path] = outs
        if on_done is not None:
            on_done(path, outs)

    if keep_going:
        run.rc = run_batch(jobs, work, prog=prog, quiet=quiet, name=lambda j: j.name)
    else:
        for job in jobs:
            work(job)
    return run
