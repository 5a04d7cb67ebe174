"""Dimension-generic convolution, normalisation and activation factories (1-D/2-D/3-D via ``spatial_dims``)."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

_CONV = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}
_INSTANCE = {1: nn.InstanceNorm1d, 2: nn.InstanceNorm2d, 3: nn.InstanceNorm3d}
_BATCH = {1: nn.BatchNorm1d, 2: nn.BatchNorm2d, 3: nn.BatchNorm3d}


def get_conv(spatial_dims: int) -> type[nn.Module]:
    """``nn.Conv1d``/``Conv2d``/``Conv3d`` for ``spatial_dims`` 1/2/3."""
    if spatial_dims not in _CONV:
        raise ValueError(f"spatial_dims must be 1, 2 or 3, got {spatial_dims}")
    return _CONV[spatial_dims]


def get_norm(name: str | None, spatial_dims: int, channels: int, groups: int = 8) -> nn.Module:
    """A normalisation layer by name: instance (affine), group, batch, layer (GroupNorm(1)), gln, cln, or None."""
    if name is None or name == "none":
        return nn.Identity()
    if name == "instance":
        return _INSTANCE[spatial_dims](channels, affine=True, eps=1e-5)
    if name == "group":
        g = next(k for k in range(min(groups, channels), 0, -1) if channels % k == 0)
        return nn.GroupNorm(g, channels)
    if name == "batch":
        return _BATCH[spatial_dims](channels)
    if name == "layer":
        return nn.GroupNorm(1, channels)
    if name == "gln":
        from .norms import GlobalLayerNorm

        return GlobalLayerNorm(channels)
    if name == "cln":
        if spatial_dims != 1:
            raise ValueError("cln is defined for 1-D sequences")
        from .norms import CumulativeLayerNorm

        return CumulativeLayerNorm(channels)
    raise ValueError(f"unknown norm {name!r}")


def get_act(name: str | None, channels: int | None = None) -> nn.Module:
    """An activation by name: relu, leakyrelu (0.01), prelu, gelu, silu, sigmoid, tanh, or None."""
    if name is None or name == "none":
        return nn.Identity()
    table = {"relu": lambda: nn.ReLU(inplace=False), "leakyrelu": lambda: nn.LeakyReLU(0.01),
             "prelu": lambda: nn.PReLU(), "gelu": nn.GELU, "silu": nn.SiLU, "sigmoid": nn.Sigmoid, "tanh": nn.Tanh}
    if name not in table:
        raise ValueError(f"unknown activation {name!r}")
    return table[name]()


class ConvNormAct(nn.Sequential):
    """Conv -> norm -> activation, padding 'same' (or causal left padding for 1-D when ``causal``)."""

    def __init__(self, spatial_dims: int, in_ch: int, out_ch: int, kernel_size: int = 3, stride: int = 1,
                 dilation: int = 1, groups: int = 1, norm: str | None = "instance", act: str | None = "leakyrelu",
                 causal: bool = False, bias: bool | None = None) -> None:
        self.causal_pad = (kernel_size - 1) * dilation if causal else 0
        if causal and spatial_dims != 1:
            raise ValueError("causal padding is defined for 1-D")
        pad = 0 if causal else (kernel_size - 1) * dilation // 2
        conv = get_conv(spatial_dims)(in_ch, out_ch, kernel_size, stride=stride, padding=pad, dilation=dilation,
                                      groups=groups, bias=(norm in (None, "none")) if bias is None else bias)
        super().__init__(conv, get_norm(norm, spatial_dims, out_ch), get_act(act, out_ch))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.causal_pad:
            x = F.pad(x, (self.causal_pad, 0))
        return super().forward(x)
