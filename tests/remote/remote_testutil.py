"""GeoTIFF writer for the remote tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import rasterio
from rasterio.crs import CRS
from rasterio.transform import from_origin

CRS32632 = CRS.from_epsg(32632)


def write_tif(path: Path, data: np.ndarray, desc: list[str] | None = None, res: float = 10.0,
              crs: CRS = CRS32632, nodata=0, tags: dict | None = None, origin=(600000.0, 5300000.0)) -> Path:
    """Write [C, H, W] ``data`` as a GeoTIFF with band descriptions and tags."""
    data = np.asarray(data)
    if data.ndim == 2:
        data = data[None]
    with rasterio.open(path, "w", driver="GTiff", width=data.shape[2], height=data.shape[1], count=data.shape[0],
                       dtype=data.dtype.name, crs=crs, transform=from_origin(*origin, res, res), nodata=nodata) as ds:
        ds.write(data)
        for i, d in enumerate(desc or [], 1):
            ds.set_band_description(i, d)
        if tags:
            ds.update_tags(**tags)
    return path
