"""Training samples: labelled pixels (or chips, or fields) from rasters + a label raster, or a CSV/Parquet table of
time series; spatially blocked k-fold splits with a buffer so no neighbouring pixels end up on both sides.

Table (CSV, or Parquet when pyarrow, pandas or polars is installed; one row per pixel or field): a ``label``
column (class name or index), one column per band and date named
``<band>_<date>`` (``B04_2024-05-01`` or ``B04_20240501``; reflectance, empty = missing), and optionally ``row``/``col``
(pixel position, for spatial blocks), ``x``/``y`` (map coordinates; blocks in map units) or ``field_id`` (folds
never split a field).
"""

from __future__ import annotations

import csv
import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from shared_backbones.errors import InputError

from .fields import FieldSource, field_series
from .io import S2_BANDS, S2Series, parse_band, parse_date, read_single_band, read_window_band
from .timeseries import day_numbers, fill_gaps

LABEL_NODATA = 255


@dataclass
class PixelSamples:
    """Gap-filled time series ``x`` [N, G, B] on ``dates``, labels ``y`` [N], positions and groups for folds."""

    x: np.ndarray
    y: np.ndarray
    rows: np.ndarray | None = None
    cols: np.ndarray | None = None
    groups: np.ndarray | None = None
    dates: list[dt.date] | None = None
    bands: list[str] | None = None


def label_codes(labels: Sequence[str], classes: Sequence[str]) -> np.ndarray:
    """Class names or indices -> codes (-1 for empty / unknown)."""
    lookup = {c.lower(): i for i, c in enumerate(classes)}
    out = np.full(len(labels), -1, dtype=np.int64)
    for i, v in enumerate(labels):
        v = str(v).strip()
        if v.lower() in lookup:
            out[i] = lookup[v.lower()]
        elif v.lstrip("-").isdigit() and 0 <= int(v) < len(classes):
            out[i] = int(v)
        elif v:
            raise InputError(f"unknown class {v!r} in row {i + 2} (classes: {', '.join(classes)})")
    return out


def choose_pixels(
    labels: np.ndarray, k: int, max_per_class: int | None, seed: int = 0, nodata: int | None = LABEL_NODATA
) -> tuple[np.ndarray, np.ndarray]:
    """(rows, cols) of labelled pixels (values 0..k-1), at most ``max_per_class`` per class (random, seeded)."""
    rng = np.random.default_rng(seed)
    rows, cols = [], []
    for c in range(k):
        r, cc = np.nonzero(labels == c)
        if max_per_class is not None and len(r) > max_per_class:
            pick = np.sort(rng.choice(len(r), max_per_class, replace=False))
            r, cc = r[pick], cc[pick]
        rows.append(r)
        cols.append(cc)
    bad = (labels >= k) & (labels != (nodata if nodata is not None else -1))
    if bad.any():
        raise InputError(f"label value {int(labels[bad][0])} outside 0..{k - 1} (nodata {nodata})")
    order = np.argsort(np.concatenate(rows) * labels.shape[1] + np.concatenate(cols), kind="stable")
    return np.concatenate(rows)[order], np.concatenate(cols)[order]


def raster_samples(
    series: S2Series,
    labels_path: str | Path,
    grid_dates: Sequence[dt.date],
    bands: Sequence[str],
    classes: Sequence[str],
    *,
    max_per_class: int | None = 20000,
    seed: int = 0,
    scl_invalid: Sequence[int] | None = None,
    tile: int = 256,
) -> PixelSamples:
    """Labelled pixels of ``series`` (gap-filled onto ``grid_dates``); pixels with no valid date are dropped."""
    series.require_bands(bands)
    lab, nodata = read_single_band(labels_path, series.grid)
    rows, cols = choose_pixels(lab, len(classes), max_per_class, seed, nodata if nodata is not None else LABEL_NODATA)
    if not len(rows):
        raise InputError("no labelled pixel (values 0..K-1) in the label raster", labels_path)
    xs, keep = np.zeros((len(rows), len(grid_dates), len(bands)), np.float32), np.zeros(len(rows), bool)
    with series:
        for w in series.grid.windows(tile):
            r0, c0 = int(w.row_off), int(w.col_off)
            sel = np.nonzero((rows >= r0) & (rows < r0 + w.height) & (cols >= c0) & (cols < c0 + w.width))[0]
            if not len(sel):
                continue
            obs = series.read(w, bands, scl_invalid)[:, :, rows[sel] - r0, cols[sel] - c0]  # [T, B, P]
            ok = ~np.isnan(obs).any(1).all(0)
            filled = fill_gaps(obs, day_numbers(series.dates), day_numbers(grid_dates))
            xs[sel] = filled.transpose(2, 0, 1)
            keep[sel] = ok
    if not keep.any():
        raise InputError("no labelled pixel has a valid (cloud-free) date", labels_path)
    return PixelSamples(
        xs[keep],
        lab[rows[keep], cols[keep]].astype(np.int64),
        rows[keep],
        cols[keep],
        None,
        list(grid_dates),
        list(bands),
    )


