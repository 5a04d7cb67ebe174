"""Synthetic Sentinel-2 wheat seasons: healthy fields, nitrogen deficiency and yellow rust, with clouds.

* healthy: green cover follows a double-logistic phenology (green-up, plateau, senescence) at full chlorophyll;
* nitrogen deficiency: lower peak green cover and lower chlorophyll during the whole season;
* yellow rust: healthy until an onset date, then progressive chlorophyll (and some cover) loss that spreads in
  patches from a few foci over the field.

Reflectance = cover x leaf spectrum (mixed between a green and a chlorotic leaf by chlorophyll) + (1 - cover) x soil,
plus noise, for the 12 L2A bands (B01..B12, B8A). Clouds (SCL 8/9), cirrus (10) and cloud shadows (3) come from
smooth random fields. Digital numbers are stored as ``DN = reflectance * 10000 + 1000`` (processing baseline >= 04.00,
tag ``PROCESSING_BASELINE=05.10``), DN 0 is nodata. Per date, a 10 m file (B02 B03 B04 B08) and a 20 m file (B05 B06
B07 B8A B11 B12 SCL) in UTM zone 32N (EPSG:32632), plus ``labels.tif`` (class index, 255 = not wheat) and
``fields.tif`` (field IDs, 0 = background).
"""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from shared_backbones.cliutil import atomic_output

from .models import CLASSES
from .naming import QUANTIFICATION, S2_BANDS
from .resample import Grid
from .writer import geotiff_profile

_B = {b: i for i, b in enumerate(S2_BANDS)}
SOIL = np.array([.10, .12, .15, .18, .21, .23, .24, .25, .26, .26, .33, .28], dtype=np.float32)
LEAF_GREEN = np.array([.03, .035, .08, .035, .12, .33, .42, .46, .47, .46, .22, .11], dtype=np.float32)
LEAF_CHLOROTIC = np.array([.06, .07, .15, .16, .24, .34, .38, .40, .41, .40, .28, .19], dtype=np.float32)
GRASS_DELTA = np.array([0, 0, .01, -.005, .01, 0, 0, -.02, -.02, -.02, .02, .01], dtype=np.float32)
BANDS_10M = ("B02", "B03", "B04", "B08")
BANDS_20M = ("B05", "B06", "B07", "B8A", "B11", "B12")
LABEL_NODATA = 255
DN_OFFSET = 1000


@dataclass
class SyntheticScene:
    """Where :func:`make_season` wrote the scene."""

    root: Path
    images: Path
    labels: Path
    fields: Path
    dates: list[dt.date]
    grid: Grid


def double_logistic(t: np.ndarray, sos: float, eos: float, k1: float = 8.0, k2: float = 7.0) -> np.ndarray:
    """Cover in [0, 1]: rises around ``sos`` (day), falls around ``eos``."""
    return 1.0 / (1.0 + np.exp(-(t - sos) / k1)) - 1.0 / (1.0 + np.exp(-(t - eos) / k2))


