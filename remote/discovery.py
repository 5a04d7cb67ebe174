"""Finding the Sentinel-2 bands of every date in the inputs and opening them as one :class:`~remote.reader.S2Series`.

Accepted inputs (any mix; folders are searched to the depth the product needs, see docs/remote.md):

* ESA L2A products: ``.SAFE`` folders or ``.SAFE.zip`` files as downloaded (:mod:`remote.safe`);
* STAC Item / ItemCollection JSON files with local or ``/vsi`` asset hrefs (:mod:`remote.stac`);
* one multi-band GeoTIFF per date: band names from the band descriptions (``B02``, ``B8A``, ``SCL``...) or from
  ``band_order``; the date from the file or folder name (``20240501`` or ``2024-05-01``), a ``DATE`` /
  ``ACQUISITION_DATE`` tag, or the ``dates`` list (in input order);
* one file per band: the band name in the file name (``T32UQD_20240501T102031_B05_20m.tif``), the date in the file
  name or in its folder's name (``S2B_32UQD_20240501_0_L2A/B05.tif``); several files of one date are merged;
* one stacked GeoTIFF: band descriptions such as ``B02 2024-05-01`` / ``2024-05-01 B02``, or ``dates`` plus
  ``band_order`` (date-major: all bands of the first date, then the next date...).

Each band is read from its native-resolution file (10 m: B02 B03 B04 B08; 20 m: B05 B06 B07 B8A B11 B12 SCL; 60 m:
B01 B09): a coarser resampled copy (sen2cor's R20m/R60m) is set aside whenever the native one is there, else the
finest copy is taken. Two copies of one band at the same resolution for one date are refused (ambiguous).

The output grid is the 10 m grid of the first date's finest band file, or ``grid`` (a raster whose grid is copied),
or ``bounds`` (minx, miny, maxx, maxy in the grid CRS, snapped to the default grid's pixels). Coarser bands are
resampled onto it; a date that covers only part of it is nodata elsewhere (and a notice says how much).
Several products of one date (tiles of an area, possibly in different UTM zones), or an output CRS asked for, make
the series an area (:mod:`remote.area`): products are grouped by date, read window by window through their own
grids and mosaicked onto one grid with a documented overlap rule; only two copies of one band in one product are
refused.

Parts of an ESA product are read as the product (its metadata, name and file choice): band files or folders
(``IMG_DATA``, ``R10m``...) inside a ``.SAFE``, and ``/vsizip/PRODUCT.SAFE.zip[/PRODUCT.SAFE[/...]]`` paths. Files that
are not reflectance bands or SCL (sen2cor's AOT, WVP, TCI; Earth Search's ``aot``, ``wvp``, ``visual``) are set aside;
Earth Search v1 file names (``blue.tif``, ``nir08.tif``, ``scl.tif``...) name their band.

DN offset per product and band, one rule for every reader (:func:`remote.reader.choose_offset`): ``offset`` given
by the caller (``--offset``); the product's metadata (``MTD_MSIL2A.xml`` BOA_ADD_OFFSET, STAC
``earthsearch:boa_offset_applied`` / ``sentinel:boa_offset_applied`` / raster scale+offset / processing baseline, a
``BOA_ADD_OFFSET*`` or ``PROCESSING_BASELINE`` GeoTIFF tag, the baseline in an ESA product name ``N0500``);
``model_offset`` (the offset a model was trained with), with a notice; last resort, the acquisition date (-1000 from
2022-01-25), with a notice. DN 0 and, in integer files, the saturated DN 65535 are nodata whatever the input kind.
"""

from __future__ import annotations

import datetime as dt
import math
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from shared_backbones.errors import InputError

from .area import needs_area, product_key
from .naming import (
    NATIVE_RES,
    S2_BANDS,
    SATURATED_DN,
    SCL,
    TIF_SUFFIXES,
    parse_band,
    parse_baseline,
    parse_date,
    parse_dates,
)
from .reader import (
    BandRef,
    DateSource,
    OffsetChoice,
    S2Series,
    apply_offsets,
    is_virtual,
    offset_notices,
    open_raster,
    tag_metadata,
)
from .resample import Grid, covered_fraction, grid_from_bounds, grid_of
from .safe import is_safe_folder, is_safe_zip, product_root, read_safe, split_vsizip
from .stac import asset_band, is_stac_file, read_stac

