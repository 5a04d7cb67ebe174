"""remote predict on an AREA: four overlapping tiles in two UTM zones mosaicked onto one grid, against one tile.

The ground is one synthetic L2A season (``remote.synthetic.simulate``: fields with a crop-stress season, clouds,
cirrus and shadows in SCL) on a UTM 32N raster straddling the 32N / 33N border (12 deg E, 47.5 deg N). From it:

* the **single tile**: a ``2 x size`` px square of it in 32N (per-band GeoTIFFs ``T32TQT_<date>_<band>_<res>m.tif``,
  the layout of ``benchmarks/remote_tile.py``), the reference cost per output pixel;
* the **area**: four ``size`` x ``size`` px tiles overlapping by ``size / 10`` px, the western two in 32N (windows of
  the ground), the eastern two in 33N (the ground warped onto 33N grids, nearest), each date of each tile an Earth
  Search v1 STAC item (``s2:processing_baseline`` 05.00, ``earthsearch:boa_offset_applied`` false, ``proj:``
  fields) with per-band GeoTIFF assets.

Contenders, each in a fresh process (its own peak RSS): ``remote predict`` (the CLI's ``main``) on the single tile,
on two tiles (one per zone) and on the four tiles (FFDNN, random weights, the ``--dates`` dates as its grid);
``odc.stac.load`` of the same items onto the same grid (``groupby="solar_day"``, bilinear, SCL nearest).

Figures: ``area_over_single_tile`` = (area seconds per output pixel) / (single-tile seconds per output pixel), target
<= 1.15; ``peak_rss_mb`` of the area run (target <= 1536) and ``rss_ratio_4_over_2_tiles`` (flat: ~1); pixel
agreement of the mosaic that ``remote predict`` reads (:meth:`remote.area.AreaSeries.read`, bands B04 and B08) with
references with the overlap rule applied in NumPy: ``agreement_exact`` against a by-hand one (each pixel centre
transformed exactly by PROJ, bilinear between the four source centres, DN 0 left out and the weights renormalised),
``agreement_gdal`` against GDAL's warper (each tile through a ``WarpedVRT`` onto the grid with an exact transform,
``tolerance=1e-6`` px where GDAL's default approximates it to 0.125 px; bilinear, SCL nearest; there is no
``gdalwarp`` binary here, it runs the same warper; its bilinear kernel across the rotated zone change is not the
point bilinear, so it differs at field edges): fractions of date-pixels whose validity agrees and whose
reflectances are within 1e-3 (``gdal_valid_agreement``, ``gdal_p99_abs_diff`` too); and with
odc-stac on the date-pixels clear in every covering tile (there its first-valid fuser and our nearest-centre rule
take the same ground from different tiles: ``agreement_odc`` within 0.01 reflectance, and the median difference).

    python benchmarks/remote_area.py [--size 2048] [--dates 6] [--quick] [--work-dir DIR]

``--quick`` = ``--size 256 --dates 3``. The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np

SEASON = dt.date(2024, 4, 1)
STEP = 12
BASE = 366
BANDS_RES = {"B01": 60, "B02": 10, "B03": 10, "B04": 10, "B05": 20, "B06": 20, "B07": 20, "B08": 10, "B8A": 20,
             "B09": 60, "B11": 20, "B12": 20, "SCL": 20}
S2_ORDER = ("B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B09", "B11", "B12")
V1_KEYS = {"B01": "coastal", "B02": "blue", "B03": "green", "B04": "red", "B05": "rededge1", "B06": "rededge2",
           "B07": "rededge3", "B08": "nir", "B8A": "nir08", "B09": "nir09", "B11": "swir16", "B12": "swir22",
           "SCL": "scl"}
LON, LAT = 12.0, 47.5
SCL_INVALID = (0, 1, 3, 8, 9, 10)
COMPARE = ("B04", "B08")


def _dates(n: int) -> list[dt.date]:
    return [SEASON + dt.timedelta(days=i * STEP) for i in range(n)]


def _profile(crs, transform, n: int, band: str) -> dict:
    return {"driver": "GTiff", "width": n, "height": n, "count": 1, "dtype": "uint8" if band == "SCL" else "uint16",
            "crs": crs, "transform": transform, "nodata": 0, "tiled": True, "blockxsize": 256, "blockysize": 256,
            "compress": "DEFLATE", "zlevel": 1, "predictor": 2}


def write_inputs(root: Path, size: int, n_dates: int, quiet: bool = False) -> dict:
    """The ground, the single tile and the four area tiles with their STAC items (cached under ``root``)."""
    import rasterio
    from rasterio.crs import CRS
    from rasterio.enums import Resampling
    from rasterio.transform import from_origin
    from rasterio.warp import reproject, transform

    from remote.synthetic import simulate, to_dn

    folder = root / f"area_{size}px_{n_dates}dates"
    marker = folder / "done.json"
    if marker.exists():
        return json.loads(marker.read_text())
    folder.mkdir(parents=True, exist_ok=True)
    z32, z33 = CRS.from_epsg(32632), CRS.from_epsg(32633)
    ov = size // 10
    step = size - ov
    margin = size // 4
    side = 2 * size + 2 * margin                                   # the ground raster (10 m px)
    xs, ys = transform("EPSG:4326", z32, [LON], [LAT])
    gx0 = round(xs[0] / 60) * 60 - (margin + size) * 10            # the border near the middle of the ground
    gy0 = round(ys[0] / 60) * 60 + (margin + size) * 10
    dates = _dates(n_dates)
    sim = simulate(BASE, BASE, dates, field_size=12, seed=0, cloud_cover=0.2)
    dn = np.stack([to_dn(sim["refl"][t]) for t in range(n_dates)])
    scl = sim["scl"].astype(np.uint8)

    def ground(t: int, band: str) -> np.ndarray:
        f = BANDS_RES[band] // 10
        src = scl[t] if band == "SCL" else dn[t, S2_ORDER.index(band)]
        blk = src[::f, ::f]
        row = np.concatenate([blk, blk[:, ::-1]] * 8, axis=1)
        big = np.concatenate([row, row[::-1]] * 8, axis=0)
        n = -(-side // f)
        reps = -(-n // big.shape[0])
        return np.tile(big, (reps, reps))[:n, :n]

    tiles = {"single": ("T32TQT", z32, (margin, margin), 2 * size)}
    for i, r in enumerate((0, step)):
        tiles[f"w{i}"] = (f"T32TQT{i}", z32, (margin + r, margin), size)
    for i, r in enumerate((0, step)):   # the eastern tiles: 33N grids centred where the 32N windows would be
        cx = gx0 + (margin + step + size / 2) * 10
        cy = gy0 - (margin + r + size / 2) * 10
        ex, ey = transform(z32, z33, [cx], [cy])
        tiles[f"e{i}"] = (f"T33TUN{i}", z33, (round(ex[0] / 10) * 10 - size * 5, round(ey[0] / 10) * 10 + size * 5),
                          size)
    t0 = time.perf_counter()
    items: dict[str, list[str]] = {k: [] for k in tiles if k != "single"}
    for t, d in enumerate(dates):
        stamp = f"{d:%Y%m%d}T103021"
        for band, res in BANDS_RES.items():
            f = res // 10
            g = ground(t, band)
            gt = from_origin(gx0, gy0, res, res)
            for key, (tid, crs, where, n10) in tiles.items():
                n = -(-n10 // f)
                sub = folder / key / stamp
                sub.mkdir(parents=True, exist_ok=True)
                if crs == z32:
                    r0, c0 = where[0] // f, where[1] // f
                    data = g[r0:r0 + n, c0:c0 + n]
                    tr = from_origin(gx0 + c0 * res, gy0 - r0 * res, res, res)
                else:
                    data = np.zeros((n, n), g.dtype)
                    tr = from_origin(where[0], where[1], res, res)
                    reproject(g, data, src_transform=gt, src_crs=z32, src_nodata=0, dst_transform=tr, dst_crs=crs,
                              dst_nodata=0, resampling=Resampling.nearest)
                name = f"{tid[:6]}_{stamp}_{band}_{res}m.tif" if key == "single" else f"{band}.tif"
                with rasterio.open(sub / name, "w", **_profile(crs, tr, n, band)) as ds:
                    ds.write(data, 1)
                    if key == "single":
                        ds.update_tags(PROCESSING_BASELINE="05.00")
        for key, (tid, crs, _where, n10) in tiles.items():
            if key != "single":
                items[key].append(str(_item(folder / key / stamp, tid, d, crs, n10)))
        if not quiet:
            print(f"   wrote date {t + 1}/{n_dates} ({time.perf_counter() - t0:.0f} s)", flush=True)
    info = {"single": str(folder / "single"), "items": items, "size": size, "dates": n_dates}
    marker.write_text(json.dumps(info))
    return info


def _item(sub: Path, tid: str, d: dt.date, crs, n10: int) -> Path:
    """An Earth Search v1 item for the band files in ``sub`` (with the proj: fields odc-stac needs)."""
    import rasterio
    from rasterio.warp import transform_bounds

    assets = {}
    bbox = None
    for band, res in BANDS_RES.items():
        path = sub / f"{band}.tif"
        with rasterio.open(path) as ds:
            a = {"href": str(path), "type": "image/tiff; application=geotiff", "proj:epsg": crs.to_epsg(),
                 "proj:shape": [ds.height, ds.width], "proj:transform": list(ds.transform)[:6]}
            if band != "SCL":
                a["raster:bands"] = [{"nodata": 0, "data_type": "uint16", "scale": 0.0001, "offset": -0.1,
                                      "spatial_resolution": res}]
            assets[V1_KEYS[band]] = a
            if bbox is None:
                bbox = transform_bounds(crs, "EPSG:4326", *ds.bounds)
    w, s, e, n = bbox
    doc = {"type": "Feature", "stac_version": "1.0.0", "id": f"S2B_{tid[1:6]}_{d:%Y%m%d}_0_L2A",
           "stac_extensions": ["https://stac-extensions.github.io/raster/v1.1.0/schema.json",
                               "https://stac-extensions.github.io/projection/v1.1.0/schema.json"],
           "geometry": {"type": "Polygon", "coordinates": [[[w, s], [e, s], [e, n], [w, n], [w, s]]]},
           "bbox": [w, s, e, n], "collection": "sentinel-2-l2a",
           "properties": {"datetime": f"{d.isoformat()}T10:30:21Z", "proj:epsg": crs.to_epsg(),
                          "s2:processing_baseline": "05.00", "earthsearch:boa_offset_applied": False},
           "links": [], "assets": assets}
    out = sub.parent / f"{doc['id']}.json"
    out.write_text(json.dumps(doc))
    return out


def model_file(path: Path, n_dates: int) -> Path:
    import torch

    from remote.naming import DEFAULT_BANDS
    from shared_backbones.checkpoint import ModelFile, save_model_file
    from shared_backbones.registry import create_model

    torch.manual_seed(0)
    m = create_model("ffdnn").eval()
    return save_model_file(path, ModelFile.from_model(
        m, task="remote", arch="ffdnn", arch_kwargs={}, classes=["healthy", "yellow_rust", "nitrogen_deficiency"],
        preprocessing={"bands": list(DEFAULT_BANDS), "dates": [d.isoformat() for d in _dates(n_dates)],
                       "scl_invalid": list(SCL_INVALID)}))


def predict_run(inputs: list[str], model: str, out: str) -> dict:
    """``remote predict INPUTS -m MODEL -o OUT`` in this process: seconds and the output grid's pixels."""
    import rasterio

    from remote.cli import main

    t0 = time.perf_counter()
    rc = main(["predict", *inputs, "-m", model, "-o", out, "-q", "--overwrite", "--no-prob", "--device", "cpu"])
    sec = time.perf_counter() - t0
    if rc != 0:
        raise RuntimeError(f"remote predict exited {rc}")
    with rasterio.open(out) as ds:
        return {"seconds": sec, "pixels": ds.width * ds.height, "width": ds.width, "height": ds.height}


