"""GeoTIFF output profiles: tiled, deflate-compressed, on an output :class:`~remote.resample.Grid`."""

from __future__ import annotations

import numpy as np

from .resample import Grid


def geotiff_profile(grid: Grid, count: int, dtype: str, nodata: float | int | None, block: int = 256) -> dict:
    """A tiled, deflate-compressed GeoTIFF profile on ``grid`` (predictor 3 for floats, 2 for wide integers)."""
    prof = {
        "driver": "GTiff",
        "width": grid.width,
        "height": grid.height,
        "count": count,
        "dtype": dtype,
        "crs": grid.crs,
        "transform": grid.transform,
        "nodata": nodata,
        "compress": "deflate",
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
