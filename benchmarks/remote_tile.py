"""remote predict on a whole Sentinel-2 tile: speed, peak RAM and how well I/O overlaps the network.

A synthetic L2A tile of the real extent (10980 x 10980 px at 10 m, T32UQD, EPSG:32632) for ``--dates`` dates (default
6) in the per-band layout of an L2A product: one GeoTIFF per band and date (``T32UQD_<date>T103021_<band>_<res>m.tif``),
the 10 m bands at 10980^2, the 20 m bands and SCL at 5490^2, the 60 m bands at 1830^2; uint16 DN with the baseline
>= 04.00 offset, fields with a crop-stress season, clouds, cirrus and shadows in SCL, and a swath edge (DN 0 = no
data) on every other date. Written once, tiled and ZSTD-compressed (fast to write and read), and cached under
``--work-dir`` (default: a temporary folder) so reruns skip it.

Then ``remote predict`` with an FFDNN model file (random weights, 6-date grid), end to end through the library
function the CLI calls (:func:`remote.predict.predict_series`: read, resample the 20 m bands, SCL masking, gap
filling, network, class + probability GeoTIFFs), in a fresh child process so its peak RSS is measured, with the
default thread settings (:func:`remote.predict.default_threads`). In the same run the network alone
(``RemoteModel.pixel_probabilities`` on prepared [N, dates, 10] inputs, same threads and batch) gives
``model_only_pixels_per_s``, and the same-depth 1-D CNN's rate gives the FFDNN / CNN throughput ratio (median of
7 interleaved rounds, with its min and max).

The run also reports the CPU seconds of each pipeline stage (network thread, reader thread, writer thread): on a
loaded machine the wall time says little, the CPU split says whether I/O would hide behind the network.

Targets on a 2-core CPU: ``peak_rss_mb`` <= 2048, ``pixels_per_s`` >= 0.8 x ``model_only_pixels_per_s`` (I/O
overlapped with the network), a full tile in <= 15 minutes (``tile_minutes``; >= 134k px/s), and with
``--size 2048 10980`` the peak RSS ratio ``ram_ratio_full_vs_2048`` <= 1.2. ``--size 2048`` alone is the quick run
(about a minute); ``tile_minutes`` is then projected from its rate. The last line is one JSON object.

    python benchmarks/remote_tile.py [--size 2048 10980] [--dates 6] [--work-dir DIR] [--threads N]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

FULL = 10980
SEASON = dt.date(2024, 4, 1)
STEP = 12
BASE = 366                     # simulated block at 10 m: 366 = 6 x 61, so 20 m and 60 m blocks are exact
BANDS_RES = {"B01": 60, "B02": 10, "B03": 10, "B04": 10, "B05": 20, "B06": 20, "B07": 20, "B08": 10, "B8A": 20,
             "B09": 60, "B11": 20, "B12": 20, "SCL": 20}
S2_ORDER = ("B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B09", "B11", "B12")


def _dates(n: int) -> list[dt.date]:
    return [SEASON + dt.timedelta(days=i * STEP) for i in range(n)]


def _compression() -> dict:
    """ZSTD level 1 when this GDAL build has it (fast both ways), else DEFLATE level 1."""
    import rasterio
    from rasterio.transform import from_origin

    with tempfile.TemporaryDirectory() as tmp:
        try:
            with rasterio.open(Path(tmp) / "z.tif", "w", driver="GTiff", width=16, height=16, count=1,
                               dtype="uint16", transform=from_origin(0, 16, 1, 1), compress="ZSTD") as ds:
                ds.write(np.ones((1, 16, 16), np.uint16))
            return {"compress": "ZSTD", "zstd_level": 1}
        except Exception:
            return {"compress": "DEFLATE", "zlevel": 1}


def write_tile(root: Path, size: int, n_dates: int, quiet: bool = False) -> Path:
    """The per-band tile of ``size`` x ``size`` px at 10 m (cached: a ``done.json`` marks a complete folder)."""
    import rasterio
    from rasterio.crs import CRS
    from rasterio.transform import from_origin
    from rasterio.windows import Window

    from remote.synthetic import simulate, to_dn

    folder = root / f"T32UQD_{size}px_{n_dates}dates"
    marker = folder / "done.json"
    if marker.exists():
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    dates = _dates(n_dates)
    t0 = time.perf_counter()
    sim = simulate(BASE, BASE, dates, field_size=12, seed=0, cloud_cover=0.2)
    dn = np.stack([to_dn(sim["refl"][t]) for t in range(n_dates)])                  # [T, 12, B, B]
    scl = sim["scl"].astype(np.uint8)                                                  # [T, B, B]
    # a 3 x 3 mosaic of mirrored copies (seamless) = one 1098 px block; blocks repeat over the tile
    def mosaic(a: np.ndarray) -> np.ndarray:
        row = np.concatenate([a, a[..., ::-1], a], axis=-1)
        return np.concatenate([row, row[..., ::-1, :], row], axis=-2)

    block10 = 3 * BASE
    comp = _compression()
    crs = CRS.from_epsg(32632)
    x0, y0 = 600000.0, 5300040.0
    for t, d in enumerate(dates):
        stamp = f"{d:%Y%m%d}T103021"
        for band, res in BANDS_RES.items():
            f = res // 10
            n = -(-size // f)
            blk = block10 // f
            src = scl[t] if band == "SCL" else dn[t, S2_ORDER.index(band)]
            tile_blk = mosaic(src[::f, ::f])                                            # [blk, blk]
            prof = {"driver": "GTiff", "width": n, "height": n, "count": 1, "dtype": "uint8" if band == "SCL"
                    else "uint16", "crs": crs, "transform": from_origin(x0, y0, res, res), "nodata": 0,
                    "tiled": True, "blockxsize": 512, "blockysize": 512, "BIGTIFF": "IF_SAFER",
                    "NUM_THREADS": "ALL_CPUS", "predictor": 2, **comp}
            path = folder / f"T32UQD_{stamp}_{band}_{res}m.tif"
            with rasterio.open(path, "w", **prof) as ds:
                ds.set_band_description(1, band)
                for r in range(0, n, blk):
                    for c in range(0, n, blk):
                        h, w = min(blk, n - r), min(blk, n - c)
                        a = tile_blk[:h, :w]
                        if t % 2 == 1:    # swath edge: no data beyond a diagonal on every other date
                            rr, cc = np.ogrid[r:r + h, c:c + w]
                            a = np.where(rr + cc > int(1.6 * n), 0, a).astype(a.dtype)
                        ds.write(a, 1, window=Window(c, r, w, h))
        if not quiet:
            print(f"   wrote date {t + 1}/{n_dates} ({time.perf_counter() - t0:.0f} s)", flush=True)
    marker.write_text(json.dumps({"size": size, "dates": n_dates, "seconds": time.perf_counter() - t0}))
    return folder


def model_file(path: Path, arch: str, n_dates: int) -> Path:
    from remote.naming import DEFAULT_BANDS
    from shared_backbones.checkpoint import ModelFile, save_model_file
    from shared_backbones.registry import create_model

    torch.manual_seed(0)
    m = create_model(arch).eval()
    dates = [d.isoformat() for d in _dates(n_dates)]
    return save_model_file(path, ModelFile.from_model(m, task="remote", arch=arch, arch_kwargs={},
                                                      classes=["healthy", "yellow_rust", "nitrogen_deficiency"],
                                                      preprocessing={"bands": list(DEFAULT_BANDS), "dates": dates}))


def predict_once(images: str, model: str, out: str, threads: int | None) -> dict:
    """The library call ``remote predict`` makes (for ``run_isolated``): seconds, pixels, summary."""
    from remote.discovery import open_series
    from remote.predict import PredictOutputs, RemoteModel, predict_series
    from shared_backbones.memory import peak_rss_bytes

    rm = RemoteModel.from_file(model, "cpu", "fp32")
    series = open_series([images])
    base = peak_rss_bytes()
    t0 = time.perf_counter()
    s = predict_series(series, rm, PredictOutputs.beside(out), quiet=True, overwrite=True, threads=threads)
    return {"seconds": time.perf_counter() - t0, "pixels": s["pixels"], "valid": s["valid_pixels"],
            "threads": s["threads"], "baseline_rss": base, "stages": s["seconds"]}


def model_only(model: str, arch_file_cnn: str, n_dates: int, threads: int | None, n: int = 65536,
               repeats: int = 7) -> dict:
    """Pixels/s of the network alone (FFDNN and the same-depth CNN), same threads and batch as the pipeline, from the
    median of interleaved repeats (CPU time with one thread: other processes on a shared machine do not count), and
    the min / median / max over rounds of the FFDNN / CNN throughput ratio."""
    from remote.predict import RemoteModel, default_threads, torch_threads
    from shared_backbones.timing import ratio_spread, time_interleaved_runs

    rms = {"ffdnn": RemoteModel.from_file(model, "cpu", "fp32"), "cnn1d": RemoteModel.from_file(arch_file_cnn,
                                                                                                 "cpu", "fp32")}
    rng = np.random.default_rng(0)
    x = (rng.random((n, n_dates, 10), dtype=np.float32) * 0.4 + 0.02).astype(np.float32)
    threads = default_threads() if threads is None else threads
    with torch_threads(threads):
        times = time_interleaved_runs({a: (lambda rm=rm: rm.pixel_probabilities(x)) for a, rm in rms.items()},
                                      repeats, time.process_time if threads == 1 else time.perf_counter)
    out = {a: n / statistics.median(t) for a, t in times.items()}
    out["ratio"] = ratio_spread(times["cnn1d"], times["ffdnn"])       # time ratio cnn / ffdnn = throughput ratio
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, nargs="+", default=[FULL],
                    help="tile side(s) in 10 m pixels; several sizes (e.g. 2048 10980) also give the RAM ratio")
    ap.add_argument("--dates", type=int, default=6, help="acquisition dates (= the model's grid dates)")
    ap.add_argument("--work-dir", type=Path, default=None,
                    help="folder caching the generated tiles (default: a temporary folder, removed at the end)")
    ap.add_argument("--threads", type=int, default=None,
                    help="torch threads (default: remote.predict.default_threads(), as the CLI)")
    args = ap.parse_args()
    from remote.predict import default_threads
    from shared_backbones.memory import run_isolated

    threads = args.threads or default_threads()
    out: dict = {"dates": args.dates, "threads": threads, "cpus": len(os.sched_getaffinity(0)),
                 "load_average_start": round(os.getloadavg()[0], 2)}
    with tempfile.TemporaryDirectory() as tmp:
        work = args.work_dir or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        mf = model_file(Path(tmp) / "ffdnn.pt", "ffdnn", args.dates)
        mc = model_file(Path(tmp) / "cnn1d.pt", "cnn1d", args.dates)
        print(f"== network alone: [65536, {args.dates} dates, 10 bands], batch 8192, {threads} torch thread(s)")
        mo = model_only(str(mf), str(mc), args.dates, threads)
        sp = mo["ratio"]
        print(f"   ffdnn {mo['ffdnn']:,.0f} px/s, cnn1d {mo['cnn1d']:,.0f} px/s (medians); ffdnn / cnn1d per round: "
              f"median {sp['median']:.2f} (min {sp['min']:.2f}, max {sp['max']:.2f})")
        out.update(model_only_pixels_per_s=round(mo["ffdnn"]), model_only_pixels_per_s_cnn1d=round(mo["cnn1d"]),
                   throughput_ratio_ffdnn_over_cnn=round(sp["median"], 3),
                   throughput_ratio_spread={k: round(v, 3) for k, v in sp.items()})
        runs = {}
        for size in sorted(set(args.size)):
            print(f"== tile {size} x {size} px (10 m), {args.dates} dates, per-band files")
            t0 = time.perf_counter()
            img = write_tile(work, size, args.dates)
            print(f"   inputs ready in {time.perf_counter() - t0:.0f} s ({img})")
            r, rss = run_isolated(predict_once, str(img), str(mf), str(Path(tmp) / f"map_{size}.tif"), args.threads)
            pps = r["pixels"] / r["seconds"]
            st = r["stages"]
            runs[size] = {"seconds": round(r["seconds"], 1), "pixels_per_s": round(pps),
                          "peak_rss_mb": round(rss / 2**20), "valid_fraction": round(r["valid"] / r["pixels"], 3),
                          "cpu_seconds": {k: st[k] for k in ("network", "read", "write")},
                          # the rate with two free cores: the slower of the network thread and reader + writer
                          "cpu_bound_pixels_per_s": round(r["pixels"] / max(st["network"], st["read"] + st["write"]))}
            print(f"   predicted {r['pixels']:,} px in {r['seconds']:.0f} s = {pps:,.0f} px/s "
                  f"({pps / mo['ffdnn']:.2f} x the network alone); peak RSS {rss / 2**20:.0f} MB")
            print(f"   CPU seconds: network thread {st['network']:.0f}, reader {st['read']:.0f}, writer "
                  f"{st['write']:.0f} (wall {st['wall']:.0f}): the reader and writer overlap the network when "
                  "their sum stays below the network's and a core is free for them")
            for f in Path(tmp).glob(f"map_{size}*"):
                f.unlink()
        big = max(runs)
        pps = runs[big]["pixels_per_s"]
        out.update(size=big, seconds=runs[big]["seconds"], pixels_per_s=pps, peak_rss_mb=runs[big]["peak_rss_mb"],
                   tile_minutes=round(FULL * FULL / pps / 60, 2), tile_minutes_projected=big != FULL,
                   overlap_ratio=round(pps / mo["ffdnn"], 3), runs={str(k): v for k, v in runs.items()},
                   cpu_bound_pixels_per_s=runs[big]["cpu_bound_pixels_per_s"],
                   tile_minutes_cpu_bound=round(FULL * FULL / runs[big]["cpu_bound_pixels_per_s"] / 60, 2))
        if 2048 in runs and big != 2048:
            out["ram_ratio_full_vs_2048"] = round(runs[big]["peak_rss_mb"] / runs[2048]["peak_rss_mb"], 3)
        out["load_average_end"] = round(os.getloadavg()[0], 2)
        print(f"   full tile at this rate: {out['tile_minutes']:.1f} min (target <= 15); peak RSS "
              f"{out['peak_rss_mb']} MB (target <= 2048); end-to-end / network = {out['overlap_ratio']:.2f} "
              "(target >= 0.8)")
    print(json.dumps(out))


if __name__ == "__main__":
    main()