def odc_run(items: list[str], grid_json: str) -> dict:
    """``odc.stac.load`` of the items onto the grid (groupby solar_day): seconds (bands B04, B08 and SCL)."""
    import pystac
    from odc.geo.geobox import GeoBox
    from odc.stac import load

    g = json.loads(grid_json)
    from affine import Affine

    gbox = GeoBox((g["height"], g["width"]), Affine(*g["transform"]), g["crs"])
    t0 = time.perf_counter()
    ds = load([pystac.Item.from_file(p) for p in items], bands=["red", "nir", "scl"], geobox=gbox,
              groupby="solar_day", resampling={"*": "bilinear", "scl": "nearest"})
    return {"seconds": time.perf_counter() - t0, "dates": int(ds.sizes["time"])}


def _row_block(g, n_parts: int, k: int):
    """Window ``k`` of ``n_parts`` nearly equal row blocks of the grid ``g`` and that block as a grid of its own."""
    from rasterio.windows import Window
    from rasterio.windows import transform as window_transform

    from remote.resample import Grid

    r0, r1 = g.height * k // n_parts, g.height * (k + 1) // n_parts
    win = Window(0, r0, g.width, r1 - r0)
    return win, Grid(g.crs, window_transform(win, g.transform), g.width, r1 - r0)