#: How deep below a given folder products, scene folders and rasters are looked for.
MAX_DEPTH = 3
#: Files of a delivery that are not reflectance bands or SCL: sen2cor's aerosol optical thickness, water vapour and
#: true-colour image, Earth Search's ``aot``/``wvp``/``visual`` assets and quick-looks.
_NOT_A_BAND = re.compile(r"(?<![A-Za-z0-9])(AOT|WVP|TCI|visual|thumbnail|preview)(?![A-Za-z0-9])", re.IGNORECASE)


@dataclass
class _Unit:
    kind: str  # "raster" | "safe" | "stac"
    path: Path | str  # a GDAL virtual path stays a string (Path would fold its "//")
    date_text: str = ""
    only: list[str] | None = None  # safe: the parts of the product given (None: all of it)


@dataclass
class _Date:
    candidates: dict[str, list[BandRef]] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)  # GeoTIFF tags of the product's files
    skipped: list[str] = field(default_factory=list)


def _scan_folder(folder: Path, depth: int, units: list[_Unit]) -> None:
    if is_safe_folder(folder):
        units.append(_Unit("safe", folder))
        return
    entries = sorted(folder.iterdir())
    items = [p for p in entries if is_stac_file(p)]
    units += [_Unit("stac", p) for p in items]
    for p in entries:
        if p.is_file() and p.suffix in TIF_SUFFIXES and not items:  # a scene folder with its item: the item rules
            units.append(_Unit("raster", p, f"{p.stem} {folder.name}"))
        elif p.is_file() and p.suffix.lower() == ".zip" and is_safe_zip(p):
            units.append(_Unit("safe", p))
        elif p.is_dir() and depth < MAX_DEPTH:
            _scan_folder(p, depth + 1, units)


def _family(path: str | Path) -> tuple[str, str]:
    """(folder, stem) of an output with any ``.part-K-of-N`` removed (:func:`remote.join.whole_path`)."""
    from .join import whole_path

    w = whole_path(Path(path).absolute())
    return os.path.normcase(str(w.parent)), w.stem


def own_outputs(candidates: Sequence[Path], exclude: Sequence[str | Path]) -> list[Path]:
    """The files among ``candidates`` (found in input folders) that are outputs of this run or of its relatives,
    given the run's outputs ``exclude``: a file at an output path, and, when it carries the
    :data:`remote.batch.OUTPUT_TAG` tag ``remote`` writes, a part of an output (``map.part-K-of-N.tif`` of any K and
    N, for ``map.tif`` or for one of its parts) or a file beside it named after it (``map_prob.tif``,
    ``map_capsules.part-0-of-4.tif``...). So the parts of a ``--num-parts`` run, a joined map or the outputs of a
    rerun with other options, written into an input folder, never become inputs of another part or of a rerun
    (the equivalent for one series of :func:`shared_backbones.planning.drop_own_outputs`). A file there that
    ``remote`` did not write stays an input (the planner refuses to replace it)."""
    from .batch import _written_by_us

    exact = {os.path.normcase(str(Path(p).absolute())) for p in exclude}
    stems: dict[str, set[str]] = {}
    for p in exclude:
        folder, stem = _family(p)
        stems.setdefault(folder, set()).add(stem)
    own = []
    for c in candidates:
        if os.path.normcase(str(Path(c).absolute())) in exact:
            own.append(c)
            continue
        folder, stem = _family(c)
        if any(stem == s or stem.startswith(f"{s}_") for s in stems.get(folder, ())) and _written_by_us(Path(c)):
            own.append(c)
    return own


