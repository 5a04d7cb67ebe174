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


def pick_cpu_threads(step: Callable[[], object], candidates: list[int] | None = None, repeats: int = 3,
                     steps_per_run: int = 3, margin: float = 0.1) -> tuple[int, dict[int, float]]:
    """The torch intra-op thread count that runs ``step`` fastest here and now: interleaved rounds of
    ``steps_per_run`` steps per candidate (default: 1 and torch's current count), the *median* seconds per step
    of each (the typical step, not the luckiest: on a small machine shared with other jobs, threads that keep
    being descheduled wait for each other). More threads are kept only when a step is faster by more than
    ``margin`` (0.1: 10%): a 2-core training run at two threads made 11% more steps than at one for twice the CPU.
    Leaves the thread count as it found it. Returns (threads, seconds per step by threads)."""
    import torch

    old = torch.get_num_threads()
    candidates = sorted({max(1, int(c)) for c in (candidates or [1, old])})
    if len(candidates) == 1:
        return candidates[0], {}

    def run(n: int) -> Callable[[], None]:
        def go() -> None:
            torch.set_num_threads(n)
            for _ in range(steps_per_run):
                step()
        return go

    try:
        runs = time_interleaved_runs({n: run(n) for n in candidates}, repeats)
    finally:
        torch.set_num_threads(old)
    per_step = {n: statistics.median(v) / steps_per_run for n, v in runs.items()}
    best = candidates[0]
    for n in candidates[1:]:
        if per_step[n] < per_step[best] * (1 - margin):
            best = n
    return best, per_step
