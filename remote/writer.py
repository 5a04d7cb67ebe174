"""Raster outputs of ``remote``: Cloud-Optimised GeoTIFFs by default, plain tiled GeoTIFFs on request.

A Cloud-Optimised GeoTIFF (COG; https://cogeo.org, GDAL's ``COG`` driver) is a tiled GeoTIFF whose overviews and
tile index come before the pixel data, so QGIS and web maps read a view's tiles (or a zoomed-out overview) with a
few range requests instead of the whole file. GDAL's COG driver only writes by copying a finished raster
(``CreateCopy``), so :func:`raster_output` hands the writer a tiled staging GeoTIFF beside the output (written
window by window, memory bounded by the window) and converts it when the block ends: 512 x 512 tiles, overviews
down to one tile (nearest neighbour for class maps and other categorical rasters, average for continuous values;
nodata is left out of the averages), deflate or zstd compression with the predictor that suits the data type
(floating-point predictor 3 for floats, horizontal differencing 2 for integers wider than a byte, none for bytes).
Band descriptions, nodata, colour table, scales and dataset tags are carried over. The result is written under a
temporary name and renamed (:func:`shared_backbones.cliutil.atomic_output`): a failure leaves no half file.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from shared_backbones.cliutil import atomic_output

from .resample import Grid

#: output formats of every raster ``remote`` writes (``--format``)
FORMATS = ("COG", "GTiff")
#: compressions of ``--compress``
COMPRESSIONS = ("deflate", "zstd")
#: tile edge of the Cloud-Optimised GeoTIFFs (and the unit the row blocks of ``--num-parts`` are aligned to)
COG_BLOCK = 512


def usable_cpus() -> int:
    """CPUs this process may run on (affinity / cgroup aware where the OS tells)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:     # not on Linux
        return max(1, os.cpu_count() or 1)


def _predictor(dtype: str) -> int:
    """TIFF predictor for ``dtype``: 3 (floating point) for floats, 2 (horizontal) for wider integers, 1 (none) for
    bytes (differencing class labels or 0..250 probabilities gains nothing)."""
    dt = np.dtype(dtype)
    if dt.kind == "f":
        return 3
    return 2 if dt.itemsize > 1 else 1


def geotiff_profile(grid: Grid, count: int, dtype: str, nodata: float | int | None, block: int = 256,
                    compress: str = "deflate") -> dict:
    """A tiled, compressed plain GeoTIFF profile on ``grid`` (``--format GTiff``; predictor as :func:`_predictor`,
    except that 2 is kept for bytes as before)."""
    prof = {
        "driver": "GTiff",
        "width": grid.width,
        "height": grid.height,
        "count": count,
        "dtype": dtype,
        "crs": grid.crs,
        "transform": grid.transform,
        "nodata": nodata,
        "compress": compress,
        "BIGTIFF": "IF_SAFER",
    }
    if grid.width >= 16 and grid.height >= 16:
        b = min(block, 16 * max(1, min(grid.width, grid.height) // 16))
        prof.update(tiled=True, blockxsize=b, blockysize=b)
    if np.dtype(dtype).kind == "f":
        prof["predictor"] = 3
    elif np.dtype(dtype).itemsize > 1:
        prof["predictor"] = 2
    return prof


def cog_options(dtype: str, categorical: bool, compress: str = "deflate", block: int = COG_BLOCK,
                threads: int | None = None) -> dict[str, Any]:
    """Creation options of GDAL's COG driver for a raster of ``dtype`` (see the module docstring); ``threads``
    compress blocks in parallel (default: every usable CPU: the conversion runs when the computing is done)."""
    if compress not in COMPRESSIONS:
        raise ValueError(f"compression must be one of {', '.join(COMPRESSIONS)}, not {compress!r}")
    pred = _predictor(dtype)
    return {"BLOCKSIZE": block, "COMPRESS": compress.upper(),
            "PREDICTOR": {1: "NO", 2: "STANDARD", 3: "FLOATING_POINT"}[pred],
            "OVERVIEW_RESAMPLING": "NEAREST" if categorical else "AVERAGE",
            "OVERVIEWS": "IGNORE_EXISTING", "BIGTIFF": "IF_SAFER", "NUM_THREADS": str(threads or usable_cpus())}


def check_format(fmt: str, compress: str = "deflate") -> None:
    """Refuse an unknown ``--format`` / ``--compress`` (ValueError with one line)."""
    if fmt not in FORMATS:
        raise ValueError(f"format must be one of {', '.join(FORMATS)}, not {fmt!r}")
    if compress not in COMPRESSIONS:
        raise ValueError(f"compression must be one of {', '.join(COMPRESSIONS)}, not {compress!r}")


def copy_as(src: str | Path, dst: str | Path, fmt: str = "COG", *, categorical: bool = False,
            compress: str = "deflate") -> None:
    """Copy the raster ``src`` (a GeoTIFF, a VRT) to ``dst`` as a COG (:func:`cog_options`) or a tiled GeoTIFF,
    block by block (GDAL ``CreateCopy``: memory does not grow with the raster)."""
    import rasterio
    from rasterio.shutil import copy

    check_format(fmt, compress)
    with rasterio.open(src) as ds:
        dtype = ds.dtypes[0]
        grid = Grid(ds.crs, ds.transform, ds.width, ds.height)
        count, nodata = ds.count, ds.nodata
    if fmt == "COG":
        copy(str(src), str(dst), driver="COG", **cog_options(dtype, categorical, compress))
    else:
        prof = geotiff_profile(grid, count, dtype, nodata, compress=compress)
        opts = {k: v for k, v in prof.items() if k not in ("driver", "width", "height", "count", "dtype", "crs",
                                                            "transform", "nodata")}
        copy(str(src), str(dst), driver="GTiff", **opts)


@contextlib.contextmanager
def raster_output(path: str | Path, grid: Grid, count: int, dtype: str, nodata: float | int | None, *,
                  fmt: str = "COG", categorical: bool = False, compress: str = "deflate",
                  overwrite: bool = False) -> Iterator[Any]:
    """Open ``path`` for writing on ``grid`` and yield the rasterio dataset; when the block ends the raster is
    finished as ``fmt`` (``"COG"``: see the module docstring; ``"GTiff"``: a tiled GeoTIFF written in place) under a
    temporary name and renamed onto ``path`` (0644). ``categorical``: nearest-neighbour overviews (class maps, field
    IDs) instead of averages. Descriptions, colour table, scales and tags set on the yielded dataset are kept."""
    import rasterio

    check_format(fmt, compress)
    with atomic_output(path, overwrite) as tmp:
        if fmt == "GTiff":
            with rasterio.open(tmp, "w", **geotiff_profile(grid, count, dtype, nodata, compress=compress)) as ds:
                yield ds
            return
        stage = tmp.with_name(f"{tmp.stem}.stage.tif")
        try:
            prof = geotiff_profile(grid, count, dtype, nodata, block=COG_BLOCK, compress="zstd")
            prof["ZSTD_LEVEL"] = 1     # a fast staging file: the COG copy compresses for good
            with rasterio.open(stage, "w", **prof) as ds:
                yield ds
            copy_as(stage, tmp, "COG", categorical=categorical, compress=compress)
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(stage)
