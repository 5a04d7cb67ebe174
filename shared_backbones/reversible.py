"""Additive-coupling reversible blocks and a memory-saving reversible sequence.

A :class:`ReversibleBlock` computes ``y1 = x1 + f(x2)``, ``y2 = x2 + g(y1)``; its inverse is exact, so a
:class:`ReversibleSequence` keeps only its final outputs and rebuilds every block's inputs during backward
(Gomez et al., "The Reversible Residual Network: Backpropagation Without Storing Activations", NeurIPS 2017,
https://arxiv.org/abs/1707.04585). Activation memory is then flat in depth.

Properties (see the project's DESIGN.md): one custom autograd Function for the whole sequence; the autocast
state of every device type is saved at forward and re-entered for the recompute; both streams stay in their
input dtype (fp32 under autocast: f/g outputs are cast back); the RNG state of every sub-function in training
mode is saved in forward order and restored for its recompute, so dropout is exact; caller tensors are never
freed or modified; parameters are inputs of the Function, so DDP (``find_unused_parameters=False``) sees their
gradients; ``reversible=False`` runs the very same weights as a plain network. GroupNorm/InstanceNorm/LayerNorm
are the natural norms in f and g; BatchNorm also works (batch statistics are recomputed exactly and its running
statistics are restored after the recompute, so they are updated once per step as in the plain network).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass

import torch
import torch.nn as nn

_AUTOCAST_DEVICES = tuple(d for d in ("cpu", "cuda", "xpu", "mps", "hpu") if torch.amp.is_autocast_available(d))


@dataclass(frozen=True)
class _AutocastState:
    states: tuple[tuple[str, bool, torch.dtype], ...]
    cache: bool

    @classmethod
    def capture(cls) -> _AutocastState:
        """The current autocast state of CPU, CUDA (when present) and any other device type where it is on."""
        states = []
        for dt in _AUTOCAST_DEVICES:
            enabled = torch.is_autocast_enabled(dt)
            if enabled or dt == "cpu" or (dt == "cuda" and torch.cuda.is_available()):
                states.append((dt, enabled, torch.get_autocast_dtype(dt)))
        return cls(tuple(states), torch.is_autocast_cache_enabled())

    @contextlib.contextmanager
    def enter(self) -> Iterator[None]:
        with contextlib.ExitStack() as stack:
            for dt, enabled, dtype in self.states:
                stack.enter_context(torch.autocast(device_type=dt, dtype=dtype, enabled=enabled,
                                                   cache_enabled=self.cache))
            yield


class _RNGState:
    """CPU RNG state plus the CUDA state of the devices the tensors live on."""

    def __init__(self, devices: Sequence[int]) -> None:
        self.devices = list(devices)
        self.cpu = torch.get_rng_state()
        self.cuda = [torch.cuda.get_rng_state(d) for d in self.devices]

    def restore(self) -> None:
        torch.set_rng_state(self.cpu)
        for d, s in zip(self.devices, self.cuda):
            torch.cuda.set_rng_state(s, d)


@contextlib.contextmanager
def _frozen_running_stats(module: nn.Module) -> Iterator[None]:
    """Keep BatchNorm running statistics as they are across a recompute (the forward already updated them once)."""
    bufs = [buf for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)
            and m.training and m.track_running_stats
            for buf in (m.running_mean, m.running_var, m.num_batches_tracked) if buf is not None]
    saved = [buf.clone() for buf in bufs]
    try:
        yield
    finally:
        with torch.no_grad():
            for buf, old in zip(bufs, saved):
                buf.copy_(old)


class ReversibleBlock(nn.Module):
    """Additive coupling ``y1 = x1 + f(x2)``, ``y2 = x2 + g(y1)``; f and g keep the shape of their input."""

    def __init__(self, f: nn.Module, g: nn.Module) -> None:
        super().__init__()
        self.f = f
        self.g = g

    def forward(self, x1: torch.Tensor, x2: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        y1 = x1 + self.f(x2).to(x1.dtype)
        y2 = x2 + self.g(y1).to(x2.dtype)
        return y1, y2

    def inverse(self, y1: torch.Tensor, y2: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Rebuild the inputs from the outputs."""
        x2 = y2 - self.g(y1).to(y2.dtype)
        x1 = y1 - self.f(x2).to(y1.dtype)
        return x1, x2


def _recompute(fn: nn.Module, inp: torch.Tensor, rng: _RNGState | None, dtype: torch.dtype,
               grad_out: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor | None]]:
    """Re-run ``fn(inp)`` with grad (replaying its RNG state) and backprop ``grad_out`` through it.

    Returns the detached output (cast to the stream ``dtype``), the gradient w.r.t. ``inp`` and the gradients of
    ``fn``'s trainable parameters (None for unused ones)."""
    params = [p for p in fn.parameters() if p.requires_grad]
    with _frozen_running_stats(fn):  # restored after the backward, which reads the saved running statistics
        with torch.enable_grad():
            x = inp.detach().requires_grad_(True)
            if rng is not None:
                rng.restore()
            out = fn(x).to(dtype)
        grads = torch.autograd.grad(out, [x, *params], grad_out, allow_unused=True)
    d_in = grads[0] if grads[0] is not None else torch.zeros_like(inp)
    return out.detach(), d_in, list(grads[1:])