def expand_inputs(inputs: Sequence[str | Path], exclude: Sequence[str | Path] = (),
                  dropped: list[Path] | None = None) -> list[_Unit]:
    """Products, STAC items and raster files in ``inputs`` (files and folders, searched to ``MAX_DEPTH``); this
    run's outputs and their relatives found in folders (``exclude``: the run's outputs, :func:`own_outputs`) are
    left out, and appended to ``dropped`` when given."""
    units: list[_Unit] = []
    for item in inputs:
        if is_virtual(item):
            units.append(_virtual_unit(str(item)))
            continue
        p = Path(item)
        if not p.exists():
            raise InputError("file not found", p)
        root = product_root(p)
        if root is not None:  # a band file or a folder inside a .SAFE: read as (part of) the product
            units.append(_Unit("safe", root, only=[p.absolute().relative_to(root).as_posix()]))
        elif p.is_dir():
            n = len(units)
            _scan_folder(p, 0, units)
            if exclude:
                own = own_outputs([Path(u.path) for u in units[n:] if u.kind == "raster"], exclude)
                keys = {str(Path(o).absolute()) for o in own}
                units[n:] = [u for u in units[n:] if str(Path(u.path).absolute()) not in keys]
                if dropped is not None:
                    dropped += own
            if len(units) == n:
                raise InputError("folder holds no GeoTIFF/JP2 files, .SAFE product or STAC item", p)
        elif p.suffix.lower() == ".zip":
            units.append(_Unit("safe", p))
        elif p.suffix.lower() in (".json", ".geojson"):
            units.append(_Unit("stac", p))
        else:
            units.append(_Unit("raster", p, f"{p.stem} {p.parent.name}"))
    referenced: set[str] = set()
    for u in units:
        if u.kind == "stac":
            referenced |= {sb.path for scene in read_stac(u.path) for sb in scene.bands}
    # rasters that a STAC item describes are read through the item (its date and radiometry)
    units = [u for u in units if not (u.kind == "raster" and not is_virtual(u.path)
                                      and str(Path(u.path).absolute()) in referenced)]
    return _merge_products(units)


def _virtual_unit(text: str) -> _Unit:
    """A GDAL virtual path: a ``/vsizip/`` path to an ESA product zip (or into it) is that product (or part of it);
    anything else is a raster GDAL opens."""
    z = split_vsizip(text)
    if z is not None:
        zpath, inner = z
        if not zpath.exists():
            raise InputError("file not found", zpath)
        if is_safe_zip(zpath):
            return _Unit("safe", zpath, only=[inner] if inner else None)
    return _Unit("raster", text, Path(text).stem)


def _merge_products(units: list[_Unit]) -> list[_Unit]:
    """One unit per product: parts of one product given one by one (its band files, its folders) are merged."""
    out: list[_Unit] = []
    by_product: dict[str, _Unit] = {}
    for u in units:
        if u.kind != "safe":
            out.append(u)
            continue
        key = str(Path(u.path).absolute())
        first = by_product.get(key)
        if first is None:
            by_product[key] = u
            out.append(u)
        elif first.only is not None:
            first.only = None if u.only is None else first.only + u.only
    return out


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


def _parse_desc(desc: str | None) -> tuple[str | None, dt.date | None]:
    if not desc:
        return None, None
    return parse_band(desc), parse_date(desc)