def field_samples(
    series: S2Series,
    fields: FieldSource,
    labels_path: str | Path,
    grid_dates: Sequence[dt.date],
    bands: Sequence[str],
    classes: Sequence[str],
    *,
    scl_invalid: Sequence[int] | None = None,
    tile: int = 256,
    quiet: bool = True,
) -> PixelSamples:
    """One sample per field: the field's mean time series (:func:`remote.fields.field_series`) labelled with the
    majority class of its labelled pixels; positions are the field centroids (pixels), groups the field IDs.
    Fields without a labelled pixel or without a valid date are dropped."""
    series.require_bands(bands)
    fs = field_series(series, fields, bands, grid_dates, scl_invalid, tile, quiet)
    k = len(classes)
    votes = np.zeros((len(fs.ids), k), dtype=np.int64)
    labels_path = Path(labels_path)
    for w in series.grid.windows(tile):
        fid = fields.read(w)
        lab = read_window_band(labels_path, series.grid, w).astype(np.int64)
        pos = np.clip(np.searchsorted(fs.ids, fid), 0, len(fs.ids) - 1)
        ok = (fid > 0) & (fs.ids[pos] == fid) & (lab >= 0) & (lab < k)
        np.add.at(votes, (pos[ok], lab[ok]), 1)
    keep = (votes.sum(1) > 0) & fs.valid
    if not keep.any():
        raise InputError("no field has a labelled pixel and a valid (cloud-free) date", labels_path)
    return PixelSamples(
        fs.x[keep],
        votes[keep].argmax(1),
        np.round(fs.rows[keep] - 0.5).astype(np.int64),
        np.round(fs.cols[keep] - 0.5).astype(np.int64),
        fs.ids[keep],
        list(grid_dates),
        list(bands),
    )


