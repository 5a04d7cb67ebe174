"""remote inputs as delivered: reading an ESA L2A product inside its .SAFE.zip vs the unpacked .SAFE folder, the
reader vs plain GDAL reads of the same JPEG2000 files, and the NDVI error that reading sen2cor's 60 m copies (the
former last-file-wins defect) would cause.

1. ``zip_over_folder``: wall time of ``open_series`` + reading 10 bands + SCL over the whole 10 m grid in 256 px
   tiles, from the ``.SAFE.zip`` (GDAL ``/vsizip/``, nothing unpacked) over the same from the unpacked folder.
2. ``reader_over_gdal``: the same read from the folder over the peer, rasterio/GDAL reading each native JP2 file
   whole onto the 10 m grid (``out_shape``, bilinear) and scaling it: the same work without tiling or masking.
3. ``ndvi_abs_error_60m_copy_mean`` / ``_p99``: NDVI from the 60 m copies of B04/B08 (what the former reader took
   when the copies came last) against NDVI from the native 10 m files, on a mosaic of crop fields of 8-40 px (red
   3-8 %, NIR 25-45 %): the error sits at field edges, so it grows as fields get smaller.

The product is a synthetic L2A product of ``--size`` x ``--size`` px at 10 m (default 1098, a tenth of a tile side)
with JP2 files at 10/20/60 m and MTD_MSIL2A.xml. The last line is one JSON object with all figures.

    python benchmarks/remote_products.py [--size 1098] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
import zipfile
from pathlib import Path

import numpy as np

NAME = "S2B_MSIL2A_20210512T102619_N0500_R108_T32UQD_20230301T120000"
BANDS = ("B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B11", "B12")
NATIVE = {"B02": 10, "B03": 10, "B04": 10, "B08": 10, "B05": 20, "B06": 20, "B07": 20, "B8A": 20, "B11": 20,
          "B12": 20, "SCL": 20}


def field_mosaic(size: int, rng: np.random.Generator) -> np.ndarray:
    """A field ID per pixel: rectangles of 8-40 px tiling the raster."""
    ids = np.zeros((size, size), np.int32)
    n, r = 0, 0
    while r < size:
        h = int(rng.integers(8, 41))
        c = 0
        while c < size:
            w = int(rng.integers(8, 41))
            n += 1
            ids[r:r + h, c:c + w] = n
            c += w
        r += h
    return ids


def block_mean(a: np.ndarray, f: int) -> np.ndarray:
    h, w = a.shape[0] // f * f, a.shape[1] // f * f
    return a[:h, :w].reshape(h // f, f, w // f, f).mean((1, 3))


def write_product(root: Path, size: int) -> tuple[Path, dict[str, np.ndarray]]:
    import rasterio
    from rasterio.crs import CRS
    from rasterio.transform import from_origin

    rng = np.random.default_rng(0)
    ids = field_mosaic(size, rng)
    per_field = rng.uniform(0.02, 0.45, (ids.max() + 1, len(BANDS)))
    per_field[:, BANDS.index("B04")] = rng.uniform(0.03, 0.08, ids.max() + 1)  # crops in season: red 3-8 %,
    per_field[:, BANDS.index("B08")] = rng.uniform(0.25, 0.45, ids.max() + 1)  # NIR 25-45 % (NDVI 0.5-0.9)
    refl = {b: per_field[ids, i] + rng.normal(0, 0.005, ids.shape) for i, b in enumerate(BANDS)}
    img = root / f"{NAME}.SAFE" / "GRANULE" / "L2A_T32UQD_A031000_20210512T102619" / "IMG_DATA"

    def jp2(band: str, res: int, data: np.ndarray) -> None:
        path = img / f"R{res}m" / f"T32UQD_20210512T102619_{band}_{res}m.jp2"
        path.parent.mkdir(parents=True, exist_ok=True)
        with rasterio.open(path, "w", driver="JP2OpenJPEG", width=data.shape[1], height=data.shape[0], count=1,
                           dtype=data.dtype.name, crs=CRS.from_epsg(32632),
                           transform=from_origin(600000, 5300000, res, res), QUALITY=100, REVERSIBLE="YES") as ds:
            ds.write(data, 1)

    dn = {b: np.clip(np.round(v * 10000 + 1000), 1, 65534).astype(np.uint16) for b, v in refl.items()}
    for b in BANDS:
        f = NATIVE[b] // 10
        jp2(b, NATIVE[b], dn[b] if f == 1 else np.round(block_mean(dn[b], f)).astype(np.uint16))
    for b in ("B04", "B08"):  # sen2cor's 60 m copies
        jp2(b, 60, np.round(block_mean(dn[b], 6)).astype(np.uint16))
    jp2("SCL", 20, np.full((size // 2, size // 2), 4, np.uint8))
    offs = "".join(f'<BOA_ADD_OFFSET band_id="{i}">-1000</BOA_ADD_OFFSET>' for i in range(13))
    (root / f"{NAME}.SAFE" / "MTD_MSIL2A.xml").write_text(
        '<n1:Level-2A_User_Product xmlns:n1="https://psd-14.sentinel2.eo.esa.int/PSD/User_Product_Level-2A.xsd">'
        "<n1:General_Info><Product_Info><PROCESSING_BASELINE>05.00</PROCESSING_BASELINE></Product_Info>"
        "<Product_Image_Characteristics><QUANTIFICATION_VALUES_LIST><BOA_QUANTIFICATION_VALUE>10000"
        f"</BOA_QUANTIFICATION_VALUE></QUANTIFICATION_VALUES_LIST><BOA_ADD_OFFSET_VALUES_LIST>{offs}"
        "</BOA_ADD_OFFSET_VALUES_LIST></Product_Image_Characteristics></n1:General_Info>"
        "</n1:Level-2A_User_Product>")
    z = root / f"{NAME}.SAFE.zip"
    with zipfile.ZipFile(z, "w", zipfile.ZIP_STORED) as zf:
        for p in sorted((root / f"{NAME}.SAFE").rglob("*")):
            zf.write(p, p.relative_to(root).as_posix())
    return z, dn


def read_all(inputs: list[Path], bands: list[str]) -> float:
    from remote.discovery import open_series

    t = time.perf_counter()
    with open_series(inputs) as s:
        for w in s.grid.windows(256):
            s.read(w, bands)
    return time.perf_counter() - t


def gdal_peer(safe: Path, size: int, bands: list[str]) -> float:
    import rasterio
    from rasterio.enums import Resampling

    t = time.perf_counter()
    for b in [*bands, "SCL"]:
        path = next(safe.glob(f"GRANULE/*/IMG_DATA/R{NATIVE[b]}m/*_{b}_{NATIVE[b]}m.jp2"))
        with rasterio.open(path) as src:
            a = src.read(1, out_shape=(size, size),
                         resampling=Resampling.nearest if b == "SCL" else Resampling.bilinear)
        if b != "SCL":
            _ = (a.astype(np.float32) - 1000) / 10000
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, default=1098, help="product size in 10 m pixels (multiple of 6)")
    ap.add_argument("--repeats", type=int, default=3, help="timed repeats (median)")
    args = ap.parse_args()
    size = args.size // 6 * 6
    bands = list(BANDS)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        t0 = time.perf_counter()
        z, dn = write_product(root, size)
        print(f"product {size} x {size} px written in {time.perf_counter() - t0:.1f}s", flush=True)
        safe = root / f"{NAME}.SAFE"
        tz, tf, tg = [], [], []
        for _ in range(args.repeats):  # interleaved
            tz.append(read_all([z], bands))
            tf.append(read_all([safe], bands))
            tg.append(gdal_peer(safe, size, bands))
        mz, mf, mg = (statistics.median(v) for v in (tz, tf, tg))
        print(f"read 10 bands + SCL of {size}^2 px: zip {mz:.2f}s, folder {mf:.2f}s, GDAL peer {mg:.2f}s")
        import rasterio
        from rasterio.enums import Resampling

        def ndvi_from(res: int) -> np.ndarray:
            out = []
            for b in ("B08", "B04"):
                path = next(safe.glob(f"GRANULE/*/IMG_DATA/R{res}m/*_{b}_{res}m.jp2"))
                with rasterio.open(path) as src:
                    out.append((src.read(1, out_shape=(size, size), resampling=Resampling.bilinear)
                                .astype(np.float64) - 1000) / 10000)
            n, r = out
            return (n - r) / (n + r)

        err = np.abs(ndvi_from(60) - ndvi_from(10))
        mean, p99 = float(err.mean()), float(np.percentile(err, 99))
        print(f"NDVI from the 60 m copies vs native 10 m: |error| mean {mean:.3f}, p99 {p99:.3f}")
    print(json.dumps({"size_px": size, "zip_s": round(mz, 3), "folder_s": round(mf, 3), "gdal_peer_s": round(mg, 3),
                      "zip_over_folder": round(mz / mf, 3), "reader_over_gdal": round(mf / mg, 3),
                      "ndvi_abs_error_60m_copy_mean": round(mean, 4), "ndvi_abs_error_60m_copy_p99": round(p99, 4)}))


if __name__ == "__main__":
    main()
