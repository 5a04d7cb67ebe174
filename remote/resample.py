"""Resampling onto the output grid: the :class:`Grid` of an output and the fast axis-aligned bilinear resampler
(20 m / 60 m Sentinel-2 bands onto the 10 m grid); other grids (another CRS: an area's tiles in the next UTM zone)
are read window by window with an exact per-pixel transform and GDAL's kernels (:class:`WarpResampler`; see
:mod:`remote.reader` and :mod:`remote.area`).
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

    def _shift(self) -> tuple[int, int] | None:
        """(rows, cols) when the target grid is the source's lattice shifted by whole pixels (an area's tile of
        the output zone: its native-resolution bands), else None."""
        g, s = self.grid.transform, self.src.transform
        if not (np.isclose(g.a, s.a, rtol=1e-12, atol=0) and np.isclose(g.e, s.e, rtol=1e-12, atol=0)):
            return None
        dc, dr = (g.c - s.c) / s.a, (g.f - s.f) / s.e
        if abs(dc - round(dc)) > 1e-6 or abs(dr - round(dr)) > 1e-6:
            return None
        return int(round(dr)), int(round(dc))

    def read(self, indexes: list[int], window: Any) -> np.ndarray:
        from rasterio.windows import Window

        h, w = int(window.height), int(window.width)
        shift = self._shift()
        if shift is not None:  # a plain copy (bilinear weights would all be 0 / 1): outside the source is nodata
            sh, sw = self.src.height, self.src.width
            r0, c0 = int(window.row_off) + shift[0], int(window.col_off) + shift[1]
            raw = self.categorical or not self.is_float
            out = np.full((len(indexes), h, w), 0 if raw else np.nan,
                          dtype=self.src.dtypes[0] if self.categorical else np.float32)
            rr0, cc0, rr1, cc1 = max(r0, 0), max(c0, 0), min(r0 + h, sh), min(c0 + w, sw)
            if rr1 > rr0 and cc1 > cc0:
                a = self.src.read(indexes, window=Window(cc0, rr0, cc1 - cc0, rr1 - rr0))
                out[:, rr0 - r0:rr1 - r0, cc0 - c0:cc1 - c0] = a
            return out
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


class WarpResampler:
    """Reads a raster in another CRS (or on a rotated grid) onto windows of ``grid``: each output pixel centre is
    transformed exactly (PROJ, through ``rasterio.warp.transform``) into the source's pixel coordinates, then

    * reflectance: bilinear between the four source pixel centres around it, as GDAL's warper does it (weights of
      neighbours that are nodata, DN 0, ``saturated`` or outside the raster are dropped and the others renormalised;
      nodata when none is left or when the point lies outside the raster);
    * categorical bands (SCL): the source pixel holding the point (GDAL's nearest).

    Per pixel and exact (no approximate transformer, no per-chunk kernel scale), so a window gives exactly the
    values of the same pixels in a whole-grid read, whatever the tiling; it agrees with ``rasterio.warp.reproject``
    (GDAL's warper, 0.125 px approximation by default) to within that approximation. Only the source window under
    the output window is read. The coordinates of a window are cached per source CRS and grid (all bands and dates
    of a tile share them). Integer sources come back as float32 DN with 0 for nodata (the contract of
    :class:`AlignedResampler`), float sources as float32 with NaN."""

    #: exact transforms on a lattice every NODE pixels of the output grid (anchored to the CRS coordinates, so every
    #: window and every row block uses the same nodes); pixels in between are interpolated linearly, which for
    #: UTM-to-UTM over a 160 m cell is exact to well under a millimetre
    NODE = 16
    CACHE = 32
    _plans: dict[tuple, Any] = {}
    _order: list[tuple] = []

    def __init__(self, src: Any, grid: Grid, categorical: bool, saturated: int | None = None) -> None:
        self.src, self.grid, self.categorical, self.saturated = src, grid, categorical, saturated
        self.is_float = np.dtype(src.dtypes[0]).kind == "f"
        self.nodata = np.nan if self.is_float else 0

    def close(self) -> None:
        self.src.close()

    def _crs_xy(self, window: Any) -> tuple[np.ndarray, np.ndarray]:
        """Source-CRS coordinates of the window's pixel centres."""
        from rasterio.warp import transform

        g, t = self.grid, self.grid.transform
        r0, c0 = int(window.row_off), int(window.col_off)
        h, w = int(window.height), int(window.width)
        if t.b != 0 or t.d != 0:       # a rotated grid: every pixel exactly
            rows = np.arange(r0, r0 + h, dtype=np.float64)[:, None] + 0.5
            cols = np.arange(c0, c0 + w, dtype=np.float64)[None, :] + 0.5
            xs, ys = transform(g.crs, self.src.crs, (t.c + cols * t.a + rows * t.b).ravel(),
                               (t.f + cols * t.d + rows * t.e).ravel())
            return np.asarray(xs).reshape(h, w), np.asarray(ys).reshape(h, w)
        k = self.NODE
        ac, ar = round(t.c / t.a), round(t.f / t.e)          # the grid's offset on the CRS-anchored lattice
        n0c, n1c = (c0 + ac) // k, -(-(c0 + w - 1 + ac) // k)
        n0r, n1r = (r0 + ar) // k, -(-(r0 + h - 1 + ar) // k)
        ncol = np.arange(n0c, n1c + 1) * k - ac + 0.5        # node pixel-centre columns in grid coordinates
        nrow = np.arange(n0r, n1r + 1) * k - ar + 0.5
        nx, ny = t.c + ncol * t.a, t.f + nrow * t.e
        gx, gy = np.meshgrid(nx, ny)
        xs, ys = transform(g.crs, self.src.crs, gx.ravel(), gy.ravel())
        xs, ys = np.asarray(xs).reshape(gx.shape), np.asarray(ys).reshape(gx.shape)
        cols = np.arange(c0, c0 + w) + 0.5
        rows = np.arange(r0, r0 + h) + 0.5
        ic = np.minimum(((cols - ncol[0]) // k).astype(np.int64), len(ncol) - 2)
        ir = np.minimum(((rows - nrow[0]) // k).astype(np.int64), len(nrow) - 2)
        fc = ((cols - ncol[ic]) / k)[None, :]
        fr = ((rows - nrow[ir]) / k)[:, None]

        def lerp(a: np.ndarray) -> np.ndarray:
            top = a[ir][:, ic] * (1 - fc) + a[ir][:, ic + 1] * fc
            bot = a[ir + 1][:, ic] * (1 - fc) + a[ir + 1][:, ic + 1] * fc
            return top * (1 - fr) + bot * fr

        return lerp(xs), lerp(ys)

    def _plan(self, window: Any) -> Any:
        """Where each output pixel of ``window`` reads the source: (inside mask, source window, then for nearest the
        flat indices, for bilinear four (flat index, weight) pairs and the summed weights); cached per source grid
        and window (every date of a tile, every band of one resolution share it)."""
        from rasterio.windows import Window

        s, g = self.src, self.grid
        key = (s.crs.to_string(), tuple(s.transform)[:6], s.width, s.height, g.crs.to_string(),
               tuple(g.transform)[:6], self.categorical, int(window.col_off), int(window.row_off), int(window.width),
               int(window.height))
        plan = WarpResampler._plans.get(key)
        if plan is not None:
            return plan
        xs, ys = self._crs_xy(window)
        inv = ~s.transform
        px = inv.a * xs + inv.b * ys + inv.c            # source pixel coordinates (edges at integers)
        py = inv.d * xs + inv.e * ys + inv.f
        sh, sw = s.height, s.width
        inside = np.isfinite(px) & np.isfinite(py) & (px >= 0) & (px < sw) & (py >= 0) & (py < sh)
        if not inside.any():
            plan = (inside, None)
        elif self.categorical:
            ix, iy = np.floor(px[inside]).astype(np.int64), np.floor(py[inside]).astype(np.int64)
            c0, r0 = int(ix.min()), int(iy.min())
            ww = int(ix.max()) - c0 + 1
            plan = (inside, Window(c0, r0, ww, int(iy.max()) - r0 + 1), (iy - r0) * ww + (ix - c0))
        else:
            u, v = px[inside] - 0.5, py[inside] - 0.5          # pixel-centre coordinates
            x0, y0 = np.floor(u).astype(np.int64), np.floor(v).astype(np.int64)
            fx, fy = (u - x0).astype(np.float32), (v - y0).astype(np.float32)
            c0, r0 = max(0, int(x0.min())), max(0, int(y0.min()))
            c1, r1 = min(sw, int(x0.max()) + 2), min(sh, int(y0.max()) + 2)
            ww = c1 - c0
            taps = []
            wsum = np.zeros(u.size, np.float32)
            for dy, wy in ((0, 1 - fy), (1, fy)):
                for dx, wx in ((0, 1 - fx), (1, fx)):
                    cc, rr = x0 + dx, y0 + dy
                    ok = (cc >= 0) & (cc < sw) & (rr >= 0) & (rr < sh)    # neighbours outside the raster drop out
                    wk = np.where(ok, wx * wy, np.float32(0))
                    taps.append((np.where(ok, (rr - r0) * ww + (cc - c0), 0), wk))
                    wsum += wk
            plan = (inside, Window(c0, r0, ww, r1 - r0), taps, wsum)
        WarpResampler._plans[key] = plan
        WarpResampler._order.append(key)
        while len(WarpResampler._order) > self.CACHE:
            WarpResampler._plans.pop(WarpResampler._order.pop(0), None)
        return plan

    def read(self, indexes: list[int], window: Any) -> np.ndarray:
        h, w = int(window.height), int(window.width)
        n = len(indexes)
        plan = self._plan(window)
        inside = plan[0]
        if self.categorical:
            out = np.zeros((n, h, w), dtype=self.src.dtypes[0])
            if plan[1] is not None:
                a = self.src.read(indexes, window=plan[1])
                out[:, inside] = a.reshape(n, -1)[:, plan[2]]
            return out
        fill = np.nan if self.is_float else 0.0
        out = np.full((n, h, w), fill, dtype=np.float32)
        if plan[1] is None:
            return out
        _, swin, taps, wsum = plan
        a = self.src.read(indexes, window=swin)
        v = a.astype(np.float32).reshape(n, -1)
        bad = ~np.isfinite(v)
        raw = a.reshape(n, -1)
        if self.src.nodata is not None and np.isfinite(self.src.nodata):
            bad |= raw == self.src.nodata
        if not self.is_float:
            bad |= raw == 0
            if self.saturated is not None:
                bad |= raw == self.saturated
        for b in range(n):
            vb, badb = v[b], bad[b]
            any_bad = bool(badb.any())
            if any_bad:
                vb[badb] = 0.0
            acc = np.zeros(wsum.size, np.float32)
            ws = np.zeros(wsum.size, np.float32) if any_bad else wsum
            for idx, wk in taps:
                if any_bad:
                    wk = np.where(badb[idx], np.float32(0), wk)
                    ws += wk
                acc += vb[idx] * wk
            good = ws > 1e-6
            out[b][inside] = np.where(good, acc / np.where(good, ws, 1), fill)
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
