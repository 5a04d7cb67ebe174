"""Tiled (windowed) prediction over Sentinel-2 time series of any size, with memory bounded by the tile.

For each tile: read the bands of every date in the window (20/60 m bands resampled onto the 10 m grid), scale to
reflectance, mask clouds with SCL, fill gaps onto the model's regular time grid, run the model, write the tile into
a class map (uint8, colour table, nodata 255) and a probability GeoTIFF (one band per class), both tiled and
deflate-compressed with the source CRS and transform, written atomically. Pixels without a single valid date stay
nodata. The spatial model reads each tile with a halo (aligned to its downsampling factor) and keeps the centre,
so the tiled map equals the whole-raster map when the halo covers the receptive field.
"""

from __future__ import annotations

import contextlib
import csv
import os
import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from shared_backbones.checkpoint import load_for_inference
from shared_backbones.cliutil import atomic_output, check_output, progress
from shared_backbones.errors import InputError
from shared_backbones.precision import PrecisionPolicy

from . import models as _models  # noqa: F401  (registers the architectures)
from .io import DEFAULT_SCL_INVALID, Grid, S2Series, geotiff_profile, parse_dates, read_window_band
from .models import CLASSES, class_probabilities, date_attribution
from .timeseries import align_grid, day_numbers, fill_gaps

CLASS_NODATA = 255
PROB_UINT8_SCALE = 250.0  # uint8 probabilities: value = round(p * 250), 255 = nodata
PALETTE = [(26, 150, 65), (230, 97, 1), (253, 219, 60), (44, 123, 182), (215, 25, 28), (171, 217, 233),
           (166, 97, 26), (128, 128, 128)]


@dataclass
class RemoteModel:
    """A loaded remote model with the preprocessing it was trained with."""

    model: torch.nn.Module
    classes: list[str]
    bands: list[str]
    grid_dates: list[dt.date]
    device: torch.device
    policy: PrecisionPolicy
    norm_mean: np.ndarray | None = None
    norm_std: np.ndarray | None = None
    scl_invalid: tuple[int, ...] = DEFAULT_SCL_INVALID
    preprocessing: dict = field(default_factory=dict)

    @property
    def spatial(self) -> bool:
        return getattr(self.model, "input_kind", "pixel") == "spatial"

    @property
    def output_kind(self) -> str:
        return getattr(self.model, "output_kind", "logits")

    @classmethod
    def from_file(cls, path: str | Path, device: str = "auto", precision: str = "auto") -> "RemoteModel":
        mf, model, dev, policy = load_for_inference(path, "remote", device, precision)
        return cls.from_parts(model, mf.classes, mf.preprocessing, dev, policy)

    @classmethod
    def from_parts(cls, model: torch.nn.Module, classes: Sequence[str], preprocessing: dict,
                   device: torch.device | str = "cpu", policy: PrecisionPolicy | None = None) -> "RemoteModel":
        pp = dict(preprocessing)
        if "bands" not in pp or "dates" not in pp:
            raise InputError("model file lacks the preprocessing (bands, dates) of a remote model")
        mean = np.asarray(pp["norm_mean"], dtype=np.float32) if pp.get("norm_mean") is not None else None
        std = np.asarray(pp["norm_std"], dtype=np.float32) if pp.get("norm_std") is not None else None
        device = torch.device(device)
        return cls(model.eval().to(device), list(classes or CLASSES), list(pp["bands"]), parse_dates(pp["dates"]),
                   device, policy or PrecisionPolicy.resolve("fp32", device), mean, std,
                   tuple(pp.get("scl_invalid", DEFAULT_SCL_INVALID)), pp)

    # -- model calls ---------------------------------------------------------------------------------------------
    @torch.inference_mode()
    def pixel_probabilities(self, x: np.ndarray, batch_size: int = 8192) -> np.ndarray:
        """[P, G, B] reflectance -> [P, K] probabilities (per-pixel models)."""
        out = np.empty((x.shape[0], len(self.classes)), dtype=np.float32)
        for s in range(0, x.shape[0], batch_size):
            xb = torch.from_numpy(np.ascontiguousarray(x[s:s + batch_size])).to(self.device)
            with self.policy.autocast():
                scores = self.model(xb)
            out[s:s + batch_size] = class_probabilities(scores.float(), self.output_kind).cpu().numpy()
        return out

    def explain_pixels(self, x: np.ndarray, batch_size: int = 4096) -> tuple[np.ndarray | None, np.ndarray]:
        """(capsule lengths [P, K] or None, date attribution [P, G]) for per-pixel models."""
        caps = np.empty((x.shape[0], len(self.classes)), dtype=np.float32) if self.output_kind == "capsule" else None
        attr = np.empty(x.shape[:2], dtype=np.float32)
        for s in range(0, x.shape[0], batch_size):
            xb = torch.from_numpy(np.ascontiguousarray(x[s:s + batch_size])).to(self.device)
            attr[s:s + batch_size] = date_attribution(self.model, xb).cpu().numpy()
            if caps is not None:
                with torch.inference_mode():
                    caps[s:s + batch_size] = self.model(xb).float().cpu().numpy()
        return caps, attr

    @torch.inference_mode()
    def spatial_probabilities(self, filled: np.ndarray) -> np.ndarray:
        """[G, B, h, w] reflectance (NaN = no data) -> [K, h, w] probabilities (spatial model)."""
        x = filled
        if self.norm_mean is not None:
            x = (x - self.norm_mean[None, :, None, None]) / self.norm_std[None, :, None, None]
        x = np.nan_to_num(x, nan=0.0).reshape(-1, *x.shape[2:])
        xb = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))[None].to(self.device)
        with self.policy.autocast():
            logits = self.model(xb)
        return class_probabilities(logits.float(), self.output_kind)[0].cpu().numpy()

    @property
    def size_divisor(self) -> int:
        return int(getattr(self.model, "size_divisor", 1))


