"""Timing for benchmarks on shared machines: compare contenders by their fastest of interleaved runs."""

from __future__ import annotations

import time
from collections.abc import Callable


def time_interleaved(fns: dict[str, Callable[[], object]], repeats: int = 5) -> dict[str, float]:
    """Fastest of ``repeats`` runs per function (the least disturbed one), the runs interleaved after one warm-up
    each so that load changes on the machine hit every contender alike. Returns seconds per name."""
    for fn in fns.values():
        fn()
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(repeats):
        for k, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            times[k].append(time.perf_counter() - t0)
    return {k: min(v) for k, v in times.items()}
