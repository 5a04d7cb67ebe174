"""Index time stacks: vegetation indices of every date (or of a regular gap-filled grid) as one GeoTIFF."""

from __future__ import annotations

import contextlib
import datetime as dt
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from shared_backbones.cliutil import progress
from shared_backbones.errors import InputError
from shared_backbones.options import check_part
from shared_backbones.planning import Job, Plan, Writer

from .batch import GEOTIFF, OUTPUT_TAG, plan_series, run_jobs
from .discovery import SeriesOptions
from .indices import INDEX_BANDS, canonical_index, compute_indices
from .join import RowBlock, map_ordered, part_path, worker_copies
from .naming import DEFAULT_SCL_INVALID, S2_BANDS
from .reader import S2Series
from .timeseries import day_numbers, fill_gaps, regular_grid
from .writer import raster_output, usable_cpus


def write_index_stack(series: S2Series, out: str | Path, names: Sequence[str], *, soil_slope: float = 1.0,
                      scl_invalid: Sequence[int] | None = DEFAULT_SCL_INVALID, grid_days: int | None = None,
                      tile: int = 256, overwrite: bool = False, quiet: bool = False, fmt: str = "COG",
                      compress: str = "deflate", num_parts: int = 1, part_id: int = 0,
                      workers: int | None = None) -> dict[str, Any]:
    """Write indices ``names`` for every date as a float32 raster (bands date-major, described ``"NDVI 2024-05-01"``;
    NaN nodata where a date is cloudy/no data or the index is undefined): a Cloud-Optimised GeoTIFF (``fmt``, see
    :mod:`remote.writer`). With ``grid_days`` the dates are first gap-filled onto a regular grid with that step
    (linear in time, edges held). With ``num_parts`` > 1 only row block ``part_id`` of the grid is written, as a
    raster of its own (:class:`remote.join.RowBlock`; ``out`` is then the part's path). The tiles are computed by
    ``workers`` threads (default: every usable CPU), each with its own copy of the series, at most two per thread
    in flight (:func:`remote.join.map_ordered`)."""
    try:
        names = [canonical_index(n) for n in names]
    except KeyError as exc:
        raise InputError(str(exc.args[0])) from None
    if not names:
        raise InputError("no index chosen")
    needed = [b for b in S2_BANDS if any(b in INDEX_BANDS[n] for n in names)]
    series.require_bands(needed)
    dates: list[dt.date] = series.dates
    if grid_days is not None:
        dates = regular_grid(dates[0], dates[-1], grid_days)
    g = series.grid
    block = RowBlock.part(g, num_parts, part_id) if num_parts > 1 else RowBlock.whole(g)

    def compute(src: S2Series, windows: tuple[Any, Any]) -> np.ndarray:
        obs = src.read(windows[0], needed, scl_invalid)
        if grid_days is not None:
            obs = fill_gaps(obs, day_numbers(src.dates), day_numbers(dates))
        vals = np.stack(compute_indices(names, obs, needed, axis=1, soil_slope=soil_slope), axis=1)
        return vals.reshape(-1, *vals.shape[2:]).astype(np.float32)

    copies = worker_copies(series, workers or usable_cpus())
    with raster_output(out, block.out_grid, len(dates) * len(names), "float32", float("nan"), fmt=fmt,
                       compress=compress, overwrite=overwrite) as ds, contextlib.ExitStack() as stack:
        for c in copies:
            stack.enter_context(c)
        for t, d in enumerate(dates):
            for i, n in enumerate(names):
                ds.set_band_description(t * len(names) + i + 1, f"{n} {d.isoformat()}")
        ds.update_tags(**{OUTPUT_TAG: "remote indices"}, INDICES=",".join(names),
                       DATES=",".join(d.isoformat() for d in dates),
                       SOIL_LINE_SLOPE=str(soil_slope), GAP_FILLED=str(grid_days is not None), **block.tags(False))
        tiles = map_ordered(block.windows(tile), compute, copies)
        for (_, write_window), vals in progress(tiles, total=block.n_windows(tile), desc="indices", unit="tile",
                                                quiet=quiet):
            ds.write(vals, window=write_window)
    return {"path": str(out), "bands": len(dates) * len(names), "dates": len(dates), "indices": names,
            "size": [block.height, g.width], "workers": len(copies),
            **({"part": f"{part_id}/{num_parts}", "rows": [block.row0, block.row1]} if block.is_part else {})}