def filled_window(series: S2Series, window: Any, bands: Sequence[str], grid_dates: Sequence[dt.date],
                  scl_invalid: Sequence[int] | None) -> tuple[np.ndarray, np.ndarray]:
    """(gap-filled reflectance [G, B, h, w], valid [h, w]: at least one valid date) for ``window``."""
    obs = series.read(window, bands, scl_invalid)
    valid = ~np.isnan(obs).any(1).all(0)
    filled = fill_gaps(obs, day_numbers(series.dates), day_numbers(grid_dates))
    return filled, valid


def _halo_window(window: Any, halo: int, grid: Grid) -> tuple[Any, int, int]:
    """The window grown by ``halo`` and clipped to the raster; also the offsets of ``window`` inside it."""
    from rasterio.windows import Window

    r0, c0 = max(0, int(window.row_off) - halo), max(0, int(window.col_off) - halo)
    r1 = min(grid.height, int(window.row_off + window.height) + halo)
    c1 = min(grid.width, int(window.col_off + window.width) + halo)
    return Window(c0, r0, c1 - c0, r1 - r0), int(window.row_off) - r0, int(window.col_off) - c0


def class_colormap(n: int) -> dict[int, tuple[int, int, int, int]]:
    cmap = {i: (*PALETTE[i % len(PALETTE)], 255) for i in range(n)}
    cmap[CLASS_NODATA] = (0, 0, 0, 0)
    return cmap


@dataclass
class PredictOutputs:
    """Paths of the rasters :func:`predict_series` writes (None: not written)."""

    class_map: Path
    probabilities: Path | None = None
    capsules: Path | None = None
    attribution: Path | None = None
    fields_csv: Path | None = None

    @classmethod
    def beside(cls, class_map: str | Path, probabilities: bool = True, explain: bool = False,
               fields: bool = False) -> "PredictOutputs":
        """``X.tif`` -> ``X_prob.tif``, ``X_capsules.tif``, ``X_attribution.tif``, ``X_fields.csv``."""
        p = Path(class_map)
        stem = p.parent / p.stem
        return cls(p, Path(f"{stem}_prob.tif") if probabilities else None,
                   Path(f"{stem}_capsules.tif") if explain else None,
                   Path(f"{stem}_attribution.tif") if explain else None,
                   Path(f"{stem}_fields.csv") if fields else None)


