"""The Sentinel-2 time-series reader: the bands of every date, read window by window on one output grid.

A :class:`S2Series` holds, per date, where each band lives (:class:`BandRef`: a file or a GDAL ``/vsizip/`` path,
its band index, its resolution and its radiometry) and reads windows of reflectance with nodata, saturation and SCL
cloud masking. It is built by :func:`remote.discovery.open_series` from GeoTIFFs, ESA ``.SAFE`` products (folder or
zip) and STAC items.

Reflectance = (DN + offset) / quantification for integer inputs (DN 0, the file's nodata and the product's saturated
value are nodata); floating-point inputs are reflectance already (NaN or the file's nodata is nodata).

The DN offset of every band of every product is chosen in one place, :func:`choose_offset` (applied per product by
:func:`apply_offsets`): the user's ``--offset`` for this run; else the product's own metadata (``MTD_MSIL2A.xml``,
STAC properties, GeoTIFF tags, the baseline in an ESA product name); else the offset a model was trained with (with a
notice); else the acquisition date (-1000 from 2022-01-25, with a notice). Readers only say what the metadata says
(``BandRef.metadata``); :func:`offset_notices` words the notices.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from shared_backbones.errors import InputError, first_line

from .naming import BASELINE_04_START, DEFAULT_SCL_INVALID, QUANTIFICATION, S2_BANDS, SCL
from .resample import AlignedResampler, Grid, WarpResampler

#: Where a DN offset comes from, in order of precedence (:func:`choose_offset`).
OFFSET_SOURCES: tuple[str, ...] = ("--offset", "metadata", "model", "date")
#: The precedence of :func:`choose_offset` in words, one text for its docstring, the docs and the ``offset_rule``
#: a model file stores (``remote train``).
OFFSET_RULE = ("the run's --offset > the product's metadata (MTD_MSIL2A.xml BOA_ADD_OFFSET, STAC properties, "
               "BOA_ADD_OFFSET / PROCESSING_BASELINE tags, the N0xxx baseline in an ESA product name) > the model "
               "file's stored offset (with a notice) > the acquisition date: -1000 from 2022-01-25 (with a notice)")


@dataclass
class BandRef:
    """Where one band of one product lives and how its digital numbers become reflectance.

    ``path`` is a file path or a GDAL virtual path (``/vsizip//data/S2B_...SAFE.zip/...jp2``); ``index`` is
    1-based; ``res`` the pixel size in CRS units; ``metadata`` the (DN offset, origin) the product's own metadata
    gives (None: it says nothing); ``offset`` the DN offset read with (None: the date's offset), chosen by
    :func:`apply_offsets`, with its ``source`` (one of :data:`OFFSET_SOURCES`) and ``origin`` (what exactly, shown by
    ``--verbose``); ``quantification`` the divisor; ``saturated`` a DN masked like nodata; ``product`` the name of
    the product (ESA product, STAC item, scene folder or file) the band belongs to."""

    path: str | Path
    index: int
    res: float | None = None
    offset: float | None = None
    quantification: float = QUANTIFICATION
    saturated: int | None = None
    origin: str = ""
    metadata: tuple[float, str] | None = None
    source: str = ""
    product: str = ""

    @property
    def name(self) -> str:
        return str(self.path).rstrip("/").rsplit("/", 1)[-1]


@dataclass
class DateSource:
    """The bands (and SCL) of one acquisition date, the offset rule that applies, and what was set aside."""

    date: dt.date
    bands: dict[str, BandRef] = field(default_factory=dict)
    offset: float | None = None
    offset_rule: str = ""
    skipped: list[str] = field(default_factory=list)
    coverage: float = 1.0


def is_virtual(path: str | Path) -> bool:
    """True for GDAL virtual file system paths (``/vsizip/``, ``/vsicurl/``...)."""
    return str(path).startswith("/vsi")


def _jp2_problem(path: str | Path) -> str | None:
    """What is wrong with the box structure of a JPEG2000 file, local or a member of a zip read through
    ``/vsizip/`` (ISO/IEC 15444-1 Annex I: boxes of LBox bytes, LBox 1 = a 64-bit XLBox follows, 0 = up to the end;
    the codestream ends with the EOC marker FFD9), or None. Only box headers and the last two bytes are read."""
    from .safe import split_vsizip

    if not str(path).lower().endswith(".jp2"):
        return None
    inside = split_vsizip(path)
    try:
        if inside is not None:
            import zipfile

            with zipfile.ZipFile(inside[0]) as z, z.open(inside[1]) as fh:
                return _jp2_boxes(fh, z.getinfo(inside[1]).file_size)
        if is_virtual(path) or not Path(path).is_file():
            return None
        with open(path, "rb") as fh:
            return _jp2_boxes(fh, Path(path).stat().st_size)
    except (OSError, KeyError, EOFError, RuntimeError, ValueError, NotImplementedError):
        return None  # the zip itself is broken: GDAL's message says so


def _jp2_boxes(fh: Any, size: int) -> str | None:
    """The box walk of :func:`_jp2_problem` over a seekable binary stream of ``size`` bytes."""
    pos = 0
    while pos + 8 <= size:
        fh.seek(pos)
        head = fh.read(16)
        length, kind = int.from_bytes(head[:4], "big"), head[4:8]
        if length == 1 and len(head) >= 16:
            length = int.from_bytes(head[8:16], "big")
        elif length == 0:
            length = size - pos
        if length < 8:
            return f"corrupt JPEG2000 file (box {kind!r} at byte {pos} declares {length} bytes)"
        if pos + length > size:
            return (f"truncated JPEG2000 file: its {kind.decode('latin-1')} box declares {pos + length} bytes, "
                    f"the file holds {size}")
        if kind == b"jp2c":
            fh.seek(pos + length - 2)
            if fh.read(2) != b"\xff\xd9":
                return "truncated JPEG2000 file: its codestream lacks the end marker (FFD9)"
        pos += length
    return None


def raster_error(exc: BaseException, path: str | Path) -> str:
    """The problem behind a rasterio/GDAL exception in a few words: GDAL's own messages (rasterio chains them as
    causes; its "See previous exception" text is dropped) and, for JPEG2000 files, a truncated or corrupt box
    structure."""
    msgs: list[str] = []
    seen: set[int] = set()
    c: BaseException | None = exc
    name = Path(str(path)).name
    while c is not None and id(c) not in seen:
        seen.add(id(c))
        m = first_line(c).strip()
        if m.startswith(f"{name}, "):
            m = m[len(name) + 2:]
        if m and "See previous exception" not in m and m not in msgs:
            msgs.append(m)
        c = c.__cause__ or c.__context__
    detail = msgs[0] if len(msgs) < 2 else f"{msgs[0]}; {msgs[-1]}"
    problem = _jp2_problem(path)
    if problem:
        return f"{problem} ({detail})" if detail else problem
    return f"unreadable raster ({detail or type(exc).__name__})"


def open_raster(path: str | Path) -> Any:
    """``rasterio.open(path)`` with a one-line :class:`InputError` naming the file on failure."""
    import rasterio

    if not is_virtual(path) and not Path(path).exists():
        raise InputError("file not found", path)
    try:
        return rasterio.open(str(path) if is_virtual(path) else path)
    except Exception as exc:  # rasterio raises RasterioIOError and friends
        raise InputError(raster_error(exc, path), path) from None


_open = open_raster  # the former private name, still used by callers outside this package


@dataclass(frozen=True)
class OffsetChoice:
    """The DN offset chosen for a band of a product: value, ``source`` (one of :data:`OFFSET_SOURCES`) and
    ``origin`` (the flag, the metadata field, the model file or the date rule that gave it)."""

    offset: float
    source: str
    origin: str


def date_rule(date: dt.date) -> tuple[float, str]:
    """(offset, rule) from the acquisition date alone: -1000 from 2022-01-25 (the first products of processing
    baseline 04.00), else 0. Wrong for products reprocessed later, hence the last resort."""
    if date >= BASELINE_04_START:
        return -1000.0, "date >= 2022-01-25 (baseline 04.00), no metadata"
    return 0.0, "date < 2022-01-25, no metadata"


def choose_offset(date: dt.date, metadata: tuple[float, str] | None = None, *, user: float | None = None,
                  model: float | None = None) -> OffsetChoice:
    """The DN offset of one band of one product, first rule that applies: ``user`` (the run's ``--offset``);
    ``metadata`` (offset, origin) from the product itself; ``model`` (the offset a model file was trained with);
    the acquisition ``date`` (:func:`date_rule`). The last two deserve a notice (:func:`offset_notices`)."""
    if user is not None:
        return OffsetChoice(float(user), "--offset", "--offset")
    if metadata is not None:
        return OffsetChoice(float(metadata[0]), "metadata", metadata[1])
    if model is not None:
        return OffsetChoice(float(model), "model", f"the model file's offset {float(model):+g}, no metadata")
    off, rule = date_rule(date)
    return OffsetChoice(off, "date", rule)


choose_offset.__doc__ = f"{choose_offset.__doc__}\n\n    In words (:data:`OFFSET_RULE`): {OFFSET_RULE}."


def tag_metadata(tags: dict[str, str]) -> tuple[float, str] | None:
    """(offset, origin) from GeoTIFF tags: a ``BOA_ADD_OFFSET*`` tag, else a ``PROCESSING_BASELINE`` tag (-1000 from
    04.00); None when the tags say nothing."""
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
    return None


def resolve_offset(user_offset: float | None, tags: dict[str, str], date: dt.date) -> tuple[float, str]:
    """(offset, origin) of a GeoTIFF product from its tags (:func:`choose_offset` with :func:`tag_metadata`)."""
    c = choose_offset(date, tag_metadata(tags), user=user_offset)
    return c.offset, c.origin


def apply_offsets(bands: Mapping[str, BandRef], date: dt.date, *, user: float | None = None,
                  model: float | None = None) -> list[OffsetChoice]:
    """Set ``offset``, ``origin`` and ``source`` of the bands (name -> ref) of one product, SCL excluded, by
    :func:`choose_offset` from their ``metadata``; idempotent. Returns the choices (one per reflectance band)."""
    out = []
    for band, ref in bands.items():
        if band == SCL:
            continue
        c = choose_offset(date, ref.metadata, user=user, model=model)
        ref.offset, ref.origin, ref.source = c.offset, c.origin, c.source
        out.append(c)
    return out


def offset_notices(chosen: Sequence[tuple[dt.date, str, OffsetChoice]]) -> list[str]:
    """One notice per kind of guess among (date, product, choice) triples: offsets from a model file, offsets from
    the acquisition date (the products said nothing)."""
    notes = []
    for source in ("model", "date"):
        hits = sorted({(d, p, c.offset) for d, p, c in chosen if c.source == source})
        if not hits:
            continue
        dates = sorted({d.isoformat() for d, _, _ in hits})
        what = (f"no radiometric metadata for {len(dates)} date(s) ({', '.join(dates[:3])}"
                f"{', ...' if len(dates) > 3 else ''}"
                + (f"; products {', '.join(sorted({p for _, p, _ in hits})[:3])}" if any(p for _, p, _ in hits)
                   else "") + ")")
        if source == "model":
            offs = ", ".join(f"{o:+g}" for o in sorted({o for _, _, o in hits}))
            notes.append(f"{what}: BOA offset {offs} taken from the model file (the offset it was trained with); "
                         "pass --offset if these products need another")
        else:
            notes.append(f"{what}: BOA offset chosen from the acquisition date (-1000 from 2022-01-25); pass "
                         "--offset if the products were reprocessed")
    return notes


class S2Series:
    """A Sentinel-2 time series on one grid, read window by window.

    Use as a context manager (``with open_series(...) as s:``) so the files stay open between windows.
    ``notices`` holds one-line remarks for the user (partial coverage, offsets guessed from the date).
    """

    def __init__(self, dates: list[DateSource], grid: Grid, user_offset: float | None = None,
                 notices: Sequence[str] = ()) -> None:
        self.sources = sorted(dates, key=lambda d: d.date)
        self.grid = grid
        self.user_offset = user_offset
        self.notices = list(notices)
        self._handles: dict[tuple[str, bool], Any] = {}
        self._float: dict[str, bool] = {}

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

    def provenance(self) -> list[str]:
        """One line per date and band: the file it is read from, its resolution and radiometry; then the copies
        set aside (coarser resampled copies, non-band files)."""
        lines = [f"grid: {self.grid.width} x {self.grid.height} px of {self.grid.res:g} m, {self.grid.crs}"]
        for s in self.sources:
            lines.append(f"{s.date.isoformat()}: offset rule {s.offset_rule or '-'}"
                         + (f", covers {s.coverage:.0%} of the grid" if s.coverage < 0.9995 else ""))
            per_product: dict[str, set[str]] = {}
            for b, r in s.bands.items():
                if b != SCL and r.source:
                    per_product.setdefault(r.product or "?", set()).add(r.source)
            lines += [f"  product {p}: offset from {' + '.join(sorted(src, key=OFFSET_SOURCES.index))}"
                      for p, src in sorted(per_product.items())]
            for b in [*S2_BANDS, SCL]:
                r = s.bands.get(b)
                if r is None:
                    continue
                res = f"{r.res:g} m" if r.res else "?"
                radio = "" if b == SCL else f", ({'DN' if r.offset is None else f'DN {r.offset:+g}'}) / " \
                                            f"{r.quantification:g}{f' [{r.origin}]' if r.origin else ''}"
                lines.append(f"  {b:<4} <- {r.path} (band {r.index}, {res}{radio})")
            lines += [f"  skipped {x}" for x in s.skipped]
        return lines

    def require_bands(self, bands: Sequence[str]) -> None:
        """Error naming the first date (and its file) that lacks any of ``bands``."""
        for s in self.sources:
            missing = [b for b in bands if b not in s.bands]
            if missing:
                files = sorted({r.name for r in s.bands.values()})
                first = next(iter(s.bands.values()), None)
                where = (str(Path(str(first.path)).parent / ",".join(files))) if first is not None else "input"
                raise InputError(
                    f"missing band(s) {', '.join(missing)} for {s.date.isoformat()} "
                    f"(found {', '.join(b for b in S2_BANDS if b in s.bands) or 'none'})",
                    where,
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

    def _reader(self, ref: BandRef, categorical: bool) -> Any:
        path = str(ref.path)
        key = (path, categorical)
        if key in self._handles:
            return self._handles[key]
        src = open_raster(ref.path)
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
            # axis-aligned grids (all Sentinel-2 bands): fast path
            h = AlignedResampler(src, g, categorical, None if categorical else ref.saturated)
        else:
            # another CRS (an area's tile in the next UTM zone) or a rotated grid: exact per-pixel transform,
            # GDAL's bilinear / nearest kernels, window by window (remote.resample.WarpResampler)
            h = WarpResampler(src, g, categorical, None if categorical else ref.saturated)
        self._handles[key] = h
        return h

    def _read_bands(self, ref: BandRef, indexes: list[int], window: Any,
                    categorical: bool = False) -> tuple[np.ndarray, Any, bool]:
        """Bands ``indexes`` of ``ref``'s file in ``window`` on the series grid, in one read."""
        h = self._reader(ref, categorical)
        try:
            return h.read(indexes, window=window), h.nodata, self._float[str(ref.path)]
        except Exception as exc:
            raise InputError(raster_error(exc, ref.path), ref.path) from None

    def read(
        self, window: Any, bands: Sequence[str], scl_invalid: Sequence[int] | None = DEFAULT_SCL_INVALID
    ) -> np.ndarray:
        """Reflectance [T, B, h, w] float32 for ``window``; NaN where no data, saturated or masked by SCL (all
        bands of a date-pixel are NaN together). ``scl_invalid=None`` (or no SCL band) skips cloud masking."""
        h, w = int(window.height), int(window.width)
        out = np.empty((len(self.sources), len(bands), h, w), dtype=np.float32)
        invalid_set = np.asarray(sorted(scl_invalid or ()), dtype=np.int64)
        for t, src in enumerate(self.sources):
            bad = np.zeros((h, w), dtype=bool)
            by_file: dict[str, list[tuple[int, BandRef]]] = {}
            for b, name in enumerate(bands):
                ref = src.bands.get(name)
                if ref is None:
                    raise InputError(f"missing band {name} for {src.date.isoformat()}", "input")
                by_file.setdefault(str(ref.path), []).append((b, ref))
            for items in by_file.values():
                dn, nodata, is_float = self._read_bands(items[0][1], [r.index for _, r in items], window)
                for (b, ref), a in zip(items, dn):
                    if is_float:
                        v = a.astype(np.float32)
                        bad |= ~np.isfinite(v)
                        if nodata is not None and np.isfinite(nodata):
                            bad |= a == nodata
                    else:
                        bad |= a == 0
                        if nodata is not None:
                            bad |= a == nodata
                        if ref.saturated is not None:
                            bad |= a == ref.saturated
                        off = ref.offset if ref.offset is not None else (src.offset or 0.0)
                        v = (a.astype(np.float32) + np.float32(off)) / np.float32(ref.quantification)
                    out[t, b] = v
            if scl_invalid is not None and len(invalid_set) and SCL in src.bands:
                ref = src.bands[SCL]
                scl = self._read_bands(ref, [ref.index], window, categorical=True)[0][0]
                bad |= np.isin(scl, invalid_set)
            out[t][:, bad] = np.nan
        return out


def read_single_band(path: str | Path, grid: Grid | None = None, categorical: bool = True) -> tuple[np.ndarray, Any]:
    """Band 1 of ``path`` (whole raster; e.g. labels or field IDs), resampled onto ``grid`` when given.
    Returns (array, nodata)."""
    src = open_raster(path)
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


def read_window_band(path: str | Path, grid: Grid, window: Any) -> np.ndarray:
    """Band 1 of ``path`` in ``window`` of ``grid`` (nearest resampling when the grids differ)."""
    src = open_raster(path)
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
