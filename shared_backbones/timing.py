"""Timing for benchmarks on shared machines: compare contenders by interleaved runs (fastest run, and the spread of
the per-round ratios)."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable


def time_interleaved_runs(fns: dict[str, Callable[[], object]], repeats: int = 5,
                          clock: Callable[[], float] = time.perf_counter) -> dict[str, list[float]]:
    """Seconds of every run per function: one warm-up each, then ``repeats`` rounds in which every function runs
    once, so that load changes on the machine hit every contender alike. ``clock``: ``time.process_time`` measures
    CPU time (for single-threaded work on a shared machine), the default wall time."""
    for fn in fns.values():
        fn()
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(repeats):
        for k, fn in fns.items():
            t0 = clock()
            fn()
            times[k].append(clock() - t0)
    return times


def time_interleaved(fns: dict[str, Callable[[], object]], repeats: int = 5) -> dict[str, float]:
    """Fastest of ``repeats`` interleaved runs per function (the least disturbed one). Returns seconds per name."""
    return {k: min(v) for k, v in time_interleaved_runs(fns, repeats).items()}


def ratio_spread(num: list[float], den: list[float]) -> dict[str, float]:
    """Min, median and max over rounds of ``num[i] / den[i]`` (runs of the same interleaved round)."""
    r = sorted(a / b for a, b in zip(num, den))
    return {"min": r[0], "median": statistics.median(r), "max": r[-1]}