class _Collector:
    """Band candidates per date and product (one tile of one date: :func:`remote.area.product_key`), from every kind
    of input."""

    def __init__(self, dates: Sequence[dt.date] | None, band_order: Sequence[str] | None) -> None:
        self.by_date: dict[tuple[dt.date, str], _Date] = {}
        self.crs_of: dict[str, Any] = {}
        self.date_list = list(dates) if dates is not None else None
        self.band_order = band_order
        self.per_date_files = 0
        self.notices: list[str] = []
        self.set_aside: list[tuple[dt.date | None, str]] = []  # files that are not bands: (date, line)

    def add(self, date: dt.date, band: str, ref: BandRef, tags: dict[str, str] | None = None,
            product: str = "") -> None:
        d = self.by_date.setdefault((date, product), _Date())
        d.candidates.setdefault(band, []).append(ref)
        if tags:
            d.tags.update(tags)

    def _check_crs(self, crs: Any, path: str | Path, product: str = "") -> None:
        """A raster needs a CRS; products in different CRSs (UTM zones) are mosaicked (:mod:`remote.area`)."""
        if crs is None:
            raise InputError("raster has no CRS (georeferenced GeoTIFFs are needed)", path)
        self.crs_of.setdefault(product, crs)

    # -- ESA products ---------------------------------------------------------------------------------------------
    def add_safe(self, path: Path, only: list[str] | None = None) -> None:
        prod = read_safe(path, only)
        key = product_key("safe", path)
        rad = prod.radiometry
        baseline = prod.baseline
        for sb in prod.bands:
            ref = BandRef(sb.path, 1, sb.res, product=prod.name)
            if sb.band != SCL:  # what the product says; the offset is chosen in open_series (choose_offset)
                if rad is not None and rad.offsets:
                    ref.metadata = (rad.offsets.get(sb.band, 0.0), "MTD_MSIL2A.xml BOA_ADD_OFFSET")
                elif baseline is not None:
                    where = "" if rad is not None else " (product name)"
                    ref.metadata = (-1000.0 if baseline >= 4.0 else 0.0,
                                    f"processing baseline {baseline:05.2f}{where}")
                if rad is not None:
                    ref.quantification = rad.quantification
                    ref.saturated = rad.saturated
                else:
                    ref.saturated = SATURATED_DN
            self.add(prod.date, sb.band, ref, product=key)
        d = self.by_date[(prod.date, key)]
        d.skipped += [f"{x} in {prod.name}" for x in prod.ignored]
        with open_raster(min(prod.bands, key=lambda b: b.res).path) as src:
            self._check_crs(src.crs, path, key)

    # -- STAC -----------------------------------------------------------------------------------------------------
    def add_stac(self, path: Path) -> None:
        for scene in read_stac(path):
            first = True
            key = product_key("stac", path, scene_id=scene.id)
            for sb in scene.bands:
                with open_raster(sb.path) as src:
                    if first:
                        self._check_crs(src.crs, sb.path, key)
                        first = False
                    res = abs(float(src.transform.a))
                ref = BandRef(sb.path, 1, res, quantification=sb.quantification,
                              saturated=None if sb.band == SCL else scene.saturated,
                              metadata=None if sb.offset is None or sb.band == SCL
                              else (sb.offset, f"STAC {scene.id}: {sb.rule}"),
                              product=scene.id)
                self.add(scene.date, sb.band, ref, product=key)

    # -- GeoTIFFs -------------------------------------------------------------------------------------------------
    def add_raster(self, path: Path | str, date_text: str) -> None:
        band_order = self.band_order
        name = Path(str(path))  # for its names only: a virtual path is opened as given
        src = open_raster(path)
        with src:
            key = product_key("raster", path, src.crs, text=date_text)
            self._check_crs(src.crs, path, key)
            res = abs(float(src.transform.a))
            tags = {**src.tags(), **{k: v for i in range(1, src.count + 1) for k, v in src.tags(i).items()}}
            parsed = [_parse_desc(d) for d in src.descriptions]
            file_band = parse_band(name.stem) or (asset_band(name.stem) if src.count == 1 else None)
            file_date = parse_date(date_text) or parse_date(tags.get("DATE", tags.get("ACQUISITION_DATE", "")))
            integer = np.dtype(src.dtypes[0]).kind in "ui"

            def ref(index: int) -> BandRef:
                # DN 0 and the saturated DN 65535 are not reflectance, as in the products
                return BandRef(path, index, res, saturated=SATURATED_DN if integer else None, product=name.name)

            if all(b and d for b, d in parsed):  # stacked with "B02 2024-05-01" descriptions
                for i, (b, d) in enumerate(parsed, 1):
                    self.add(d, b, ref(i), tags, key)
                return
            desc_bands = [b for b, _ in parsed]
            if not any(desc_bands) and file_band is None and band_order is None and _NOT_A_BAND.search(
                    name.stem.replace("_", " ").replace("-", " ")):
                self.set_aside.append((file_date, f"{name.name} (not a reflectance band or SCL)"))
                return
            if all(desc_bands) and len(set(desc_bands)) == src.count:
                names = desc_bands
            elif src.count == 1 and file_band:
                names = [file_band]
            elif band_order is not None and src.count == len(band_order):
                names = list(band_order)
            else:  # a stack of several dates: bands per date x dates, date-major
                per_date = list(band_order) if band_order is not None else _repeating(desc_bands)
                stack_dates = self.date_list if self.date_list is not None else _tag_dates(tags)
                if per_date and stack_dates and src.count == len(per_date) * len(stack_dates):
                    for i in range(src.count):
                        self.add(stack_dates[i // len(per_date)], per_date[i % len(per_date)],
                                 ref(i + 1), tags, key)
                    return
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
            if file_date is None and self.date_list is not None:
                if self.per_date_files >= len(self.date_list):
                    raise InputError(f"more per-date files than --dates ({len(self.date_list)})", path)
                file_date = self.date_list[self.per_date_files]
            self.per_date_files += 1
            if file_date is None:
                raise InputError("no acquisition date (put YYYYMMDD in the file or folder name, or pass --dates)", path)
            baseline = parse_baseline(date_text)
            if baseline is not None and not any("BASELINE" in k.upper() or "BOA_ADD_OFFSET" in k.upper()
                                                for k in tags):
                tags = {**tags, "PROCESSING_BASELINE": f"{baseline:05.2f}"}
            for i, b in enumerate(names, 1):
                self.add(file_date, b, ref(i), tags, key)


def choose_native(band: str, refs: list[BandRef], date: dt.date) -> tuple[BandRef, list[str]]:
    """The copy of ``band`` to read: the native-resolution one, else the finest; (choice, lines on the others)."""
    native = NATIVE_RES.get(band, 10.0)

    def rank(r: BandRef) -> tuple[float, float]:
        res = r.res or native
        return (abs(math.log(res / native)) if res > 0 else math.inf, res)

    unique = {(str(r.path), r.index): r for r in refs}  # the same file reached twice (a folder and its item)
    ordered = sorted(unique.values(), key=rank)
    best = ordered[0]
    same = [r for r in ordered[1:] if math.isclose(r.res or native, best.res or native, rel_tol=1e-6)]
    if same:
        raise InputError(f"band {band} of {date.isoformat()} is in two files of the same resolution "
                         f"({best.res or native:g} m): {best.path} and {same[0].path}; give one of them",
                         best.path)
    skipped = [f"{band} in {r.name} ({(r.res or 0):g} m copy; native {native:g} m read from {best.name})"
               for r in ordered[1:]]
    return best, skipped


def _grid_of_file(path: str | Path) -> Grid:
    with open_raster(path) as src:
        if src.crs is None:
            raise InputError("grid raster has no CRS", path)
        return grid_of(src)


def open_series(
    inputs: Sequence[str | Path],
    *,
    dates: Sequence[dt.date] | None = None,
    band_order: Sequence[str] | None = None,
    offset: float | None = None,
    grid: str | Path | Grid | None = None,
    bounds: Sequence[float] | None = None,
    exclude: Sequence[str | Path] = (),
    crs: Any = None,
    bounds_crs: Any = None,
    model_offset: float | None = None,
    cloud_mask: bool = True,
) -> S2Series:
    """Describe a time series from files, folders, products and STAC items (module docstring for the rules).

    ``grid`` (a raster path or a :class:`Grid`) or ``bounds`` choose the output grid; by default the 10 m grid of
    the first date. Several products on one date (tiles, UTM zones), ``crs`` or ``bounds_crs`` make the series an
    area (:class:`remote.area.AreaSeries`: the grid of :func:`remote.area.area_grid` unless ``grid``, products
    mosaicked window by window with its overlap rule); ``exclude`` names files that folders must not contribute
    (the run's own outputs). ``offset`` (the run's ``--offset``) overrides every product's metadata;
    ``model_offset`` (the offset a model was trained with) only serves products without radiometric metadata.
    ``cloud_mask``: whether the run masks clouds with SCL (False: ``--no-cloud-mask`` or no masked class), so a
    date without SCL is worth a notice only when True.
    ``series.notices`` lists what the user should know (partial coverage, offsets from the date, outputs of this
    command left out of the input folders, dates without SCL)
    and ``series.provenance()`` which file each band of each date is read from."""
    own: list[Path] = []
    units = expand_inputs(inputs, exclude, own)
    if not units:
        raise InputError("no input rasters given")
    if band_order is not None:
        band_order = [parse_band(b) or b for b in band_order]
        unknown = [b for b in band_order if b not in S2_BANDS + (SCL,)]
        if unknown:
            raise InputError(f"unknown band name(s) in --band-order: {', '.join(unknown)}")
    col = _Collector(dates, band_order)
    for u in units:
        if u.kind == "safe":
            col.add_safe(Path(u.path), u.only)
        elif u.kind == "stac":
            col.add_stac(u.path)
        else:
            col.add_raster(u.path, u.date_text)
    if not col.by_date:
        if col.set_aside:
            raise InputError(f"no reflectance band or SCL in the inputs, only {', '.join(x for _, x in col.set_aside)}")
        raise InputError("no valid dates found in the inputs")

    for day, line in col.set_aside:  # files that are not bands (AOT, WVP, TCI, visual...): listed with their date
        for (date, _), d in col.by_date.items():
            if date == day:
                d.skipped.append(line)
                break

    sources: list[DateSource] = []
    keys: list[str] = []
    chosen: list[tuple[dt.date, str, OffsetChoice]] = []
    for date, key in sorted(col.by_date):
        d = col.by_date[(date, key)]
        ds = DateSource(date, skipped=list(d.skipped))
        keys.append(key)
        for band in [*S2_BANDS, SCL, *sorted(set(d.candidates) - set(S2_BANDS) - {SCL})]:
            if band in d.candidates:
                ds.bands[band], skipped = choose_native(band, d.candidates[band], date)
                ds.skipped += skipped
        tags = tag_metadata(d.tags)  # GeoTIFFs: the tags of the product's files
        for b, ref in ds.bands.items():
            if b != SCL and ref.metadata is None:
                ref.metadata = tags
        # one precedence for every reader, per product: --offset > metadata > the model's offset > the date
        choices = apply_offsets(ds.bands, date, user=offset, model=model_offset)
        name = next((r.product for r in ds.bands.values() if r.product), key)
        chosen += [(date, name, c) for c in choices]
        ds.offset_rule = "; ".join(sorted({r.origin for b, r in ds.bands.items() if b != SCL}))
        offsets = {r.offset for b, r in ds.bands.items() if b != SCL}
        if len(offsets) == 1:  # the product's offset when all its bands share one
            ds.offset = offsets.pop()
        sources.append(ds)

    notices = offset_notices(chosen)
    if own:
        names = sorted(Path(o).name for o in own)
        notices.append(f"left out {len(names)} file(s) of the input folders that are outputs of this command "
                       f"({', '.join(names[:3])}{', ...' if len(names) > 3 else ''}): outputs are not inputs")
    no_scl = sorted({ds.date.isoformat() for ds in sources if SCL not in ds.bands})
    if no_scl and cloud_mask:
        notices.append(f"no SCL band for {len(no_scl)} date(s) ({', '.join(no_scl[:3])}"
                       f"{', ...' if len(no_scl) > 3 else ''}): clouds are not masked on those dates (cloud mask "
                       "off); give the SCL file or item asset to mask them")

    if grid is not None and bounds is not None:
        raise InputError("give either --grid or --bounds, not both")
    products: dict[dt.date, set[str]] = {}
    for date, key in col.by_date:
        products.setdefault(date, set()).add(key)
    if needs_area(products, list(col.crs_of.values()), crs, bounds_crs):
        return _refuse_outside(_open_area(sources, keys, notices, grid=grid, bounds=bounds, crs=crs,
                                          bounds_crs=bounds_crs, offset=offset), grid, bounds)

    first = sources[0]
    finest = min(first.bands.values(), key=lambda r: (r.res or math.inf))
    default = _grid_of_file(finest.path)
    if isinstance(grid, Grid):
        out_grid = grid
    elif grid is not None:
        out_grid = _grid_of_file(grid)
    elif bounds is not None:
        if len(bounds) != 4:
            raise InputError("--bounds needs 4 numbers: minx miny maxx maxy")
        try:
            out_grid = grid_from_bounds(default, tuple(float(v) for v in bounds))  # type: ignore[arg-type]
        except ValueError as exc:
            raise InputError(f"bad --bounds: {exc}") from None
    else:
        out_grid = default

    for ds in sources:
        ref = min(ds.bands.values(), key=lambda r: (r.res or math.inf))
        with open_raster(ref.path) as src:
            b = tuple(src.bounds)
            if src.crs != out_grid.crs:
                from rasterio.warp import transform_bounds

                b = transform_bounds(src.crs, out_grid.crs, *b)
        ds.coverage = covered_fraction(out_grid, b)
        if ds.coverage < 0.9995:
            notices.append(f"{ds.date.isoformat()} covers {ds.coverage:.1%} of the output grid ({ref.name}); "
                           "the rest of that date is nodata")
    return _refuse_outside(S2Series(sources, out_grid, offset, notices), grid, bounds)


def _refuse_outside(series: S2Series, grid: str | Path | Grid | None, bounds: Sequence[float] | None) -> S2Series:
    """``series``, unless its output grid lies entirely outside every product: then a one-line refusal (an
    all-nodata output helps nobody)."""
    if any(s.coverage > 0 for s in series.sources):
        return series
    g = series.grid
    from rasterio.transform import array_bounds

    minx, miny, maxx, maxy = array_bounds(g.height, g.width, g.transform)
    asked = (f"--bounds {' '.join(f'{v:g}' for v in bounds)}" if bounds is not None
             else f"--grid {grid}" if grid is not None and not isinstance(grid, Grid) else "the output grid")
    raise InputError(f"{asked} lies entirely outside the data: no product of any date covers the output grid "
                     f"({minx:g} {miny:g} {maxx:g} {maxy:g} in {g.crs}); check the coordinates and their CRS")


def _open_area(sources: list[DateSource], keys: list[str], notices: list[str], *, grid: str | Path | Grid | None,
               bounds: Sequence[float] | None, crs: Any, bounds_crs: Any, offset: float | None) -> S2Series:
    """An :class:`remote.area.AreaSeries` of the products ``sources`` (one per date and tile) on the area grid."""
    from .area import AreaSeries, area_grid, footprint

    if crs is not None and grid is not None:
        raise InputError("give either --grid or --crs, not both")
    if bounds_crs is not None and bounds is None:
        raise InputError("--bounds-crs needs --bounds")
    if bounds is not None and len(bounds) != 4:
        raise InputError("--bounds needs 4 numbers: minx miny maxx maxy")
    feet = [footprint(ds) for ds in sources]
    if isinstance(grid, Grid):
        out_grid = grid
    elif grid is not None:
        out_grid = _grid_of_file(grid)
    else:
        out_grid = area_grid(feet, crs=crs, bounds=bounds, bounds_crs=bounds_crs)
    series = AreaSeries(sources, keys, feet, out_grid, offset, notices)
    for d in series.dates:
        cover = [s.coverage for s in series.sources if s.date == d]
        if not any(c > 0 for c in cover):
            series.notices.append(f"{d.isoformat()}: no product of this date touches the output grid; the date "
                                  "is nodata")
    return series


def input_files(inputs: Sequence[str | Path]) -> list[Path]:
    """Every local file a series of ``inputs`` would read (for output planning: an output must not be one of them):
    rasters, the files of ``.SAFE`` folders, ``.SAFE.zip`` files, STAC items and the local files they reference.

    An input that cannot be expanded (missing, an empty folder, a broken item) stands for itself: opening the series
    reports it later, in the batch, with the full message."""
    files: list[Path] = []
    for item in inputs:
        if is_virtual(item):
            z = split_vsizip(item)  # a product zip read through /vsizip/ is an input all the same
            files += [z[0]] if z is not None else []
            continue
        try:
            units = expand_inputs([item])
        except InputError:
            files.append(Path(item))
            continue
        for u in units:
            if u.kind == "safe" and u.path.is_dir():
                files += [p for p in sorted(u.path.rglob("*")) if p.is_file()]
            elif u.kind == "stac":
                files.append(u.path)
                try:
                    files += [Path(b.path) for s in read_stac(u.path) for b in s.bands if not is_virtual(b.path)]
                except InputError:
                    pass
            elif not is_virtual(u.path):
                files.append(u.path)
    return files


@dataclass
class SeriesOptions:
    """How inputs are read into a series (the ``open_series`` keywords a batch shares): dates for undated files,
    band names of files without band descriptions, the DN offset, the output grid (a raster) or bounds."""

    dates: Sequence[dt.date] | None = None
    band_order: Sequence[str] | None = None
    offset: float | None = None
    grid: str | Path | Grid | None = None
    bounds: Sequence[float] | None = None
    crs: Any = None
    bounds_crs: Any = None
    cloud_mask: bool = True

    def open(self, inputs: Sequence[str | Path], *, exclude: Sequence[str | Path] = (),
             default_offset: float | None = None, cloud_mask: bool = True) -> S2Series:
        """:func:`open_series` of ``inputs``; ``default_offset`` (a model's stored offset) serves only the products
        whose metadata say nothing about their offset, with a notice (the run's ``offset`` and the products'
        metadata come first). The SCL-missing notice is given only when both ``cloud_mask`` (the run's choice:
        False when it masks no SCL class) and :attr:`cloud_mask` (``--no-cloud-mask`` unset) are true."""
        return open_series(inputs, dates=self.dates, band_order=self.band_order, offset=self.offset,
                           grid=self.grid, bounds=self.bounds, exclude=exclude, crs=self.crs,
                           bounds_crs=self.bounds_crs, model_offset=default_offset,
                           cloud_mask=self.cloud_mask and cloud_mask)
