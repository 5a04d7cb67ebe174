"""1-D Fourier blocks: spectral convolution over time (rfft -> learnable complex weights -> irfft).

A spectral convolution is a global (circular) convolution along the sequence computed in the frequency domain:
its receptive field is the whole sequence whatever the number of retained modes, and its parameter count does not
grow with the sequence length. ``FourierBlock1d`` adds a local branch (1x1 or k-tap conv), as the fast Fourier
convolution (FFC) pairs a global spectral path with a local one.

For short sequences (satellite time series of a few to a few dozen dates) the whole linear part of a block (spectral
branch + local branch) is one small matrix over the flattened (time, channel) axis: ``FourierBlock1d.time_major``
runs the block as a single matrix product on ``[N, T * C]`` time-major inputs, then the norm and activation, which
on a CPU is several times faster than many tiny FFTs or per-channel batched products (same values up to float
rounding).
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from .conv import get_act, get_norm


class SpectralConv1d(nn.Module):
    """Global convolution in the frequency domain (FNO/FFC style) over the last axis of [N, C, T].

    Args:
        channels: input channels <C_in>.
        out_channels: output channels <C_out> (default: ``channels``).
        n_modes: number of lowest rfft modes kept <M> (None keeps up to 64 modes, i.e. all modes for T <= 126);
            higher modes are zeroed.
        mixing: ``"full"``: complex weights [C_in, C_out, M] mix channels per mode;
            ``"depthwise"``: one complex weight per channel and mode [C, M] (needs C_in == C_out).

    The transform is orthonormal (``norm="ortho"``); FFTs run in float32 (float64 for float64 inputs) even under
    autocast, and the result is cast back to the input dtype.
    """

    def __init__(self, channels: int, out_channels: int | None = None, n_modes: int | None = None,
                 mixing: str = "full") -> None:
        super().__init__()
        out_channels = out_channels or channels
        if mixing not in ("full", "depthwise"):
            raise ValueError(f"mixing must be 'full' or 'depthwise', got {mixing!r}")
        if mixing == "depthwise" and out_channels != channels:
            raise ValueError("depthwise spectral mixing needs out_channels == channels")
        self.n_modes = n_modes
        self.mixing = mixing
        self.max_modes = n_modes or 64
        if mixing == "full":
            scale = 1.0 / math.sqrt(channels * out_channels)
            self.weight = nn.Parameter(scale * torch.randn(channels, out_channels, self.max_modes, 2))
        else:
            self.weight = nn.Parameter(torch.randn(channels, self.max_modes, 2) / math.sqrt(2.0))

    #: sequences up to this length run as a matrix product with the equivalent T x T kernel (same linear map,
    #: much faster than many tiny FFTs); longer ones run through rfft / irfft.
    MATMUL_MAX_LEN = 64

    def _weights(self, m: int, dtype: torch.dtype) -> torch.Tensor:
        w = self.weight[:, :, :m] if self.mixing == "full" else self.weight[:, :m]
        return torch.view_as_complex(w.to(dtype).contiguous())

    def kernel(self, t: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """The equivalent real kernel along time: row ``s`` is the response to a unit impulse at ``s``.
        Shape [C, T, T] (depthwise) or [C_in, C_out, T, T] (full)."""
        eye = torch.eye(t, dtype=dtype, device=self.weight.device)
        f = torch.fft.rfft(eye, dim=-1, norm="ortho")              # [T, F]
        m = min(f.shape[-1], self.max_modes)
        w = self._weights(m, dtype)
        spec = f[None, :, :m] * w[:, None, :] if self.mixing == "depthwise" else f[:, :m] * w[:, :, None, :]
        return torch.fft.irfft(spec, n=t, dim=-1, norm="ortho")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, t = x.shape
        work = torch.float64 if x.dtype == torch.float64 else torch.float32  # runs in fp32 under autocast
        with torch.autocast(device_type=x.device.type, enabled=False):
            xw = x.to(work)
            if t <= self.MATMUL_MAX_LEN:
                k = self.kernel(t, work)
                if self.mixing == "depthwise":
                    y = torch.bmm(xw.permute(1, 0, 2), k).permute(1, 0, 2)
                else:
                    y = (xw.reshape(n, c * t) @ k.permute(0, 2, 1, 3).reshape(c * t, -1)).reshape(n, -1, t)
                return y.to(x.dtype)
            xf = torch.fft.rfft(xw, dim=-1, norm="ortho")
            m = min(xf.shape[-1], self.max_modes)
            w = self._weights(m, work)
            kept = torch.einsum("bim,iom->bom", xf[..., :m], w) if self.mixing == "full" else xf[..., :m] * w
            # irfft zero-pads the missing (higher) modes up to n // 2 + 1
            return torch.fft.irfft(kept, n=t, dim=-1, norm="ortho").to(x.dtype)


class FourierBlock1d(nn.Module):
    """Spectral (global) branch + local conv branch, norm, activation, residual:
    ``x + drop(act(norm(spectral(x) + local(x))))`` on [N, C, T].

    Args:
        channels: channels <C> (kept).
        n_modes: rfft modes kept by the spectral branch <M>.
        dropout: dropout on the block's update.
        kernel_size: taps of the local branch (1 = pointwise; odd sizes pad "same").
        mixing: spectral channel mixing, ``"full"`` or ``"depthwise"`` (see :class:`SpectralConv1d`).
        norm, act: names for ``blocks.conv.get_norm`` / ``get_act`` (default GroupNorm(1) = layer norm, GELU).
    """

    def __init__(self, channels: int, n_modes: int | None = None, dropout: float = 0.0, kernel_size: int = 1,
                 mixing: str = "full", norm: str | None = "layer", act: str | None = "gelu") -> None:
        super().__init__()
        if kernel_size % 2 != 1:
            raise ValueError("kernel_size must be odd")
        self.spectral = SpectralConv1d(channels, channels, n_modes, mixing=mixing)
        self.local = nn.Conv1d(channels, channels, kernel_size, padding=kernel_size // 2)
        self.norm = get_norm(norm, 1, channels)
        self.act = get_act(act)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.drop(self.act(self.norm(self.spectral(x) + self.local(x))))

    def linear_map(self, t: int, dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
        """The block's linear part (spectral + local branch, before the norm) on sequences of length ``t`` as a
        time-major matrix: ``(M [T * C, T * C], bias [T * C])`` with ``z = x @ M + bias`` for ``x`` [N, T, C]
        flattened to [N, T * C]. Built by probing the branches with unit impulses, so it is differentiable in the
        weights and exact for any ``mixing`` and ``kernel_size``."""
        c = self.local.in_channels
        eye = torch.eye(c * t, dtype=dtype, device=self.local.weight.device).view(c * t, t, c).transpose(1, 2)
        with torch.autocast(device_type=eye.device.type, enabled=False):
            resp = self.spectral(eye) + F.conv1d(eye, self.local.weight.to(dtype), None,
                                                 padding=self.local.padding)     # [T*C (t-major in), C, T]
        m = resp.transpose(1, 2).reshape(c * t, c * t)
        bias = self.local.bias.to(dtype) if self.local.bias is not None else torch.zeros(c, dtype=dtype,
                                                                                          device=eye.device)
        return m, bias.repeat(t)

    def supports_time_major(self) -> bool:
        """True when the norm is a single-group GroupNorm (layer norm over channels x time) or absent."""
        n = self.norm
        return isinstance(n, nn.Identity) or (isinstance(n, nn.GroupNorm) and n.num_groups == 1)

    def time_major(self, x: torch.Tensor, t: int, m: torch.Tensor | None = None,
                   bias: torch.Tensor | None = None) -> torch.Tensor:
        """The block on time-major flattened inputs ``x`` [N, T * C] (``m``, ``bias``: :meth:`linear_map`, built
        here when not given). Same result as ``forward`` on [N, C, T] up to float rounding."""
        if m is None or bias is None:
            m, bias = self.linear_map(t, x.dtype)
        z = torch.addmm(bias, x, m)
        n = self.norm
        if isinstance(n, nn.GroupNorm):
            w = n.weight.repeat(t) if n.weight is not None else None
            b = n.bias.repeat(t) if n.bias is not None else None
            z = F.layer_norm(z, (z.shape[-1],), w, b, n.eps)
        return x + self.drop(self.act(z))
