"""STU-Net's residual block, with the official module names so checkpoints load with strict=True.

Huang et al., "STU-Net: Scalable and Transferable Medical Image Segmentation Models Empowered by Large-Scale
Supervised Pre-training", 2023, https://arxiv.org/abs/2304.06716.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from .conv import get_conv, get_norm


class STUResidualBlock(nn.Module):
    """conv1 3^d (stride) -> norm1 IN -> act1 LeakyReLU(0.01) -> conv2 3^d -> norm2 IN; shortcut conv3 1^d
    (stride) when ``use_1x1conv`` else identity; output LeakyReLU(y + shortcut)."""

    def __init__(self, in_ch: int, out_ch: int, stride: int | tuple[int, ...] = 1, use_1x1conv: bool = False,
                 spatial_dims: int = 3) -> None:
        super().__init__()
        conv = get_conv(spatial_dims)
        self.conv1 = conv(in_ch, out_ch, 3, stride=stride, padding=1, bias=True)
        self.norm1 = get_norm("instance", spatial_dims, out_ch)
        self.act1 = nn.LeakyReLU(0.01, inplace=True)
        self.conv2 = conv(out_ch, out_ch, 3, padding=1, bias=True)
        self.norm2 = get_norm("instance", spatial_dims, out_ch)
        self.conv3 = conv(in_ch, out_ch, 1, stride=stride, bias=True) if use_1x1conv else None
        self.act2 = nn.LeakyReLU(0.01, inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.norm2(self.conv2(self.act1(self.norm1(self.conv1(x)))))
        return self.act2(y + (self.conv3(x) if self.conv3 is not None else x))
