"""Inverted bottleneck (MBConv): 1x1 expand -> depthwise kxk -> optional squeeze-excite -> 1x1 project.

- Sandler et al., "MobileNetV2: Inverted Residuals and Linear Bottlenecks", CVPR 2018,
  https://arxiv.org/abs/1801.04381 (the inverted residual with a linear bottleneck).
- Tan & Le, "EfficientNet: Rethinking Model Scaling for Convolutional Neural Networks", ICML 2019,
  https://arxiv.org/abs/1905.11946 (MBConv with squeeze-excite and SiLU).
- Hu et al., "Squeeze-and-Excitation Networks", CVPR 2018, https://arxiv.org/abs/1709.01507.
- Reversible MBConv stages as in Pendse et al., "Memory Efficient 3D U-Net with Reversible Mobile Inverted
  Bottlenecks for Brain Tumor Segmentation", BrainLes (MICCAI) 2020, https://arxiv.org/abs/2104.09648.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from ..reversible import ReversibleBlock, ReversibleSequence
from .conv import ConvNormAct, get_conv


class SqueezeExcite(nn.Module):
    """Channel attention: global average pool -> reduce -> act -> expand -> sigmoid gate."""

    def __init__(self, spatial_dims: int, channels: int, reduced: int) -> None:
        super().__init__()
        conv = get_conv(spatial_dims)
        self.reduce = conv(channels, max(1, reduced), 1)
        self.expand = conv(max(1, reduced), channels, 1)
        self.act = nn.SiLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = x.mean(dim=tuple(range(2, x.ndim)), keepdim=True)
        return x * torch.sigmoid(self.expand(self.act(self.reduce(s))))


class MBConv(nn.Module):
    """MBConv block for ``spatial_dims`` 1/2/3.

    Args:
        expand_ratio: hidden width = in_ch * expand_ratio (1 skips the expansion conv).
        se_ratio: squeeze-excite reduction relative to ``in_ch`` (None disables it).
        residual: add the input when shapes allow; False gives the bare body (for reversible f/g).
        dropout: dropout before the projection (kept exact by the reversible recompute).
    """

    def __init__(
        self,
        spatial_dims: int,
        in_ch: int,
        out_ch: int,
        expand_ratio: float = 4,
        kernel_size: int = 3,
        stride: int = 1,
        se_ratio: float | None = 0.25,
        norm: str = "group",
        act: str = "silu",
        residual: bool = True,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        hidden = max(1, int(round(in_ch * expand_ratio)))
        self.expand = (
            ConvNormAct(spatial_dims, in_ch, hidden, 1, norm=norm, act=act) if hidden != in_ch else nn.Identity()
        )
        self.depthwise = ConvNormAct(
            spatial_dims, hidden, hidden, kernel_size, stride=stride, groups=hidden, norm=norm, act=act
        )
        self.se = SqueezeExcite(spatial_dims, hidden, int(in_ch * se_ratio)) if se_ratio else nn.Identity()
        self.drop = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.project = ConvNormAct(spatial_dims, hidden, out_ch, 1, norm=norm, act=None)
        self.use_residual = residual and stride == 1 and in_ch == out_ch

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.project(self.drop(self.se(self.depthwise(self.expand(x)))))
        return x + y if self.use_residual else y


def reversible_mbconv_sequence(
    spatial_dims: int, channels: int, depth: int, reversible: bool = True, **mbconv_kwargs
) -> ReversibleSequence:
    """``depth`` reversible blocks whose f and g are MBConv bodies on ``channels // 2`` channels."""
    if channels % 2:
        raise ValueError("channels must be even for a reversible sequence")
    half = channels // 2
    kw = {**mbconv_kwargs, "residual": False}
    blocks = [
        ReversibleBlock(MBConv(spatial_dims, half, half, **kw), MBConv(spatial_dims, half, half, **kw))
        for _ in range(depth)
    ]
    return ReversibleSequence(blocks, reversible=reversible)
