"""Sentinel-2 L2A time series from GeoTIFFs, read window by window on a common 10 m grid, and GeoTIFF writing.

Accepted layouts (any mix of the first three; see docs/remote.md):

* one multi-band GeoTIFF per date: band names from the band descriptions (``B02``, ``B8A``, ``SCL``...) or from
  ``band_order``; the date from the file or folder name (``20240501`` or ``2024-05-01``), a ``DATE`` /
  ``ACQUISITION_DATE`` tag, or the ``dates`` list (in input order);
* one file per band: the band name in the file name (``T32UQD_20240501T102031_B05_20m.tif``), the date in the file
  name or in its folder's name (``S2_20240501/B05.tif``); several files of one date are merged;
* one stacked GeoTIFF: band descriptions such as ``B02 2024-05-01`` / ``2024-05-01 B02``, or ``dates`` plus
  ``band_order`` (date-major: all bands of the first date, then the next date...).

All files must share one CRS. The reference grid is that of the finest-resolution file (the 10 m bands); coarser
bands (20 m, 60 m) are resampled onto it with a WarpedVRT (bilinear for reflectance, nearest for SCL).

Scaling: integer digital numbers become reflectance = (DN + offset) / 10000 and DN 0 (or the file's nodata value)
becomes nodata. The offset is decided per date, first rule that applies:

1. ``offset`` given by the caller (``--offset``);
2. a ``BOA_ADD_OFFSET*`` tag on the file or band (its value, e.g. -1000);
3. a ``PROCESSING_BASELINE`` tag: -1000 from baseline 04.00, else 0;
4. the acquisition date: -1000 from 2022-01-25 (first products of baseline 04.00), else 0.

Floating-point inputs are taken as reflectance already (no scaling; NaN or the file's nodata value is nodata).
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from shared_backbones.errors import InputError

#: Sentinel-2 L2A bands (no B10) and the 10 m ones.
S2_BANDS: tuple[str, ...] = ("B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B09", "B11", "B12")
BANDS_10M: tuple[str, ...] = ("B02", "B03", "B04", "B08")
#: Bands the models use by default (the 10 m and 20 m bands).
DEFAULT_BANDS: tuple[str, ...] = ("B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B11", "B12")
SCL = "SCL"
#: SCL classes treated as invalid: no data, saturated, cloud shadow, cloud medium/high, cirrus.
DEFAULT_SCL_INVALID: tuple[int, ...] = (0, 1, 3, 8, 9, 10)
BASELINE_04_START = dt.date(2022, 1, 25)
QUANTIFICATION = 10000.0
TIF_SUFFIXES = (".tif", ".tiff", ".TIF", ".TIFF", ".vrt", ".jp2")

_DATE_RE = re.compile(r"(?<!\d)(\d{4})-?(\d{2})-?(\d{2})(?!\d)")
_BAND_RE = re.compile(r"(?<![A-Za-z0-9])(B0?[1-9]|B1[0-2]|B8A|SCL)(?![A-Za-z0-9])", re.IGNORECASE)


def parse_date(text: str) -> dt.date | None:
    """The first valid ``YYYYMMDD`` / ``YYYY-MM-DD`` date in ``text`` (None when there is none)."""
    for m in _DATE_RE.finditer(text):
        try:
            d = dt.date(int(m.group(1)), int(m.group(2)), int(m.group(3)))
        except ValueError:
            continue
        if 1980 <= d.year <= 2100:
            return d
    return None


def parse_band(text: str) -> str | None:
    """A Sentinel-2 band name in ``text`` (``B2``/``b02`` -> ``B02``, ``B8A``, ``SCL``), or None."""
    m = _BAND_RE.search(text.replace("_", " ").replace("-", " ").replace(".", " "))
    if not m:
        return None
    name = m.group(1).upper()
    if name in ("SCL", "B8A"):
        return name
    return f"B{int(name[1:]):02d}"


def parse_dates(items: Sequence[str] | str) -> list[dt.date]:
    """Dates from ISO strings (a comma-separated string or a list)."""
    if isinstance(items, str):
        items = [s for s in items.replace(",", " ").split() if s]
    out = []
    for s in items:
        d = parse_date(str(s))
        if d is None:
            raise InputError(f"not a date: {s!r} (use YYYY-MM-DD)")
        out.append(d)
    return out


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


@dataclass
class BandRef:
    """Where one band of one date lives: file and 1-based band index."""

    path: Path
    index: int


@dataclass
class DateSource:
    """The bands (and SCL) of one acquisition date, and the offset rule that applies to it."""

    date: dt.date
    bands: dict[str, BandRef] = field(default_factory=dict)
    offset: float | None = None
    offset_rule: str = ""


def _open(path: Path) -> Any:
    import rasterio

    if not path.exists():
        raise InputError("file not found", path)
    try:
        return rasterio.open(path)
    except Exception as exc:  # rasterio raises RasterioIOError and friends
        msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise InputError(f"unreadable raster ({msg})", path) from None


def _expand(inputs: Sequence[str | Path]) -> list[tuple[Path, str]]:
    """Raster files with the text their date may come from (file stem, then folder name)."""
    files: list[tuple[Path, str]] = []
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            direct = sorted(f for f in p.iterdir() if f.is_file() and f.suffix in TIF_SUFFIXES)
            subdirs = sorted(d for d in p.iterdir() if d.is_dir())
            files += [(f, f.stem) for f in direct]
            for d in subdirs:
                files += [
                    (f, f"{f.stem} {d.name}") for f in sorted(d.iterdir()) if f.is_file() and f.suffix in TIF_SUFFIXES
                ]
            if not direct and not any(f for d in subdirs for f in d.iterdir() if f.suffix in TIF_SUFFIXES):
                raise InputError("folder holds no GeoTIFF files", p)
        elif not p.exists():
            raise InputError("file not found", p)
        else:
            files.append((p, f"{p.stem} {p.parent.name}"))
    return files


def _tag_offset(tags: dict[str, str]) -> tuple[float | None, str]:
    for k, v in tags.items():
        if "BOA_ADD_OFFSET" in k.upper():
            try:
                return float(v), f"{k} tag"
            except ValueError:
                pass
    for k, v in tags.items():
        if "PROCESSING_BASELINE" in k.upper():
            try:
                return (-1000.0 if float(v) >= 4.0 else 0.0), f"{k}={v} tag"
            except ValueError:
                pass
    return None, ""


def resolve_offset(user_offset: float | None, tags: dict[str, str], date: dt.date) -> tuple[float, str]:
    """(offset, rule) with the precedence of the module docstring: flag > BOA_ADD_OFFSET > baseline tag > date."""
    if user_offset is not None:
        return float(user_offset), "--offset"
    off, rule = _tag_offset(tags)
    if off is not None:
        return off, rule
    if date >= BASELINE_04_START:
        return -1000.0, "date >= 2022-01-25 (baseline 04.00)"
    return 0.0, "date < 2022-01-25"


def _repeating(names: Sequence[str | None]) -> list[str] | None:
    """The band names of one date when ``names`` (band descriptions of a stack) repeat them date after date."""
    if not names or not all(names):
        return None
    for p in range(1, len(names) // 2 + 1):
        if len(names) % p == 0 and len(set(names[:p])) == p and all(n == names[i % p] for i, n in enumerate(names)):
            return list(names[:p])  # type: ignore[arg-type]
    return None


def _tag_dates(tags: dict[str, str]) -> list[dt.date] | None:
    """Dates of a stack from a ``DATES`` / ``ACQUISITION_DATES`` tag (comma or space separated)."""
    for k in ("DATES", "ACQUISITION_DATES"):
        if tags.get(k):
            try:
                return parse_dates(tags[k])
            except InputError:
                return None
    return None


def read_date_list(items: Sequence[str]) -> list[dt.date]:
    """Dates from the command line: ISO dates, or one text file with a date per line (or comma-separated)."""
    if len(items) == 1 and parse_date(items[0]) is None and Path(items[0]).is_file():
        path = Path(items[0])
        try:
            text = path.read_text()
        except (OSError, UnicodeDecodeError) as exc:
            raise InputError(f"unreadable date list ({type(exc).__name__})", path) from None
        words = [w for w in text.replace(",", " ").split() if w]
        if not words:
            raise InputError("date list is empty", path)
        try:
            return parse_dates(words)
        except InputError as exc:
            raise InputError(str(exc), path) from None
    return parse_dates(list(items))


def _parse_desc(desc: str | None) -> tuple[str | None, dt.date | None]:
    if not desc:
        return None, None
    return parse_band(desc), parse_date(desc)


class S2Series:
    """A Sentinel-2 time series on one grid, read window by window (see the module docstring for layouts).

    Use as a context manager (``with open_series(...) as s:``) so the files stay open between windows.
    """

    def __init__(self, dates: list[DateSource], grid: Grid, user_offset: float | None = None) -> None:
        self.sources = sorted(dates, key=lambda d: d.date)
        self.grid = grid
        self.user_offset = user_offset
        self._handles: dict[Path, Any] = {}
        self._float: dict[Path, bool] = {}

    # -- description -------------------------------------------------------------------------------------------
    @property
    def dates(self) -> list[dt.date]:
        return [s.date for s in self.sources]

    @property
    def bands(self) -> list[str]:
        """Bands present on every date (in Sentinel-2 order, SCL excluded)."""
        common = set.intersection(*(set(s.bands) for s in self.sources))
        return [b for b in S2_BANDS if b in common]

    @property
    def has_scl(self) -> bool:
        return all(SCL in s.bands for s in self.sources)

    def require_bands(self, bands: Sequence[str]) -> None:
        """Error naming the first date (and its file) that lacks any of ``bands``."""
        for s in self.sources:
            missing = [b for b in bands if b not in s.bands]
            if missing:
                files = sorted({str(r.path.name) for r in s.bands.values()})
                raise InputError(
                    f"missing band(s) {', '.join(missing)} for {s.date.isoformat()} "
                    f"(found {', '.join(b for b in S2_BANDS if b in s.bands) or 'none'})",
                    s.bands[next(iter(s.bands))].path.parent / ",".join(files) if files else "input",
                )

    # -- reading -----------------------------------------------------------------------------------------------
    def __enter__(self) -> S2Series:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def close(self) -> None:
        for h in self._handles.values():
            h.close()
        self._handles.clear()

    def _reader(self, path: Path, categorical: bool) -> Any:
        key = (path, categorical)
        if key in self._handles:
            return self._handles[key]
        src = _open(path)
        g = self.grid
        same = (
            src.crs == g.crs
            and src.width == g.width
            and src.height == g.height
            and src.transform.almost_equals(g.transform)
        )
        self._float[path] = np.dtype(src.dtypes[0]).kind == "f"
        t = src.transform
        if same:
            h = src
        elif src.crs == g.crs and t.b == t.d == 0 and g.transform.b == g.transform.d == 0:
            h = AlignedResampler(src, g, categorical)  # axis-aligned grids (all Sentinel-2 bands): fast path
        else:
            from rasterio.enums import Resampling
            from rasterio.vrt import WarpedVRT

            nodata = src.nodata if src.nodata is not None else (None if self._float[path] else 0)
            h = WarpedVRT(
                src,
                crs=g.crs,
                transform=g.transform,
                width=g.width,
                height=g.height,
                resampling=Resampling.nearest if categorical else Resampling.bilinear,
                src_nodata=nodata,
                nodata=nodata,
            )
        self._handles[key] = h
        return h

    def _read_bands(
        self, path: Path, indexes: list[int], window: Any, categorical: bool = False
    ) -> tuple[np.ndarray, Any, bool]:
        """Bands ``indexes`` of ``path`` in ``window`` on the series grid, in one read (one warp for all bands)."""
        h = self._reader(path, categorical)
        try:
            return h.read(indexes, window=window), h.nodata, self._float[path]
        except Exception as exc:
            raise InputError(
                f"unreadable raster ({str(exc).splitlines()[0] if str(exc) else type(exc).__name__})", path
            ) from None

    def read(
        self, window: Any, bands: Sequence[str], scl_invalid: Sequence[int] | None = DEFAULT_SCL_INVALID
    ) -> np.ndarray:
        """Reflectance [T, B, h, w] float32 for ``window``; NaN where no data or masked by SCL (all bands of a
        date-pixel are NaN together). ``scl_invalid=None`` (or no SCL band) skips cloud masking."""
        h, w = int(window.height), int(window.width)
        out = np.empty((len(self.sources), len(bands), h, w), dtype=np.float32)
        invalid_set = np.asarray(sorted(scl_invalid or ()), dtype=np.int64)
        for t, src in enumerate(self.sources):
            bad = np.zeros((h, w), dtype=bool)
            by_file: dict[Path, list[tuple[int, int]]] = {}
            for b, name in enumerate(bands):
                ref = src.bands.get(name)
                if ref is None:
                    raise InputError(f"missing band {name} for {src.date.isoformat()}", "input")
                by_file.setdefault(ref.path, []).append((b, ref.index))
            for path, items in by_file.items():
                dn, nodata, is_float = self._read_bands(path, [i for _, i in items], window)
                for (b, _), a in zip(items, dn):
                    if is_float:
                        v = a.astype(np.float32)
                        bad |= ~np.isfinite(v)
                        if nodata is not None and np.isfinite(nodata):
                            bad |= a == nodata
                    else:
                        bad |= a == 0
                        if nodata is not None:
                            bad |= a == nodata
                        v = (a.astype(np.float32) + np.float32(src.offset or 0.0)) / np.float32(QUANTIFICATION)
                    out[t, b] = v
            if scl_invalid is not None and len(invalid_set) and SCL in src.bands:
                ref = src.bands[SCL]
                scl = self._read_bands(ref.path, [ref.index], window, categorical=True)[0][0]
                bad |= np.isin(scl, invalid_set)
            out[t][:, bad] = np.nan
        return out


class AlignedResampler:
    """Reads a raster onto an axis-aligned target grid of the same CRS (e.g. 20 m bands onto the 10 m grid):
    bilinear interpolation (nearest for ``categorical``) between source pixel centres, edges clamped; a target pixel
    is nodata if a source pixel with non-zero weight is nodata, or if its centre lies outside the source.

    Separable and per pixel, so a window gives exactly the values of the same pixels in a whole-raster read; much
    faster than a general warp for these grids. Integer sources come back as float32 DN (nodata -> 0 or nodata)."""

    def __init__(self, src: Any, grid: Grid, categorical: bool) -> None:
        self.src, self.grid, self.categorical = src, grid, categorical
        self.is_float = np.dtype(src.dtypes[0]).kind == "f"
        self.nodata = src.nodata if src.nodata is not None else (np.nan if self.is_float else 0)

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
        a = np.where(bad, 0.0, a)
        ya, yb, xa, xb = ya - r0, yb - r0, xa - c0, xb - c0
        wy, wx = fy[:, None], fx[None, :]
        top = a[:, ya][:, :, xa] * (1 - wx) + a[:, ya][:, :, xb] * wx
        bot = a[:, yb][:, :, xa] * (1 - wx) + a[:, yb][:, :, xb] * wx
        out = top * (1 - wy) + bot * wy
        b = bad.astype(np.float32)
        contrib = (
            (b[:, ya][:, :, xa] * ((1 - wy) * (1 - wx)) > 0)
            | (b[:, ya][:, :, xb] * ((1 - wy) * wx) > 0)
            | (b[:, yb][:, :, xa] * (wy * (1 - wx)) > 0)
            | (b[:, yb][:, :, xb] * (wy * wx) > 0)
        )
        contrib[:, outside[0], :] = True
        contrib[:, :, outside[1]] = True
        out[contrib] = np.nan if self.is_float else 0.0
        return out


def _grid_of(src: Any) -> Grid:
    return Grid(src.crs, src.transform, src.width, src.height)


def open_series(
    inputs: Sequence[str | Path],
    *,
    dates: Sequence[dt.date] | None = None,
    band_order: Sequence[str] | None = None,
    offset: float | None = None,
) -> S2Series:
    """Describe a time series from files/folders (layouts and offset rules in the module docstring)."""
    files = _expand(inputs)
    if not files:
        raise InputError("no input rasters given")
    if band_order is not None:
        band_order = [parse_band(b) or b for b in band_order]
        unknown = [b for b in band_order if b not in S2_BANDS + (SCL,)]
        if unknown:
            raise InputError(f"unknown band name(s) in --band-order: {', '.join(unknown)}")
    by_date: dict[dt.date, DateSource] = {}
    tags_of: dict[dt.date, dict[str, str]] = {}
    ref_grid: Grid | None = None
    ref_path: Path | None = None
    date_list = list(dates) if dates is not None else None
    per_date_files = 0

    def add(date: dt.date, band: str, path: Path, index: int, tags: dict[str, str]) -> None:
        ds = by_date.setdefault(date, DateSource(date))
        ds.bands[band] = BandRef(path, index)
        tags_of.setdefault(date, {}).update(tags)

    for path, date_text in files:
        src = _open(path)
        with src:
            if ref_grid is not None and src.crs != ref_grid.crs:
                raise InputError(f"CRS mismatch between dates: {src.crs} here, {ref_grid.crs} in {ref_path.name}", path)
            if src.crs is None:
                raise InputError("raster has no CRS (georeferenced GeoTIFFs are needed)", path)
            if ref_grid is None or abs(src.transform.a) < ref_grid.res - 1e-9:
                ref_grid, ref_path = _grid_of(src), path
            tags = {**src.tags(), **{k: v for i in range(1, src.count + 1) for k, v in src.tags(i).items()}}
            parsed = [_parse_desc(d) for d in src.descriptions]
            file_band = parse_band(path.stem)
            file_date = parse_date(date_text) or parse_date(tags.get("DATE", tags.get("ACQUISITION_DATE", "")))
            if all(b and d for b, d in parsed):  # stacked with "B02 2024-05-01" descriptions
                for i, (b, d) in enumerate(parsed, 1):
                    add(d, b, path, i, tags)
                continue
            desc_bands = [b for b, _ in parsed]
            if all(desc_bands) and len(set(desc_bands)) == src.count:
                names = desc_bands
            elif src.count == 1 and file_band:
                names = [file_band]
            elif band_order is not None and src.count == len(band_order):
                names = list(band_order)
            else:  # a stack of several dates: bands per date x dates, date-major
                per_date = list(band_order) if band_order is not None else _repeating(desc_bands)
                stack_dates = date_list if date_list is not None else _tag_dates(tags)
                if per_date and stack_dates and src.count == len(per_date) * len(stack_dates):
                    for i in range(src.count):
                        add(stack_dates[i // len(per_date)], per_date[i % len(per_date)], path, i + 1, tags)
                    continue
                if per_date and stack_dates:
                    raise InputError(
                        f"stack has {src.count} bands, but {len(per_date)} band(s) per date x "
                        f"{len(stack_dates)} date(s) = {len(per_date) * len(stack_dates)}",
                        path,
                    )
                if per_date:
                    raise InputError(
                        f"{src.count} bands repeat {len(per_date)} band names: a stack of "
                        f"{src.count // len(per_date)} dates needs --dates (or a DATES tag)",
                        path,
                    )
                raise InputError(
                    f"cannot tell which band is which ({src.count} band(s), no band names in the "
                    "descriptions or the file name); pass --band-order (and --dates for a stack)",
                    path,
                )
            if file_date is None and date_list is not None:
                if per_date_files >= len(date_list):
                    raise InputError(f"more per-date files than --dates ({len(date_list)})", path)
                file_date = date_list[per_date_files]
            per_date_files += 1
            if file_date is None:
                raise InputError("no acquisition date (put YYYYMMDD in the file or folder name, or pass --dates)", path)
            for i, b in enumerate(names, 1):
                add(file_date, b, path, i, tags)
    if not by_date:
        raise InputError("no valid dates found in the inputs")
    for d, ds in by_date.items():
        ds.offset, ds.offset_rule = resolve_offset(offset, tags_of[d], d)
    return S2Series(list(by_date.values()), ref_grid, offset)


# -- writing ---------------------------------------------------------------------------------------------------------
def geotiff_profile(grid: Grid, count: int, dtype: str, nodata: float | int | None, block: int = 256) -> dict:
    """A tiled, deflate-compressed GeoTIFF profile on ``grid``."""
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


def read_single_band(path: str | Path, grid: Grid | None = None, categorical: bool = True) -> tuple[np.ndarray, Any]:
    """Band 1 of ``path`` (whole raster; e.g. labels or field IDs), resampled onto ``grid`` when given.
    Returns (array, nodata)."""
    path = Path(path)
    src = _open(path)
    with src:
        if grid is not None and src.crs != grid.crs:
            raise InputError(f"CRS mismatch: {src.crs} here, {grid.crs} in the image time series", path)
        if grid is None or (
            src.width == grid.width and src.height == grid.height and src.transform.almost_equals(grid.transform)
        ):
            return src.read(1), src.nodata
        from rasterio.enums import Resampling
        from rasterio.vrt import WarpedVRT

        with WarpedVRT(
            src,
            crs=grid.crs,
            transform=grid.transform,
            width=grid.width,
            height=grid.height,
            resampling=Resampling.nearest if categorical else Resampling.bilinear,
        ) as vrt:
            return vrt.read(1), src.nodata


def read_window_band(path: Path, grid: Grid, window: Any) -> np.ndarray:
    """Band 1 of ``path`` in ``window`` of ``grid`` (nearest resampling when the grids differ)."""
    src = _open(path)
    with src:
        if src.crs != grid.crs:
            raise InputError(f"CRS mismatch: {src.crs} here, {grid.crs} in the image time series", path)
        if src.width == grid.width and src.height == grid.height and src.transform.almost_equals(grid.transform):
            return src.read(1, window=window)
        from rasterio.enums import Resampling
        from rasterio.vrt import WarpedVRT

        with WarpedVRT(
            src,
            crs=grid.crs,
            transform=grid.transform,
            width=grid.width,
            height=grid.height,
            resampling=Resampling.nearest,
        ) as vrt:
            return vrt.read(1, window=window)
