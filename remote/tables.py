"""Training samples from a table of time series: CSV (standard library) or Parquet (pandas with pyarrow, the
``tables`` extra), one row per pixel or field.

Columns: ``label`` (class name or index), one column per band and date named ``<band>_<date>`` (``B04_2024-05-01``
or ``B04_20240501``; reflectance, empty = missing), and optionally ``row``/``col`` (pixel position, for spatial
blocks), ``x``/``y`` (map coordinates; blocks in map units) or ``field_id`` (folds never split a field).
"""

from __future__ import annotations

import csv
import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from shared_backbones.errors import InputError, first_line

from .naming import S2_BANDS, parse_band, parse_date
from .timeseries import day_numbers, fill_gaps

TABLES_EXTRA = "pip install 'convsuite[tables]'"


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


def _parquet_columns(path: Path) -> tuple[list[str], list[list]]:
    """Column names and values of a Parquet file through pandas (+ pyarrow): the ``tables`` extra."""
    need = (f"Parquet tables need the 'tables' extra (pandas + pyarrow): `{TABLES_EXTRA}`, or save the table as "
            "CSV")
    try:
        import pandas as pd
    except ImportError:
        raise InputError(need, path) from None
    try:
        df = pd.read_parquet(path)
    except ImportError:  # pandas without a Parquet engine
        raise InputError(need, path) from None
    except Exception as exc:
        msg = first_line(exc)
        raise InputError(f"unreadable Parquet table ({msg})", path) from None
    # missing cells (None, NaN, pd.NA of nullable integer columns) become None
    return [str(c) for c in df.columns], [df[c].astype(object).where(df[c].notna(), None).tolist() for c in df.columns]


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


