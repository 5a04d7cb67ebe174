"""Streaming sliding-window inference: memory bounded by one slab of windows, not by classes x voxels.

Gaussian-weighted sliding-window prediction (nnU-Net, Isensee et al., Nature Methods 2021; the same weighting the
suite's own models use) blends overlapping window outputs into one class-score volume, which every peer holds whole:
``K x Z x Y x X`` float32 (7 GB for 118 classes at 200 x 273 x 273) and then a second copy of it on the input grid.
Here windows run in the order of their start along one *lead* axis, their weighted scores go into a ring buffer that
holds only the rows still open (one window's extent along the lead axis), and every row is handed on as soon as no
later window can touch it: normalised, resampled back to the input grid slab by slab (:class:`SlabResampler`) and
reduced to labels (or whatever the consumer wants). Peak memory: ``K x window_lead x plane`` for the open rows, one
window's output, and the output itself; the number of classes never multiplies the number of voxels.

With float32 accumulators the arithmetic is that of blending the whole volume at once (the same summation order per
voxel), so results equal it bit for bit; float16 accumulators (half the open-rows memory)
are chosen by :func:`plan_memory` only when float32 does not fit; they hold each window's share already divided by
the final weight sum (kept for the open rows only), so values stay on the scale of the scores.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

__all__ = ["MemoryPlan", "SlabResampler", "Windows", "available_memory", "plan_memory", "stream_windows"]

Emit = Callable[[int, torch.Tensor], None]
#: finished rows are handed on at most this many at a time (a float32 copy of them is the only extra memory)
EMIT_ROWS = 2
#: ``auto`` accumulates in float16 when float32 open rows would take more than this (float16 keeps labels within
#: 1e-4 of float32 on the 118-class benchmark and halves the largest buffer)
FP32_OPEN_ROWS_LIMIT = 1 << 30
#: windows are folded into the accumulators this many classes at a time (the only window-sized temporary)
CLASS_CHUNK = 16
#: one output slab of all classes on the input grid (and its probabilities) stays within this many bytes
SLAB_BYTES = 64 << 20


@dataclass(frozen=True)
class Windows:
    """Where windows go and how they are weighted: ``patch`` (spatial), ``starts`` per axis, the ``weight`` map
    (``patch``-shaped float32) and the mirror passes ``flips`` (tensor dims of a ``[B, C, *patch]`` batch; ``()`` is
    the plain pass)."""

    patch: tuple[int, ...]
    starts: tuple[tuple[int, ...], ...]
    weight: torch.Tensor
    flips: tuple[tuple[int, ...], ...] = ((),)

    @property
    def count(self) -> int:
        """Network evaluations per mirror pass."""
        return int(np.prod([len(s) for s in self.starts]))

    @property
    def centre(self) -> tuple[slice, ...]:
        """The spatial slices of the middle window (the middle start along every axis)."""
        return tuple(slice(s[len(s) // 2], s[len(s) // 2] + p) for s, p in zip(self.starts, self.patch))


def _pieces(start: int, length: int, cap: int) -> list[tuple[int, int, int]]:
    """``(ring_offset, source_offset, n)`` pieces of rows ``[start, start + length)`` in a ring of ``cap`` rows."""
    out, done = [], 0
    while done < length:
        r = (start + done) % cap
        n = min(length - done, cap - r)
        out.append((r, done, n))
        done += n
    return out


def stream_windows(net: Callable[[torch.Tensor], torch.Tensor], image: torch.Tensor, windows: Windows, *,
                   num_outputs: int | None, emit: Emit, lead: int = 0, acc_dtype: torch.dtype = torch.float32,
                   batch_size: int = 1, device: torch.device | str | None = None,
                   stitch_device: torch.device | str = "cpu",
                   on_window: Callable[[int], None] | None = None,
                   head: tuple[torch.Tensor, torch.Tensor] | None = None) -> None:
    """Run ``net`` over ``image`` ``[C, *S]`` (already at least ``windows.patch`` along every axis) and hand the
    normalised blended scores to ``emit(first_row, rows)`` in order along ``lead``: ``rows`` is float32
    ``[K, n, *other axes]`` for rows ``first_row .. first_row + n`` of the lead axis (every row exactly once).

    ``net`` maps ``[B, C, *patch]`` to ``[B, K, *patch]`` (a list/tuple: its first element, the full-resolution
    deep-supervision head; ``num_outputs`` None: K from the first output). Mirror passes are averaged before
    weighting, as nnU-Net does. The open rows live on ``stitch_device`` (the CPU by default: a GPU then only
    holds the network and one batch of windows).

    ``head`` ``(W [K, F], b [K])``: ``net`` returns the ``F`` features before a final linear (1x1 conv) layer
    instead of scores; the mirror passes are averaged on the features (the layer is linear, so this equals
    averaging scores) and the scores are made :data:`CLASS_CHUNK` classes at a time while they are folded in, so
    no ``K x patch`` tensor ever exists. Either way windows are folded in class chunks (no full-size temporary
    when the accumulators are float16).
    """
    patch = tuple(int(p) for p in windows.patch)
    spatial = tuple(int(s) for s in image.shape[1:])
    if len(patch) != len(spatial) or any(s < p for s, p in zip(spatial, patch)):
        raise ValueError(f"image {spatial} smaller than the window {patch} (pad it first)")
    device = torch.device(device) if device is not None else image.device
    cap = patch[lead]
    ring_shape = [cap if a == lead else s for a, s in enumerate(spatial)]
    stitch = torch.device(stitch_device)
    acc = torch.zeros([num_outputs, *ring_shape], dtype=acc_dtype, device=stitch) if num_outputs else None
    wsum = torch.zeros(ring_shape, dtype=torch.float32, device=stitch)
    weight = windows.weight.to(device=device, dtype=torch.float32)
    w_cpu = weight.to(stitch)
    other = [windows.starts[a] for a in range(len(spatial)) if a != lead]
    norm = None
    normed = 0                          # rows [0, normed) have their final weight sum in ``norm``
    if acc_dtype != torch.float32:
        # half-precision sums: each window adds its share already divided by the final weight sum, so values stay
        # on the scale of the scores (a raw Gaussian-weighted sum underflows float16 at the window borders); that
        # sum is known before any window runs and kept for the open rows only (a ring like the accumulators)
        norm = torch.zeros(ring_shape, dtype=torch.float32, device=stitch)
    n_rows = spatial[lead]
    emitted = 0

    def ring_index(r: int, n: int, start: tuple[int, ...]) -> tuple[slice, ...]:
        """Ring rows ``r .. r + n`` of the window at ``start`` (its extent on the other axes)."""
        return tuple(slice(r, r + n) if a == lead else slice(s, s + p)
                     for a, (s, p) in enumerate(zip(start, patch)))

    def open_norm(upto: int) -> None:
        """The final weight sums of rows ``normed .. upto`` (every window that touches them) into the ring."""
        nonlocal normed
        r0, r1 = normed, min(upto, n_rows)
        assert norm is not None
        for s_lead in windows.starts[lead]:
            lo, hi = max(r0, s_lead), min(r1, s_lead + cap)
            if hi <= lo:
                continue
            for rest in itertools.product(*other):
                st = (*rest[:lead], s_lead, *rest[lead:])
                for r, src, n in _pieces(lo, hi - lo, cap):
                    wsl = [slice(None)] * len(spatial)
                    wsl[lead] = slice(lo - s_lead + src, lo - s_lead + src + n)
                    norm[ring_index(r, n, st)] += w_cpu[tuple(wsl)]
        normed = max(normed, r1)

    def window_norm(start: tuple[int, ...]) -> torch.Tensor:
        """The final weight sums over the window at ``start`` (``patch``-shaped), from the ring."""
        assert norm is not None
        return torch.cat([norm[ring_index(r, n, start)] for r, _, n in _pieces(start[lead], cap, cap)], lead)
    hw = hb = None
    if head is not None:
        hw = head[0].to(device=device, dtype=torch.float32).reshape(head[0].shape[0], -1)
        hb = head[1].to(device=device, dtype=torch.float32)

    def flush(upto: int) -> None:
        nonlocal emitted
        assert acc is not None or upto == 0
        while emitted < upto:
            n = min(upto - emitted, cap - emitted % cap, EMIT_ROWS)
            r = emitted % cap
            rows = acc.narrow(1 + lead, r, n).to(torch.float32, copy=True)  # the ring slot is reused below
            if norm is None:
                rows.div_(wsum.narrow(lead, r, n))
            emit(emitted, rows.movedim(1 + lead, 1) if lead else rows)
            del rows
            acc.narrow(1 + lead, r, n).zero_()
            wsum.narrow(lead, r, n).zero_()
            if norm is not None:
                norm.narrow(lead, r, n).zero_()
            emitted += n

    def add(start: tuple[int, ...], pred: torch.Tensor | None, c0: int = 0, k: int | None = None) -> None:
        """Fold one window (its weighted scores ``[n, *patch]`` for classes ``c0 .. c0 + n`` of ``k``, or only its
        weights when ``pred`` is None)."""
        nonlocal acc
        if pred is not None and acc is None:
            acc = torch.zeros([k or pred.shape[0], *ring_shape], dtype=acc_dtype, device=stitch)
        rest = tuple(slice(s, s + p) for a, (s, p) in enumerate(zip(start, patch)) if a != lead)
        for r, src, n in _pieces(start[lead], cap, cap):
            idx = [slice(None)] * len(spatial)
            idx[lead] = slice(r, r + n)
            for a, sl in zip([a for a in range(len(spatial)) if a != lead], rest):
                idx[a] = sl
            if pred is None:
                wsl = [slice(None)] * len(spatial)
                wsl[lead] = slice(src, src + n)
                wsum[tuple(idx)] += w_cpu[tuple(wsl)]
            else:
                psl = [slice(None)] * (len(spatial) + 1)
                psl[1 + lead] = slice(src, src + n)
                acc[(slice(c0, c0 + pred.shape[0]), *idx)] += pred[tuple(psl)]

    for s_lead in windows.starts[lead]:
        flush(s_lead)
        if norm is not None:
            open_norm(s_lead + cap)
        starts = [tuple(list(rest[:lead]) + [s_lead] + list(rest[lead:])) for rest in itertools.product(*other)]
        for st in starts:
            add(st, None)
        for i in range(0, len(starts), max(1, batch_size)):
            group = starts[i:i + max(1, batch_size)]
            win = torch.stack([image[(slice(None), *[slice(s, s + p) for s, p in zip(st, patch)])]
                               for st in group]).to(device)
            pred = None
            for axes in windows.flips:
                p = net(win.flip(axes) if axes else win)
                if isinstance(p, (list, tuple)):
                    p = p[0]
                p = p.float()
                if axes:
                    p = p.flip(axes)
                pred = p if pred is None else pred.add_(p)
            assert pred is not None
            if len(windows.flips) > 1:
                pred.div_(len(windows.flips))
            k = int(hw.shape[0]) if hw is not None else int(pred.shape[1])
            for st, p in zip(group, pred):
                nrm = window_norm(st) if norm is not None else None
                feats = p.reshape(p.shape[0], -1) if hw is not None else None
                for c0 in range(0, k, CLASS_CHUNK):
                    c1 = min(k, c0 + CLASS_CHUNK)
                    if feats is None:
                        part = p[c0:c1]                 # a view of this batch's scores: scaled in place
                    else:
                        part = torch.addmm(hb[c0:c1, None], hw[c0:c1], feats).view(c1 - c0, *patch)
                    part = part.mul_(weight).to(stitch)
                    if nrm is not None:
                        part.div_(nrm)
                    add(st, part, c0, k)
                    del part
            del pred, win
            if on_window is not None:
                on_window(len(group))
    flush(n_rows)


class SlabResampler:
    """Rows of class scores ``[K, n, *plane_in]`` arriving in order along the lead axis -> the same scores on an
    output grid of ``n_out`` rows and ``plane_out``, a slab at a time: linear (``order`` 1) or nearest (0) along the
    lead axis with nnU-Net's edge-clamped centre alignment (``_axis_indices`` of :mod:`medseg.nnunet.preprocessing`),
    then bilinear or nearest in the plane. Each finished output slab ``[K, m, *plane_out]`` goes to
    ``emit(first_out_row, slab)``; input rows are kept one by one (no growing copy) and dropped as soon as no later
    output row needs them. ``slab`` (output rows per step) defaults to what keeps one slab of all classes within
    :data:`SLAB_BYTES` (one row for 118 classes on a 512 x 512 plane).

    ``labels``: emit the argmax over classes (``[m, *plane_out]`` int64, the first of equal maxima as
    ``torch.argmax``) instead of the scores, made :data:`CLASS_CHUNK` classes at a time, so no ``K x plane_out``
    tensor exists.

    ``head`` ``(W [K, F], b [K])``: the rows are ``F`` features, not scores; the scores are ``W @ f + b`` of the
    resampled features. Blending and resampling are linear with weights summing to one, so this equals resampling
    the scores themselves, and what is held (the engine's open rows included) has ``F`` channels, not ``K``."""

    def __init__(self, n_in: int, n_out: int, plane_out: Sequence[int], emit: Emit, *, lead_order: int = 1,
                 plane_order: int = 1, slab: int | None = None, labels: bool = False,
                 head: tuple[torch.Tensor, torch.Tensor] | None = None) -> None:
        from .nnunet.preprocessing import _axis_indices

        self.n_in, self.n_out, self.plane_out = n_in, n_out, tuple(int(p) for p in plane_out)
        self.same_lead = n_in == n_out
        i0, i1, w = _axis_indices(n_out, n_in, lead_order) if not self.same_lead else (
            np.arange(n_out), np.arange(n_out), np.zeros(n_out, np.float32))
        self.i0, self.i1, self.w, self.lead_order = i0, i1, w, lead_order
        self.plane_mode = "bilinear" if plane_order == 1 else "nearest-exact"
        self.emit, self.slab, self.labels = emit, slab, labels
        self.head = None if head is None else (head[0].detach().float().cpu().reshape(head[0].shape[0], -1),
                                               head[1].detach().float().cpu())
        self.rows: list[torch.Tensor] = []   # input rows buf_start, buf_start + 1, ... each [K, *plane_in]
        self.buf_start = 0
        self.next_out = 0

    def push(self, first: int, rows: torch.Tensor) -> None:
        """Input rows ``first ..`` (contiguous with what came before)."""
        if not self.rows:
            self.buf_start = first
        self.rows.extend(rows.unbind(1))
        have = self.buf_start + len(self.rows)
        ready = self.next_out
        while ready < self.n_out and self.i1[ready] < have:
            ready += 1
        while self.next_out < ready:
            if self.slab is None:
                k = int(self.head[0].shape[0]) if self.head is not None else rows.shape[0]
                k = min(CLASS_CHUNK, k) if self.labels else k
                if self.head is not None:
                    k += rows.shape[0]
                self.slab = max(1, min(8, SLAB_BYTES // (4 * k * int(np.prod(self.plane_out)))))
            b = min(ready, self.next_out + self.slab)
            self._out(self.next_out, b)
            self.next_out = b
        keep = int(self.i0[self.next_out]) if self.next_out < self.n_out else have
        drop = min(len(self.rows), max(0, keep - self.buf_start))
        if drop:
            del self.rows[:drop]
            self.buf_start += drop

    def _scores(self, a: int, b: int, c0: int, c1: int) -> torch.Tensor:
        """Output rows ``a .. b`` of classes ``c0 .. c1``: ``[c1 - c0, b - a, *plane_out]`` float32."""
        base = self.buf_start
        lo = torch.stack([self.rows[int(i) - base][c0:c1] for i in self.i0[a:b]], 1)
        if self.lead_order == 1 and not self.same_lead:
            hi = torch.stack([self.rows[int(i) - base][c0:c1] for i in self.i1[a:b]], 1)
            part = torch.lerp(lo, hi, torch.from_numpy(self.w[a:b]).view(1, -1, *([1] * (lo.ndim - 2))))
            del lo, hi
        else:
            part = lo
        if tuple(part.shape[2:]) != self.plane_out:
            kw = {"align_corners": False} if self.plane_mode == "bilinear" else {}
            part = F.interpolate(part.permute(1, 0, *range(2, part.ndim)), size=self.plane_out, mode=self.plane_mode,
                                 **kw).permute(1, 0, *range(2, part.ndim))
        return part

    def _out(self, a: int, b: int) -> None:
        k = int(self.rows[0].shape[0])
        scores: Callable[[int, int], torch.Tensor] = lambda c0, c1: self._scores(a, b, c0, c1)  # noqa: E731
        if self.head is not None:
            feats = self._scores(a, b, 0, k)
            flat, (w, bias) = feats.reshape(k, -1), self.head
            k = int(w.shape[0])

            def scores(c0: int, c1: int) -> torch.Tensor:
                return torch.addmm(bias[c0:c1, None], w[c0:c1], flat).view(c1 - c0, *feats.shape[1:])

        if not self.labels:
            self.emit(a, scores(0, k))
            return
        best = idx = None
        for c0 in range(0, k, CLASS_CHUNK):
            v, i = scores(c0, min(k, c0 + CLASS_CHUNK)).max(0)
            if best is None or idx is None:
                best, idx = v, i
            else:
                better = v > best                        # strictly: the first class keeps a tie, as argmax does
                best = torch.where(better, v, best)
                idx = torch.where(better, i + c0, idx)
        assert idx is not None
        self.emit(a, idx)

    def done(self) -> bool:
        return self.next_out >= self.n_out


# ------------------------------------------------------------------------------------------------ memory planning
def available_memory() -> int:
    """Bytes this process may still allocate: the smaller of the system's available memory (``MemAvailable``) and
    the room left under an address-space limit (``ulimit -v``)."""
    avail = None
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    avail = int(line.split()[1]) * 1024
                    break
    except OSError:
        pass
    if avail is None:
        try:
            avail = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        except (ValueError, OSError, AttributeError):
            avail = 1 << 62
    try:
        import resource

        soft = resource.getrlimit(resource.RLIMIT_AS)[0]
        if soft not in (resource.RLIM_INFINITY, -1):
            with open("/proc/self/statm") as f:
                used = int(f.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
            avail = min(avail, max(0, soft - used))
    except (ImportError, OSError, ValueError):
        pass
    return int(avail)


@dataclass(frozen=True)
class MemoryPlan:
    """Estimated peak bytes of one case's prediction and the accumulator type chosen for it."""

    acc_dtype: torch.dtype
    peak_bytes: int
    parts: dict[str, int]

    def describe(self) -> str:
        gib = 1 << 30
        return (f"estimated peak {self.peak_bytes / gib:.1f} GiB ("
                + ", ".join(f"{k} {v / gib:.2f}" for k, v in self.parts.items() if v) + " GiB)")


def plan_memory(*, classes: int, network_shape: Sequence[int], patch: Sequence[int], lead: int, channels: int,
                output_voxels: int, probabilities: bool, batch_size: int = 1, mirror_passes: int = 1,
                activation_bytes: int = 0, available: int | None = None,
                acc_dtype: str = "auto", head_features: int | None = None,
                stitch_channels: int | None = None) -> MemoryPlan:
    """Estimate the working set of a streamed prediction before any work and pick the accumulator type: float32 when
    its open rows are small (:data:`FP32_OPEN_ROWS_LIMIT`) and it fits ``available`` (default:
    :func:`available_memory`), else float16. ``acc_dtype`` ``float32``/``float16`` forces one; ``head_features``:
    the network hands the engine features of that width (``stream_windows(head=...)``), not scores;
    ``stitch_channels``: the open rows hold that many channels (features, see :class:`SlabResampler`'s ``head``)
    instead of ``classes``. Raises
    :class:`MemoryError` with a one-line reason when even float16 does not fit."""
    from shared_backbones.errors import InputError

    plane = int(np.prod([s for a, s in enumerate(network_shape) if a != lead]))
    open_rows = int(patch[lead]) * plane
    stitched = classes if stitch_channels is None else int(stitch_channels)   # what the open rows hold
    window = int(np.prod(patch))
    parts = {
        "image": channels * int(np.prod(network_shape)) * 4,
        "open rows": 0,
        "weights": open_rows * 4,
        "window outputs": (head_features or classes) * window * 4 * max(1, batch_size)
        * (2 if mirror_passes > 1 else 1) + min(classes, CLASS_CHUNK) * window * 4,
        "network": int(activation_bytes),
        "labels": output_voxels * 2,
        "probabilities": classes * output_voxels * 4 * 2 if probabilities else 0,
        "slabs": stitched * EMIT_ROWS * plane * 4 * 3 + 4 * SLAB_BYTES,
    }
    avail = available_memory() if available is None else int(available)
    choices = {"float32": [torch.float32], "float16": [torch.float16],
               "auto": [torch.float32, torch.float16]}.get(acc_dtype)
    if choices is None:
        raise InputError(f"accumulator type must be auto, float32 or float16, not {acc_dtype!r}")
    if acc_dtype == "auto" and stitched * open_rows * 4 > FP32_OPEN_ROWS_LIMIT:
        choices = [torch.float16]
    plan = None
    for dt in choices:
        parts["open rows"] = stitched * open_rows * (4 if dt == torch.float32 else 2)
        # the weight sums of the open rows (float16: also their final sums, see stream_windows)
        parts["weights"] = open_rows * 4 * (1 if dt == torch.float32 else 2)
        plan = MemoryPlan(dt, sum(parts.values()), dict(parts))
        if plan.peak_bytes <= avail:
            return plan
    assert plan is not None
    raise MemoryError(f"needs about {plan.peak_bytes / (1 << 30):.1f} GiB "
                      f"({plan.describe().split('(', 1)[1][:-1]}) but only {avail / (1 << 30):.1f} GiB are available")