def plan_indices(inputs: Sequence[str | Path], output: str | Path, *, each: bool = False, overwrite: bool = False,
                 num_parts: int = 1, part_id: int = 0, preview: str | Path | None = None) -> Plan:
    """Plan ``remote indices``: all inputs -> the stack ``output``, or with ``each`` one stack per input,
    ``<output>/<name>_indices.tif`` (see :func:`remote.batch.plan_series`; checked before any work). Without
    ``each``, ``num_parts`` > 1 splits the output grid: this run writes ``X.part-K-of-N.tif``
    (:func:`remote.join.part_path`). ``preview``: a quick-look PNG (not with ``each`` or grid parts)."""
    grid_parts = num_parts > 1 and not each
    if preview is not None and (each or grid_parts):
        raise InputError("--preview shows one map: not with --each or --num-parts (preview the joined map with "
                         "'remote mosaic ... --preview')")

    def outputs_of(main: Path) -> dict[str, Path]:
        outs = {"indices": part_path(main, part_id, num_parts) if grid_parts else main}
        return outs | ({"preview": Path(preview)} if preview is not None else {})

    plan = plan_series(inputs, output, outputs_of, each=each, each_suffix="_indices.tif",
                       writers={"indices": Writer(GEOTIFF), "preview": Writer((".png",), option="--preview")},
                       overwrite=overwrite, num_parts=1 if grid_parts else num_parts,
                       part_id=0 if grid_parts else part_id)
    if grid_parts:
        check_part(num_parts, part_id)
        for job in plan.jobs:
            job.data["part"] = (part_id, num_parts)
    return plan


def index_files(plan: Plan, names: Sequence[str], *, read: SeriesOptions | None = None, soil_slope: float = 1.0,
                scl_invalid: Sequence[int] | None = DEFAULT_SCL_INVALID, grid_days: int | None = None,
                tile: int = 256, overwrite: bool = False, quiet: bool = False, fmt: str = "COG",
                compress: str = "deflate", workers: int | None = None,
                on_series: Callable[[S2Series], None] | None = None,
                report: Callable[[Job, dict[str, Any]], None] | None = None, prog: str = "remote") -> int:
    """Write the index stack of every job of ``plan`` (:func:`plan_indices`; its ``preview`` output too); a bad
    input is reported and the others go on. A job planned as a part of the output grid (``job.data["part"]``)
    writes that row block (:func:`write_index_stack`). ``on_series`` sees each opened series
    (notices, provenance), ``report`` each result. Returns 0, or 2 when some input failed."""
    read = read or SeriesOptions()
    try:  # checked once, before any work
        names = [canonical_index(n) for n in names]
    except KeyError as exc:
        raise InputError(str(exc.args[0])) from None
    if not names:
        raise InputError("no index chosen")

    def work(job: Job) -> None:
        series = read.open(job.data["inputs"], exclude=job.data["exclude"], cloud_mask=bool(scl_invalid))
        if on_series is not None:
            on_series(series)
        part_id, num_parts = job.data.get("part", (0, 1))
        res = write_index_stack(series, job.outputs["indices"], names, soil_slope=soil_slope,
                                scl_invalid=scl_invalid, grid_days=grid_days, tile=tile, overwrite=overwrite,
                                quiet=quiet, fmt=fmt, compress=compress, num_parts=num_parts, part_id=part_id,
                                workers=workers)
        if "preview" in job.outputs:
            from .preview import series_footprints, write_preview

            res["preview"] = write_preview(
                job.outputs["preview"], indices=job.outputs["indices"], overwrite=overwrite,
                footprints=series_footprints(series, series.grid.crs),
                title=f"remote indices: {Path(job.outputs['indices']).name}")
        if report is not None:
            report(job, res)

    return run_jobs(plan, work, prog=prog, quiet=quiet)
