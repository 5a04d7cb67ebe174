"""ESA Sentinel-2 L2A products as downloaded: a ``.SAFE`` folder or its ``.SAFE.zip`` (read in place through GDAL's
``/vsizip/``; nothing is unpacked).

Structure (ESA "Sentinel-2 Products Specification Document", L2A, PSD 14.x/15.x):

* ``<name>.SAFE/MTD_MSIL2A.xml``: ``PROCESSING_BASELINE``, ``Special_Values`` (NODATA 0, SATURATED 65535),
  ``QUANTIFICATION_VALUES_LIST/BOA_QUANTIFICATION_VALUE`` (10000) and, from baseline 04.00,
  ``BOA_ADD_OFFSET_VALUES_LIST/BOA_ADD_OFFSET band_id=".."`` (-1000), ``band_id`` 0..12 being B01 B02 B03 B04 B05
  B06 B07 B08 B8A B09 B10 B11 B12 (``Spectral_Information`` gives the mapping when present);
* ``GRANULE/L2A_*/IMG_DATA/R10m|R20m|R60m/T<tile>_<stamp>_<band>_<res>.jp2`` (JPEG2000): R20m and R60m also hold
  sen2cor's resampled copies of finer bands; AOT, WVP and TCI files are not reflectance bands and are ignored.

Reflectance = (DN + BOA_ADD_OFFSET) / BOA_QUANTIFICATION_VALUE. A product reprocessed at baseline >= 04.00 carries
the offset whatever its sensing date; without metadata the baseline in the product name (``N0500``) decides, and the
sensing date only as the last resort.
"""

from __future__ import annotations

import datetime as dt
import re
import xml.etree.ElementTree as ET
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

from shared_backbones.archives import open_zip, read_member
from shared_backbones.errors import InputError

from .naming import (
    NODATA_DN,
    QUANTIFICATION,
    SATURATED_DN,
    parse_band,
    parse_baseline,
    parse_date,
    parse_resolution,
    safe_product_date,
)

#: ``band_id`` of MTD_MSIL2A.xml -> band name (Sentinel-2 MSI band order, B10 included).
MTD_BAND_IDS: tuple[str, ...] = ("B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B09", "B10",
                                 "B11", "B12")
METADATA = "MTD_MSIL2A.xml"
_IMG_RE = re.compile(r"(?:^|/)GRANULE/[^/]+/IMG_DATA/(?:R(10|20|60)m/)?([^/]+\.jp2)$", re.IGNORECASE)


@dataclass
class Radiometry:
    """What ``MTD_MSIL2A.xml`` says about the digital numbers."""

    baseline: float | None = None
    quantification: float = QUANTIFICATION
    offsets: dict[str, float] = field(default_factory=dict)
    nodata: int = NODATA_DN
    saturated: int | None = SATURATED_DN
    sensing_date: dt.date | None = None


@dataclass
class SafeBand:
    """One image file of a product: band name, resolution (m) and GDAL path."""

    band: str
    res: float
    path: str


@dataclass
class SafeProduct:
    """An L2A product: name, sensing date, radiometry (None without ``MTD_MSIL2A.xml``), band files, ignored files."""

    name: str
    source: Path
    date: dt.date
    radiometry: Radiometry | None
    bands: list[SafeBand]
    ignored: list[str]

    @property
    def baseline(self) -> float | None:
        if self.radiometry is not None and self.radiometry.baseline is not None:
            return self.radiometry.baseline
        return parse_baseline(self.name)


def _local(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]


def parse_metadata(xml: bytes | str, path: str | Path = METADATA) -> Radiometry:
    """Radiometry from the text of ``MTD_MSIL2A.xml`` (namespaces ignored; absent fields keep L2A defaults)."""
    try:
        root = ET.fromstring(xml)
    except ET.ParseError as exc:
        raise InputError(f"unreadable product metadata ({exc})", path) from None
    if _local(root.tag).startswith("Level-1C"):
        raise InputError("Level-1C product (top-of-atmosphere): an L2A product is needed", path)
    rad = Radiometry()
    ids = dict(enumerate(MTD_BAND_IDS))
    offsets_by_id: dict[int, float] = {}
    special: dict[str, int] = {}
    for el in root.iter():
        tag = _local(el.tag)
        text = (el.text or "").strip()
        try:
            if tag == "PROCESSING_BASELINE" and text:
                rad.baseline = float(text)
            elif tag == "BOA_QUANTIFICATION_VALUE" and text:
                rad.quantification = float(text)
            elif tag == "BOA_ADD_OFFSET" and text:
                offsets_by_id[int(el.get("band_id", "-1"))] = float(text)
            elif tag == "Spectral_Information" and el.get("bandId") is not None and el.get("physicalBand"):
                name = parse_band(el.get("physicalBand", ""))
                if name:
                    ids[int(el.get("bandId", "-1"))] = name
            elif tag == "Special_Values":
                kids = {_local(k.tag): (k.text or "").strip() for k in el}
                if kids.get("SPECIAL_VALUE_TEXT") and kids.get("SPECIAL_VALUE_INDEX"):
                    special[kids["SPECIAL_VALUE_TEXT"].upper()] = int(float(kids["SPECIAL_VALUE_INDEX"]))
            elif tag in ("PRODUCT_START_TIME", "DATATAKE_SENSING_START") and text and rad.sensing_date is None:
                rad.sensing_date = parse_date(text[:10])
        except ValueError:
            raise InputError(f"bad value {text!r} in <{tag}> of the product metadata", path) from None
    if rad.quantification <= 0:
        raise InputError(f"BOA_QUANTIFICATION_VALUE must be > 0, not {rad.quantification:g}", path)
    rad.offsets = {ids[i]: v for i, v in offsets_by_id.items() if i in ids}
    rad.nodata = special.get("NODATA", NODATA_DN)
    rad.saturated = special.get("SATURATED", SATURATED_DN)
    return rad