class _FieldStats:
    """Per-field pixel counts per class and summed probabilities, accumulated tile by tile."""

    def __init__(self, k: int) -> None:
        self.k = k
        self.ids: dict[int, int] = {}
        self.counts = np.zeros((0, k), dtype=np.int64)
        self.prob = np.zeros((0, k), dtype=np.float64)
        self.total = np.zeros(0, dtype=np.int64)

    def add(self, fid: np.ndarray, cls: np.ndarray, prob: np.ndarray, valid: np.ndarray, nodata: Any) -> None:
        keep = fid != nodata if nodata is not None else np.ones(fid.shape, bool)
        keep &= fid != 0
        for f in np.unique(fid[keep]):
            if int(f) not in self.ids:
                self.ids[int(f)] = len(self.ids)
                self.counts = np.vstack([self.counts, np.zeros((1, self.k), np.int64)])
                self.prob = np.vstack([self.prob, np.zeros((1, self.k))])
                self.total = np.append(self.total, 0)
        if not self.ids:
            return
        rows = np.array([self.ids.get(int(f), -1) for f in fid[keep]])
        self.total += np.bincount(rows, minlength=len(self.ids))
        ok = valid[keep]
        r, c = rows[ok], cls[keep][ok]
        np.add.at(self.counts, (r, c), 1)
        np.add.at(self.prob, r, prob[:, keep][:, ok].T)

    def write(self, path: Path, classes: Sequence[str], overwrite: bool) -> None:
        with atomic_output(path, overwrite) as tmp, open(tmp, "w", newline="") as fh:
            w = csv.writer(fh)
            w.writerow(["field_id", "pixels", "valid_pixels", "majority"] + [f"frac_{c}" for c in classes]
                       + [f"mean_p_{c}" for c in classes])
            for f, i in sorted(self.ids.items()):
                n = int(self.counts[i].sum())
                maj = classes[int(self.counts[i].argmax())] if n else ""
                w.writerow([f, int(self.total[i]), n, maj]
                           + [f"{self.counts[i, j] / n:.4f}" if n else "" for j in range(self.k)]
                           + [f"{self.prob[i, j] / n:.4f}" if n else "" for j in range(self.k)])


