"""Vegetation indices from Sentinel-2 L2A reflectance, by name, with safe division.

Band symbols (Sentinel-2): B = B02, G = B03, R = B04, RE1 = B05, RE2 = B06, RE3 = B07, N = B08.

=============  ==========================================  =====================================
name           formula                                      meaning
=============  ==========================================  =====================================
NDVI           (N - R) / (N + R)                            greenness
NDRE           (N - RE1) / (N + RE1)                        red-edge greenness (chlorophyll)
PSRI           (R - B) / RE2                                senescence (carotenoid/chlorophyll)
OSAVI          (N - R) / (N + R + 0.16)                     soil-adjusted greenness (Rondeaux)
TCARI          3 [(RE1 - R) - 0.2 (RE1 - G)(RE1 / R)]       chlorophyll absorption
TCARI/OSAVI    TCARI / [(1 + 0.16)(N - R)/(N + R + 0.16)]   chlorophyll, LAI-insensitive
MCARI          [(RE1 - R) - 0.2 (RE1 - G)] (RE1 / R)        chlorophyll absorption
CIRE           N / RE1 - 1                                  red-edge chlorophyll index
MTCI           (RE2 - RE1) / (RE1 - R)                      MERIS terrestrial chlorophyll index
WDVI           N - s R  (s = soil-line slope)               LAI proxy
=============  ==========================================  =====================================

Sources: NDVI Rouse et al. 1974; NDRE Gitelson & Merzlyak 1994; PSRI Merzlyak et al. 1999; OSAVI Rondeaux, Steven
& Baret 1996; TCARI and TCARI/OSAVI Haboudane et al. 2002 (Remote Sens. Environ. 81, eq. 4-6: the OSAVI of the ratio
carries the (1 + 0.16) factor); MCARI Daughtry et al. 2000; CIRE (CI red-edge) Gitelson et al. 2003; MTCI Dash &
Curran 2004; WDVI Clevers 1989. Formulas as in the Awesome Spectral Indices catalogue (spyndex).

Every function works on numpy arrays and torch tensors alike. A division by a denominator whose magnitude is
below ``EPS`` gives ``fill`` (NaN by default; the models use 0).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

EPS = 1e-6

#: Bands each index needs.
INDEX_BANDS: dict[str, tuple[str, ...]] = {
    "NDVI": ("B08", "B04"), "NDRE": ("B08", "B05"), "PSRI": ("B04", "B02", "B06"), "OSAVI": ("B08", "B04"),
    "TCARI": ("B05", "B04", "B03"), "TCARI/OSAVI": ("B05", "B04", "B03", "B08"), "MCARI": ("B05", "B04", "B03"),
    "CIRE": ("B08", "B05"), "MTCI": ("B06", "B05", "B04"), "WDVI": ("B08", "B04"),
}
INDEX_NAMES: tuple[str, ...] = tuple(INDEX_BANDS)


def canonical_index(name: str) -> str:
    """Upper-case canonical name (``tcari_osavi`` and ``TCARI-OSAVI`` are accepted for TCARI/OSAVI)."""
    key = name.strip().upper().replace("_", "/").replace("-", "/")
    if key not in INDEX_BANDS:
        raise KeyError(f"unknown index {name!r} (known: {', '.join(INDEX_NAMES)})")
    return key


def _is_torch(x: Any) -> bool:
    return type(x).__module__.startswith("torch")


def safe_div(a: Any, b: Any, fill: float = math.nan) -> Any:
    """``a / b`` where ``|b| >= EPS``, else ``fill`` (numpy or torch)."""
    if _is_torch(a) or _is_torch(b):
        import torch

        ok = b.abs() >= EPS
        return torch.where(ok, a / torch.where(ok, b, torch.ones_like(b)), torch.full_like(a * b, fill))
    a = np.asarray(a)
    b = np.asarray(b)
    ok = np.abs(b) >= EPS
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(ok, a / np.where(ok, b, 1), np.asarray(fill, dtype=np.result_type(a, b)))


def ndvi(N: Any, R: Any, fill: float = math.nan) -> Any:
    """NDVI = (N - R) / (N + R) (Rouse et al. 1974)."""
    return safe_div(N - R, N + R, fill)


def ndre(N: Any, RE1: Any, fill: float = math.nan) -> Any:
    """NDRE = (N - RE1) / (N + RE1) (Gitelson & Merzlyak 1994)."""
    return safe_div(N - RE1, N + RE1, fill)


def psri(R: Any, B: Any, RE2: Any, fill: float = math.nan) -> Any:
    """PSRI = (R - B) / RE2 (Merzlyak et al. 1999: (R678 - R500) / R750)."""
    return safe_div(R - B, RE2, fill)


def osavi(N: Any, R: Any, fill: float = math.nan) -> Any:
    """OSAVI = (N - R) / (N + R + 0.16) (Rondeaux, Steven & Baret 1996)."""
    return safe_div(N - R, N + R + 0.16, fill)


def tcari(RE1: Any, R: Any, G: Any, fill: float = math.nan) -> Any:
    """TCARI = 3 [(RE1 - R) - 0.2 (RE1 - G)(RE1 / R)] (Haboudane et al. 2002, eq. 4)."""
    return 3 * ((RE1 - R) - 0.2 * (RE1 - G) * safe_div(RE1, R, fill))


def tcari_osavi(RE1: Any, R: Any, G: Any, N: Any, fill: float = math.nan) -> Any:
    """TCARI/OSAVI with OSAVI = (1 + 0.16)(N - R) / (N + R + 0.16) (Haboudane et al. 2002, eq. 5-6)."""
    return safe_div(tcari(RE1, R, G, fill), (1 + 0.16) * safe_div(N - R, N + R + 0.16, fill), fill)


def mcari(RE1: Any, R: Any, G: Any, fill: float = math.nan) -> Any:
    """MCARI = [(RE1 - R) - 0.2 (RE1 - G)] (RE1 / R) (Daughtry et al. 2000)."""
    return ((RE1 - R) - 0.2 * (RE1 - G)) * safe_div(RE1, R, fill)


def cire(N: Any, RE1: Any, fill: float = math.nan) -> Any:
    """CIRE = N / RE1 - 1 (chlorophyll index red-edge, Gitelson et al. 2003)."""
    return safe_div(N, RE1, fill) - 1


def mtci(RE2: Any, RE1: Any, R: Any, fill: float = math.nan) -> Any:
    """MTCI = (RE2 - RE1) / (RE1 - R) (MERIS terrestrial chlorophyll index, Dash & Curran 2004)."""
    return safe_div(RE2 - RE1, RE1 - R, fill)


def wdvi(N: Any, R: Any, soil_slope: float = 1.0) -> Any:
    """WDVI = N - s R, s the soil-line slope N_soil / R_soil (Clevers 1989)."""
    return N - soil_slope * R


def compute_index(name: str, bands: Mapping[str, Any], soil_slope: float = 1.0, fill: float = math.nan) -> Any:
    """One index from reflectances ``bands`` (band name -> array), formulas in the module docstring."""
    key = canonical_index(name)
    missing = [b for b in INDEX_BANDS[key] if b not in bands]
    if missing:
        raise KeyError(f"index {key} needs band(s) {', '.join(missing)}")
    g = bands.get
    B, G, R, RE1, RE2, N = g("B02"), g("B03"), g("B04"), g("B05"), g("B06"), g("B08")
    if key == "NDVI":
        return ndvi(N, R, fill)
    if key == "NDRE":
        return ndre(N, RE1, fill)
    if key == "PSRI":
        return psri(R, B, RE2, fill)
    if key == "OSAVI":
        return osavi(N, R, fill)
    if key == "TCARI":
        return tcari(RE1, R, G, fill)
    if key == "MCARI":
        return mcari(RE1, R, G, fill)
    if key == "TCARI/OSAVI":
        return tcari_osavi(RE1, R, G, N, fill)
    if key == "CIRE":
        return cire(N, RE1, fill)
    if key == "MTCI":
        return mtci(RE2, RE1, R, fill)
    return wdvi(N, R, soil_slope)


def compute_indices(names: Sequence[str], data: Any, band_names: Sequence[str], axis: int,
                    soil_slope: float = 1.0, fill: float = math.nan) -> list[Any]:
    """Indices ``names`` from an array whose ``axis`` holds the bands ``band_names`` (numpy or torch)."""
    bands = {b: (data.select(axis, i) if _is_torch(data) else np.take(data, i, axis=axis))
             for i, b in enumerate(band_names)}
    return [compute_index(n, bands, soil_slope, fill) for n in names]
