"""Sentinel-2 names: band and date parsing from file names, band resolutions, L2A constants.

Bands and native resolutions follow the Sentinel-2 MSI product specification (L2A has no B10): 10 m B02 B03 B04
B08; 20 m B05 B06 B07 B8A B11 B12 and the scene classification SCL; 60 m B01 B09.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Sequence
from pathlib import Path

from shared_backbones.errors import InputError

#: Sentinel-2 L2A bands (no B10) and the 10 m ones.
S2_BANDS: tuple[str, ...] = ("B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B09", "B11", "B12")
BANDS_10M: tuple[str, ...] = ("B02", "B03", "B04", "B08")
BANDS_20M: tuple[str, ...] = ("B05", "B06", "B07", "B8A", "B11", "B12", "SCL")
BANDS_60M: tuple[str, ...] = ("B01", "B09")
#: Bands the models use by default (the 10 m and 20 m bands).
DEFAULT_BANDS: tuple[str, ...] = ("B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B11", "B12")
SCL = "SCL"
#: Native ground sampling distance (m) of every band, SCL included.
NATIVE_RES: dict[str, float] = {**{b: 10.0 for b in BANDS_10M}, **{b: 20.0 for b in BANDS_20M},
                                **{b: 60.0 for b in BANDS_60M}}
#: SCL classes treated as invalid: no data, saturated, cloud shadow, cloud medium/high, cirrus.
DEFAULT_SCL_INVALID: tuple[int, ...] = (0, 1, 3, 8, 9, 10)
#: First sensing date of products of processing baseline 04.00 (the -1000 BOA offset).
BASELINE_04_START = dt.date(2022, 1, 25)
QUANTIFICATION = 10000.0
#: L2A special values (MTD_MSIL2A.xml ``Special_Values``).
NODATA_DN = 0
SATURATED_DN = 65535
TIF_SUFFIXES = (".tif", ".tiff", ".TIF", ".TIFF", ".vrt", ".jp2", ".JP2")

_DATE_RE = re.compile(r"(?<!\d)(\d{4})-?(\d{2})-?(\d{2})(?!\d)")
_BAND_RE = re.compile(r"(?<![A-Za-z0-9])(B0?[1-9]|B1[0-2]|B8A|SCL)(?![A-Za-z0-9])", re.IGNORECASE)
_RES_RE = re.compile(r"(?<![A-Za-z0-9])(10|20|60)m(?![A-Za-z0-9])")
_BASELINE_RE = re.compile(r"_N(\d{2})(\d{2})_")
#: ``S2B_MSIL2A_20210512T102619_N0500_R108_T32UQD_20230101T000000`` (datatake sensing start = third field)
_SAFE_RE = re.compile(r"^S2[A-D]_MSIL2A_(\d{8})T\d{6}_N\d{4}_R\d{3}_T\w{5}_\d{8}T\d{6}")


def parse_date(text: str) -> dt.date | None:
    """The first valid ``YYYYMMDD`` / ``YYYY-MM-DD`` date in ``text`` (None when there is none)."""
    for m in _DATE_RE.finditer(text):
        try:
            d = dt.date(int(m.group(1)), int(m.group(2)), int(m.group(3)))
        except ValueError:
            continue
        if 1980 <= d.year <= 2100:
            return d
    return None


def parse_band(text: str) -> str | None:
    """A Sentinel-2 band name in ``text`` (``B2``/``b02`` -> ``B02``, ``B8A``, ``SCL``), or None."""
    m = _BAND_RE.search(text.replace("_", " ").replace("-", " ").replace(".", " "))
    if not m:
        return None
    name = m.group(1).upper()
    if name in ("SCL", "B8A"):
        return name
    return f"B{int(name[1:]):02d}"


def parse_resolution(text: str) -> float | None:
    """The resolution suffix of a sen2cor file name (``..._B05_20m`` -> 20.0), or None."""
    m = _RES_RE.search(text.replace("_", " ").replace(".", " "))
    return float(m.group(1)) if m else None


def parse_baseline(text: str) -> float | None:
    """The processing baseline in an ESA product name (``..._N0500_...`` -> 5.0, ``N0213`` -> 2.13), or None."""
    m = _BASELINE_RE.search(text)
    return int(m.group(1)) + int(m.group(2)) / 100 if m else None


def safe_product_date(name: str) -> dt.date | None:
    """The sensing date of an ESA L2A product name (``S2B_MSIL2A_20210512T...SAFE``), or None if not one."""
    m = _SAFE_RE.match(name)
    return parse_date(m.group(1)) if m else None


def parse_dates(items: Sequence[str] | str) -> list[dt.date]:
    """Dates from ISO strings (a comma-separated string or a list)."""
    if isinstance(items, str):
        items = [s for s in items.replace(",", " ").split() if s]
    out = []
    for s in items:
        d = parse_date(str(s))
        if d is None:
            raise InputError(f"not a date: {s!r} (use YYYY-MM-DD)")
        out.append(d)
    return out


def read_date_list(items: Sequence[str]) -> list[dt.date]:
    """Dates from the command line: ISO dates, or one text file with a date per line (or comma-separated)."""
    if len(items) == 1 and parse_date(items[0]) is None and Path(items[0]).is_file():
        path = Path(items[0])
        try:
            text = path.read_text()
        except (OSError, UnicodeDecodeError) as exc:
            raise InputError(f"unreadable date list ({type(exc).__name__})", path) from None
        words = [w for w in text.replace(",", " ").split() if w]
        if not words:
            raise InputError("date list is empty", path)
        try:
            return parse_dates(words)
        except InputError as exc:
            raise InputError(str(exc), path) from None
    return parse_dates(list(items))
