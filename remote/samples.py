"""Training samples from rasters: labelled pixels, chips or fields of a time series with a label raster; and the
spatially blocked k-fold splits (with a buffer, so no neighbouring pixels end up on both sides of a split).

Samples from CSV/Parquet tables live in :mod:`remote.tables` (re-exported here).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from shared_backbones.errors import InputError

from .fields import FieldSource, field_series
from .reader import S2Series, read_single_band, read_window_band
from .tables import PixelSamples, label_codes, read_table, table_samples
from .timeseries import day_numbers, fill_gaps

LABEL_NODATA = 255

__all__ = [
    "LABEL_NODATA", "PixelSamples", "choose_pixels", "field_samples", "label_codes", "raster_chips",
    "raster_samples", "read_table", "spatial_block_splits", "table_samples",
]


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


def spatial_block_splits(
    rows: np.ndarray, cols: np.ndarray, block_size: int, k: int, buffer: int = 0, seed: int = 0
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Spatially blocked k-fold with a buffer in pixels: see :func:`shared_backbones.folds.spatial_block_splits`."""
    from shared_backbones.folds import spatial_block_splits as _split

    return _split(rows, cols, block_size, k, buffer, seed)
