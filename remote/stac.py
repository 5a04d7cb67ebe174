"""Sentinel-2 L2A scenes described by STAC: an Item JSON, an ItemCollection / FeatureCollection, or a folder of
item files, read with ``pystac``; asset hrefs are local files or GDAL ``/vsi`` paths (nothing is downloaded).

Asset keys of both Earth Search collections are understood: ``sentinel-2-l2a`` (v1: ``coastal blue green red
rededge1 rededge2 rededge3 nir nir08 nir09 swir16 swir22 scl``) and ``sentinel-s2-l2a-cogs`` (v0: ``B01`` .. ``B12``,
``B8A``, ``SCL``); ``aot``, ``wvp``, ``visual``, thumbnails and the ``*-jp2`` duplicates are ignored.

Radiometry per asset, first rule that applies: ``earthsearch:boa_offset_applied: true`` (the provider already
applied the offset: reflectance = DN x scale); ``earthsearch:boa_offset_applied: false`` with ``s2:processing_baseline``
>= 04.00 (the DNs carry the +1000 shift: -0.1 reflectance, even where an item declares offset 0); the raster
extension's ``scale`` / ``offset`` (reflectance = DN x scale + offset); the item's ``s2:processing_baseline`` (-0.1
from 04.00), else the baseline in its ``s2:product_uri`` / ``sentinel:product_id`` (``_N0400_``); else nothing (the
caller's :func:`remote.reader.choose_offset` then takes the date rule, with a notice). Earth Search v0 items
(``sentinel-s2-l2a-cogs``) say the same with ``sentinel:boa_offset_applied`` and ``sentinel:processing_baseline``.
"""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from shared_backbones.errors import InputError, first_line

from .naming import QUANTIFICATION, S2_BANDS, SATURATED_DN, parse_baseline, parse_date

#: Earth Search v1 asset keys -> band names (v0 keys are the band names themselves).
EARTH_SEARCH_KEYS: dict[str, str] = {
    "coastal": "B01", "blue": "B02", "green": "B03", "red": "B04", "rededge1": "B05", "rededge2": "B06",
    "rededge3": "B07", "nir": "B08", "nir08": "B8A", "nir09": "B09", "swir16": "B11", "swir22": "B12", "scl": "SCL",
}


@dataclass
class StacBand:
    """One band asset: band name, GDAL path, DN offset, quantification (1 / scale) and where they came from."""

    band: str
    path: str
    offset: float | None
    quantification: float
    rule: str
    res: float | None = None


@dataclass
class StacScene:
    """One STAC item: id, date, band assets, the item file."""

    id: str
    date: dt.date
    source: Path
    bands: list[StacBand] = field(default_factory=list)
    saturated: int | None = SATURATED_DN


def asset_band(key: str) -> str | None:
    """The band an asset key stands for (``red`` / ``B04`` -> ``B04``, ``scl`` / ``SCL`` -> ``SCL``), else None."""
    low = key.strip().lower()
    if low in EARTH_SEARCH_KEYS:
        return EARTH_SEARCH_KEYS[low]
    up = key.strip().upper()
    return up if up in S2_BANDS or up == "SCL" else None


def is_stac_file(path: Path) -> bool:
    """A JSON file holding a STAC Item, an ItemCollection or a FeatureCollection of items."""
    if path.suffix.lower() not in (".json", ".geojson") or not path.is_file():
        return False
    try:
        doc = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError):
        return False
    if not isinstance(doc, dict):
        return False
    if doc.get("type") == "FeatureCollection":  # an ItemCollection (e.g. a saved search): its features are items
        feats = doc.get("features") or [{}]
        return isinstance(feats[0], dict) and "stac_version" in feats[0]
    return doc.get("type") == "Feature" and "stac_version" in doc


def _href(asset: Any, item_path: Path) -> str:
    raw = str(asset.href)
    if raw.startswith("/vsi"):
        return raw
    if "://" in raw and not raw.startswith("file://"):
        raise InputError(f"asset href {raw} is not local: download the assets first and point the hrefs to the "
                         "files (or to /vsi paths)", item_path)
    raw = raw[7:] if raw.startswith("file://") else raw
    p = Path(raw)
    return str(p if p.is_absolute() else (item_path.parent / p).resolve())