def predict_series(series: S2Series, rm: RemoteModel, outputs: PredictOutputs, *, tile: int = 256,
                   halo: int | None = None, batch_size: int = 8192, prob_dtype: str = "float32",
                   fields: str | Path | None = None, scl_invalid: Sequence[int] | None = None,
                   overwrite: bool = False, quiet: bool = False) -> dict[str, Any]:
    """Predict the whole raster tile by tile; returns a summary (pixels, valid pixels, class counts, tiles).

    ``halo`` (spatial model only) defaults to one tile-aligned band of ``size_divisor`` x 2 pixels around each tile;
    ``tile`` and ``halo`` are rounded up to multiples of the model's ``size_divisor``.
    """
    rm_bands = rm.bands
    series.require_bands(rm_bands)
    if prob_dtype not in ("float32", "uint8"):
        raise InputError(f"probability dtype must be float32 or uint8, not {prob_dtype!r}")
    explain = outputs.capsules is not None or outputs.attribution is not None
    if explain and rm.spatial:
        raise InputError("--explain needs a per-pixel model (ffdnn or cnn1d), not the spatial unet2d")
    if fields is not None:
        fields = Path(fields)
        if fields.suffix.lower() in (".shp", ".gpkg", ".geojson", ".json", ".kml", ".fgb", ".gml"):
            raise InputError("vector field files need fiona/geopandas (not installed): rasterise the fields to a "
                             "GeoTIFF of field IDs (e.g. gdal_rasterize -a id -tr 10 10 ...) and pass that", fields)
        if outputs.fields_csv is None:
            outputs.fields_csv = PredictOutputs.beside(outputs.class_map, fields=True).fields_csv
    grid_dates = align_grid(rm.grid_dates, series.dates)
    if series.dates[-1] < grid_dates[0] or series.dates[0] > grid_dates[-1]:
        raise InputError(f"no valid dates: the inputs ({series.dates[0]} .. {series.dates[-1]}) lie outside the "
                         f"model's season ({grid_dates[0]} .. {grid_dates[-1]})")
    scl = rm.scl_invalid if scl_invalid is None else tuple(scl_invalid)
    g, k = series.grid, len(rm.classes)
    d = rm.size_divisor
    tile = -(-tile // d) * d
    if rm.spatial:
        halo = 2 * d if halo is None else -(-halo // d) * d
    else:
        halo = 0
    for p in (outputs.class_map, outputs.probabilities, outputs.capsules, outputs.attribution, outputs.fields_csv):
        if p is not None:
            check_output(p, overwrite)
    if fields is not None:
        from rasterio.windows import Window

        read_window_band(fields, g, Window(0, 0, 1, 1))  # fail early on an unreadable file or another CRS

    import rasterio

    stats = _FieldStats(k) if fields is not None else None
    counts = np.zeros(k, dtype=np.int64)
    n_valid = 0
    with contextlib.ExitStack() as stack:
        # a bounded GDAL block cache (MB; GDAL_CACHEMAX in the environment wins) keeps memory flat in raster size
        stack.enter_context(rasterio.Env(**({} if "GDAL_CACHEMAX" in os.environ else {"GDAL_CACHEMAX": 256})))

        def open_out(path: Path, count: int, dtype: str, nodata: Any, desc: Sequence[str]) -> Any:
            tmp = stack.enter_context(atomic_output(path, overwrite))
            ds = stack.enter_context(rasterio.open(tmp, "w", **geotiff_profile(g, count, dtype, nodata)))
            for i, s in enumerate(desc, 1):
                ds.set_band_description(i, s)
            return ds

        cls_ds = open_out(outputs.class_map, 1, "uint8", CLASS_NODATA,
                          ["class: " + ", ".join(f"{i}={c}" for i, c in enumerate(rm.classes))])
        cls_ds.write_colormap(1, class_colormap(k))
        cls_ds.update_tags(CLASSES=",".join(rm.classes), NODATA_MEANING="no valid observation",
                           **{f"CLASS_{i}": c for i, c in enumerate(rm.classes)})
        prob_ds = None
        if outputs.probabilities is not None:
            prob_nodata = 255 if prob_dtype == "uint8" else float("nan")
            prob_ds = open_out(outputs.probabilities, k, prob_dtype, prob_nodata, [f"p({c})" for c in rm.classes])
            if prob_dtype == "uint8":
                prob_ds.scales = [1.0 / PROB_UINT8_SCALE] * k
        caps_ds = attr_ds = None
        if outputs.capsules is not None and rm.output_kind == "capsule":
            caps_ds = open_out(outputs.capsules, k, "float32", float("nan"), [f"capsule length {c}" for c in rm.classes])
        if outputs.attribution is not None:
            attr_ds = open_out(outputs.attribution, len(grid_dates), "float32", float("nan"),
                               [f"attribution {x.isoformat()}" for x in grid_dates])
        with series:
            for window in progress(g.windows(tile), total=g.n_windows(tile), desc="predict", unit="tile",
                                   quiet=quiet):
                read_win, dr, dc = _halo_window(window, halo, g)
                filled, valid = filled_window(series, read_win, rm_bands, grid_dates, scl)
                h, w = int(window.height), int(window.width)
                sl = (slice(dr, dr + h), slice(dc, dc + w))
                if rm.spatial:
                    prob = rm.spatial_probabilities(filled)[:, sl[0], sl[1]]
                    valid = valid[sl]
                else:
                    prob = np.zeros((k, h, w), dtype=np.float32)
                    x = filled[:, :, valid].transpose(2, 0, 1)  # [P, G, B]
                    if x.shape[0]:
                        prob[:, valid] = rm.pixel_probabilities(x, batch_size).T
                cls = prob.argmax(0).astype(np.uint8)
                cls[~valid] = CLASS_NODATA
                cls_ds.write(cls, 1, window=window)
                counts += np.bincount(cls[valid], minlength=k)[:k]
                n_valid += int(valid.sum())
                if prob_ds is not None:
                    if prob_dtype == "uint8":
                        pw = np.round(prob * PROB_UINT8_SCALE).astype(np.uint8)
                        pw[:, ~valid] = 255
                    else:
                        pw = prob.astype(np.float32)
                        pw[:, ~valid] = np.nan
                    prob_ds.write(pw, window=window)
                if explain:
                    x = filled[:, :, valid].transpose(2, 0, 1)
                    caps, attr = rm.explain_pixels(x, batch_size) if x.shape[0] else (None, None)
                    for ds, vals, n in ((caps_ds, caps, k), (attr_ds, attr, len(grid_dates))):
                        if ds is None:
                            continue
                        arr = np.full((n, h, w), np.nan, dtype=np.float32)
                        if vals is not None:
                            arr[:, valid] = vals.T
                        ds.write(arr, window=window)
                if stats is not None:
                    fid, fid_nodata = _field_window(fields, g, window)
                    stats.add(fid, cls, prob, valid, fid_nodata)
        if stats is not None:
            stats.write(outputs.fields_csv, rm.classes, overwrite)
    total = g.width * g.height
    return {"pixels": total, "valid_pixels": n_valid, "nodata_pixels": total - n_valid, "tiles": g.n_windows(tile),
            "tile": tile, "halo": halo, "dates": len(series.dates), "grid_dates": len(grid_dates),
            "class_counts": {c: int(n) for c, n in zip(rm.classes, counts)},
            "outputs": {k_: str(v) for k_, v in vars(outputs).items() if v is not None}}


def _field_window(path: Path, grid: Grid, window: Any) -> tuple[np.ndarray, Any]:
    import rasterio

    with rasterio.open(path) as src:
        nodata = src.nodata
    return read_window_band(path, grid, window), nodata
