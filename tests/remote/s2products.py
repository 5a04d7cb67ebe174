"""Small but faithful Sentinel-2 L2A deliveries for the remote tests: an ESA ``.SAFE`` product with JPEG2000 band
files at 10/20/60 m (sen2cor's resampled copies, AOT/WVP/TCI included), ``MTD_MSIL2A.xml``, its zip, and STAC items
in both Earth Search key styles."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import numpy as np
import rasterio
from rasterio.crs import CRS
from rasterio.transform import from_origin

CRS32632 = CRS.from_epsg(32632)
ORIGIN = (600000.0, 5300000.0)
SIZE_10M = 12  # 120 m x 120 m: 12 px at 10 m, 6 at 20 m, 2 at 60 m

R10M = ("B02", "B03", "B04", "B08", "AOT", "WVP", "TCI")
R20M = ("B01", "B02", "B03", "B04", "B05", "B06", "B07", "B8A", "B11", "B12", "SCL", "AOT", "WVP", "TCI")
R60M = ("B01", "B02", "B03", "B04", "B05", "B06", "B07", "B8A", "B09", "B11", "B12", "SCL", "AOT", "WVP", "TCI")
MTD_IDS = ("B1", "B2", "B3", "B4", "B5", "B6", "B7", "B8", "B8A", "B9", "B10", "B11", "B12")


def native_dn(band: str, res: int) -> np.ndarray:
    """DN of a band at its native resolution: a varying 10 m field, constants per band elsewhere."""
    n = SIZE_10M * 10 // res
    if res == 10:
        base = {"B02": 1400, "B03": 1700, "B04": 1500, "B08": 4500}[band]
        return (base + 37 * np.arange(n * n).reshape(n, n) % 900).astype(np.uint16)
    consts = {"B05": 3000, "B06": 3600, "B07": 4000, "B8A": 4700, "B11": 2800, "B12": 2300, "B01": 1300,
              "B09": 1200}
    return np.full((n, n), consts[band], np.uint16)


def copy_dn(band: str, res: int) -> np.ndarray:
    """sen2cor's resampled copy of a band at a coarser resolution: values that betray a wrong choice (9000)."""
    n = SIZE_10M * 10 // res
    return np.full((n, n), 9000, np.uint16)


def scl(res: int) -> np.ndarray:
    """SCL: vegetation (4) with a high cloud (9) in the top-left 20 m pixel; the 60 m copy shows no cloud."""
    n = SIZE_10M * 10 // res
    a = np.full((n, n), 4, np.uint8)
    if res == 20:
        a[0, 0] = 9
    return a


def write_jp2(path: Path, data: np.ndarray, res: float, origin=ORIGIN) -> Path:
    """A lossless JPEG2000 file (GDAL's JP2OpenJPEG driver) on the UTM 32N grid."""
    data = np.asarray(data)
    if data.ndim == 2:
        data = data[None]
    path.parent.mkdir(parents=True, exist_ok=True)
    with rasterio.open(path, "w", driver="JP2OpenJPEG", width=data.shape[2], height=data.shape[1],
                       count=data.shape[0], dtype=data.dtype.name, crs=CRS32632,
                       transform=from_origin(*origin, res, res), QUALITY=100, REVERSIBLE="YES") as ds:
        ds.write(data)
    return path


def mtd_xml(baseline: str = "05.00", offsets: bool = True, quantification: int = 10000) -> str:
    """MTD_MSIL2A.xml with the fields the reader uses, in the layout and namespace of PSD 14.9 products."""
    offs = "".join(f'<BOA_ADD_OFFSET band_id="{i}">-1000</BOA_ADD_OFFSET>' for i in range(13))
    spec = "".join(f'<Spectral_Information bandId="{i}" physicalBand="{b}"><RESOLUTION>10</RESOLUTION>'
                   f'</Spectral_Information>' for i, b in enumerate(MTD_IDS))
    return f"""<?xml version="1.0" encoding="UTF-8"?>
<n1:Level-2A_User_Product xmlns:n1="https://psd-14.sentinel2.eo.esa.int/PSD/User_Product_Level-2A.xsd"
  xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance">
  <n1:General_Info>
    <Product_Info>
      <PRODUCT_START_TIME>2021-05-12T10:26:19.024Z</PRODUCT_START_TIME>
      <PRODUCT_TYPE>S2MSI2A</PRODUCT_TYPE>
      <PROCESSING_LEVEL>Level-2A</PROCESSING_LEVEL>
      <PROCESSING_BASELINE>{baseline}</PROCESSING_BASELINE>
    </Product_Info>
    <Product_Image_Characteristics>
      <Special_Values><SPECIAL_VALUE_TEXT>NODATA</SPECIAL_VALUE_TEXT><SPECIAL_VALUE_INDEX>0</SPECIAL_VALUE_INDEX>
      </Special_Values>
      <Special_Values><SPECIAL_VALUE_TEXT>SATURATED</SPECIAL_VALUE_TEXT>
        <SPECIAL_VALUE_INDEX>65535</SPECIAL_VALUE_INDEX></Special_Values>
      <QUANTIFICATION_VALUES_LIST>
        <BOA_QUANTIFICATION_VALUE unit="none">{quantification}</BOA_QUANTIFICATION_VALUE>
        <AOT_QUANTIFICATION_VALUE unit="none">1000.0</AOT_QUANTIFICATION_VALUE>
        <WVP_QUANTIFICATION_VALUE unit="cm">1000.0</WVP_QUANTIFICATION_VALUE>
      </QUANTIFICATION_VALUES_LIST>
      {"<BOA_ADD_OFFSET_VALUES_LIST>" + offs + "</BOA_ADD_OFFSET_VALUES_LIST>" if offsets else ""}
      <Spectral_Information_List>{spec}</Spectral_Information_List>
    </Product_Image_Characteristics>
  </n1:General_Info>
</n1:Level-2A_User_Product>
"""


