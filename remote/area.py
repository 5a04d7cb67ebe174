"""Areas: Sentinel-2 products of any tiles and UTM zones mosaicked onto ONE output grid, window by window.

A farm, a district or a watershed is rarely one Sentinel-2 tile: tiles overlap by about 10 km and neighbours often
lie in different UTM zones. Here every *product* (one tile of one date: a ``.SAFE`` folder or zip, a STAC item, a
scene folder, a set of per-band GeoTIFFs of one tile) keeps its own grid and its own radiometry, and is read window
by window through that grid onto the output grid:

* **Output grid** (:func:`area_grid`, built from the products' footprints before any pixel is read): by default the
  10 m grid in the UTM zone holding the centre of the area (the union of the footprints, or ``bounds``), on the
  pixel lattice of a product of that zone when there is one; ``crs`` (``--crs EPSG:N``, a projected CRS) chooses
  another CRS; ``bounds`` (``--bounds``, in ``bounds_crs`` or else in the grid CRS) cut or extend it; a reference
  raster (``--grid``) gives the grid outright.
* **Reprojection per band kind**: reflectances bilinear, SCL nearest. A product in the grid's CRS goes through the
  axis-aligned resampler the single-tile path uses (:class:`remote.resample.AlignedResampler`, bilinear between pixel
  centres: 20 m / 60 m bands are upsampled exactly as for one tile); a product in another CRS through
  :class:`remote.resample.WarpResampler`: every output pixel centre transformed exactly by PROJ into the product's
  pixel coordinates, then GDAL's bilinear (nodata, DN 0 and saturated neighbours dropped and the weights
  renormalised) or nearest, on just the source window under the output window. Being exact per pixel, a window
  gives the same values as a whole-grid read (any ``--tile``, any row block); it matches GDAL's warper
  (``rasterio.warp.reproject`` / ``gdalwarp``) to within GDAL's 0.125 px transform approximation. Memory is bounded
  by the output window: no product is ever read whole.
* **Overlap rule** (per pixel and date, :meth:`AreaSeries.read`): an observation is *clear* when it has data on every
  requested band, is not saturated and its SCL class is not masked; a clear observation wins over a cloudy or
  nodata one; between clear ones, the product whose tile centre is nearest the pixel wins (ties: the first product
  in sorted order of its name). Nearest-centre is deterministic, splits each overlap strip once along its middle
  (no pixel is counted twice, no seam of alternating tiles) and takes each pixel from the tile that sees it closest
  to nadir of its own footprint, where view-angle and BRDF differences and the resampling of the far edge matter
  least. A pixel with no clear observation on a date is nodata (NaN) on that date.
* **Dates**: products are grouped by sensing date (the UTC date of the product's datatake: for Sentinel-2's 10:30
  local-time overpass this is the solar day of the area everywhere but near the antimeridian), so the two tiles of a
  date become one observation of the area.

Each product's digital numbers become reflectance with that product's own radiometry (its MTD_MSIL2A.xml offsets,
STAC properties or tags), so one date may mix processing baselines. Files stay open only while the windows read pass
over a product (row-major reading closes a product once the windows are below its footprint).

For cluster runs (``--num-parts``) the output grid splits into row blocks (:class:`remote.join.RowBlock`): every
part opens the whole area (the grid is built from headers only, so each part computes the same one) and reads
windows of the whole grid, so a spatial model's halo reaches across the block edge and the parts join exactly.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from shared_backbones.errors import InputError

from .reader import DateSource, S2Series, open_raster
from .resample import MAX_GRID_SIDE, Grid

#: the output pixel size (metres) of the default area grid
AREA_RES = 10.0
#: MGRS tile ID in a file or folder name (``T32UQD`` in ESA names, ``32UQD`` in Earth Search scene folders)
TILE_RE = re.compile(r"(?:^|[_/\s.-])T?(\d{2}[C-HJ-NP-X][A-HJ-NP-Z]{2})(?=[_/\s.-]|$)")


def tile_id(text: str) -> str | None:
    """The MGRS tile ID (``32UQD``) named in ``text``, else None."""
    m = TILE_RE.search(str(text))
    return m.group(1) if m else None


def parse_crs(text: str | Any) -> Any:
    """A rasterio CRS from ``EPSG:32633``, ``32633``, WKT or PROJ text; one-line :class:`InputError` otherwise."""
    from rasterio.crs import CRS

    if not isinstance(text, str):
        return CRS.from_user_input(text)
    t = text.strip()
    try:
        return CRS.from_epsg(int(t)) if t.isdigit() else CRS.from_user_input(t)
    except Exception:  # CRSError
        raise InputError(f"unknown CRS {text!r} (give EPSG:N, e.g. EPSG:32633)") from None


def utm_crs(lon: float, lat: float) -> Any:
    """The WGS 84 / UTM CRS of the zone holding (lon, lat) (EPSG:326zz north, 327zz south; Norway and Svalbard
    exceptions ignored: Sentinel-2 tiles follow the plain zones there too, except 32V/31V-37X, rare for areas)."""
    from rasterio.crs import CRS

    zone = int(math.floor(((lon + 180.0) % 360.0) / 6.0)) + 1
    zone = min(max(zone, 1), 60)
    return CRS.from_epsg((32600 if lat >= 0 else 32700) + zone)


@dataclass
class Footprint:
    """Where a product lies: its CRS, its bounds (minx, miny, maxx, maxy in that CRS) and its finest grid."""

    crs: Any
    bounds: tuple[float, float, float, float]
    grid: Grid

    def bounds_in(self, crs: Any) -> tuple[float, float, float, float]:
        if crs == self.crs:
            return self.bounds
        from rasterio.warp import transform_bounds

        return tuple(transform_bounds(self.crs, crs, *self.bounds, densify_pts=21))  # type: ignore[return-value]

    def centre_in(self, crs: Any) -> tuple[float, float]:
        x, y = (self.bounds[0] + self.bounds[2]) / 2, (self.bounds[1] + self.bounds[3]) / 2
        if crs == self.crs:
            return x, y
        from rasterio.warp import transform

        xs, ys = transform(self.crs, crs, [x], [y])
        return float(xs[0]), float(ys[0])


def footprint(ds: DateSource) -> Footprint:
    """The footprint of a product (its finest band file; header only, no pixels)."""
    from .resample import grid_of

    ref = min(ds.bands.values(), key=lambda r: (r.res or math.inf, str(r.path)))
    with open_raster(ref.path) as src:
        if src.crs is None:
            raise InputError("raster has no CRS (georeferenced GeoTIFFs are needed)", ref.path)
        w, s_, e, n = src.bounds
        if src.crs.is_geographic and not (-180.0 <= w <= e <= 360.0 and -90.0 <= s_ <= n <= 90.0):
            raise InputError(f"bounds {w:g} {s_:g} {e:g} {n:g} are not longitude/latitude, yet the CRS is "
                             f"{src.crs.to_string()} (wrong CRS in the file?)", ref.path)
        return Footprint(src.crs, tuple(src.bounds), grid_of(src))  # type: ignore[arg-type]


def area_grid(footprints: Sequence[Footprint], *, crs: Any = None, bounds: Sequence[float] | None = None,
              bounds_crs: Any = None, res: float = AREA_RES) -> Grid:
    """The output grid of an area, before any pixel is read (module docstring): ``crs`` (default: the UTM zone of
    the area's centre), the extent of ``bounds`` (in ``bounds_crs``, default the grid CRS) or of the union of
    ``footprints``, ``res`` metres, snapped outwards onto the pixel lattice of the first footprint in that CRS (so
    its bands need no resampling) or onto multiples of ``res``. Raises :class:`InputError` (one line)."""
    from rasterio.transform import Affine
    from rasterio.warp import transform_bounds

    if not footprints:
        raise InputError("no products to build an area grid from")
    crs = parse_crs(crs) if crs is not None else None
    bcrs = parse_crs(bounds_crs) if bounds_crs is not None else None
    if crs is None:
        # the zone of the area's centre: the centre of the bounds (when their CRS is given) or of the footprints
        # (bounds in the grid CRS need the grid CRS first: the footprints' zone decides)
        if bounds is not None and bcrs is not None:
            b = transform_bounds(bcrs, "EPSG:4326", *bounds, densify_pts=21)
        else:
            lonlat = [f.bounds_in("EPSG:4326") for f in footprints]
            b = (min(v[0] for v in lonlat), min(v[1] for v in lonlat), max(v[2] for v in lonlat),
                 max(v[3] for v in lonlat))
        crs = utm_crs((b[0] + b[2]) / 2, (b[1] + b[3]) / 2)
    if not crs.is_projected:
        raise InputError(f"the output CRS must be projected (metres), not {crs.to_string()}: e.g. a UTM zone, "
                         "EPSG:326zz")
    if bounds is not None:
        minx, miny, maxx, maxy = (float(v) for v in bounds)
        if bcrs is not None and bcrs != crs:
            minx, miny, maxx, maxy = transform_bounds(bcrs, crs, minx, miny, maxx, maxy, densify_pts=21)
    else:
        boxes = [f.bounds_in(crs) for f in footprints]
        minx, miny = min(b[0] for b in boxes), min(b[1] for b in boxes)
        maxx, maxy = max(b[2] for b in boxes), max(b[3] for b in boxes)
    if not all(map(math.isfinite, (minx, miny, maxx, maxy))):
        raise InputError("the area's bounds cannot be expressed in the output CRS (too far from its zone?)")
    like = next((f.grid for f in footprints if f.crs == crs and f.grid.transform.b == f.grid.transform.d == 0
                 and math.isclose(f.grid.res, res, rel_tol=1e-9)), None)
    ox, oy = (like.transform.c, like.transform.f) if like is not None else (0.0, 0.0)
    c0 = math.floor((minx - ox) / res + 1e-9)
    c1 = math.ceil((maxx - ox) / res - 1e-9)
    r0 = math.floor((oy - maxy) / res + 1e-9)
    r1 = math.ceil((oy - miny) / res - 1e-9)
    if c1 <= c0 or r1 <= r0:
        raise InputError(f"empty area: bounds {minx:g} {miny:g} {maxx:g} {maxy:g} in {crs.to_string()}")
    if max(c1 - c0, r1 - r0) > MAX_GRID_SIDE:
        raise InputError(f"the area spans {c1 - c0} x {r1 - r0} pixels of {res:g} m; at most {MAX_GRID_SIDE} per "
                         "side (check --bounds and --bounds-crs)")
    return Grid(crs, Affine(res, 0.0, ox + c0 * res, 0.0, -res, oy - r0 * res), c1 - c0, r1 - r0)


class AreaSeries(S2Series):
    """A time series of an area: several products per date (any tiles, any CRS) mosaicked onto ``grid`` window by
    window with the overlap rule of the module docstring. Duck-types :class:`remote.reader.S2Series` (``dates``,
    ``bands``, ``read``...), so prediction and indices run on it unchanged. ``keys[i]`` names product ``i``."""

    def __init__(self, products: Sequence[DateSource], keys: Sequence[str], footprints: Sequence[Footprint],
                 grid: Grid, user_offset: float | None = None, notices: Sequence[str] = ()) -> None:
        order = sorted(range(len(products)), key=lambda i: (products[i].date, keys[i]))
        super().__init__([products[i] for i in order], grid, user_offset, notices)
        self.sources = [products[i] for i in order]      # stable: S2Series sorts by date only
        self.keys = [keys[i] for i in order]
        self.footprints = [footprints[i] for i in order]
        self._dates = sorted({s.date for s in self.sources})
        self.groups = [[i for i, s in enumerate(self.sources) if s.date == d] for d in self._dates]
        self._readers = [S2Series([s], grid, user_offset) for s in self.sources]
        self.centres = [f.centre_in(grid.crs) for f in self.footprints]
        self.boxes = [self._pixel_box(f) for f in self.footprints]
        for s, b in zip(self.sources, self.boxes):
            s.coverage = _box_fraction(b, grid)

    def _pixel_box(self, f: Footprint) -> tuple[int, int, int, int]:
        """(row0, row1, col0, col1) of the grid that the footprint may touch (conservative, 2 px margin)."""
        b = f.bounds_in(self.grid.crs)
        inv = ~self.grid.transform
        cs, rs = zip(*(inv * (x, y) for x in (b[0], b[2]) for y in (b[1], b[3])))
        return (math.floor(min(rs)) - 2, math.ceil(max(rs)) + 2, math.floor(min(cs)) - 2, math.ceil(max(cs)) + 2)

    @property
    def dates(self) -> list:
        return list(self._dates)

    def provenance(self) -> list[str]:
        lines = super().provenance()
        lines.insert(1, f"area: {len(self.sources)} product(s) on {len(self._dates)} date(s); overlap rule: a clear "
                        "observation wins, then the nearest tile centre")
        for k, f, s in zip(self.keys, self.footprints, self.sources):
            lines.append(f"product {s.date.isoformat()} {k}: {f.crs.to_string()}, covers {s.coverage:.0%}")
        return lines

    def close(self) -> None:
        for r in self._readers:
            r.close()
        super().close()

    def _touches(self, i: int, window: Any) -> bool:
        r0, r1, c0, c1 = self.boxes[i]
        return not (r1 <= window.row_off or r0 >= window.row_off + window.height
                    or c1 <= window.col_off or c0 >= window.col_off + window.width)

    def read(self, window: Any, bands: Sequence[str], scl_invalid: Sequence[int] | None = None) -> np.ndarray:
        """Reflectance [T, B, h, w] (T = the dates) of the mosaic in ``window``: per date and pixel the clear
        observation of the product whose tile centre is nearest (module docstring); NaN where none is clear."""
        h, w = int(window.height), int(window.width)
        out = np.full((len(self._dates), len(bands), h, w), np.nan, dtype=np.float32)
        xy = None
        for t, idx in enumerate(self.groups):
            cands = [i for i in idx if self._touches(i, window)]
            if len(cands) == 1:
                out[t] = self._readers[cands[0]].read(window, bands, scl_invalid)[0]
                continue
            best = np.full((h, w), np.inf)
            for i in cands:                       # sorted by key: a tie keeps the first product
                obs = self._readers[i].read(window, bands, scl_invalid)[0]
                if xy is None:
                    xy = self._pixel_xy(window)
                cx, cy = self.centres[i]
                d = (xy[0] - cx) ** 2 + (xy[1] - cy) ** 2
                take = ~np.isnan(obs).any(0) & (d < best)
                out[t][:, take] = obs[:, take]
                best[take] = d[take]
        # files of products the row-major windows have passed are closed (reopened if read again)
        for i, (_, r1, _, _) in enumerate(self.boxes):
            if r1 <= window.row_off:
                self._readers[i].close()
        return out

    def _pixel_xy(self, window: Any) -> tuple[np.ndarray, np.ndarray]:
        t = self.grid.transform
        rows = np.arange(int(window.row_off), int(window.row_off + window.height), dtype=np.float64)[:, None] + 0.5
        cols = np.arange(int(window.col_off), int(window.col_off + window.width), dtype=np.float64)[None, :] + 0.5
        return t.c + cols * t.a + rows * t.b, t.f + cols * t.d + rows * t.e


def _box_fraction(box: tuple[int, int, int, int], grid: Grid) -> float:
    r0, r1, c0, c1 = box
    hh = max(0, min(r1 - 2, grid.height) - max(r0 + 2, 0))
    ww = max(0, min(c1 - 2, grid.width) - max(c0 + 2, 0))
    return hh * ww / max(1, grid.width * grid.height)


def product_key(kind: str, path: Any, crs: Any = None, scene_id: str | None = None, text: str = "") -> str:
    """The product a band file belongs to: a ``.SAFE`` product's name, a STAC item's id, else (GeoTIFFs) its CRS and
    the MGRS tile named in the file or folder name (all files of one CRS without a tile name are one product)."""
    if kind == "safe":
        return str(path)
    if kind == "stac":
        return f"{scene_id} ({path})"
    tile = tile_id(text) or ""
    return f"{crs.to_string() if crs is not None else '?'}{' T' + tile if tile else ''}"


def needs_area(keys_by_date: dict[Any, set[str]], crss: Sequence[Any], crs: Any = None,
               bounds_crs: Any = None) -> bool:
    """True when the inputs are an area (a date with several products, products in several CRSs) or an output CRS
    was asked for; else the single-tile path keeps today's grid (the first date's 10 m grid)."""
    return (crs is not None or bounds_crs is not None or any(len(v) > 1 for v in keys_by_date.values())
            or len({c.to_string() for c in crss if c is not None}) > 1)

