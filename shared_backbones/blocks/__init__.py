"""Dimension-generic building blocks (conv-norm-act, MBConv, STU-Net residual, TCN, Fourier, norms)."""

from .conv import ConvNormAct, get_act, get_conv, get_norm
from .fourier import FourierBlock1d, SpectralConv1d
from .mbconv import MBConv, SqueezeExcite, reversible_mbconv_sequence
from .norms import CumulativeLayerNorm, GlobalLayerNorm
from .residual import STUResidualBlock
from .tcn import DilatedResidualLayer, TCNBlock, TCNResidualBody

__all__ = ["ConvNormAct", "get_act", "get_conv", "get_norm", "FourierBlock1d", "SpectralConv1d", "MBConv",
           "SqueezeExcite", "reversible_mbconv_sequence", "CumulativeLayerNorm", "GlobalLayerNorm",
           "STUResidualBlock", "DilatedResidualLayer", "TCNBlock", "TCNResidualBody"]
