"""Field boundaries for per-field summaries and per-field prediction: a raster of field IDs or a vector file.

* Raster: band 1 holds an integer field ID per pixel; 0 and the file's nodata value mean "no field". It is read
  window by window on the image grid (nearest-neighbour resampling when the grids differ; same CRS required).
* Vector: GeoJSON is read directly (``json`` + ``rasterio.features.rasterize``, no extra package); other formats
  (GeoPackage, Shapefile, FlatGeobuf...) through GDAL with the ``vector`` extra (``pyogrio``; ``fiona`` also
  works). Geometries are reprojected to the image CRS (GeoJSON without a ``crs`` member is WGS 84
  longitude/latitude, RFC 7946) and burnt into each window: a pixel belongs to a field when its centre lies inside
  the polygon; where polygons overlap the later one wins.
  The ID comes from ``id_attr`` (default: the first of ``field_id``, ``id``, ``fid``, ``FID``, ``ID`` present, else
  the feature's ``id`` member, else its position 1, 2, ...). Non-integer IDs (names) are numbered 1..n internally
  and reported under their original value.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from shared_backbones.errors import InputError, first_line

from .reader import open_raster as _open
from .reader import read_window_band
from .resample import Grid

VECTOR_SUFFIXES = (".geojson", ".json", ".gpkg", ".shp", ".fgb", ".kml", ".gml", ".sqlite")
DEFAULT_ID_ATTRS = ("field_id", "id", "fid", "FID", "ID")


class FieldRaster:
    """Field IDs from a raster, read window by window on ``grid``."""

    def __init__(self, path: str | Path, grid: Grid) -> None:
        self.path, self.grid = Path(path), grid
        with _open(self.path) as src:
            self.nodata = src.nodata
            dtype = np.dtype(src.dtypes[0])
        if dtype.kind not in "iu":
            raise InputError(f"field-ID raster must hold integers, not {dtype.name}", self.path)
        from rasterio.windows import Window

        read_window_band(self.path, grid, Window(0, 0, 1, 1))  # fail early on another CRS
        self.labels: dict[int, str] = {}

    def read(self, window: Any) -> np.ndarray:
        """Field IDs [h, w] int64 for ``window`` (0 = no field)."""
        a = read_window_band(self.path, self.grid, window).astype(np.int64)
        if self.nodata is not None:
            a[a == int(self.nodata)] = 0
        a[a < 0] = 0
        return a

    def label(self, fid: int) -> str:
        return self.labels.get(fid, str(fid))


class FieldVector:
    """Field polygons burnt into each window of ``grid`` (see the module docstring)."""

    def __init__(self, path: str | Path, grid: Grid, id_attr: str | None = None) -> None:
        self.path, self.grid = Path(path), grid
        features, crs = _read_features(self.path)
        if not features:
            raise InputError("vector file holds no features", self.path)
        ids, self.labels = _feature_ids(features, id_attr, self.path)
        from rasterio.crs import CRS
        from rasterio.warp import transform_geom

        src_crs = CRS.from_user_input(crs) if crs is not None else CRS.from_epsg(4326)
        self.shapes: list[tuple[dict, int]] = []
        bounds = []
        for f, fid in zip(features, ids):
            geom = f.get("geometry")
            if not geom or geom.get("type") not in ("Polygon", "MultiPolygon"):
                continue
            if src_crs != grid.crs:
                try:
                    geom = transform_geom(src_crs, grid.crs, geom)
                except Exception as exc:
                    raise InputError(f"cannot reproject the fields to the image CRS ({exc})", self.path) from None
            self.shapes.append((geom, fid))
            xy = np.asarray(_coords(geom), dtype=np.float64)
            bounds.append((xy[:, 0].min(), xy[:, 1].min(), xy[:, 0].max(), xy[:, 1].max()))
        if not self.shapes:
            raise InputError("vector file holds no polygons", self.path)
        self.bounds = np.asarray(bounds)
        t = grid.transform
        x0, y1 = t.c, t.f
        x1, y0 = t.c + t.a * grid.width, t.f + t.e * grid.height
        lo_x, hi_x, lo_y, hi_y = min(x0, x1), max(x0, x1), min(y0, y1), max(y0, y1)
        b = self.bounds
        if not ((b[:, 2] >= lo_x) & (b[:, 0] <= hi_x) & (b[:, 3] >= lo_y) & (b[:, 1] <= hi_y)).any():
            raise InputError("no field polygon overlaps the image (check the file's CRS)", self.path)

    def read(self, window: Any) -> np.ndarray:
        from rasterio.features import rasterize
        from rasterio.windows import bounds as window_bounds
        from rasterio.windows import transform as window_transform

        h, w = int(window.height), int(window.width)
        left, bottom, right, top = window_bounds(window, self.grid.transform)
        b = self.bounds
        hit = np.nonzero((b[:, 2] >= left) & (b[:, 0] <= right) & (b[:, 3] >= bottom) & (b[:, 1] <= top))[0]
        if not len(hit):
            return np.zeros((h, w), dtype=np.int64)
        out = rasterize([self.shapes[i] for i in hit], out_shape=(h, w),
                        transform=window_transform(window, self.grid.transform), fill=0, dtype="int32")
        return out.astype(np.int64)

    def label(self, fid: int) -> str:
        return self.labels.get(fid, str(fid))


def _coords(geom: dict) -> list:
    c = geom["coordinates"]
    if geom["type"] == "Polygon":
        return [p[:2] for ring in c for p in ring]
    return [p[:2] for poly in c for ring in poly for p in ring]


def _read_features(path: Path) -> tuple[list[dict], Any]:
    if not path.exists():
        raise InputError("file not found", path)
    if path.suffix.lower() in (".geojson", ".json"):
        try:
            doc = json.loads(path.read_text())
        except (OSError, UnicodeDecodeError, ValueError) as exc:
            raise InputError(f"unreadable GeoJSON ({type(exc).__name__})", path) from None
        if not isinstance(doc, dict) or doc.get("type") not in ("FeatureCollection", "Feature"):
            raise InputError("not a GeoJSON FeatureCollection", path)
        feats = doc["features"] if doc["type"] == "FeatureCollection" else [doc]
        crs = None
        name = ((doc.get("crs") or {}).get("properties") or {}).get("name")
        if name:
            crs = name.replace("urn:ogc:def:crs:", "").replace("::", ":")
            if crs.upper() in ("OGC:1.3:CRS84", "OGC:CRS84"):
                crs = "EPSG:4326"
        return [f for f in feats if isinstance(f, dict)], crs
    return _read_with_gdal(path)


VECTOR_EXTRA = "pip install 'convsuite[vector]'"


def _read_with_gdal(path: Path) -> tuple[list[dict], Any]:
    """Features of a GeoPackage / Shapefile / FlatGeobuf... through pyogrio (the ``vector`` extra) or fiona."""
    import importlib.util

    if importlib.util.find_spec("pyogrio") is not None:
        return _read_pyogrio(path)
    if importlib.util.find_spec("fiona") is not None:
        return _read_fiona(path)
    raise InputError(f"reading {path.suffix} files needs the 'vector' extra (pyogrio): `{VECTOR_EXTRA}`, or save "
                     "the fields as GeoJSON, or rasterise them to a GeoTIFF of field IDs", path)


def _unreadable(exc: Exception, path: Path) -> InputError:
    return InputError(f"unreadable vector file ({first_line(exc)})",
                      path)


def _read_pyogrio(path: Path) -> tuple[list[dict], Any]:
    """GDAL reads the layer and writes it back as GeoJSON in memory (no geometry decoding here)."""
    import io

    import pyogrio.raw

    try:
        meta, fids, geoms, data = pyogrio.raw.read(str(path), return_fids=True)
        buf = io.BytesIO()
        pyogrio.raw.write(buf, geoms, data, meta["fields"], driver="GeoJSON", crs=meta["crs"],
                          geometry_type=meta["geometry_type"], layer="fields")
        doc = json.loads(buf.getvalue())
    except Exception as exc:
        raise _unreadable(exc, path) from None
    feats = doc.get("features", [])
    for f, fid in zip(feats, fids):
        f.setdefault("id", int(fid))
    return feats, meta["crs"]


def _read_fiona(path: Path) -> tuple[list[dict], Any]:
    import fiona

    try:
        with fiona.open(path) as src:
            crs = src.crs_wkt or None
            feats = []
            for f in src:
                geom = getattr(f["geometry"], "__geo_interface__", f["geometry"])
                feats.append({"geometry": dict(geom) if geom else None, "properties": dict(f["properties"] or {}),
                              "id": f.get("id") if hasattr(f, "get") else None})
    except Exception as exc:
        raise _unreadable(exc, path) from None
    return feats, crs


def _feature_ids(features: Sequence[dict], id_attr: str | None, path: Path) -> tuple[list[int], dict[int, str]]:
    props = [f.get("properties") or {} for f in features]
    if id_attr is not None:
        if not any(id_attr in p for p in props):
            raise InputError(f"no feature has the attribute {id_attr!r}", path)
        raw = [p.get(id_attr) for p in props]
    else:
        attr = next((a for a in DEFAULT_ID_ATTRS if any(a in p for p in props)), None)
        if attr is not None:
            raw = [p.get(attr) for p in props]
        elif all(f.get("id") is not None for f in features):
            raw = [f["id"] for f in features]
        else:
            raw = list(range(1, len(features) + 1))
    ints = []
    for v in raw:
        try:
            iv = int(v)
            ints.append(iv if float(v) == iv and iv > 0 else None)
        except (TypeError, ValueError):
            ints.append(None)
    if all(v is not None for v in ints):
        return ints, {}  # type: ignore[return-value]
    names = {str(v) for v in raw if v is not None}
    code = {n: i for i, n in enumerate(sorted(names), 1)}
    ids = [code[str(v)] if v is not None else 0 for v in raw]
    return ids, {i: n for n, i in code.items()}


def open_fields(path: str | Path, grid: Grid, id_attr: str | None = None) -> FieldRaster | FieldVector:
    """Field IDs from a raster or a vector file (chosen by the file name's suffix)."""
    path = Path(path)
    if path.suffix.lower() in VECTOR_SUFFIXES:
        return FieldVector(path, grid, id_attr)
    if id_attr is not None:
        raise InputError("--field-id-attr applies to vector field files, not rasters", path)
    return FieldRaster(path, grid)


FieldSource = FieldRaster | FieldVector


@dataclass
class FieldSeries:
    """Per-field mean time series: ``x`` [F, G, B] gap-filled onto the grid dates (NaN rows: no valid observation),
    with each field's ID, pixel count, pixels with at least one valid date, dates observed and centroid (pixels)."""

    ids: np.ndarray
    x: np.ndarray
    pixels: np.ndarray
    valid_pixels: np.ndarray
    dates_observed: np.ndarray
    rows: np.ndarray
    cols: np.ndarray

    @property
    def valid(self) -> np.ndarray:
        return self.dates_observed > 0


class _Accumulator:
    """Per-field sums over windows, growing as new field IDs appear."""

    def __init__(self, t: int, b: int) -> None:
        self.t, self.b = t, b
        self.row: dict[int, int] = {}
        self.cap = 0
        self.sums = np.zeros((0, t, b))
        self.counts = np.zeros((0, t), dtype=np.int64)
        self.pixels = np.zeros(0, dtype=np.int64)
        self.valid = np.zeros(0, dtype=np.int64)
        self.rsum = np.zeros(0)
        self.csum = np.zeros(0)

    def rows_of(self, ids: np.ndarray) -> np.ndarray:
        for f in ids.tolist():
            if f not in self.row:
                self.row[f] = len(self.row)
        n = len(self.row)
        if n > self.cap:
            extra = max(n, 2 * self.cap) - self.cap
            self.sums = np.concatenate([self.sums, np.zeros((extra, self.t, self.b))])
            self.counts = np.concatenate([self.counts, np.zeros((extra, self.t), np.int64)])
            for name in ("pixels", "valid", "rsum", "csum"):
                a = getattr(self, name)
                setattr(self, name, np.concatenate([a, np.zeros(extra, a.dtype)]))
            self.cap += extra
        return np.asarray([self.row[f] for f in ids.tolist()], dtype=np.int64)


def field_series(series: Any, fields: FieldSource, bands: Sequence[str], grid_dates: Sequence[dt.date],
                 scl_invalid: Sequence[int] | None, tile: int = 256, quiet: bool = True) -> FieldSeries:
    """Mean reflectance of each field's valid (cloud-free) pixels per date, gap-filled onto ``grid_dates``; read
    window by window (memory bounded by the tile and the number of fields)."""
    from shared_backbones.cliutil import progress

    from .timeseries import day_numbers, fill_gaps

    g = series.grid
    t_n, b_n = len(series.dates), len(bands)
    acc = _Accumulator(t_n, b_n)
    with series:
        for window in progress(g.windows(tile), total=g.n_windows(tile), desc="fields", unit="tile", quiet=quiet):
            fid = fields.read(window)
            inside = fid > 0
            if not inside.any():
                continue
            obs = series.read(window, bands, scl_invalid)[:, :, inside]          # [T, B, P]
            u, inv = np.unique(fid[inside], return_inverse=True)
            rows = acc.rows_of(u)
            ok = ~np.isnan(obs[:, 0])                                            # [T, P]; bands NaN together
            key = (np.arange(t_n)[:, None] * len(u) + inv[None])[ok]
            acc.counts[rows] += np.bincount(key, minlength=t_n * len(u)).reshape(t_n, len(u)).T
            for b in range(b_n):
                s = np.bincount(key, weights=obs[:, b][ok], minlength=t_n * len(u)).reshape(t_n, len(u)).T
                acc.sums[rows, :, b] += s
            acc.pixels[rows] += np.bincount(inv, minlength=len(u))
            acc.valid[rows] += np.bincount(inv, weights=ok.any(0), minlength=len(u)).astype(np.int64)
            rr, cc = np.nonzero(inside)
            acc.rsum[rows] += np.bincount(inv, weights=rr + int(window.row_off) + 0.5, minlength=len(u))
            acc.csum[rows] += np.bincount(inv, weights=cc + int(window.col_off) + 0.5, minlength=len(u))
    n = len(acc.row)
    if n == 0:
        raise InputError("no field pixel inside the image", getattr(fields, "path", None))
    order = np.argsort(np.fromiter(acc.row.keys(), dtype=np.int64, count=n))
    ids = np.fromiter(acc.row.keys(), dtype=np.int64, count=n)[order]
    idx = np.fromiter(acc.row.values(), dtype=np.int64, count=n)[order]
    counts = acc.counts[idx]
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.where(counts[:, :, None] > 0, acc.sums[idx] / np.maximum(counts, 1)[:, :, None], np.nan)
    filled = fill_gaps(mean.astype(np.float32).transpose(1, 2, 0), day_numbers(series.dates),
                       day_numbers(grid_dates)).transpose(2, 0, 1)
    pixels = acc.pixels[idx]
    return FieldSeries(ids, np.ascontiguousarray(filled), pixels, acc.valid[idx], (counts > 0).sum(1),
                       acc.rsum[idx] / pixels, acc.csum[idx] / pixels)
