"""1-D Fourier blocks: spectral convolution over time (rfft -> learnable complex weights -> irfft).

A spectral convolution is a global (circular) convolution along the sequence computed in the frequency domain:
its receptive field is the whole sequence whatever the number of retained modes, and its parameter count does not
grow with the sequence length. ``FourierBlock1d`` adds a local branch (1x1 or k-tap conv), as the fast Fourier
convolution (FFC) pairs a global spectral path with a local one.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn

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

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = x.shape[-1]
        work = torch.float64 if x.dtype == torch.float64 else torch.float32  # FFTs run in fp32 under autocast
        with torch.autocast(device_type=x.device.type, enabled=False):
            xf = torch.fft.rfft(x.to(work), dim=-1, norm="ortho")
            m = min(xf.shape[-1], self.max_modes)
            if self.mixing == "full":
                w = torch.view_as_complex(self.weight[:, :, :m].to(work).contiguous())
                kept = torch.einsum("bim,iom->bom", xf[..., :m], w)
            else:
                w = torch.view_as_complex(self.weight[:, :m].to(work).contiguous())
                kept = xf[..., :m] * w
            out = torch.cat([kept, kept.new_zeros(kept.shape[:-1] + (xf.shape[-1] - m,))], dim=-1)
            return torch.fft.irfft(out, n=t, dim=-1, norm="ortho").to(x.dtype)


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