def _covers(path: str, grid) -> bool:
    """Whether the raster at ``path`` overlaps the grid's extent (its bounds taken into the grid's CRS)."""
    import rasterio
    from rasterio.warp import transform_bounds

    with rasterio.open(path) as src:
        w, s, e, n = transform_bounds(src.crs, grid.crs, *src.bounds)
    gw, gn = grid.transform * (0, 0)
    ge, gs = grid.transform * (grid.width, grid.height)
    return w < ge and e > gw and s < gn and n > gs


def _exact_bilinear(path: str, gx: np.ndarray, gy: np.ndarray, grid_crs, cache: dict) -> np.ndarray:
    """By-hand reference: each output pixel centre transformed exactly (PROJ, per pixel), then bilinear between the
    four source pixel centres around it, DN 0 neighbours left out and the weights renormalised (NaN where none is
    left or the point is off the raster): what GDAL's bilinear means, without its per-chunk kernel."""
    import rasterio
    from rasterio.warp import transform

    with rasterio.open(path) as src:
        a = src.read(1).astype(np.float64)
        key = (str(src.crs), tuple(src.transform)[:6], gx.shape)
        if key not in cache:
            sx, sy = transform(grid_crs, src.crs, gx.ravel().tolist(), gy.ravel().tolist())
            col, row = ~src.transform * (np.asarray(sx), np.asarray(sy))
            cache[key] = (col.reshape(gx.shape) - 0.5, row.reshape(gx.shape) - 0.5)
    c, r = cache[key]
    c0, r0 = np.floor(c).astype(np.int64), np.floor(r).astype(np.int64)
    fc, fr = c - c0, r - r0
    num = np.zeros(gx.shape)
    den = np.zeros(gx.shape)
    inside = (c >= -0.5) & (c < a.shape[1] - 0.5) & (r >= -0.5) & (r < a.shape[0] - 0.5)
    for dr, dc, wgt in ((0, 0, (1 - fr) * (1 - fc)), (0, 1, (1 - fr) * fc), (1, 0, fr * (1 - fc)), (1, 1, fr * fc)):
        rr, cc = r0 + dr, c0 + dc
        ok = inside & (rr >= 0) & (rr < a.shape[0]) & (cc >= 0) & (cc < a.shape[1])
        v = np.where(ok, a[np.clip(rr, 0, a.shape[0] - 1), np.clip(cc, 0, a.shape[1] - 1)], 0.0)
        ok &= v != 0
        num += np.where(ok, v * wgt, 0.0)
        den += np.where(ok, wgt, 0.0)
    return np.where(den > 0, num / np.where(den > 0, den, 1), np.nan).astype(np.float32)


