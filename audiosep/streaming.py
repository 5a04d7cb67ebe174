"""Stateful streaming separation with a causal Conv-TasNet (Luo & Mesgarani, "Conv-TasNet: Surpassing Ideal
Time-Frequency Magnitude Masking for Speech Separation", IEEE/ACM TASLP 2019, section III-C and IV: the causal
configuration with cumulative layer norm for real-time use).

:class:`StreamingSeparator` runs a causal model block by block and keeps, between blocks, exactly the state the
offline forward would have at that point, so nothing is recomputed:

- the encoder keeps the input samples of the frame not yet complete (less than one window <L>);
- every dilated depthwise convolution keeps its own left context, the last (P-1)*d frames of its input (a
  preallocated buffer per block);
- the cumulative layer norms (the paper's cLN, Asteroid's ``cgLN``) keep their running sums of values and squares
  and their count; the channel-wise norm (Asteroid's ``cLN``) needs no state;
- the decoder's overlap-add keeps the second half of the last decoded frame.

The output is the offline causal forward of the whole signal, split into blocks: concatenating every
:meth:`~StreamingSeparator.process` output and the :meth:`~StreamingSeparator.flush` output gives exactly the
input's length and equals ``model(signal)`` within float32 rounding, for any split of the input into blocks.
Algorithmic latency is one encoder window (<L> samples: 2 ms at 8 kHz for L=16): an output sample is returned once
the window that ends it has arrived.

Per block, the work is a fixed sequence of in-place numpy operations on preallocated float32 buffers (time-major
[frames, channels], the biases folded into the matrix products, every norm's affine folded into the weights that
follow it, the skip outputs of all blocks summed by one matrix product): at blocks of a few milliseconds the cost is
the count of operations, not their arithmetic, and numpy's per-call cost and its BLAS's small-matrix products are
several times cheaper than torch's on the CPU. The weights are copied from the model when the separator is built.

Input at another rate goes through :class:`StreamingResampler`, a causal block-by-block form of
``torchaudio.functional.resample`` (its windowed-sinc kernel, computed the same way): the streamed result equals
``resample(model(resample(x, input_rate, model_rate)), model_rate, input_rate)`` cut to the input's length, and each
resampler adds its own delay to the reported latency.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn as nn
from scipy.special import expit

from shared_backbones.errors import InputError

F32 = np.float32


_rowsum = np.add.reduce
# row sums of squares of h [T, C]: numpy >= 2 has the vecdot ufunc
_sumsq = getattr(np, "vecdot", None) or (lambda a, b, out=None: np.einsum("ij,ij->i", a, b, out=out))


def _c(a: np.ndarray) -> np.ndarray:
    """C-contiguous float32 (row-major weights: the BLAS path numpy takes for small products depends on it)."""
    return np.ascontiguousarray(a, dtype=F32)


def _np(t: torch.Tensor) -> np.ndarray:
    return t.detach().to("cpu", torch.float32).numpy().astype(F32, copy=True)


def _sinc_kernel(orig: int, new: int, width_zeros: int = 6, rolloff: float = 0.99) -> tuple[np.ndarray, int]:
    """``torchaudio.functional.resample``'s kernel ``[new, 2*width + orig]`` (``sinc_interp_hann``, float32, the same
    operations in the same order) for rates already divided by their gcd, and its ``width``."""
    base = min(orig, new) * rolloff
    width = math.ceil(width_zeros * orig / base)
    idx = torch.arange(-width, width + orig, dtype=torch.float32)[None, None] / orig
    t = torch.arange(0, -new, -1, dtype=torch.float32)[:, None, None] / new + idx
    t *= base
    t = t.clamp_(-width_zeros, width_zeros)
    window = torch.cos(t * math.pi / width_zeros / 2) ** 2
    t *= math.pi
    kernels = torch.where(t == 0, torch.tensor(1.0).to(t), t.sin() / t)
    kernels *= window * (base / orig)
    return kernels[:, 0].numpy().astype(F32), width


class StreamingResampler:
    """Causal, block-by-block ``torchaudio.functional.resample`` (windowed sinc, Hann, 6 zero crossings, rolloff
    0.99) for ``channels`` signals: the concatenated outputs of :meth:`process` and :meth:`flush` equal the offline
    ``resample`` of the whole signal (length ``ceil(n * new_rate / orig_rate)``).

    Output comes in frames of ``new`` samples (the rates divided by their gcd) once the ``2*width + orig`` input
    samples a frame's kernel spans have arrived; ``delay`` is the most input samples an output sample waits for
    beyond its own time."""

    def __init__(self, orig_rate: int, new_rate: int, channels: int = 1) -> None:
        g = math.gcd(int(orig_rate), int(new_rate))
        self.orig, self.new = int(orig_rate) // g, int(new_rate) // g
        kernel, self.width = _sinc_kernel(self.orig, self.new)
        self.kernel_t = np.ascontiguousarray(kernel.T)  # [K, new]
        self.taps = kernel.shape[1]
        self.channels = channels
        self.delay = self.width + self.orig  # input samples
        self._buf = np.zeros((channels, max(4 * self.taps, 4096)), F32)
        self.reset()

    def reset(self) -> None:
        """Start a new signal."""
        self._buf[:, : self.width] = 0.0
        self._len, self._start, self._n_in, self._n_out = self.width, 0, 0, 0

    def _frames(self, out: list[np.ndarray]) -> None:
        avail = self._len - self._start
        if avail < self.taps:
            return
        nf = (avail - self.taps) // self.orig + 1
        b = self._buf
        st = b.strides
        frames = np.ndarray((self.channels, nf, self.taps), F32, b, self._start * st[1],
                            (st[0], self.orig * st[1], st[1]))
        out.append((np.ascontiguousarray(frames) @ self.kernel_t).reshape(self.channels, nf * self.new))
        self._start += nf * self.orig

    def _feed(self, x: np.ndarray, out: list[np.ndarray]) -> None:
        pos, n = 0, x.shape[1]
        while pos < n:
            if self._len + (n - pos) > self._buf.shape[1] and self._start:
                keep = self._len - self._start
                self._buf[:, :keep] = self._buf[:, self._start : self._len].copy()
                self._len, self._start = keep, 0
            k = min(n - pos, self._buf.shape[1] - self._len)
            self._buf[:, self._len : self._len + k] = x[:, pos : pos + k]
            self._len += k
            pos += k
            self._frames(out)

    def process(self, x: np.ndarray) -> np.ndarray:
        """``x`` [channels, n] float32 -> the output samples now complete, [channels, m]."""
        out: list[np.ndarray] = []
        self._feed(x, out)
        self._n_in += x.shape[1]
        y = np.concatenate(out, 1) if out else np.zeros((self.channels, 0), F32)
        self._n_out += y.shape[1]
        return y

    def flush(self) -> np.ndarray:
        """The rest of the output (the signal padded with zeros as ``resample`` pads it); then :meth:`reset`."""
        out: list[np.ndarray] = []
        self._feed(np.zeros((self.channels, self.width + self.orig), F32), out)
        total = -(-self.new * self._n_in // self.orig)
        y = np.concatenate(out, 1) if out else np.zeros((self.channels, 0), F32)
        y = y[:, : max(0, total - self._n_out)]
        self.reset()
        return y


def _norm_kind(m: nn.Module, where: str) -> tuple[bool, float, np.ndarray, np.ndarray]:
    """(cumulative, eps, weight, bias) of a causal norm; InputError for a norm that needs the whole signal."""
    from shared_backbones.blocks.norms import ChannelLayerNorm, CumulativeLayerNorm

    if isinstance(m, CumulativeLayerNorm):
        return True, float(m.eps), _np(m.weight), _np(m.bias)
    if isinstance(m, ChannelLayerNorm):
        return False, float(m.eps), _np(m.weight), _np(m.bias)
    if isinstance(m, nn.GroupNorm):
        raise InputError(
            f"cannot stream: the model uses global layer norm (gLN) in {where}, which normalises every frame with "
            "statistics of the whole signal, so it is not causal (use a causal model: cLN / cgLN with causal=True)"
        )
    raise InputError(f"cannot stream: {where} is a {type(m).__name__}, not a causal layer norm (cLN / cgLN)")


def _prelu(m: nn.PReLU) -> np.ndarray | float:
    a = _np(m.weight)
    return float(a[0]) if a.size == 1 else a


class _Layer:
    """One TCN block's weights (norm affines folded in) and its streaming state."""

    __slots__ = ("w1", "a1", "cum1", "eps1", "wdw", "early", "P", "ctx", "ring", "rows", "rs", "tap_strides", "rpos",
                 "t3", "a2", "cum2", "eps2", "wres", "run1", "run2", "slot", "views")


