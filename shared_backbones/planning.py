"""Output planning, once for every command: every input -> its outputs, computed and checked before any work.

A command describes its batch as :class:`Job` s (a name, the files it reads, its outputs by role) plus the outputs of
the run as a whole (a report, a statistics file) and hands them to :func:`plan_outputs`, which refuses in one line
(:class:`~shared_backbones.errors.InputError`, exit 2), before anything is written:

- two inputs that map to one output (``a.flac`` and ``a.wav`` -> ``a_s1.wav``; ``a.nii`` and ``a.nii.gz``);
- two outputs of one run with one path (``-o x.nii.gz --dicom-seg x.nii.gz``);
- an output that is an input, or one of the files an input consists of (a slice of a DICOM series, a model file);
- an output whose writer cannot write that kind of file (``-o seg.dcm`` for a NIfTI label map), with a hint;
- an output whose folder cannot be created or written (a parent path that is a file, a read-only folder);
- an existing output without ``--overwrite`` (in a batch, a job whose outputs all exist is skipped instead, so a
  rerun or another SLURM array task finishes what is left; a job with only some of them is refused).

It also splits the batch for clusters (``--num-parts N --part-id K``: the whole batch is checked by every task, then
task K takes jobs K, K+N, ...), and :func:`drop_own_outputs` keeps a folder's expansion from taking this command's
own outputs for other inputs as new inputs (``meeting_s1.wav`` beside ``meeting.wav``).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .cliutil import _nearest_existing
from .errors import InputError, OutputExistsError

__all__ = ["Job", "Plan", "Writer", "drop_own_outputs", "plan_outputs", "suffix_of"]


@dataclass
class Job:
    """One unit of a batch: ``name`` (shown in messages), the paths it reads (files, or the member files of a
    folder input such as a DICOM series), and its outputs by role (``{"labels": ..., "probabilities": ...}``)."""

    name: str
    inputs: list[Path]
    outputs: dict[str, Path]
    data: Any = None  # whatever the task's batch function needs for this job (channel files, a series UID ...)

    def output_paths(self) -> list[Path]:
        return list(self.outputs.values())


@dataclass(frozen=True)
class Writer:
    """What the writer of one output role can write: file name endings (lower case, ``.nii.gz`` style), an option
    name for messages, and hints for endings it cannot write (``{".dcm": "use --dicom-seg for DICOM SEG"}``)."""

    suffixes: tuple[str, ...]
    option: str = "-o/--output"
    hints: Mapping[str, str] = field(default_factory=dict)
    folder: bool = False  # the output is a folder (created), not a file

    def check(self, path: Path) -> None:
        if self.folder:
            return
        suffix = suffix_of(path)
        if suffix in self.suffixes:
            return
        hint = self.hints.get(suffix)
        allowed = ", ".join(self.suffixes)
        raise InputError(f"{self.option} cannot write a '{suffix or 'no extension'}' file (use {allowed})"
                         + (f"; {hint}" if hint else ""), path)


@dataclass
class Plan:
    """A checked plan: the jobs to run now, the jobs skipped because done, the run-wide outputs, the folders that
    :meth:`make_folders` creates."""

    jobs: list[Job]
    skipped: list[Job]
    shared: dict[str, Path]
    folders: list[Path]
    total: int  # jobs in the whole batch (all parts)

    def make_folders(self) -> None:
        """Create the output folders (after every check passed)."""
        for folder in self.folders:
            try:
                folder.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise InputError(f"cannot create the output folder ({exc.strerror or exc})", folder) from None
        for job in self.jobs:
            for out in job.output_paths():
                out.parent.mkdir(parents=True, exist_ok=True)

    def skipped_notice(self) -> str:
        """The line a command prints when it skipped finished jobs (empty when none)."""
        n = len(self.skipped)
        return f"skipping {n} input(s) whose outputs exist (use --overwrite to redo them)" if n else ""


# --------------------------------------------------------------------------------------------------------- names
_DOUBLE = (".nii.gz", ".safe.zip", ".tar.gz", ".ome.tif", ".ome.tiff")


def suffix_of(path: str | Path) -> str:
    """The file kind's ending, lower case: ``.nii.gz`` for ``x.nii.gz``, ``.wav`` for ``x.WAV``, "" for none."""
    name = Path(path).name.lower()
    for double in _DOUBLE:
        if name.endswith(double):
            return double
    return Path(name).suffix


def _key(path: Path) -> str:
    """A comparable identity for a path that may not exist yet: the real path of its nearest existing parent plus
    the rest (so ``a/../b/x`` and ``b/x``, or two spellings through a symlink, compare equal)."""
    p = Path(os.path.abspath(path))
    base = _nearest_existing(p)
    return os.path.normcase(os.path.normpath(os.path.join(os.path.realpath(base), p.relative_to(base))))


def _check_folder(folder: Path) -> None:
    """Like ``cliutil.check_writable_folder`` but without its probe file: planning writes nothing, not even a
    folder's modification time."""
    base = _nearest_existing(Path(os.path.abspath(folder)))
    if not base.is_dir():
        raise InputError("cannot create the output folder: a parent path is a file", base)
    if not os.access(base, os.W_OK | os.X_OK):
        raise InputError("output folder is not writable", base)


