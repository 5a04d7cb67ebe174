"""Dimension-generic building blocks (conv-norm-act, MBConv, STU-Net residual, TCN, Fourier, norms).

``conv``, ``mbconv`` and ``residual`` are imported here; the TCN, Fourier and norm modules are imported on first
use of one of their names (``from shared_backbones.blocks import TCNBlock`` works as usual), so importing the
package does not depend on them.
"""

from __future__ import annotations

import importlib
from typing import Any

from .conv import ConvNormAct, get_act, get_conv, get_norm
from .mbconv import MBConv, SqueezeExcite, reversible_mbconv_sequence
from .residual import STUResidualBlock

_LAZY = {
    "FourierBlock1d": "fourier", "SpectralConv1d": "fourier",
    "CumulativeLayerNorm": "norms", "GlobalLayerNorm": "norms",
    "DilatedResidualLayer": "tcn", "TCNBlock": "tcn", "TCNResidualBody": "tcn",
}

__all__ = ["ConvNormAct", "get_act", "get_conv", "get_norm", "MBConv", "SqueezeExcite", "reversible_mbconv_sequence",
           "STUResidualBlock", *_LAZY]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