def _smooth_noise(rng: np.random.Generator, h: int, w: int, scale: int) -> np.ndarray:
    """A smooth random field in [0, 1] (coarse noise upsampled bilinearly)."""
    from scipy.ndimage import zoom

    ch, cw = max(2, h // scale + 2), max(2, w // scale + 2)
    z = zoom(rng.random((ch, cw)), (h / ch * 1.0001, w / cw * 1.0001), order=1)[:h, :w]
    z = (z - z.min()) / max(float(z.max() - z.min()), 1e-6)
    return z


def field_layout(h: int, w: int, field_size: int, rng: np.random.Generator, n_classes: int = 3
                 ) -> tuple[np.ndarray, np.ndarray]:
    """(field IDs [h, w] with 0 on the 1-pixel roads between fields, class of each field id (index = id - 1))."""
    fields = np.zeros((h, w), dtype=np.int32)
    fid = 0
    rows = np.arange(0, h, field_size)
    cols = np.arange(0, w, field_size)
    for r in rows:
        for c in cols:
            fid += 1
            fields[r + 1:min(h, r + field_size), c + 1:min(w, c + field_size)] = fid
    cls = np.arange(fid) % n_classes
    rng.shuffle(cls)
    return fields, cls


def simulate(h: int, w: int, dates: list[dt.date], field_size: int = 16, seed: int = 0, cloud_cover: float = 0.25,
             noise: float = 0.015) -> dict[str, np.ndarray]:
    """Arrays of a season: ``refl`` [T, 12, h, w], ``scl`` [T, h, w], ``labels`` [h, w], ``fields`` [h, w]."""
    rng = np.random.default_rng(seed)
    fields, field_cls = field_layout(h, w, field_size, rng)
    labels = np.where(fields > 0, field_cls[np.maximum(fields - 1, 0)], LABEL_NODATA).astype(np.uint8)
    n_f = int(fields.max())
    day = np.array([(d - dates[0]).days for d in dates], dtype=np.float32)
    season = float(day[-1]) if len(day) > 1 else 100.0
    # per-field phenology parameters
    sos = rng.normal(0.22 * season, 0.03 * season, n_f + 1)
    eos = rng.normal(0.85 * season, 0.03 * season, n_f + 1)
    peak = rng.uniform(0.75, 0.95, n_f + 1)
    onset = rng.uniform(0.40, 0.65, n_f + 1) * season       # yellow rust onset
    rust_max = rng.uniform(0.5, 0.9, n_f + 1)                 # final chlorophyll loss of rust
    n_cover = rng.uniform(0.65, 0.9, n_f + 1)                 # nitrogen deficiency: peak cover factor
    n_chl = rng.uniform(0.45, 0.8, n_f + 1)                   # and chlorophyll level
    f = fields
    sos_p, eos_p, peak_p = sos[f], eos[f], peak[f]
    # yellow rust: patchy spread from foci (distance-driven onset delays)
    spread = _smooth_noise(rng, h, w, max(4, field_size // 3))
    rust_onset = onset[f] + 35.0 * spread
    # background (grass/bare) phenology: weaker, flatter
    bg = fields == 0
    refl = np.empty((len(dates), len(S2_BANDS), h, w), dtype=np.float32)
    scl = np.empty((len(dates), h, w), dtype=np.uint8)
    for t, dday in enumerate(day):
        cover = peak_p * double_logistic(dday, sos_p, eos_p)
        chl = np.ones((h, w), dtype=np.float32)
        nd = labels == 2
        cover = np.where(nd, cover * n_cover[f], cover)
        chl = np.where(nd, n_chl[f], chl)
        yr = labels == 1
        sev = np.clip((dday - rust_onset) / 30.0, 0.0, 1.0) * rust_max[f]
        chl = np.where(yr, 1.0 - sev, chl)
        cover = np.where(yr, cover * (1.0 - 0.3 * sev), cover)
        cover = np.where(bg, 0.35 + 0.1 * np.sin(dday / 40.0), cover)
        leaf = chl[None] * LEAF_GREEN[:, None, None] + (1 - chl[None]) * LEAF_CHLOROTIC[:, None, None]
        r = cover[None] * leaf + (1 - cover[None]) * SOIL[:, None, None]
        r = np.where(bg[None], r + GRASS_DELTA[:, None, None], r)
        r = r * (1.0 + rng.normal(0, 0.03)) + rng.normal(0, noise, r.shape).astype(np.float32)
        s = np.where(cover > 0.3, 4, 5).astype(np.uint8)
        # clouds, shadows and cirrus
        cc = cloud_cover * rng.uniform(0.0, 2.0)
        if cc > 0.02:
            z = _smooth_noise(rng, h, w, max(8, min(h, w) // 4))
            cloud = z > 1.0 - min(cc, 0.95)
            dy, dx = int(rng.integers(3, 8)), int(rng.integers(3, 8))
            shadow = np.zeros_like(cloud)
            shadow[dy:, dx:] = cloud[:-dy, :-dx]
            shadow &= ~cloud
            r = np.where(shadow[None], r * 0.45, r)
            s[shadow] = 3
            bright = 0.35 + 0.25 * z
            r = np.where(cloud[None], bright[None] + 0.02 * np.arange(12)[:, None, None] / 12, r)
            s[cloud] = np.where(z[cloud] > 1.0 - cc / 2, 9, 8)
            if rng.random() < 0.3:
                cirrus = (_smooth_noise(rng, h, w, 16) > 0.8) & ~cloud & ~shadow
                r = np.where(cirrus[None], r + 0.08, r)
                s[cirrus] = 10
        refl[t] = np.clip(r, 0.0, 1.5)
        scl[t] = s
    return {"refl": refl, "scl": scl, "labels": labels, "fields": fields.astype(np.int32),
            "day": day}


def _write(path: Path, arrays: np.ndarray, grid: Grid, dtype: str, nodata, desc: list[str] | None = None,
           tags: dict | None = None, overwrite: bool = True) -> None:
    import rasterio

    with atomic_output(path, overwrite) as tmp:
        with rasterio.open(tmp, "w", **geotiff_profile(grid, arrays.shape[0], dtype, nodata)) as ds:
            ds.write(arrays.astype(dtype))
            for i, s in enumerate(desc or [], 1):
                ds.set_band_description(i, s)
            if tags:
                ds.update_tags(**tags)


def to_dn(refl: np.ndarray) -> np.ndarray:
    """Reflectance -> uint16 DN with the baseline >= 04.00 offset (DN 0 reserved for nodata)."""
    return np.clip(np.round(refl * QUANTIFICATION + DN_OFFSET), 1, 65535).astype(np.uint16)


def make_season(out_dir: str | Path, *, height: int = 128, width: int = 128, n_dates: int = 24, step_days: int = 6,
                start: dt.date = dt.date(2024, 3, 20), field_size: int = 16, seed: int = 0,
                cloud_cover: float = 0.25, epsg: int = 32632, overwrite: bool = False) -> SyntheticScene:
    """Write a synthetic season under ``out_dir``: ``images/S2_<date>_10m.tif`` + ``_20m.tif`` per date,
    ``labels.tif``, ``fields.tif`` and ``scene.json``."""
    from rasterio.crs import CRS
    from rasterio.transform import from_origin

    if height % 2 or width % 2:
        raise ValueError("height and width must be even (the 20 m bands are written at half resolution)")
    out = Path(out_dir)
    dates = [start + dt.timedelta(days=i * step_days) for i in range(n_dates)]
    sim = simulate(height, width, dates, field_size, seed, cloud_cover)
    crs = CRS.from_epsg(epsg)
    x0, y0 = 600000.0, 5300000.0
    g10 = Grid(crs, from_origin(x0, y0, 10.0, 10.0), width, height)
    g20 = Grid(crs, from_origin(x0, y0, 20.0, 20.0), width // 2, height // 2)
    img = out / "images"
    img.mkdir(parents=True, exist_ok=True)
    tags = {"PROCESSING_BASELINE": "05.10", "PRODUCT_TYPE": "S2MSI2A (synthetic)"}
    for t, d in enumerate(dates):
        dn = to_dn(sim["refl"][t])
        a10 = np.stack([dn[_B[b]] for b in BANDS_10M])
        # 20 m: mean of 2 x 2 blocks (SCL: top-left pixel of each block)
        a20 = np.stack([dn[_B[b]].reshape(height // 2, 2, width // 2, 2).mean((1, 3)) for b in BANDS_20M])
        scl20 = sim["scl"][t][::2, ::2]
        stamp = d.strftime("%Y%m%d")
        _write(img / f"S2_{stamp}_10m.tif", a10, g10, "uint16", 0, list(BANDS_10M), tags, overwrite)
        _write(img / f"S2_{stamp}_20m.tif", np.concatenate([np.round(a20), scl20[None]]), g20, "uint16", 0,
               list(BANDS_20M) + ["SCL"], tags, overwrite)
    _write(out / "labels.tif", sim["labels"][None], g10, "uint8", LABEL_NODATA,
           ["class: " + ", ".join(f"{i}={c}" for i, c in enumerate(CLASSES))], {"CLASSES": ",".join(CLASSES)},
           overwrite)
    _write(out / "fields.tif", sim["fields"][None], g10, "int32", 0, ["field id"], None, overwrite)
    (out / "scene.json").write_text(json.dumps({
        "dates": [d.isoformat() for d in dates], "classes": list(CLASSES), "crs": f"EPSG:{epsg}",
        "size": [height, width], "field_size": field_size, "seed": seed, "dn_offset": DN_OFFSET,
        "layout": "images/S2_<YYYYMMDD>_10m.tif (B02 B03 B04 B08) + _20m.tif (B05 B06 B07 B8A B11 B12 SCL)"}, indent=1))
    return SyntheticScene(out, img, out / "labels.tif", out / "fields.tif", dates, g10)
