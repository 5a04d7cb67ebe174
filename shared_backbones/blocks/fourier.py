"""1-D Fourier blocks: spectral convolution over time (rfft -> learnable complex weights -> irfft)."""

from __future__ import annotations

import math

import torch
import torch.nn as nn


class SpectralConv1d(nn.Module):
    """Global convolution in the frequency domain (FNO/FFC style) over the last axis of [N, C, T].

    Keeps the lowest ``n_modes`` rfft modes (all when None), mixes channels per mode with complex weights
    [C_in, C_out, modes], and returns to length T with irfft.
    """

    def __init__(self, channels: int, out_channels: int | None = None, n_modes: int | None = None) -> None:
        super().__init__()
        out_channels = out_channels or channels
        self.n_modes = n_modes
        self.max_modes = n_modes or 64
        scale = 1.0 / math.sqrt(channels * out_channels)
        self.weight = nn.Parameter(scale * torch.randn(channels, out_channels, self.max_modes, 2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = x.shape[-1]
        work = torch.float64 if x.dtype == torch.float64 else torch.float32  # FFTs run in fp32 under autocast
        xf = torch.fft.rfft(x.to(work), dim=-1, norm="ortho")
        m = min(xf.shape[-1], self.max_modes)
        w = torch.view_as_complex(self.weight[:, :, :m].to(work).contiguous())
        out = torch.zeros(x.shape[0], w.shape[1], xf.shape[-1], dtype=xf.dtype, device=x.device)
        out[..., :m] = torch.einsum("bim,iom->bom", xf[..., :m], w)
        return torch.fft.irfft(out, n=t, dim=-1, norm="ortho").to(x.dtype)


class FourierBlock1d(nn.Module):
    """Spectral branch + local 1x1 branch, GroupNorm, GELU, residual: x + act(norm(spec(x) + local(x)))."""

    def __init__(self, channels: int, n_modes: int | None = None, dropout: float = 0.0) -> None:
        super().__init__()
        self.spectral = SpectralConv1d(channels, channels, n_modes)
        self.local = nn.Conv1d(channels, channels, 1)
        self.norm = nn.GroupNorm(1, channels)
        self.act = nn.GELU()
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.drop(self.act(self.norm(self.spectral(x) + self.local(x))))