def make_safe(root: Path, name: str = "S2B_MSIL2A_20210512T102619_N0500_R108_T32UQD_20230301T120000.SAFE",
              mtd: str | None = None, saturated_at: tuple[int, int] | None = (5, 7), origin=ORIGIN) -> Path:
    """A .SAFE folder: MTD_MSIL2A.xml (unless ``mtd=""``) and GRANULE/L2A_*/IMG_DATA/R10m|R20m|R60m JP2 files."""
    safe = root / name
    stamp = name.split("_")[2]
    tile = name.split("_")[5]
    img = safe / "GRANULE" / f"L2A_{tile}_A031000_{stamp}" / "IMG_DATA"
    for res, names in ((10, R10M), (20, R20M), (60, R60M)):
        n = SIZE_10M * 10 // res
        for b in names:
            if b in ("AOT", "WVP"):
                data = np.full((n, n), 150, np.uint16)
            elif b == "TCI":
                data = np.full((3, n, n), 90, np.uint8)
            elif b == "SCL":
                data = scl(res)
            elif int(res) == int({"B01": 60, "B09": 60, "B05": 20, "B06": 20, "B07": 20, "B8A": 20, "B11": 20,
                                  "B12": 20}.get(b, 10)):
                data = native_dn(b, res)
                if b == "B04" and saturated_at is not None:
                    data[saturated_at] = 65535
            else:
                data = copy_dn(b, res)
            write_jp2(img / f"R{res}m" / f"{tile}_{stamp}_{b}_{res}m.jp2", data, res, origin)
    (safe / "GRANULE" / f"L2A_{tile}_A031000_{stamp}" / "QI_DATA").mkdir()
    if mtd != "":
        (safe / "MTD_MSIL2A.xml").write_text(mtd if mtd is not None else mtd_xml())
    return safe


def zip_safe(safe: Path, out: Path) -> Path:
    """The product as downloaded from the Copernicus Data Space: ``<name>.SAFE.zip`` holding ``<name>.SAFE/...``."""
    with zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as z:
        for p in sorted(safe.rglob("*")):
            z.write(p, p.relative_to(safe.parent).as_posix())
    return out


def stac_item(path: Path, date: str, hrefs: dict[str, str], *, style: str = "v1", props: dict | None = None,
              raster: dict | None = None) -> Path:
    """A STAC Item (Earth Search ``sentinel-2-l2a`` v1 keys or ``sentinel-s2-l2a-cogs`` v0 keys) to ``hrefs``."""
    v1 = {"B01": "coastal", "B02": "blue", "B03": "green", "B04": "red", "B05": "rededge1", "B06": "rededge2",
          "B07": "rededge3", "B08": "nir", "B8A": "nir08", "B09": "nir09", "B11": "swir16", "B12": "swir22",
          "SCL": "scl"}
    assets = {}
    for band, href in hrefs.items():
        key = v1.get(band, band.lower()) if style == "v1" else band
        a: dict = {"href": href, "type": "image/tiff; application=geotiff; profile=cloud-optimized"}
        if raster is not None and band != "SCL":
            a["raster:bands"] = [dict(raster)]
        assets[key] = a
    assets["thumbnail"] = {"href": "https://example.invalid/preview.jpg", "type": "image/jpeg"}
    doc = {
        "type": "Feature", "stac_version": "1.0.0", "id": path.stem,
        "stac_extensions": ["https://stac-extensions.github.io/raster/v1.1.0/schema.json"],
        "geometry": {"type": "Polygon", "coordinates": [[[9, 47], [9.1, 47], [9.1, 47.1], [9, 47.1], [9, 47]]]},
        "bbox": [9, 47, 9.1, 47.1],
        "properties": {"datetime": f"{date}T10:26:19Z", **(props or {})},
        "links": [], "assets": assets,
    }
    path.write_text(json.dumps(doc, indent=1))
    return path