class _ReversibleFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x1: torch.Tensor, x2: torch.Tensor, blocks: Sequence[ReversibleBlock], *params: torch.Tensor):
        ctx.blocks = blocks
        ctx.autocast = _AutocastState.capture()
        devices = sorted({t.device.index or 0 for t in (x1, x2) if t.is_cuda})
        ctx.devices = devices
        rng: list[tuple[_RNGState | None, _RNGState | None]] = []
        with torch.no_grad():
            y1, y2 = x1, x2
            for b in blocks:
                rf = _RNGState(devices) if b.f.training else None
                y1 = y1 + b.f(y2).to(y1.dtype)
                rg = _RNGState(devices) if b.g.training else None
                y2 = y2 + b.g(y1).to(y2.dtype)
                rng.append((rf, rg))
        ctx.rng = rng
        ctx.save_for_backward(y1, y2)
        return y1, y2

    @staticmethod
    def backward(ctx, dy1: torch.Tensor, dy2: torch.Tensor):
        y1, y2 = (t.detach() for t in ctx.saved_tensors)
        blocks = ctx.blocks
        dy1 = torch.zeros_like(y1) if dy1 is None else dy1
        dy2 = torch.zeros_like(y2) if dy2 is None else dy2
        grads: list[list[torch.Tensor | None]] = []
        replay = any(r is not None for pair in ctx.rng for r in pair)
        fork = torch.random.fork_rng(devices=ctx.devices) if replay else contextlib.nullcontext()
        with fork, ctx.autocast.enter():
            for b, (rf, rg) in zip(reversed(blocks), reversed(ctx.rng)):
                # g: rebuild x2 = y2 - g(y1) and push dy2 through g; then f: x1 = y1 - f(x2), push dy1 through f
                gy, dg_in, g_grads = _recompute(b.g, y1, rg, y2.dtype, dy2)
                x2 = y2 - gy
                dy1 = dy1 + dg_in
                fx, df_in, f_grads = _recompute(b.f, x2, rf, y1.dtype, dy1)
                x1 = y1 - fx
                grads.append(f_grads + g_grads)
                y1, y2, dy2 = x1, x2, dy2 + df_in
        flat: list[torch.Tensor | None] = []
        for g in reversed(grads):
            flat.extend(g)
        return (dy1, dy2, None, *flat)


class ReversibleSequence(nn.Module):
    """A stack of :class:`ReversibleBlock` run on the two channel halves of ``x``.

    Args:
        blocks: the coupling blocks, applied in order.
        reversible: True keeps only outputs and recomputes in backward; False runs the same weights as a plain
            network (for tests, inference and comparison). Can be switched at any time via ``.reversible``.
        split_dim: the dimension split into two equal halves (channels, 1).
    """

    def __init__(self, blocks: Iterable[ReversibleBlock], reversible: bool = True, split_dim: int = 1) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(blocks)
        if not all(isinstance(b, ReversibleBlock) for b in self.blocks):
            raise TypeError("ReversibleSequence takes ReversibleBlock modules")
        self.reversible = reversible
        self.split_dim = split_dim

    def forward_pair(self, x1: torch.Tensor, x2: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Run the blocks on explicit halves."""
        use_function = self.reversible and torch.is_grad_enabled() and (
            x1.requires_grad or x2.requires_grad or any(p.requires_grad for p in self.parameters()))
        if not use_function or not len(self.blocks):
            for b in self.blocks:
                x1, x2 = b(x1, x2)
            return x1, x2
        # parameters in the order backward returns their gradients: per block, f's then g's
        params = [p for b in self.blocks for m in (b.f, b.g) for p in m.parameters() if p.requires_grad]
        return _ReversibleFunction.apply(x1, x2, list(self.blocks), *params)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[self.split_dim] % 2:
            raise ValueError(f"reversible sequence needs an even size on dim {self.split_dim}, "
                             f"got {x.shape[self.split_dim]}")
        x1, x2 = x.chunk(2, dim=self.split_dim)
        y1, y2 = self.forward_pair(x1, x2)
        return torch.cat([y1, y2], dim=self.split_dim)

    def inverse(self, y: torch.Tensor) -> torch.Tensor:
        """Rebuild the input of the whole sequence from its output."""
        y1, y2 = y.chunk(2, dim=self.split_dim)
        for b in reversed(self.blocks):
            y1, y2 = b.inverse(y1, y2)
        return torch.cat([y1, y2], dim=self.split_dim)
