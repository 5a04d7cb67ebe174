"""Resampling onto the output grid: the :class:`Grid` of an output and the fast axis-aligned bilinear resampler
(20 m / 60 m Sentinel-2 bands onto the 10 m grid); other grids go through GDAL's WarpedVRT (see :mod:`remote.reader`).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True)
class Grid:
    """A raster grid: CRS, affine transform, width and height."""

    crs: Any
    transform: Any
    width: int
    height: int

    @property
    def res(self) -> float:
        return abs(float(self.transform.a))

    def windows(self, tile: int) -> Iterator[Any]:
        """Windows of ``tile`` x ``tile`` pixels (clipped at the edges), row-major."""
        from rasterio.windows import Window

        for r in range(0, self.height, tile):
            for c in range(0, self.width, tile):
                yield Window(c, r, min(tile, self.width - c), min(tile, self.height - r))

    def n_windows(self, tile: int) -> int:
        return -(-self.height // tile) * -(-self.width // tile)



class AlignedResampler:
    """Reads a raster onto an axis-aligned target grid of the same CRS (e.g. 20 m bands onto the 10 m grid):
    bilinear interpolation (nearest for ``categorical``) between source pixel centres, edges clamped; a target pixel
    is nodata if a source pixel with non-zero weight is nodata, or if its centre lies outside the source.

    Separable and per pixel, so a window gives exactly the values of the same pixels in a whole-raster read; much
    faster than a general warp for these grids. Integer sources come back as float32 DN (nodata and ``saturated`` ->
    0, the nodata DN)."""

    def __init__(self, src: Any, grid: Grid, categorical: bool, saturated: int | None = None) -> None:
        self.src, self.grid, self.categorical = src, grid, categorical
        self.is_float = np.dtype(src.dtypes[0]).kind == "f"
        self.nodata = src.nodata if src.nodata is not None else (np.nan if self.is_float else 0)
        self.saturated = saturated

    def close(self) -> None:
        self.src.close()

    def _coords(self, start: int, n: int, axis: int) -> np.ndarray:
        g, s = self.grid.transform, self.src.transform
        if axis == 0:  # rows: y = f + e * row
            return (np.arange(start, start + n) + 0.5) * (g.e / s.e) + (g.f - s.f) / s.e - 0.5
        return (np.arange(start, start + n) + 0.5) * (g.a / s.a) + (g.c - s.c) / s.a - 0.5

    def read(self, indexes: list[int], window: Any) -> np.ndarray:
        from rasterio.windows import Window

        h, w = int(window.height), int(window.width)
        ys = self._coords(int(window.row_off), h, 0)
        xs = self._coords(int(window.col_off), w, 1)
        sh, sw = self.src.height, self.src.width
        outside = (ys < -0.5) | (ys > sh - 0.5), (xs < -0.5) | (xs > sw - 0.5)
        if self.categorical:
            iy = np.clip(np.floor(ys + 0.5).astype(np.int64), 0, sh - 1)
            ix = np.clip(np.floor(xs + 0.5).astype(np.int64), 0, sw - 1)
            r0, r1, c0, c1 = iy.min(), iy.max() + 1, ix.min(), ix.max() + 1
            a = self.src.read(indexes, window=Window(c0, r0, c1 - c0, r1 - r0))
            out = a[:, iy - r0][:, :, ix - c0]
            out[:, outside[0], :] = 0 if not self.is_float else np.nan
            out[:, :, outside[1]] = 0 if not self.is_float else np.nan
            return out
        y0 = np.floor(ys).astype(np.int64)
        x0 = np.floor(xs).astype(np.int64)
        fy, fx = (ys - y0).astype(np.float32), (xs - x0).astype(np.float32)
        ya, yb = np.clip(y0, 0, sh - 1), np.clip(y0 + 1, 0, sh - 1)
        xa, xb = np.clip(x0, 0, sw - 1), np.clip(x0 + 1, 0, sw - 1)
        r0, r1, c0, c1 = ya.min(), yb.max() + 1, xa.min(), xb.max() + 1
        a = self.src.read(indexes, window=Window(c0, r0, c1 - c0, r1 - r0)).astype(np.float32)
        bad = ~np.isfinite(a) if self.is_float else np.zeros(a.shape, bool)
        if self.nodata is not None and not (isinstance(self.nodata, float) and np.isnan(self.nodata)):
            bad |= a == self.nodata
        if not self.is_float:
            bad |= a == 0
            if self.saturated is not None:
                bad |= a == self.saturated
        a = np.where(bad, 0.0, a)
        ya, yb, xa, xb = ya - r0, yb - r0, xa - c0, xb - c0
        wy, wx = fy[:, None], fx[None, :]
        # separable: along x on the source rows once, then along y (the same products in the same order as the
        # four-corner form, so the same values, with half the gathers on a 2x upsampling)
        ax = a[:, :, xa] * (1 - wx) + a[:, :, xb] * wx
        out = ax[:, ya] * (1 - wy) + ax[:, yb] * wy
        # nodata where a source pixel with non-zero weight is bad
        bx = (bad[:, :, xa] & (1 - wx > 0)) | (bad[:, :, xb] & (wx > 0))
        contrib = (bx[:, ya] & (1 - wy > 0)) | (bx[:, yb] & (wy > 0))
        contrib[:, outside[0], :] = True
        contrib[:, :, outside[1]] = True
        out[contrib] = np.nan if self.is_float else 0.0
        return out


def grid_of(src: Any) -> Grid:
    """The grid of an open rasterio dataset."""
    return Grid(src.crs, src.transform, src.width, src.height)


#: the widest output grid ``--bounds`` may ask for, in pixels per side (10,000 km at 10 m; a GeoTIFF's tile index
#: would exceed GDAL's limits not far beyond)
MAX_GRID_SIDE = 1 << 20


def grid_from_bounds(like: Grid, bounds: tuple[float, float, float, float]) -> Grid:
    """A grid with the CRS and pixel size of ``like`` covering ``bounds`` (minx, miny, maxx, maxy in that CRS),
    snapped outwards to the pixel lattice of ``like`` so that its native-resolution bands need no resampling."""
    import math

    from rasterio.transform import Affine

    minx, miny, maxx, maxy = bounds
    t = like.transform
    if t.b != 0 or t.d != 0:
        raise ValueError("--bounds needs a north-up grid")
    rx, ry = t.a, -t.e
    c0 = math.floor((minx - t.c) / rx + 1e-9)
    c1 = math.ceil((maxx - t.c) / rx - 1e-9)
    r0 = math.floor((t.f - maxy) / ry + 1e-9)
    r1 = math.ceil((t.f - miny) / ry - 1e-9)
    if c1 <= c0 or r1 <= r0:
        raise ValueError(f"empty bounds {bounds}")
    if max(c1 - c0, r1 - r0) > MAX_GRID_SIDE:
        raise ValueError(f"they span {c1 - c0} x {r1 - r0} pixels of {rx:g} x {ry:g}; at most {MAX_GRID_SIDE} per "
                         "side (check the units: grid CRS coordinates)")
    return Grid(like.crs, Affine(rx, 0.0, t.c + c0 * rx, 0.0, -ry, t.f - r0 * ry), c1 - c0, r1 - r0)


def covered_fraction(grid: Grid, bounds: tuple[float, float, float, float]) -> float:
    """Fraction of ``grid``'s area inside ``bounds`` (minx, miny, maxx, maxy in the grid CRS)."""
    from rasterio.transform import array_bounds

    gminx, gminy, gmaxx, gmaxy = array_bounds(grid.height, grid.width, grid.transform)
    w = max(0.0, min(gmaxx, bounds[2]) - max(gminx, bounds[0]))
    h = max(0.0, min(gmaxy, bounds[3]) - max(gminy, bounds[1]))
    area = (gmaxx - gminx) * (gmaxy - gminy)
    return float(w * h / area) if area > 0 else 0.0
