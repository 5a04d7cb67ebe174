"""Output planning for ``remote`` batches: every time series -> its outputs, checked before any work.

A run is one job (all inputs are one time series -> ``-o``), or with ``each`` one job per input (a site folder, a
product) whose outputs go into the folder ``-o`` under the input's name. The jobs go through
:func:`shared_backbones.planning.plan_outputs`: two inputs mapping to one output, an output that is an input (or one
of the files an input folder or product consists of), two outputs with one path and endings the writer cannot write
are refused in one line; with ``each``, inputs whose outputs all exist are skipped (unless ``overwrite``), and
``num_parts``/``part_id`` split the batch between the tasks of a SLURM array.

A file in an input folder at an output path is taken for this command's own earlier output (and left out of the
series) only when it carries the :data:`OUTPUT_TAG` GeoTIFF tag the writers set; any other file there is an input.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

from shared_backbones.cliutil import run_batch, say
from shared_backbones.errors import InputError
from shared_backbones.planning import Job, Plan, Writer, plan_outputs, suffix_of

from .discovery import input_files

#: GeoTIFF tag naming the command that wrote a raster (``remote predict``, ``remote indices``)
OUTPUT_TAG = "CONVSUITE_OUTPUT"
GEOTIFF = (".tif", ".tiff")
_ENDINGS = (".zip", ".SAFE", ".json", ".tif", ".tiff")


def site_name(item: str | Path) -> str:
    """The name an input gives its outputs with ``each``: ``S2..._T32UQD_....SAFE.zip`` -> ``S2..._T32UQD_...``,
    ``site_a/`` -> ``site_a``."""
    name = Path(item).name
    for ext in _ENDINGS:
        name = name[: -len(ext)] if name.endswith(ext) else name
    return name


def _written_by_us(path: Path) -> bool:
    if suffix_of(path) not in GEOTIFF:
        return False
    try:
        import rasterio

        with rasterio.open(path) as ds:
            return OUTPUT_TAG in ds.tags()
    except Exception:  # unreadable: not ours  # noqa: BLE001
        return False


def _abs(path: str | Path) -> str:
    return os.path.normcase(os.path.abspath(path))


def plan_series(inputs: Sequence[str | Path], output: str | Path, outputs_of: Callable[[Path], dict[str, Path]], *,
                each: bool = False, each_suffix: str = ".tif", writers: dict[str, Writer] | None = None,
                other_inputs: Iterable[str | Path] = (), overwrite: bool = False, num_parts: int = 1,
                part_id: int = 0) -> Plan:
    """Plan a ``remote`` run (module docstring). ``outputs_of(main_output)`` gives a job's outputs by role from
    its main output path (``-o``, or ``<folder>/<site name><each_suffix>`` with ``each``). Each job's ``data`` is
    ``{"inputs": [...], "exclude": [...]}``: the inputs of its series and the run's outputs that folders must not
    contribute. Raises :class:`InputError` (one line) before anything is written."""
    items = [str(i) for i in inputs]
    if not items:
        raise InputError("no inputs given")
    folders: list[Path] = []
    if each:
        folder = Path(output)
        if suffix_of(folder) in GEOTIFF:
            raise InputError("with --each, -o/--output is a folder", folder)
        named = [([item], outputs_of(folder / f"{site_name(item)}{each_suffix}")) for item in items]
        folders.append(folder)
    else:
        named = [(items, outputs_of(Path(output)))]
    out_keys = {_abs(p) for _, outs in named for p in outs.values()}
    exclude = sorted(out_keys)
    jobs = []
    for job_inputs, outs in named:
        files = input_files(job_inputs)
        # an earlier run's output inside an input folder is not an input (the series leaves it out); a file there
        # that this command did not write is, and the planner refuses to replace it
        own = {_abs(f) for f in files if _abs(f) in out_keys and _written_by_us(f)}
        jobs.append(Job(", ".join(job_inputs), [f for f in files if _abs(f) not in own], outs,
                        data={"inputs": job_inputs, "exclude": exclude}))
    return plan_outputs(jobs, writers=writers, folders=folders, other_inputs=other_inputs, overwrite=overwrite,
                        skip_done=each, num_parts=num_parts, part_id=part_id)


def run_jobs(plan: Plan, work: Callable[[Job], Any], *, prog: str = "remote", quiet: bool = False) -> int:
    """Run ``work(job)`` for every job of ``plan`` (a bad input is reported and the batch goes on; see
    :func:`shared_backbones.cliutil.run_batch`); prints the skipped-jobs notice. Returns 0, or 2 when some failed."""
    if plan.skipped:
        say(f"{prog}: {plan.skipped_notice()}", quiet)
    if not plan.jobs:
        return 0
    plan.make_folders()
    return run_batch(plan.jobs, work, prog=prog, quiet=quiet, name=lambda j: j.name)