def raster_chips(
    series: S2Series,
    labels_path: str | Path,
    grid_dates: Sequence[dt.date],
    bands: Sequence[str],
    classes: Sequence[str],
    chip: int,
    scl_invalid: Sequence[int] | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Chips for the spatial model: (x [N, G, B, chip, chip] reflectance with NaN, labels [N, chip, chip] (255 =
    ignore, also where no valid date), chip row origins, chip col origins). Chips without a label are skipped."""
    from rasterio.windows import Window

    series.require_bands(bands)
    lab, nodata = read_single_band(labels_path, series.grid)
    if nodata is not None and nodata != LABEL_NODATA:
        lab = np.where(lab == nodata, LABEL_NODATA, lab)
    g = series.grid
    if g.height < chip or g.width < chip:
        raise InputError(f"raster ({g.height} x {g.width}) smaller than one chip ({chip})")
    xs, ys, r0s, c0s = [], [], [], []
    with series:
        for r0 in range(0, g.height - chip + 1, chip):
            for c0 in range(0, g.width - chip + 1, chip):
                y = lab[r0 : r0 + chip, c0 : c0 + chip].astype(np.int64)
                y = np.where(y < len(classes), y, LABEL_NODATA)
                if (y == LABEL_NODATA).all():
                    continue
                obs = series.read(Window(c0, r0, chip, chip), bands, scl_invalid)
                ok = ~np.isnan(obs).any(1).all(0)
                xs.append(fill_gaps(obs, day_numbers(series.dates), day_numbers(grid_dates)))
                ys.append(np.where(ok, y, LABEL_NODATA))
                r0s.append(r0)
                c0s.append(c0)
    if not xs:
        raise InputError("no chip holds a labelled pixel", labels_path)
    return np.stack(xs), np.stack(ys), np.asarray(r0s), np.asarray(c0s)


def _parquet_columns(path: Path) -> tuple[list[str], list[list]]:
    """Column names and values of a Parquet file through the first reader installed (pyarrow, pandas, polars)."""
    import importlib

    for name in ("pyarrow.parquet", "pandas", "polars"):
        try:
            mod = importlib.import_module(name)
        except ImportError:
            continue
        try:
            if name == "pyarrow.parquet":
                t = mod.read_table(str(path))
                return list(t.column_names), [t.column(c).to_pylist() for c in t.column_names]
            df = mod.read_parquet(str(path))
            cols = [str(c) for c in df.columns]
            return cols, [(df[c].tolist() if name == "pandas" else df[c].to_list()) for c in df.columns]
        except Exception as exc:
            msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise InputError(f"unreadable Parquet table ({msg})", path) from None
    raise InputError(
        "Parquet tables need a Parquet reader (pyarrow, pandas or polars; none is installed): "
        "`pip install pyarrow`, or save the table as CSV",
        path,
    )


def _csv_columns(path: Path) -> tuple[list[str], list[list]]:
    try:
        with open(path, newline="") as fh:
            rows = list(csv.reader(fh))
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise InputError(f"unreadable CSV table ({type(exc).__name__})", path) from None
    if not rows:
        raise InputError("table is empty", path)
    head, body = rows[0], rows[1:]
    return head, [[r[j] if j < len(r) else "" for r in body] for j in range(len(head))]


def _numbers(values: Sequence, name: str, path: Path) -> np.ndarray:
    """Floats from CSV strings or Parquet values (empty, None, NaN, NA = missing)."""
    out = np.empty(len(values), dtype=np.float64)
    for i, v in enumerate(values):
        if v is None or (isinstance(v, str) and v.strip() in ("", "nan", "NaN", "NA", "null")):
            out[i] = np.nan
            continue
        try:
            out[i] = float(v)
        except (TypeError, ValueError):
            raise InputError(f"non-numeric value {v!r} in column {name!r} (row {i + 2})", path) from None
    return out


def _label_text(v: object) -> str:
    """A label cell as text: None / NaN -> "", 2.0 -> "2"."""
    if v is None:
        return ""
    if isinstance(v, float):
        return "" if v != v else (str(int(v)) if v == int(v) else str(v))
    return str(v)


def read_table(
    path: str | Path, classes: Sequence[str]
) -> tuple[np.ndarray, list[dt.date], list[str], np.ndarray, dict[str, np.ndarray]]:
    """CSV or Parquet table (module docstring) -> (obs [N, T, B] with NaN, dates, bands, labels [N], extra columns)."""
    path = Path(path)
    if not path.is_file():
        raise InputError("file not found", path)
    parquet = path.suffix.lower() in (".parquet", ".pq")
    head, columns = _parquet_columns(path) if parquet else _csv_columns(path)
    head = [str(h).strip() for h in head]
    n = len(columns[0]) if columns else 0
    if n == 0:
        raise InputError("table has no data rows", path)
    if "label" not in head:
        raise InputError("table has no 'label' column", path)
    series_cols: dict[tuple[dt.date, str], int] = {}
    for j, h in enumerate(head):
        band, date = parse_band(h), parse_date(h)
        if band and date and band in S2_BANDS:
            series_cols[(date, band)] = j
    if not series_cols:
        raise InputError("no band/date columns (name them like B04_2024-05-01)", path)
    dates = sorted({d for d, _ in series_cols})
    bands = [b for b in S2_BANDS if any(bb == b for _, bb in series_cols)]
    obs = np.full((n, len(dates), len(bands)), np.nan, dtype=np.float32)
    for (d, b), j in series_cols.items():
        obs[:, dates.index(d), bands.index(b)] = _numbers(columns[j], head[j], path)
    labels = columns[head.index("label")]
    try:
        y = label_codes([_label_text(v) for v in labels], classes)
    except InputError as exc:
        raise InputError(str(exc), path) from None
    extra = {
        name: _numbers(columns[head.index(name)], name, path)
        for name in ("row", "col", "x", "y", "field_id")
        if name in head
    }
    return obs, dates, bands, y, extra


def table_samples(
    path: str | Path, classes: Sequence[str], grid_dates: Sequence[dt.date] | None, bands: Sequence[str] | None = None
) -> PixelSamples:
    """Samples from a CSV table, gap-filled onto ``grid_dates`` (default: the table's own dates when regular)."""
    obs, dates, tbands, y, extra = read_table(path, classes)
    bands = list(bands or tbands)
    missing = [b for b in bands if b not in tbands]
    if missing:
        raise InputError(f"table lacks band(s) {', '.join(missing)}", path)
    obs = obs[:, :, [tbands.index(b) for b in bands]]
    grid_dates = list(grid_dates or dates)
    keep = (y >= 0) & ~np.isnan(obs).any(2).all(1)
    if not keep.any():
        raise InputError("no row has a label and a valid date", path)
    filled = fill_gaps(obs[keep].transpose(1, 2, 0), day_numbers(dates), day_numbers(grid_dates)).transpose(2, 0, 1)
    rows = cols = groups = None
    if "row" in extra and "col" in extra:
        rows, cols = extra["row"][keep].astype(np.int64), extra["col"][keep].astype(np.int64)
    elif "x" in extra and "y" in extra:  # map units -> block-size grid positions
        rows, cols = np.floor(-extra["y"][keep]).astype(np.int64), np.floor(extra["x"][keep]).astype(np.int64)
    if "field_id" in extra:
        groups = extra["field_id"][keep].astype(np.int64)
    return PixelSamples(filled, y[keep], rows, cols, groups, grid_dates, bands)


def spatial_block_splits(
    rows: np.ndarray, cols: np.ndarray, block_size: int, k: int, buffer: int = 0, seed: int = 0
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Spatially blocked k-fold with a buffer in pixels: see :func:`shared_backbones.folds.spatial_block_splits`."""
    from shared_backbones.folds import spatial_block_splits as _split

    return _split(rows, cols, block_size, k, buffer, seed)