def _radiometry(item: Any, asset: Any) -> tuple[float | None, float, str]:
    """(DN offset or None, quantification, rule) of one asset (module docstring)."""
    props = item.properties
    rb = (asset.extra_fields.get("raster:bands") or [{}])[0] or {}
    scale = rb.get("scale")
    scale = float(scale) if scale not in (None, 0) else 1.0 / QUANTIFICATION
    flag = next((k for k in ("earthsearch:boa_offset_applied", "sentinel:boa_offset_applied") if k in props), None)
    applied = _truth(props.get(flag)) if flag else None
    if applied is True:
        return 0.0, 1.0 / scale, flag
    key = next((k for k in ("s2:processing_baseline", "sentinel:processing_baseline") if props.get(k) is not None),
               None)
    baseline = props.get(key) if key else None
    try:
        b = float(baseline) if baseline is not None else None
    except (TypeError, ValueError):
        b = None
    if b is None:  # the baseline in the ESA product name the item was made from
        for k in ("s2:product_uri", "sentinel:product_id"):
            b = parse_baseline(f"{props.get(k) or ''}_")
            if b is not None:
                key, baseline = k, props.get(k)
                break
    if applied is False and b is not None and b >= 4.0:  # DNs still carry the +1000 shift, whatever offset is declared
        return -0.1 / scale, 1.0 / scale, f"{flag} false, baseline {b:05.2f}"
    if "offset" in rb and rb["offset"] is not None:
        return float(rb["offset"]) / scale, 1.0 / scale, "raster:bands scale/offset"
    if b is not None:
        return (-0.1 / scale if b >= 4.0 else 0.0), 1.0 / scale, f"{key} {baseline}"
    return None, 1.0 / scale, ""


def _truth(value: Any) -> bool | None:
    """A STAC boolean property (JSON true/false, or the strings some catalogues write)."""
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in ("true", "false"):
        return value.strip().lower() == "true"
    return None


def _scene(item: Any, item_path: Path) -> StacScene:
    props = item.properties
    when = props.get("datetime") or props.get("start_datetime")
    date = parse_date(str(when)[:10]) if when else None
    if date is None:
        date = parse_date(item.id)
    if date is None:
        raise InputError(f"STAC item {item.id!r} has no datetime", item_path)
    scene = StacScene(item.id, date, item_path)
    for key, asset in item.assets.items():
        band = asset_band(key)
        if band is None:
            continue
        off, quant, rule = _radiometry(item, asset)
        off, quant = (None if off is None else round(off, 6)), round(quant, 6)  # -0.1 / 1e-4 = -1000, not -999.99..
        if band == "SCL":
            off, quant, rule = 0.0, 1.0, ""
        res = (asset.extra_fields.get("raster:bands") or [{}])[0] or {}
        scene.bands.append(StacBand(band, _href(asset, item_path), off, quant, rule,
                                    res.get("spatial_resolution") or asset.extra_fields.get("gsd")))
    if not scene.bands:
        raise InputError(f"STAC item {item.id!r} has no Sentinel-2 band assets (keys such as blue/red/nir or "
                         "B02/B04/B08)", item_path)
    return scene


def read_stac(path: str | Path) -> list[StacScene]:
    """Scenes of a STAC Item file or an ItemCollection / FeatureCollection file."""
    import pystac

    path = Path(path)
    try:
        doc = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise InputError(f"unreadable JSON ({type(exc).__name__})", path) from None
    try:
        if doc.get("type") == "FeatureCollection":
            coll = pystac.ItemCollection.from_dict(doc, preserve_dict=False)
            items = list(coll.items)
        else:
            items = [pystac.Item.from_file(str(path))]
    except InputError:
        raise
    except Exception as exc:
        msg = first_line(exc)
        raise InputError(f"not a valid STAC item ({msg})", path) from None
    if not items:
        raise InputError("STAC collection holds no item", path)
    return [_scene(it, path) for it in items]
