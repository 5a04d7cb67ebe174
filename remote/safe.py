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

Parts of a product are read as the product: a band file or an ``IMG_DATA`` / ``R10m`` folder inside a ``.SAFE``
(:func:`product_root` walks up to the product for its metadata and name), and GDAL paths into a zip
(``/vsizip/PRODUCT.SAFE.zip``, ``/vsizip/PRODUCT.SAFE.zip/PRODUCT.SAFE/GRANULE/...``, :func:`split_vsizip`).
``MTD_MSIL2A.xml`` is read with a size bound (:data:`shared_backbones.archives.LIMITS`), from a folder as from a zip.
"""

from __future__ import annotations

import datetime as dt
import re
import xml.etree.ElementTree as ET
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from shared_backbones.archives import LIMITS, open_zip, read_member
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


def product_root(path: str | Path) -> Path | None:
    """The ``.SAFE`` folder that holds ``path`` (a band file or a folder inside a product), or None."""
    p = Path(path).absolute()
    return next((q for q in p.parents if q != q.parent and is_safe_folder(q)), None)


def split_vsizip(path: str | Path) -> tuple[Path, str] | None:
    """(zip file, path inside it) of a GDAL ``/vsizip/`` path as GDAL users write them: ``/vsizip/rel/x.zip/in``,
    ``/vsizip//abs/x.zip/in`` or ``/vsizip/{/abs/x.zip}/in``; None for other paths."""
    text = str(path)
    if not text.startswith("/vsizip/"):
        return None
    rest = text[len("/vsizip/"):]
    if rest.startswith("{"):
        end = rest.find("}")
        return (Path(rest[1:end]), rest[end + 1:].strip("/")) if end > 1 else None
    parts = rest.split("/")
    for i, part in enumerate(parts):
        if part.lower().endswith(".zip"):
            return Path("/".join(parts[:i + 1])), "/".join(parts[i + 1:]).strip("/")
    return None


def _read_metadata_file(path: Path) -> bytes:
    """``MTD_MSIL2A.xml`` of a folder product, refused in one line beyond the metadata size bound."""
    limit = LIMITS["metadata"]
    size = path.stat().st_size
    if size > limit:
        raise InputError(f"{path.name} holds {size / (1 << 20):.0f} MiB, more than product metadata may "
                         f"({limit >> 20} MiB); refused", path)
    with open(path, "rb") as fh:
        data = fh.read(limit + 1)
    if len(data) > limit:
        raise InputError(f"{path.name} holds more than {limit >> 20} MiB; refused", path)
    return data


def is_safe_zip(path: Path) -> bool:
    """A zip file holding a ``.SAFE`` product."""
    if not (path.is_file() and path.suffix.lower() == ".zip"):
        return False
    try:
        with zipfile.ZipFile(path) as z:
            return any(n.upper().rstrip("/").endswith(".SAFE") or "/GRANULE/" in n for n in z.namelist()[:2000])
    except (zipfile.BadZipFile, OSError):
        return False


def _within(rel: str, only: Sequence[str] | None) -> bool:
    return only is None or any(not o or rel == o or rel.startswith(o.rstrip("/") + "/") for o in only)


def _product(name: str, source: Path, mtd: bytes | None, files: list[tuple[str, str]],
             only: Sequence[str] | None = None) -> SafeProduct:
    """Assemble a product from its metadata text and (relative path, GDAL path) of every file; with ``only``
    (paths relative to the product root, files or folders) just the band files under them."""
    stem = name[:-5] if name.upper().endswith(".SAFE") else name
    rad = parse_metadata(mtd, source / METADATA) if mtd is not None else None
    date = safe_product_date(stem) or (rad.sensing_date if rad else None) or parse_date(stem)
    if date is None:
        raise InputError("no sensing date in the product name or its metadata", source)
    bands: list[SafeBand] = []
    ignored: list[str] = []
    for rel, gdal_path in files:
        if not _within(rel, only):
            continue
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
        where = f" under {', '.join(only)}" if only else ""
        raise InputError(f"no band images (GRANULE/*/IMG_DATA/R10m|R20m|R60m/*.jp2) in the product{where}", source)
    return SafeProduct(stem, source, date, rad, bands, ignored)


def read_safe(path: str | Path, only: Sequence[str] | None = None) -> SafeProduct:
    """Describe an L2A product from its ``.SAFE`` folder or its zip (files listed, metadata parsed; no pixels).
    ``only``: paths relative to the product root (band files or folders such as ``GRANULE/L2A_.../IMG_DATA/R10m``)
    whose band files alone are taken, with the product's metadata and name all the same."""
    path = Path(path)
    if path.is_dir():
        mtd_path = path / METADATA
        if not mtd_path.is_file() and (path / "MTD_MSIL1C.xml").is_file():
            raise InputError("Level-1C product (top-of-atmosphere): an L2A product is needed", path)
        mtd = _read_metadata_file(mtd_path) if mtd_path.is_file() else None
        files = [(p.relative_to(path).as_posix(), str(p)) for p in sorted(path.glob("GRANULE/*/IMG_DATA/**/*"))
                 if p.is_file()]
        return _product(path.name, path, mtd, files, only)
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
        if only is not None:  # paths inside the zip -> paths inside the product
            only = ["" if o.strip("/") == root else o[len(prefix):] if prefix and o.startswith(prefix) else o
                    for o in only]
        base = f"/vsizip/{path.absolute().as_posix()}"
        files = [(n[len(prefix):], f"{base}/{n}") for n in sorted(names) if n.startswith(prefix + "GRANULE/")
                 and not n.endswith("/")]
    name = root or (path.name[:-4] if path.name.lower().endswith(".zip") else path.name)
    return _product(name, path, mtd, files, only)