def is_safe_folder(path: Path) -> bool:
    """A ``.SAFE`` folder (by name, or by holding ``MTD_MSIL2A.xml`` and ``GRANULE``)."""
    return path.is_dir() and (path.name.upper().endswith(".SAFE")
                              or ((path / METADATA).is_file() and (path / "GRANULE").is_dir()))


def is_safe_zip(path: Path) -> bool:
    """A zip file holding a ``.SAFE`` product."""
    if not (path.is_file() and path.suffix.lower() == ".zip"):
        return False
    try:
        with zipfile.ZipFile(path) as z:
            return any(n.upper().rstrip("/").endswith(".SAFE") or "/GRANULE/" in n for n in z.namelist()[:2000])
    except (zipfile.BadZipFile, OSError):
        return False


def _product(name: str, source: Path, mtd: bytes | None, files: list[tuple[str, str]]) -> SafeProduct:
    """Assemble a product from its metadata text and (relative path, GDAL path) of every file."""
    stem = name[:-5] if name.upper().endswith(".SAFE") else name
    rad = parse_metadata(mtd, source / METADATA) if mtd is not None else None
    date = safe_product_date(stem) or (rad.sensing_date if rad else None) or parse_date(stem)
    if date is None:
        raise InputError("no sensing date in the product name or its metadata", source)
    bands: list[SafeBand] = []
    ignored: list[str] = []
    for rel, gdal_path in files:
        m = _IMG_RE.search(rel)
        if not m:
            continue
        fname = m.group(2)
        band = parse_band(Path(fname).stem)
        res = float(m.group(1)) if m.group(1) else parse_resolution(Path(fname).stem)
        if band is None or band == "B10" or res is None:
            ignored.append(f"{fname} (not a reflectance band or SCL)")
            continue
        bands.append(SafeBand(band, res, gdal_path))
    if not bands:
        raise InputError("no band images (GRANULE/*/IMG_DATA/R10m|R20m|R60m/*.jp2) in the product", source)
    return SafeProduct(stem, source, date, rad, bands, ignored)


def read_safe(path: str | Path) -> SafeProduct:
    """Describe an L2A product from its ``.SAFE`` folder or its zip (files listed, metadata parsed; no pixels)."""
    path = Path(path)
    if path.is_dir():
        mtd_path = path / METADATA
        if not mtd_path.is_file() and (path / "MTD_MSIL1C.xml").is_file():
            raise InputError("Level-1C product (top-of-atmosphere): an L2A product is needed", path)
        mtd = mtd_path.read_bytes() if mtd_path.is_file() else None
        files = [(p.relative_to(path).as_posix(), str(p)) for p in sorted(path.glob("GRANULE/*/IMG_DATA/**/*"))
                 if p.is_file()]
        return _product(path.name, path, mtd, files)
    with open_zip(path) as z:
        names = z.namelist()
        roots = sorted({n.split("/", 1)[0] for n in names if "/" in n and n.split("/", 1)[0].upper().endswith(".SAFE")})
        if len(roots) > 1:
            raise InputError(f"zip holds {len(roots)} products ({', '.join(roots)}); give one product per zip", path)
        root = roots[0] if roots else ""
        prefix = f"{root}/" if root else ""
        mtd_name = next((n for n in names if n == prefix + METADATA), None)
        if mtd_name is None and any(n == prefix + "MTD_MSIL1C.xml" for n in names):
            raise InputError("Level-1C product (top-of-atmosphere): an L2A product is needed", path)
        mtd = read_member(z, mtd_name, "metadata") if mtd_name else None
        base = f"/vsizip/{path.absolute().as_posix()}"
        files = [(n[len(prefix):], f"{base}/{n}") for n in sorted(names) if n.startswith(prefix + "GRANULE/")
                 and not n.endswith("/")]
    name = root or (path.name[:-4] if path.name.lower().endswith(".zip") else path.name)
    return _product(name, path, mtd, files)
