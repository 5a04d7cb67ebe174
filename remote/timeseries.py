"""Cloud masking and gap filling onto a regular time grid (the FFT over time needs regular sampling)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence

import numpy as np

from .io import DEFAULT_SCL_INVALID


def scl_valid(scl: np.ndarray, invalid: Sequence[int] = DEFAULT_SCL_INVALID) -> np.ndarray:
    """True where the scene classification is usable (not in ``invalid``)."""
    return ~np.isin(scl, np.asarray(sorted(invalid), dtype=np.int64))


def day_numbers(dates: Sequence[dt.date]) -> np.ndarray:
    """Proleptic ordinal day numbers (float64) of ``dates``."""
    return np.asarray([d.toordinal() for d in dates], dtype=np.float64)


def regular_grid(start: dt.date, end: dt.date, step_days: int) -> list[dt.date]:
    """``start``, ``start + step``, ... up to and including the last step not after ``end``."""
    if step_days < 1:
        raise ValueError("step_days must be >= 1")
    n = (end - start).days // step_days + 1
    return [start + dt.timedelta(days=i * step_days) for i in range(max(1, n))]


def default_step(dates: Sequence[dt.date]) -> int:
    """The median spacing of ``dates`` in days (at least 1)."""
    if len(dates) < 2:
        return 1
    return max(1, int(round(float(np.median(np.diff(day_numbers(sorted(dates))))))))


def align_grid(grid: Sequence[dt.date], obs: Sequence[dt.date]) -> list[dt.date]:
    """Shift a model's time grid by whole years so it covers the season of ``obs`` (a model trained on 2024 applied
    to 2025 reads 2025's observations at the same days of the year)."""
    years = round((np.median(day_numbers(obs)) - np.median(day_numbers(grid))) / 365.25)
    if years == 0:
        return list(grid)
    out = []
    for d in grid:
        try:
            out.append(d.replace(year=d.year + years))
        except ValueError:  # 29 February
            out.append(d.replace(year=d.year + years, day=28))
    return out


def fill_gaps(obs: np.ndarray, obs_days: np.ndarray, grid_days: np.ndarray) -> np.ndarray:
    """Linear interpolation in time of ``obs`` [T, ...] (NaN = missing) onto ``grid_days``; values before the first /
    after the last valid observation are held constant. A series with no valid observation stays NaN.

    Missingness is taken per element, so bands may be missing independently. Returns [G, ...] float32.
    """
    obs = np.asarray(obs, dtype=np.float32)
    t, tail = obs.shape[0], obs.shape[1:]
    if t != len(obs_days):
        raise ValueError(f"{t} observations but {len(obs_days)} dates")
    order = np.argsort(obs_days, kind="stable")
    obs, days = obs[order].reshape(t, -1), np.asarray(obs_days, dtype=np.float64)[order]
    valid = ~np.isnan(obs)
    idx = np.where(valid, np.arange(t)[:, None], -1)
    prev = np.maximum.accumulate(idx, axis=0)                    # last valid index <= t
    nxt = np.where(valid, np.arange(t)[:, None], t)
    nxt = np.minimum.accumulate(nxt[::-1], axis=0)[::-1]         # first valid index >= t
    grid_days = np.asarray(grid_days, dtype=np.float64)
    right = np.searchsorted(days, grid_days, side="right") - 1   # last obs date <= g
    left = np.searchsorted(days, grid_days, side="left")         # first obs date >= g
    cols = np.arange(obs.shape[1])
    out = np.empty((len(grid_days), obs.shape[1]), dtype=np.float32)
    for g, (r, lf) in enumerate(zip(right, left)):
        p = prev[r] if r >= 0 else np.full(obs.shape[1], -1)
        n = nxt[lf] if lf < t else np.full(obs.shape[1], t)
        has_p, has_n = p >= 0, n < t
        pv = obs[np.clip(p, 0, t - 1), cols]
        nv = obs[np.clip(n, 0, t - 1), cols]
        dp = days[np.clip(p, 0, t - 1)]
        dn = days[np.clip(n, 0, t - 1)]
        span = dn - dp
        w = np.where(span > 0, (grid_days[g] - dp) / np.where(span > 0, span, 1), 0.0)
        val = np.where(has_p & has_n, pv + w * (nv - pv), np.where(has_p, pv, nv))
        out[g] = np.where(has_p | has_n, val, np.nan)
    return out.reshape((len(grid_days),) + tail)