class _Views:
    """Views of the step buffers for one step length (see ``StreamingSeparator._views``)."""


class StreamingSeparator:
    """Block-by-block separation with a causal Conv-TasNet, equal to its offline forward (see the module docstring).

    Args:
        model: a causal :class:`audiosep.models.ConvTasNet` (``causal=True`` and a causal norm: ``cln`` - the paper's
            cLN, Asteroid's cgLN - or ``chanln`` - Asteroid's cLN), e.g. the ``convtasnet-causal`` preset or an
            imported Asteroid causal model; also a loaded :class:`audiosep.separate.Separator` (its ``net`` and rate).
            Models with gLN or centred padding are refused (:class:`InputError`, one line saying why), as are models
            with non-finite weights. The weights are copied: later changes to ``model`` are not seen.
        input_rate: rate of the blocks given to :meth:`process` (default: ``model_rate``). When it differs from the
            model's rate, causal :class:`StreamingResampler` s convert in and back out.
        model_rate: the model's rate (default: the model's ``sample_rate`` attribute if present, else 8000).
        max_frames: encoder frames computed per internal step (larger blocks are split; buffers are sized by it).

    Attributes: ``n_src``, ``model_rate``, ``input_rate``, ``latency_samples`` / ``latency_seconds`` (algorithmic
    latency at ``input_rate``: one encoder window plus the resamplers' delays), ``hop`` (the encoder hop at the
    input rate: the smallest useful block), ``window`` (<L> at the model rate), ``resampler_delay_samples`` (the part
    of the latency due to resampling, at the input rate), ``samples_in`` / ``samples_out`` of the current stream.
    """

    SMALL = 8  # steps of up to this many frames compute the norms' statistics with Python scalars

    def __init__(self, model: nn.Module, *, input_rate: int | None = None, model_rate: int | None = None,
                 max_frames: int = 64) -> None:
        if hasattr(model, "net") and not isinstance(model, nn.Module):  # a loaded Separator
            model_rate = model_rate or int(getattr(model, "sample_rate", 0) or 0) or None
            model = model.net
        from .models import ConvTasNet

        if not isinstance(model, ConvTasNet):
            raise InputError(f"cannot stream a {type(model).__name__}: streaming needs a causal Conv-TasNet")
        self.model_rate = int(model_rate or getattr(model, "sample_rate", None) or 8000)
        self.input_rate = int(input_rate or self.model_rate)
        if self.model_rate <= 0 or self.input_rate <= 0:
            raise InputError(f"sample rates must be positive (input {self.input_rate}, model {self.model_rate})")
        self.max_frames = max(1, int(max_frames))
        self._build(model)
        if self.input_rate != self.model_rate:
            self._rs_in: StreamingResampler | None = StreamingResampler(self.input_rate, self.model_rate, 1)
            self._rs_out: StreamingResampler | None = StreamingResampler(self.model_rate, self.input_rate,
                                                                         self.n_src)
            r = self.input_rate / self.model_rate
            delay = self._rs_in.delay + self._rs_out.delay * r
            self.resampler_delay_samples = math.ceil(delay)
            self.latency_samples = math.ceil(delay + self.window * r)
            self.hop = max(1, math.ceil(self.stride * r))
        else:
            self._rs_in = self._rs_out = None
            self.resampler_delay_samples = 0
            self.latency_samples = self.window
            self.hop = self.stride
        self.latency_seconds = self.latency_samples / self.input_rate
        self.reset()

    # ------------------------------------------------------------------ model -> folded weights and buffers
    def _build(self, model: nn.Module) -> None:
        from shared_backbones.blocks.tcn import TCNBlock

        for name, p in model.named_parameters():
            if not torch.isfinite(p).all():
                raise InputError(f"model weight {name} holds NaN/inf: its output would not be finite; refusing to "
                                 "stream it")
        gen = model.mask_generator
        if gen.reversible:
            raise InputError("cannot stream: streaming supports the plain TCN stack, not the reversible one")
        blocks = list(gen.conv_layers)
        if not blocks or not all(isinstance(b, TCNBlock) for b in blocks):
            raise InputError("cannot stream: the mask generator is not a stack of Conv-TasNet TCN blocks")
        for i, b in enumerate(blocks):
            if not b.causal:
                d = b.conv_layers[3].dilation[0]
                raise InputError(
                    f"cannot stream: the model is not causal (centred padding: TCN block {i} looks "
                    f"{b.pad // 2 if d else 0} frames ahead); streaming needs a causal model (causal=True, cLN/cgLN)")
        S, L = int(model.enc_stride), int(model.enc_kernel_size)
        if L != 2 * S:
            raise InputError(f"cannot stream: encoder window {L} is not twice its hop {S}")
        self.stride, self.window = S, L
        self.pad = S if model.encoder_padding else 0
        self.n_src = int(model.num_sources)
        N = int(model.enc_num_feats)
        self.N = N
        T = self.max_frames
        # encoder [L, N]; input norm folded into the input 1x1 conv [N + 1, B] (last row: bias)
        self.w_enc = np.ascontiguousarray(_np(model.encoder.weight)[:, 0, :].T)
        self.cum_in, self.eps_in, g, beta = _norm_kind(gen.input_norm, "the input norm")
        w = _np(gen.input_conv.weight)[:, :, 0]  # [B, N]
        B = w.shape[0]
        self.w_in = _c(np.vstack([w.T * g[:, None], (_np(gen.input_conv.bias) + w @ beta)[None]]))
        self.feats = np.zeros((T, N), F32)  # encoder output, kept for the masks
        self.fn = np.ones((T, N + 1), F32)  # normalised features + a column of ones (bias)
        self.xa = np.ones((T, B + 1), F32)  # residual stream + a column of ones
        layers: list[_Layer] = []
        skips = []
        H = int(blocks[0].conv_layers[0].out_channels)
        self.H = H
        for i, b in enumerate(blocks):
            c = b.conv_layers
            if int(c[0].out_channels) != H:
                raise InputError("cannot stream: TCN blocks of different widths")
            ly = _Layer()
            w1 = _np(c[0].weight)[:, :, 0]  # [H, B]
            ly.w1 = _c(np.vstack([w1.T, _np(c[0].bias)[None]]))  # [B + 1, H]
            ly.a1, ly.a2 = _prelu(c[1]), _prelu(c[4])
            ly.cum1, ly.eps1, g1, b1 = _norm_kind(c[2], f"TCN block {i}")
            ly.cum2, ly.eps2, g2, b2 = _norm_kind(c[5], f"TCN block {i}")
            dw = _np(c[3].weight)[:, 0, :]  # [H, P]
            P, d = dw.shape[1], int(c[3].dilation[0])
            ly.P, ly.ctx = P, (P - 1) * d
            ly.wdw = np.ascontiguousarray((dw * g1[:, None]).T[:, None, :])  # [P, 1, H], norm-1 scale folded in
            # the norm-1 shift enters through every tap that reads a real frame (taps on the left padding read 0)
            ly.early = [((P - 1 - k) * d, (dw[:, k] * b1).astype(F32)) for k in range(P - 1)]
            ly.t3 = np.empty((P + 1, T, H), F32)
            ly.t3[P] = _np(c[3].bias) + dw.sum(1) * b1  # the bias plane, summed with the P taps
            # room for 2T + ctx new rows before the context moves to the front (a copy that does not overlap);
            # staggered lengths, so that the blocks move their contexts at different steps
            ly.rows = 2 * ly.ctx + 2 * T + 8 * (i % 8)
            ly.ring = np.zeros((ly.rows, H), F32)
            ly.rs = ly.ring.strides[0]
            ly.tap_strides = (d * ly.rs, ly.rs, 4)
            ly.run1, ly.run2 = [0.0, 0.0], [0.0, 0.0]
            ly.views = {}
            ly.slot = i
            if b.res_out is not None:
                wr = _np(b.res_out.weight)[:, :, 0]  # [B, H]
                ly.wres = _c(np.vstack([wr.T * g2[:, None], (_np(b.res_out.bias) + wr @ b2)[None]]))
            else:
                ly.wres = None
            if b.skip_out is None:
                raise InputError("cannot stream: TCN block without skip output")
            ws = _np(b.skip_out.weight)[:, :, 0]  # [Sc, H]
            skips.append(np.vstack([ws.T * g2[:, None], (_np(b.skip_out.bias) + ws @ b2)[None]]))
            layers.append(ly)
        self.layers = layers
        self.w_skip = _c(np.vstack(skips))  # [layers * (H + 1), Sc]: all skip outputs summed in one product
        Sc = self.w_skip.shape[1]
        self.hn = np.ones((T, len(layers) * (H + 1)), F32)  # every block's normalised output + ones (biases)
        self.hbuf = np.empty((T, H), F32)
        self.tmp = np.empty((T, max(H, N, Sc)), F32)
        self.res = np.empty((T, B), F32)
        self.sk = np.ones((T, Sc + 1), F32)
        self.a_out = _prelu(gen.output_prelu)
        wo = _np(gen.output_conv.weight)[:, :, 0]  # [S*N, Sc]
        self.w_out = _c(np.vstack([wo.T, _np(gen.output_conv.bias)[None]]))  # [Sc + 1, S*N]
        self.sigmoid = gen.activate is torch.sigmoid
        self.masks = np.empty((T, self.n_src * N), F32)
        self.w_dec = np.ascontiguousarray(_np(model.decoder.weight)[:, 0, :])  # [N, L]
        self.dec = np.zeros((T + 1, self.n_src, L), F32)  # row 0 holds the overlap-add carry
        self.scratch = np.empty((self.n_src, T * S), F32)
        self.run_in = [0.0, 0.0]
        self.any_cum = self.cum_in or any(ly.cum1 or ly.cum2 for ly in layers)
        self._view_cache: dict[int, _Views] = {}
        self.frames = np.empty((T, L), F32)
        self.sbuf = np.zeros(max(4 * T * S, 4096) + L, F32)

    # ------------------------------------------------------------------ state
    def reset(self) -> None:
        """Start a new stream: every context, running statistic and overlap-add tail back to the start state."""
        self.sbuf[: self.pad] = 0.0
        self._slen, self._sstart = self.pad, 0
        self._frames = 0  # encoder frames computed
        self._emitted = 0  # output samples returned (model rate)
        self._n_in = 0  # input samples received (model rate)
        self.run_in[:] = (0.0, 0.0)
        for ly in self.layers:
            ly.ring[: ly.ctx] = 0.0
            ly.rpos = ly.ctx
            ly.run1[:] = (0.0, 0.0)
            ly.run2[:] = (0.0, 0.0)
        self.dec[0] = 0.0
        self._failed: str | None = None
        self.samples_in = self.samples_out = 0
        if self._rs_in is not None:
            self._rs_in.reset()
            self._rs_out.reset()

    # ------------------------------------------------------------------ one step of T frames
    def _stats(self, h: np.ndarray, run: list[float], cumulative: bool, eps: float, first: int, v: _Views) -> None:
        """Per-frame mean and std of a cumulative (cLN: over the channels of every frame so far) or channel-wise
        norm of ``h`` [T, C] into ``v.m32`` / ``v.s32``; ``run`` holds the running sums of values and squares
        (float64), ``first`` is the stream index of the step's first frame."""
        T, C = h.shape
        if T <= self.SMALL:  # a few frames: scalar arithmetic costs less than a dozen numpy calls
            _rowsum(h, 1, None, v.sq[0])
            _sumsq(h, h, out=v.sq[1])
            s, q = v.sq.tolist()
            means, stds = [0.0] * T, [0.0] * T
            if cumulative:
                cs, cq = run
                n = first * C
                for t in range(T):
                    cs += s[t]
                    cq += q[t]
                    n += C
                    m = cs / n
                    var = cq / n - m * m
                    means[t], stds[t] = m, math.sqrt((var if var > 0.0 else 0.0) + eps)
                run[0], run[1] = cs, cq
            else:
                for t in range(T):
                    m = s[t] / C
                    var = q[t] / C - m * m
                    means[t], stds[t] = m, math.sqrt((var if var > 0.0 else 0.0) + eps)
            v.ms32[...] = (means, stds)
            return
        carry = v.carry
        carry[0] = run
        st = carry[1:]
        _rowsum(h, 1, None, v.st0)
        v.st1[:] = _sumsq(h, h)
        if cumulative:
            np.cumsum(carry, 0, None, carry)
            run[0], run[1] = carry[T].tolist()
            inv = v.inv_n if C == self.N else v.inv_h
        else:
            inv = 1.0 / C
        ms, var = v.ms, v.var
        np.multiply(st, inv, out=ms)
        np.multiply(ms[:, :1], ms[:, :1], out=var)
        np.subtract(ms[:, 1:], var, out=var)
        np.maximum(var, 0.0, out=var)
        var += eps
        np.sqrt(var, out=v.s32)
        v.m32[...] = ms[:, :1]

    @staticmethod
    def _act(h: np.ndarray, a: np.ndarray | float, tmp: np.ndarray) -> None:
        """PReLU in place."""
        if isinstance(a, float) and 0.0 <= a <= 1.0:
            np.multiply(h, a, out=tmp)
            np.maximum(h, tmp, out=h)
        else:
            np.minimum(h, 0.0, out=tmp)
            np.maximum(h, 0.0, out=h)
            tmp *= a
            h += tmp

    def _views(self, T: int) -> _Views:
        """The buffers' views for a step of ``T`` frames (made once per T: slicing costs per block, too)."""
        v = self._view_cache.get(T)
        if v is not None:
            return v
        v = _Views()
        H, N, B = self.H, self.N, self.xa.shape[1] - 1
        v.frames, v.feats, v.fn, v.fnN = self.frames[:T], self.feats[:T], self.fn[:T], self.fn[:T, :N]
        v.xa, v.xaB, v.res = self.xa[:T], self.xa[:T, :B], self.res[:T]
        v.h, v.tmp, v.hn = self.hbuf[:T], self.tmp[:T, :H], self.hn[:T]
        v.ms32 = np.empty((2, T), F32)  # per-frame mean and std of the norm being applied
        v.m32, v.s32 = v.ms32[0][:, None], v.ms32[1][:, None]
        v.sq = np.empty((2, T), F32)
        v.carry = np.zeros((T + 1, 2))
        v.st0, v.st1 = v.carry[1:, 0], v.carry[1:, 1]
        v.ms, v.var = np.empty((T, 2)), np.empty((T, 1))
        v.cnt = np.arange(1, T + 1, dtype=np.float64)[:, None]
        v.inv_n, v.inv_h = np.empty((T, 1)), np.empty((T, 1))
        v.layers = [(ly.t3[:, :T], ly.t3[: ly.wdw.shape[0], :T], v.hn[:, ly.slot * (H + 1) : ly.slot * (H + 1) + H],
                     v.hn[:, ly.slot * (H + 1) : (ly.slot + 1) * (H + 1)]) for ly in self.layers]
        Sc = self.sk.shape[1] - 1
        v.sk, v.skSc, v.tmpSc = self.sk[:T], self.sk[:T, :Sc], self.tmp[:T, :Sc]
        v.masks = self.masks[:T]
        v.m3 = v.masks.reshape(T, self.n_src, N)
        v.m3flat = v.masks.reshape(T * self.n_src, N)
        v.feats3 = v.feats[:, None, :]
        v.dec_new = self.dec[1 : T + 1]
        v.dec_flat = v.dec_new.reshape(T * self.n_src, self.window)
        v.first_half, v.prev_half = self.dec[1 : T + 1, :, : self.stride], self.dec[:T, :, self.stride :]
        v.carry_dst, v.carry_src = self.dec[0, :, self.stride :], self.dec[T, :, self.stride :]
        self._view_cache[T] = v
        return v

    def _step(self, T: int, out: np.ndarray, out_pos: int) -> int:
        """Compute ``T`` encoder frames from the sample buffer; write the output samples they complete into
        ``out`` from ``out_pos``; return how many were written."""
        S, H = self.stride, self.H
        v = self._views(T)
        j0 = self._frames
        np.copyto(v.frames, np.ndarray((T, self.window), F32, self.sbuf, self._sstart * 4, (S * 4, 4)))
        self._sstart += T * S
        feats = v.feats
        np.matmul(v.frames, self.w_enc, out=feats)
        if T > self.SMALL and self.any_cum:  # 1 / (values counted) per frame, for the vectorised statistics
            np.add(v.cnt, j0, out=v.inv_h)
            np.multiply(v.inv_h, self.N, out=v.inv_n)
            np.divide(1.0, v.inv_n, out=v.inv_n)
            np.multiply(v.inv_h, H, out=v.inv_h)
            np.divide(1.0, v.inv_h, out=v.inv_h)
        m32, s32 = v.m32, v.s32
        stats, act = self._stats, self._act
        stats(feats, self.run_in, self.cum_in, self.eps_in, j0, v)
        np.subtract(feats, m32, out=v.fnN)
        np.divide(v.fnN, s32, out=v.fnN)
        xa, xaB, res = v.xa, v.xaB, v.res
        np.matmul(v.fn, self.w_in, out=res)
        xaB[...] = res
        h, tmp = v.h, v.tmp
        for ly, (t3, t3p, hn_dst, hn_slot) in zip(self.layers, v.layers):
            np.matmul(xa, ly.w1, out=h)
            act(h, ly.a1, tmp)
            stats(h, ly.run1, ly.cum1, ly.eps1, j0, v)
            ctx, r0 = ly.ctx, ly.rpos
            if r0 + T > ly.rows:  # move the context to the front (staggered over the blocks, rarely)
                ly.ring[:ctx] = ly.ring[r0 - ctx : r0]
                r0 = ctx
            key = (T, r0)
            dst_win = ly.views.get(key)
            if dst_win is None:  # the new rows, and the P taps of the dilated depthwise convolution (P row windows
                # d frames apart) as one strided view; positions repeat, so each pair is made once
                dst_win = ly.views[key] = (ly.ring[r0 : r0 + T], np.ndarray((ly.P, T, H), F32, ly.ring,
                                                                            (r0 - ctx) * ly.rs, ly.tap_strides))
            dst, win = dst_win
            np.subtract(h, m32, out=dst)
            np.divide(dst, s32, out=dst)
            np.multiply(win, ly.wdw, out=t3p)
            np.add.reduce(t3, 0, None, h)  # the last plane of t3 holds the bias
            ly.rpos = r0 + T
            if j0 < ctx:  # taps that still read the left padding carry no norm shift
                for off, wb in ly.early:
                    if j0 < off:
                        h[: min(T, off - j0)] -= wb
            act(h, ly.a2, tmp)
            stats(h, ly.run2, ly.cum2, ly.eps2, j0, v)
            np.subtract(h, m32, out=hn_dst)
            np.divide(hn_dst, s32, out=hn_dst)
            if ly.wres is not None:
                np.matmul(hn_slot, ly.wres, out=res)
                xaB += res
        np.matmul(v.hn, self.w_skip, out=v.tmpSc)  # the skip outputs of all blocks, summed
        v.skSc[...] = v.tmpSc
        act(v.skSc, self.a_out, v.tmpSc)
        masks = v.masks
        np.matmul(v.sk, self.w_out, out=masks)
        if self.sigmoid:
            expit(masks, out=masks)
        else:
            np.maximum(masks, 0.0, out=masks)
        np.multiply(v.m3, v.feats3, out=v.m3)
        np.matmul(v.m3flat, self.w_dec, out=v.dec_flat)
        # overlap-add: the first half of frame j plus the second half of frame j-1 completes S samples
        a = j0 * S - self.pad  # first output sample (output coordinates) of this step
        n = T * S
        if a >= 0:
            view = out[:, out_pos : out_pos + n].reshape(self.n_src, T, S).transpose(1, 0, 2)
            np.add(v.first_half, v.prev_half, out=view)
            written = n
        else:
            sc = self.scratch[:, :n]
            np.add(v.first_half, v.prev_half, out=sc.reshape(self.n_src, T, S).transpose(1, 0, 2))
            written = n + a
            out[:, out_pos : out_pos + written] = sc[:, -a:]
        v.carry_dst[...] = v.carry_src
        self._frames = j0 + T
        return written

    def _available_frames(self) -> int:
        avail = self._slen - self._sstart
        return (avail - self.window) // self.stride + 1 if avail >= self.window else 0

    def _final_count(self, n_in: int) -> int:
        """Output samples (model rate) complete once ``n_in`` input samples have arrived."""
        p = self.pad + n_in
        frames = (p - self.window) // self.stride + 1 if p >= self.window else 0
        return max(0, frames * self.stride - self.pad)

    def _feed(self, x: np.ndarray) -> np.ndarray:
        """Append model-rate samples, run every frame they complete; the completed output [n_src, m]."""
        n = x.shape[0]
        total = self._final_count(self._n_in + n)
        out = np.empty((self.n_src, total - self._emitted), F32)
        pos = opos = 0
        sb, T = self.sbuf, self.max_frames
        while True:
            nf = self._available_frames()
            while nf:
                t = min(nf, T)
                opos += self._step(t, out, opos)
                nf -= t
            if pos == n:
                break
            if self._slen + (n - pos) > sb.shape[0] and self._sstart:
                keep = self._slen - self._sstart
                sb[:keep] = sb[self._sstart : self._slen].copy()
                self._slen, self._sstart = keep, 0
            k = min(n - pos, sb.shape[0] - self._slen)
            sb[self._slen : self._slen + k] = x[pos : pos + k]
            self._slen += k
            pos += k
        self._n_in += n
        self._emitted = total
        return out

    # ------------------------------------------------------------------ public API
    def _check(self, y: np.ndarray) -> None:
        if not math.isfinite(float(y.sum(dtype=np.float64))):
            self._failed = (f"the model's output is not finite (NaN/inf) at output sample ~{self.samples_out} of "
                            "the stream; nothing was returned")
            raise InputError(self._failed)

    def process(self, block: torch.Tensor | np.ndarray) -> torch.Tensor:
        """Separate the next ``block`` (1-D float samples at ``input_rate``, any length >= 0): returns float32
        [n_src, m], the output samples now complete (m may be 0; the output lags the input by less than
        ``latency_samples``). Non-finite input or output raises :class:`InputError` (the stream must be
        :meth:`reset`)."""
        if self._failed:
            raise InputError(f"stream stopped earlier ({self._failed}); call reset() to start a new one")
        if isinstance(block, torch.Tensor):
            block = block.detach().to("cpu")
            x = block.numpy() if block.dtype == torch.float32 else block.to(torch.float32).numpy()
        else:
            x = np.asarray(block, dtype=F32)
        if x.ndim == 2 and x.shape[0] == 1:
            x = x[0]
        if x.ndim != 1:
            raise InputError(f"a stream block must be 1-D mono samples, got shape {tuple(x.shape)}")
        if x.size and not math.isfinite(float(x.sum(dtype=np.float64))):
            self._failed = f"input block at sample {self.samples_in} holds NaN/inf samples"
            raise InputError(self._failed)
        self.samples_in += x.shape[0]
        with np.errstate(all="ignore"):  # overflow / NaN is refused below, in one line, not as numpy warnings
            if self._rs_in is None:
                y = self._feed(x)
            else:
                y = self._rs_out.process(self._feed(self._rs_in.process(x[None])[0]))
                y = y[:, : max(0, self.samples_in - self.samples_out)]
        self._check(y)
        self.samples_out += y.shape[1]
        return torch.from_numpy(y)

    def flush(self) -> torch.Tensor:
        """End the stream: the remaining output [n_src, m], so that all outputs together have exactly the input's
        length and equal the offline forward (the signal's end padded with zeros as the model pads it). The
        separator is then :meth:`reset` for a new stream."""
        if self._failed:
            raise InputError(f"stream stopped earlier ({self._failed}); call reset() to start a new one")
        with np.errstate(all="ignore"):
            if self._rs_in is None:
                y = self._flush_model()
            else:
                y1 = self._feed(self._rs_in.flush()[0])
                y2 = self._flush_model()
                y = np.concatenate([self._rs_out.process(np.concatenate([y1, y2], 1)), self._rs_out.flush()], 1)
        y = y[:, : max(0, self.samples_in - self.samples_out)]
        if y.shape[1] < self.samples_in - self.samples_out:
            y = np.pad(y, ((0, 0), (0, self.samples_in - self.samples_out - y.shape[1])))
        self._check(y)
        self.reset()
        return torch.from_numpy(y)

    def _flush_model(self) -> np.ndarray:
        """The model's remaining output at the model rate, for the ``_n_in`` samples it received."""
        n, S, L = self._n_in, self.stride, self.window
        if self.pad:  # torchaudio framing: pad to a multiple of the hop, then one hop of the encoder's padding
            zeros = -(-n // S) * S - n + S
        else:  # Asteroid framing: the trailing partial frame is dropped, except that a short signal is one frame
            zeros = max(0, L - n)
        head = self._feed(np.zeros(zeros, F32)) if zeros else np.zeros((self.n_src, 0), F32)
        self._n_in = n
        # after the last frame, the overlap-add tail (second half of the last frame) is final; beyond it, zeros
        tail = self.dec[0, :, S:] if self._frames else np.zeros((self.n_src, 0), F32)
        y = np.concatenate([head, tail], 1)[:, : max(0, n - (self._emitted - head.shape[1]))]
        if y.shape[1] < n - (self._emitted - head.shape[1]):
            y = np.pad(y, ((0, 0), (0, n - (self._emitted - head.shape[1]) - y.shape[1])))
        return y

    def __repr__(self) -> str:
        return (f"StreamingSeparator({self.n_src} sources, model {self.model_rate} Hz, input {self.input_rate} Hz, "
                f"latency {self.latency_samples} samples, hop {self.hop})")
