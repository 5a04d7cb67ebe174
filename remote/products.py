"""Index time stacks: vegetation indices of every date (or of a regular gap-filled grid) as one GeoTIFF."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from shared_backbones.cliutil import atomic_output, progress
from shared_backbones.errors import InputError
from shared_backbones.planning import Job, Plan, Writer

from .batch import GEOTIFF, OUTPUT_TAG, plan_series, run_jobs
from .discovery import SeriesOptions
from .indices import INDEX_BANDS, canonical_index, compute_indices
from .naming import DEFAULT_SCL_INVALID, S2_BANDS
from .reader import S2Series
from .timeseries import day_numbers, fill_gaps, regular_grid
from .writer import geotiff_profile


def write_index_stack(series: S2Series, out: str | Path, names: Sequence[str], *, soil_slope: float = 1.0,
                      scl_invalid: Sequence[int] | None = DEFAULT_SCL_INVALID, grid_days: int | None = None,
                      tile: int = 256, overwrite: bool = False, quiet: bool = False) -> dict[str, Any]:
    """Write indices ``names`` for every date as a float32 GeoTIFF (bands date-major, described ``"NDVI 2024-05-01"``;
    NaN nodata where a date is cloudy/no data or the index is undefined). With ``grid_days`` the dates are first
    gap-filled onto a regular grid with that step (linear in time, edges held)."""
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
    prof = geotiff_profile(g, len(dates) * len(names), "float32", float("nan"))
    import rasterio

    with atomic_output(out, overwrite) as tmp, rasterio.open(tmp, "w", **prof) as ds, series:
        for t, d in enumerate(dates):
            for i, n in enumerate(names):
                ds.set_band_description(t * len(names) + i + 1, f"{n} {d.isoformat()}")
        ds.update_tags(**{OUTPUT_TAG: "remote indices"}, INDICES=",".join(names),
                       DATES=",".join(d.isoformat() for d in dates),
                       SOIL_LINE_SLOPE=str(soil_slope), GAP_FILLED=str(grid_days is not None))
        for window in progress(g.windows(tile), total=g.n_windows(tile), desc="indices", unit="tile", quiet=quiet):
            obs = series.read(window, needed, scl_invalid)
            if grid_days is not None:
                obs = fill_gaps(obs, day_numbers(series.dates), day_numbers(dates))
            vals = np.stack(compute_indices(names, obs, needed, axis=1, soil_slope=soil_slope), axis=1)
            ds.write(vals.reshape(-1, *vals.shape[2:]).astype(np.float32), window=window)
    return {"path": str(out), "bands": len(dates) * len(names), "dates": len(dates), "indices": names,
            "size": [g.height, g.width]}


def plan_indices(inputs: Sequence[str | Path], output: str | Path, *, each: bool = False, overwrite: bool = False,
                 num_parts: int = 1, part_id: int = 0) -> Plan:
    """Plan ``remote indices``: all inputs -> the stack ``output``, or with ``each`` one stack per input,
    ``<output>/<name>_indices.tif`` (see :func:`remote.batch.plan_series`; checked before any work)."""
    return plan_series(inputs, output, lambda main: {"indices": main}, each=each, each_suffix="_indices.tif",
                       writers={"indices": Writer(GEOTIFF)}, overwrite=overwrite, num_parts=num_parts,
                       part_id=part_id)


def index_files(plan: Plan, names: Sequence[str], *, read: SeriesOptions | None = None, soil_slope: float = 1.0,
                scl_invalid: Sequence[int] | None = DEFAULT_SCL_INVALID, grid_days: int | None = None,
                tile: int = 256, overwrite: bool = False, quiet: bool = False,
                on_series: Callable[[S2Series], None] | None = None,
                report: Callable[[Job, dict[str, Any]], None] | None = None, prog: str = "remote") -> int:
    """Write the index stack of every job of ``plan`` (:func:`plan_indices`); a bad input is reported and the
    others go on. ``on_series`` sees each opened series (notices, provenance), ``report`` each result.
    Returns 0, or 2 when some input failed."""
    read = read or SeriesOptions()
    try:  # checked once, before any work
        names = [canonical_index(n) for n in names]
    except KeyError as exc:
        raise InputError(str(exc.args[0])) from None
    if not names:
        raise InputError("no index chosen")

    def work(job: Job) -> None:
        series = read.open(job.data["inputs"], exclude=job.data["exclude"])
        if on_series is not None:
            on_series(series)
        res = write_index_stack(series, job.outputs["indices"], names, soil_slope=soil_slope,
                                scl_invalid=scl_invalid, grid_days=grid_days, tile=tile, overwrite=overwrite,
                                quiet=quiet)
        if report is not None:
            report(job, res)

    return run_jobs(plan, work, prog=prog, quiet=quiet)