def plan_outputs(
    jobs: Sequence[Job],
    *,
    shared: Mapping[str, str | Path] | None = None,
    writers: Mapping[str, Writer] | None = None,
    folders: Iterable[str | Path] = (),
    other_inputs: Iterable[str | Path] = (),
    overwrite: bool = False,
    skip_done: bool = False,
    num_parts: int = 1,
    part_id: int = 0,
    precheck: Callable[[Job], None] | None = None,
) -> Plan:
    """Check a batch's outputs before any work and return what to run (see the module docstring).

    ``shared``: run-wide outputs by role (``{"stats": "volumes.json"}``). ``writers``: role -> :class:`Writer`
    (roles without one are not checked for their ending). ``folders``: output folders the run creates (may exist).
    ``other_inputs``: files read by every job (model files, a reference raster). ``skip_done``: in a batch, a job
    whose outputs all exist is skipped (unless ``overwrite``). ``precheck(job)`` runs for every job of this part
    before any work (what a writer needs from the input, e.g. a DICOM FrameOfReferenceUID)."""
    from .options import check_part

    check_part(num_parts, part_id)
    writers = dict(writers or {})
    shared_paths = {role: Path(p) for role, p in (shared or {}).items() if p is not None}
    folder_paths = [Path(f) for f in folders]

    # 1. every output can be written by its writer, and is not a folder
    for role, path in [(r, p) for j in jobs for r, p in j.outputs.items()] + list(shared_paths.items()):
        if role in writers:
            writers[role].check(path)
        if path.is_dir() and not (role in writers and writers[role].folder):
            raise InputError("output is a folder, expected a file name", path)
    for folder in folder_paths:
        if folder.exists() and not folder.is_dir():
            raise InputError("output must be a folder (a file of that name exists)", folder)

    # 2. no two outputs share a path (within a job, across jobs, or with a run-wide output)
    owners: dict[str, tuple[str, str, Path]] = {}  # key -> (job name or "", role, path)
    for job_name, role, path in [(j.name, r, p) for j in jobs for r, p in j.outputs.items()] + \
            [("", r, p) for r, p in shared_paths.items()]:
        key = _key(path)
        if key in owners:
            other_job, other_role, _ = owners[key]
            if job_name and other_job and job_name != other_job:
                raise InputError(f"two inputs map to this output: {other_job} and {job_name} (rename one, or run "
                                 "them with different output folders)", path)
            raise InputError(f"two outputs of this run have the same path ({_role(other_role)} and {_role(role)}); "
                             "give them different names", path)
        owners[key] = (job_name, role, path)

    # 3. no output is an input, or one of the files an input consists of
    input_keys: dict[str, Path] = {}
    for path in [p for j in jobs for p in j.inputs] + [Path(p) for p in other_inputs]:
        input_keys.setdefault(_key(path), path)
    for key, (_, role, path) in owners.items():
        if key in input_keys:
            raise InputError(f"the {_role(role)} output is one of the inputs; choose another path", path)
    for folder in folder_paths:
        if _key(folder) in input_keys and Path(input_keys[_key(folder)]).is_file():
            raise InputError("the output folder is one of the input files", folder)

    # 4. the whole batch is checked; now this part's share, and what is done already
    total = len(jobs)
    mine = list(jobs)[part_id::num_parts] if num_parts > 1 else list(jobs)
    todo: list[Job] = []
    skipped: list[Job] = []
    for job in mine:
        existing = [p for p in job.output_paths() if p.exists()]
        if existing and not overwrite:
            if skip_done and len(existing) == len(job.outputs):
                skipped.append(job)
                continue
            if skip_done:
                raise InputError(f"{job.name}: some outputs exist and others do not (use --overwrite to redo it)",
                                 existing[0])
            raise OutputExistsError(existing[0])
        todo.append(job)
    for path in shared_paths.values():
        if path.exists() and not overwrite:
            raise OutputExistsError(path)

    # 5. folders can be created and written (each folder probed once)
    parents = [p.parent for j in todo for p in j.output_paths()] + [p.parent for p in shared_paths.values()]
    for folder in dict.fromkeys([*parents, *folder_paths]):
        _check_folder(folder)

    if precheck is not None:
        for job in todo:
            precheck(job)
    return Plan(jobs=todo, skipped=skipped, shared=shared_paths, folders=folder_paths, total=total)


def _role(role: str) -> str:
    return role.replace("_", " ")


def drop_own_outputs(candidates: Sequence[Path], outputs_of: Callable[[Path], Iterable[Path]]
                     ) -> tuple[list[Path], list[Path]]:
    """Split a folder's candidate inputs into (inputs, own outputs): a candidate that is an output this command
    would write for another candidate (``meeting_s1.wav`` for ``meeting.wav``) is not a new input.

    Returns (inputs, skipped); the caller prints a notice for the skipped ones."""
    produced: set[str] = set()
    for c in candidates:
        for out in outputs_of(c):
            produced.add(_key(Path(out)))
    keep: list[Path] = []
    skipped: list[Path] = []
    for c in candidates:
        (skipped if _key(c) in produced else keep).append(c)
    return keep, skipped
