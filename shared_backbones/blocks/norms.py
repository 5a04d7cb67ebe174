"""Normalisations over [N, C, T] sequences used by Conv-TasNet: global (gLN) and cumulative (cLN) layer norm
(Luo & Mesgarani, TASLP 2019, https://arxiv.org/abs/1809.07454, section III-C)."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


class GlobalLayerNorm(nn.GroupNorm):
    """gLN: statistics over channels and all time steps (one group); same keys as ``nn.GroupNorm(1, C, eps=1e-8)``."""

    def __init__(self, channels: int, eps: float = 1e-8) -> None:
        super().__init__(num_groups=1, num_channels=channels, eps=eps)


class CumulativeLayerNorm(nn.Module):
    """cLN (causal): at step t, statistics over all channels and steps <= t. Keys ``weight``, ``bias``."""

    def __init__(self, channels: int, eps: float = 1e-8) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, t = x.shape
        xs = x.float()
        count = torch.arange(1, t + 1, device=x.device, dtype=xs.dtype) * c
        cum_sum = xs.sum(1).cumsum(-1)
        cum_sq = (xs * xs).sum(1).cumsum(-1)
        mean = cum_sum / count
        var = (cum_sq / count - mean * mean).clamp_min(0)
        y = (xs - mean[:, None]) / torch.sqrt(var[:, None] + self.eps)
        return (y * self.weight[:, None] + self.bias[:, None]).to(x.dtype)


class ChannelLayerNorm(nn.Module):
    """Channel-wise layer norm (Asteroid's ``cLN``): each frame normalised over its channels only, so it is causal.
    Keys ``weight``, ``bias`` [C]; eps 1e-8 inside the square root, as Asteroid."""

    def __init__(self, channels: int, eps: float = 1e-8) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.layer_norm(x.transpose(1, -1), x.shape[1:2], self.weight, self.bias, self.eps).transpose(1, -1)