def compare(items: list[str], rows: int = 512) -> dict:
    """Our mosaic (what remote predict reads) against the GDAL reference and odc-stac, row block by row block."""
    import pystac
    import rasterio
    from odc.geo.geobox import GeoBox
    from odc.stac import load
    from rasterio.enums import Resampling
    from rasterio.vrt import WarpedVRT

    from remote.discovery import open_series

    series = open_series(items)
    g = series.grid
    prods = list(zip(series.keys, series.sources, series.centres))
    n_parts = max(1, -(-g.height // rows))
    ok_gdal = tot_gdal = ok_odc = tot_odc = ok_valid = 0
    diffs, gdiffs = [], []
    ok_exact = tot_exact = 0
    stac_items = [pystac.Item.from_file(p) for p in items]
    with series:
        for k in range(n_parts):
            win, sub = _row_block(g, n_parts, k)
            ours = series.read(win, COMPARE, SCL_INVALID)                       # [T, 2, h, w]
            h, w = sub.height, sub.width
            ref = np.full(ours.shape, np.nan, np.float32)
            exact = np.full(ours.shape, np.nan, np.float32)
            coords: dict = {}
            clear_all = np.ones((len(series.dates), h, w), bool)
            rr, cc = np.mgrid[0:h, 0:w] + 0.5
            gx, gy = sub.transform * (cc, rr)
            for t, d in enumerate(series.dates):
                best = np.full((h, w), np.inf)
                best_exact = np.full((h, w), np.inf)
                for _key, src_ds, (cx, cy) in prods:
                    if src_ds.date != d or not _covers(src_ds.bands["SCL"].path, sub):
                        continue                                 # (GDAL cannot build a VRT off the tile)
                    stack = np.empty((len(COMPARE), h, w), np.float32)
                    hand = np.empty((len(COMPARE), h, w), np.float32)
                    for b, band in enumerate(COMPARE):
                        ref_b = src_ds.bands[band]
                        hand[b] = (_exact_bilinear(str(ref_b.path), gx, gy, sub.crs, coords) + ref_b.offset) \
                            / ref_b.quantification
                        # GDAL's warper, exact transform (tolerance 1e-6 px; 0 fails in rasterio), bilinear, DN 0
                        # left out of the kernel; the VRT keeps the integer type: DN rounded (5e-5 reflectance)
                        with rasterio.open(ref_b.path) as src, WarpedVRT(
                                src, crs=sub.crs, transform=sub.transform, width=w, height=h, src_nodata=0, nodata=0,
                                resampling=Resampling.bilinear, tolerance=1e-6) as vrt:
                            dst = vrt.read(1).astype(np.float32)
                        dst[dst == 0] = np.nan
                        stack[b] = (dst + ref_b.offset) / ref_b.quantification
                    with rasterio.open(src_ds.bands["SCL"].path) as src, WarpedVRT(
                            src, crs=sub.crs, transform=sub.transform, width=w, height=h, src_nodata=0, nodata=0,
                            resampling=Resampling.nearest, tolerance=1e-6) as vrt:
                        scl = vrt.read(1)
                    covered = scl != 0
                    clear = np.isfinite(stack).all(0) & ~np.isin(scl, SCL_INVALID)
                    clear_all[t] &= clear | ~covered
                    dist = (gx - cx) ** 2 + (gy - cy) ** 2
                    take = clear & (dist < best)
                    clear_h = np.isfinite(hand).all(0) & ~np.isin(scl, SCL_INVALID)
                    take_h = clear_h & (dist < best_exact)
                    exact[t][:, take_h] = hand[:, take_h]
                    best_exact[take_h] = dist[take_h]
                    ref[t][:, take] = stack[:, take]
                    best[take] = dist[take]
            same_valid = np.isnan(ours).any(1) == np.isnan(ref).any(1)
            close = same_valid & (np.isnan(ref).any(1) | (np.abs(ours - ref).max(1) <= 1e-3))
            same_e = np.isnan(ours).any(1) == np.isnan(exact).any(1)
            close_e = same_e & (np.isnan(exact).any(1) | (np.abs(ours - exact).max(1) <= 1e-3))
            ok_exact += int(close_e.sum())
            tot_exact += close_e.size
            ok_gdal += int(close.sum())
            tot_gdal += close.size
            ok_valid += int(same_valid.sum())
            both_valid = ~np.isnan(ours).any(1) & ~np.isnan(ref).any(1)
            gd = np.abs(ours - ref).max(1)[both_valid]
            gdiffs.append(gd[:: max(1, gd.size // 20000)])
            gbox = GeoBox((h, w), sub.transform, sub.crs)
            ds = load(stac_items, bands=["red", "nir"], geobox=gbox, groupby="solar_day",
                      resampling={"*": "bilinear"})
            odc = np.stack([ds["red"].values, ds["nir"].values], axis=1).astype(np.float32)   # [T, 2, h, w] DN
            odc = np.where(odc == 0, np.nan, (odc - 1000.0) / 10000.0)
            both = clear_all & ~np.isnan(ours).any(1) & ~np.isnan(odc).any(1)
            dd = np.abs(ours - odc).max(1)[both]
            ok_odc += int((dd <= 0.01).sum())
            tot_odc += int(both.sum())
            diffs.append(dd[:: max(1, dd.size // 20000)])
    dd = np.concatenate(diffs) if diffs else np.zeros(0)
    gd = np.concatenate(gdiffs) if gdiffs else np.zeros(0)
    return {"agreement_exact": ok_exact / max(1, tot_exact), "agreement_gdal": ok_gdal / max(1, tot_gdal),
            "agreement_odc": ok_odc / max(1, tot_odc),
            "gdal_valid_agreement": ok_valid / max(1, tot_gdal),
            "gdal_p99_abs_diff": float(np.percentile(gd, 99)) if gd.size else None,
            "odc_median_abs_diff": float(np.median(dd)) if dd.size else None, "odc_pixels": tot_odc,
            "grid": {"crs": g.crs.to_string(), "transform": list(g.transform)[:6], "width": g.width,
                     "height": g.height}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, default=2048, help="side of each area tile in 10 m px (single tile: 2x)")
    ap.add_argument("--dates", type=int, default=6, help="acquisition dates (= the model's grid dates)")
    ap.add_argument("--quick", action="store_true", help="--size 256 --dates 3: checks that everything runs")
    ap.add_argument("--work-dir", type=Path, default=None, help="folder caching the inputs [a temporary folder]")
    args = ap.parse_args()
    if args.quick:
        args.size, args.dates = 256, 3
    from shared_backbones.memory import run_isolated

    out: dict = {"size": args.size, "dates": args.dates, "cpus": len(os.sched_getaffinity(0)),
                 "load_average_start": round(os.getloadavg()[0], 2)}
    with tempfile.TemporaryDirectory() as tmp:
        work = args.work_dir or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        print(f"== inputs: 4 tiles of {args.size} px (2 in 32N, 2 in 33N) and one of {2 * args.size} px, "
              f"{args.dates} dates")
        info = write_inputs(work, args.size, args.dates)
        model = str(model_file(Path(tmp) / "ffdnn.pt", args.dates))
        items = info["items"]
        runs = {}
        for name, inputs in (("single", [info["single"]]), ("area2", items["w0"] + items["e0"]),
                             ("area4", [p for k in ("w0", "w1", "e0", "e1") for p in items[k]])):
            r, rss = run_isolated(predict_run, inputs, model, str(Path(tmp) / f"{name}.tif"))
            r["peak_rss_mb"] = round(rss / 2**20)
            r["us_per_px"] = r["seconds"] / r["pixels"] * 1e6
            runs[name] = r
        area4 = [p for k in ("w0", "w1", "e0", "e1") for p in items[k]]
        cmp, _ = run_isolated(compare, area4)
        odc, odc_rss = run_isolated(odc_run, area4, json.dumps(cmp["grid"]))
    print(f"{'run':<8} {'grid px':>14} {'seconds':>9} {'us/px':>8} {'peak RSS MB':>12}")
    for name, r in runs.items():
        print(f"{name:<8} {r['width']:>6} x {r['height']:<6} {r['seconds']:>9.1f} {r['us_per_px']:>8.2f} "
              f"{r['peak_rss_mb']:>12}")
    print(f"{'odc-stac':<8} {'(load B04 B08 SCL)':>14} {odc['seconds']:>9.1f} {'':>8} {round(odc_rss / 2**20):>12}")
    print(f"agreement with the exact by-hand reference {cmp['agreement_exact']:.4f}; with the GDAL-warp reference "
          f"{cmp['agreement_gdal']:.4f} (validity "
          f"{cmp['gdal_valid_agreement']:.4f}, p99 |diff| {cmp['gdal_p99_abs_diff']:.2g}); with odc-stac on pixels "
          f"clear in every covering tile {cmp['agreement_odc']:.4f} "
          f"(median |diff| {cmp['odc_median_abs_diff']:.2g})")
    out.update(area_over_single_tile=round(runs["area4"]["us_per_px"] / runs["single"]["us_per_px"], 3),
               peak_rss_mb=runs["area4"]["peak_rss_mb"],
               rss_ratio_4_over_2_tiles=round(runs["area4"]["peak_rss_mb"] / runs["area2"]["peak_rss_mb"], 3),
               agreement_exact=round(cmp["agreement_exact"], 5), agreement_gdal=round(cmp["agreement_gdal"], 5),
               agreement_odc=round(cmp["agreement_odc"], 5),
               gdal_valid_agreement=round(cmp["gdal_valid_agreement"], 5), gdal_p99_abs_diff=cmp["gdal_p99_abs_diff"],
               odc_median_abs_diff=cmp["odc_median_abs_diff"], odc_pixels_compared=cmp["odc_pixels"],
               odc_seconds=round(odc["seconds"], 2), odc_peak_rss_mb=round(odc_rss / 2**20),
               runs={k: {kk: (round(v, 3) if isinstance(v, float) else v) for kk, v in r.items()}
                     for k, r in runs.items()},
               load_average_end=round(os.getloadavg()[0], 2))
    print(json.dumps(out))


if __name__ == "__main__":
    main()
