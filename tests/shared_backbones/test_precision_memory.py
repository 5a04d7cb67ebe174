"""Precision policy resolution and memory helpers on known graphs."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from shared_backbones.errors import InputError
from shared_backbones.memory import activation_bytes, peak_rss_bytes, run_isolated, saved_activation_bytes
from shared_backbones.precision import PrecisionPolicy, resolve_device


def test_cpu_policies():
    p = PrecisionPolicy.resolve("auto", "cpu")
    assert (p.name, p.dtype, p.lightning, p.grad_scaler()) == ("fp32", None, "32-true", None)
    b = PrecisionPolicy.resolve("bf16", "cpu")
    assert (b.dtype, b.lightning) == (torch.bfloat16, "bf16-mixed")
    with b.autocast():
        assert torch.is_autocast_enabled("cpu")
        assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.bfloat16
    with p.autocast():
        assert not torch.is_autocast_enabled("cpu")
    with pytest.raises(InputError, match="fp16"):
        PrecisionPolicy.resolve("fp16", "cpu")
    with pytest.raises(InputError, match="unknown precision"):
        PrecisionPolicy.resolve("fp8", "cpu")


def test_cuda_auto_rules_with_mocked_capability(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert PrecisionPolicy.resolve("auto", torch.device("cuda")).name == "bf16"
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    p = PrecisionPolicy.resolve("auto", torch.device("cuda"))
    assert (p.name, p.lightning) == ("fp16", "16-mixed")
    assert resolve_device("auto").type == "cuda"


def test_resolve_device_errors(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == torch.device("cpu")
    with pytest.raises(InputError, match="no CUDA GPU"):
        resolve_device("cuda")
    with pytest.raises(InputError, match="unknown device"):
        resolve_device("tpu")


def test_activation_bytes_known_graph():
    m = nn.Sequential(nn.Linear(8, 16), nn.ReLU())
    x = torch.randn(4, 8)
    # addmm saves its input x (4*8 floats), relu saves its output (4*16 floats); the weight is excluded
    assert activation_bytes(m, x) == (4 * 8 + 4 * 16) * 4


def test_activation_bytes_of_a_conv_network_by_hand():
    """Conv2d(2->4, 3x3) + BatchNorm2d + ReLU on a 1x2x8x8 input, from the shapes: the conv saves its input (2*8*8
    floats), batch norm its input (4*8*8) and, in training, the batch mean and inverse std (4 + 4), ReLU its output
    (4*8*8); weights, bias and running statistics are excluded. In conv -> ReLU -> conv the ReLU's output is the second
    conv's input: one storage, counted once."""
    x = torch.randn(1, 2, 8, 8)
    m = nn.Sequential(nn.Conv2d(2, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU())
    assert activation_bytes(m, x) == (2 * 64 + 4 * 64 + 4 + 4 + 4 * 64) * 4
    assert activation_bytes(m.eval(), x) == (2 * 64 + 4 * 64 + 4 * 64) * 4
    chain = nn.Sequential(nn.Conv2d(2, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 4, 3, padding=1))
    assert activation_bytes(chain, x) == (2 * 64 + 4 * 64) * 4


def test_saved_bytes_counts_each_storage_once():
    x = torch.randn(100, requires_grad=True)
    # x is saved by both multiplications: counted once
    assert saved_activation_bytes(lambda: (x * x).sum() + (x * 3).sum()) == 400
    assert saved_activation_bytes(lambda: (x * x).sum(), exclude=[x]) == 0


def _alloc(mb: int) -> tuple[int, int, int]:
    """Allocate and touch ``mb`` MiB; return the sum and the peak RSS before and after, as peak_rss_bytes reads it."""
    import numpy as np

    before = peak_rss_bytes()
    a = np.empty(mb * 2 ** 20 // 8)
    a.fill(1.0)
    return int(a.sum()), before, peak_rss_bytes()


def test_run_isolated_measures_child_peak():
    """The child's peak moves by the memory it touched: 400 MiB of float64 ones raise peak_rss_bytes by 400 MiB
    (within 5%; a fresh process's peak is its current size), 1 MiB by at most a few MiB, and run_isolated reports
    the child's final peak (the old test asserted only ``peak_rss_bytes() > 0``)."""
    mib = 2 ** 20
    (n_small, before_small, after_small), rss_small = run_isolated(_alloc, 1)
    (n_big, before_big, after_big), rss_big = run_isolated(_alloc, 400)
    assert (n_small, n_big) == (mib // 8, 400 * mib // 8)
    assert 0.95 * 400 * mib <= after_big - before_big <= 1.05 * 400 * mib
    assert 0 <= after_small - before_small <= 4 * mib
    assert abs(rss_big - after_big) <= 4 * mib and abs(rss_small - after_small) <= 4 * mib  # kernel counters lag
    assert 0.9 * 400 * mib <= rss_big - rss_small <= 1.1 * 400 * mib


def test_time_interleaved_runs_warmup_then_alternates():
    from shared_backbones.timing import time_interleaved

    calls: list[str] = []
    t = time_interleaved({"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}, repeats=3)
    assert calls == ["a", "b"] * 4 and set(t) == {"a", "b"} and all(v >= 0 for v in t.values())


def test_interleaved_runs_with_a_given_clock_and_ratio_spread():
    from shared_backbones.timing import ratio_spread, time_interleaved_runs

    ticks = iter(range(100))
    t = time_interleaved_runs({"a": lambda: None, "b": lambda: next(ticks)}, repeats=3, clock=lambda: next(ticks))
    # every run reads the clock twice; "b" consumes one tick more inside its run
    assert t == {"a": [1, 1, 1], "b": [2, 2, 2]}
    assert ratio_spread([1.0, 4.0, 2.0], [2.0, 2.0, 2.0]) == {"min": 0.5, "median": 1.0, "max": 2.0}


@pytest.mark.parametrize("slow", [1, 2])
def test_pick_cpu_threads_keeps_the_faster_count_and_restores_torch_threads(slow):
    """A step that is slow at ``slow`` threads (a descheduled or an overhead-bound case) loses to the other count;
    the thread count is torch's again afterwards, and the per-step seconds are the medians."""
    import time

    from shared_backbones.timing import pick_cpu_threads

    seen: list[int] = []

    def step():
        seen.append(torch.get_num_threads())
        time.sleep(0.02 if seen[-1] == slow else 0.002)

    before = torch.get_num_threads()
    best, per_step = pick_cpu_threads(step, [1, 2], repeats=3, steps_per_run=2)
    assert best == 3 - slow and torch.get_num_threads() == before
    assert set(seen) == {1, 2} and len(seen) == 2 * 2 * 4  # one warm-up round and 3 rounds, 2 steps each
    assert per_step[slow] > 0.015 and per_step[3 - slow] < 0.015
    assert pick_cpu_threads(step, [1, 1]) == (1, {})
    # more threads must win by more than the margin: 5% faster keeps one thread
    fake = {1: 0.0100, 2: 0.0095}
    assert pick_cpu_threads(lambda: time.sleep(fake[torch.get_num_threads()]), [1, 2], repeats=3)[0] == 1


def test_return_freed_memory_hands_big_blocks_back():
    """After the setting, freed 8 MiB blocks leave the resident set at once (glibc); without it (measured: 65 MiB
    kept of 64 MiB freed) glibc's dynamic threshold keeps them in a heap whose top is held by a live block."""
    import sys

    from shared_backbones.memory import return_freed_memory

    if not sys.platform.startswith("linux"):
        assert return_freed_memory() is False
        return
    (ok, kept), _ = run_isolated(_rss_after_free)
    assert ok is True and kept < 4 * 2**20, kept


def _vm_rss() -> int:
    with open("/proc/self/status") as fh:
        return next(int(line.split()[1]) * 1024 for line in fh if line.startswith("VmRSS:"))


def _rss_after_free() -> tuple[bool, int]:
    import numpy as np

    from shared_backbones.memory import return_freed_memory

    ok = return_freed_memory(4)
    big = np.ones(24 * 2**20 // 8)          # without the setting, freeing it raises glibc's threshold to 24 MiB
    del big
    before = _vm_rss()
    blocks = [np.ones(8 * 2**20 // 8) for _ in range(8)]     # 64 MiB in 8 MiB blocks, touched
    keep = np.ones(2**20 // 8)              # a live block above them: the heap's top cannot be trimmed
    del blocks
    kept = _vm_rss() - before - keep.nbytes
    return ok, kept


def _faults_filling_64mib() -> tuple[int, str | None]:
    import resource

    import torch

    from shared_backbones.memory import return_freed_memory

    return_freed_memory(4)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    t = torch.empty(64 * 2**20 // 4).fill_(1.0)
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
    del t
    import os

    return faults, os.environ.get("THP_MEM_ALLOC_ENABLE")


def test_return_freed_memory_backs_big_tensors_with_huge_pages():
    """With transparent huge pages available (madvise or always), filling a fresh 64 MiB tensor faults in 2 MiB pages:
    a few dozen faults instead of the 16384 of 4 KiB pages (measured without it: about 16400)."""
    import sys
    from pathlib import Path

    thp = Path("/sys/kernel/mm/transparent_hugepage/enabled")
    if not sys.platform.startswith("linux") or not thp.exists() or "[never]" in thp.read_text():
        pytest.skip("no transparent huge pages on this system")
    (faults, env), _ = run_isolated(_faults_filling_64mib)
    assert env == "1"
    assert faults < 2000, faults
