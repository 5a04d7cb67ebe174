"""Cloud masking and gap filling onto a regular time grid (the FFT over time needs regular sampling)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence

import numpy as np

from .naming import DEFAULT_SCL_INVALID


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

    Missingness is taken per element, so bands may be missing independently; when the gaps of ``obs`` [T, B, ...]
    are the same in every band (as :meth:`remote.reader.S2Series.read` returns them) the search runs once per pixel.
    Returns [G, ...] float32.
    """
    obs = np.asarray(obs, dtype=np.float32)
    t, tail = obs.shape[0], obs.shape[1:]
    if t != len(obs_days):
        raise ValueError(f"{t} observations but {len(obs_days)} dates")
    order = np.argsort(obs_days, kind="stable")
    days = np.asarray(obs_days, dtype=np.float64)[order]
    obs = obs[order]
    nan = np.isnan(obs)
    if obs.ndim >= 3 and np.array_equal(nan.any(1), nan.all(1)):      # same gaps in every band
        x = obs.reshape(t, obs.shape[1], -1)
        valid = ~nan[:, 0].reshape(t, -1)
    else:
        x = obs.reshape(t, 1, -1)
        valid = ~nan.reshape(t, -1)
    p = x.shape[2]
    steps = np.arange(t, dtype=np.int32)[:, None]
    prev = np.maximum.accumulate(np.where(valid, steps, -1), axis=0)              # last valid index <= t
    nxt = np.minimum.accumulate(np.where(valid, steps, t)[::-1], axis=0)[::-1]   # first valid index >= t
    grid_days = np.asarray(grid_days, dtype=np.float64)
    right = np.searchsorted(days, grid_days, side="right") - 1   # last obs date <= g
    left = np.searchsorted(days, grid_days, side="left")         # first obs date >= g
    out = np.empty((len(grid_days), x.shape[1], p), dtype=np.float32)
    flat, stride = x.reshape(-1), x.shape[1] * p
    base = np.arange(stride, dtype=np.int64).reshape(x.shape[1], p)
    for g, (r, lf) in enumerate(zip(right, left)):
        pi = prev[r] if r >= 0 else np.full(p, -1, np.int32)
        ni = nxt[lf] if lf < t else np.full(p, t, np.int32)
        # one-sided pixels take their one neighbour on both sides (weight 0); a pixel with no valid observation at
        # all reads NaN on every date, so it stays NaN without a mask
        pc = np.where(pi >= 0, pi, ni).clip(0, t - 1)
        nc = np.where(ni < t, ni, pc).clip(0, t - 1)
        pv = flat.take(base + pc.astype(np.int64) * stride)    # [B, P] = x[pc, b, p]
        nv = flat.take(base + nc.astype(np.int64) * stride)
        span = days[nc] - days[pc]
        w = np.where(span > 0, (grid_days[g] - days[pc]) / np.where(span > 0, span, 1), 0.0).astype(np.float32)
        nv -= pv
        nv *= w
        np.add(pv, nv, out=out[g])
    return out.reshape((len(grid_days),) + tail)
