"""Former home of the Sentinel-2 readers, kept as a re-export for existing callers.

New code imports from the focused modules: :mod:`remote.naming` (band/date names, constants), :mod:`remote.discovery`
(``open_series``), :mod:`remote.reader` (``S2Series``), :mod:`remote.resample` (``Grid``), :mod:`remote.writer`
(``geotiff_profile``), :mod:`remote.safe` and :mod:`remote.stac` (ESA products, STAC items).
"""

from __future__ import annotations

from .discovery import open_series
from .naming import (
    BANDS_10M,
    BASELINE_04_START,
    DEFAULT_BANDS,
    DEFAULT_SCL_INVALID,
    QUANTIFICATION,
    S2_BANDS,
    SCL,
    TIF_SUFFIXES,
    parse_band,
    parse_date,
    parse_dates,
    read_date_list,
)
from .reader import (
    BandRef,
    DateSource,
    S2Series,
    _open,
    open_raster,
    read_single_band,
    read_window_band,
    resolve_offset,
)
from .resample import AlignedResampler, Grid
from .writer import geotiff_profile

__all__ = [
    "AlignedResampler", "BANDS_10M", "BASELINE_04_START", "BandRef", "DEFAULT_BANDS", "DEFAULT_SCL_INVALID",
    "DateSource", "Grid", "QUANTIFICATION", "S2Series", "S2_BANDS", "SCL", "TIF_SUFFIXES", "_open",
    "geotiff_profile", "open_raster", "open_series", "parse_band", "parse_date", "parse_dates", "read_date_list",
    "read_single_band", "read_window_band", "resolve_offset",
]
