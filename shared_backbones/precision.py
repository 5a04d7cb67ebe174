"""One mixed-precision policy for CPU and GPU: ``auto|fp32|bf16|fp16``.

auto = bf16 on CUDA GPUs that support it, fp16 with a GradScaler on older GPUs, fp32 on CPU (CPU bf16 autocast
is available explicitly with ``bf16``). The same policy maps to Lightning's ``precision=`` string.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch

from .errors import InputError

PRECISION_CHOICES = ("auto", "fp32", "bf16", "fp16")
_LIGHTNING = {"fp32": "32-true", "bf16": "bf16-mixed", "fp16": "16-mixed"}
_DTYPE = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def resolve_device(name: str | torch.device = "auto") -> torch.device:
    """``auto`` -> cuda when available else cpu; ``cuda`` without a GPU is a clear error."""
    if isinstance(name, torch.device):
        return name
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise InputError("--device cuda requested but no CUDA GPU is available")
    if name.split(":")[0] not in ("cpu", "cuda"):
        raise InputError(f"unknown device {name!r} (use auto, cpu or cuda)")
    return torch.device(name)


def _cuda_bf16_supported(device: torch.device) -> bool:
    return torch.cuda.is_available() and torch.cuda.is_bf16_supported()


@dataclass(frozen=True)
class PrecisionPolicy:
    """A resolved precision: ``name`` in fp32|bf16|fp16 for ``device_type`` cpu|cuda."""

    name: str
    device_type: str

    @classmethod
    def resolve(cls, requested: str = "auto", device: str | torch.device = "cpu") -> PrecisionPolicy:
        """Resolve ``requested`` for ``device`` (auto rules in the module docstring)."""
        if requested not in PRECISION_CHOICES:
            raise InputError(f"unknown precision {requested!r} (choose from {', '.join(PRECISION_CHOICES)})")
        dev = resolve_device(device) if isinstance(device, str) else device
        dtype = dev.type
        if requested == "auto":
            if dtype == "cuda":
                requested = "bf16" if _cuda_bf16_supported(dev) else "fp16"
            else:
                requested = "fp32"
        if requested == "fp16" and dtype == "cpu":
            raise InputError("fp16 autocast is for GPUs; on CPU use bf16 or fp32")
        return cls(requested, dtype)

    @property
    def dtype(self) -> torch.dtype | None:
        """The autocast dtype, None for fp32."""
        return _DTYPE[self.name]

    @property
    def lightning(self) -> str:
        """Lightning's ``precision=`` string."""
        return _LIGHTNING[self.name]

    def autocast(self) -> contextlib.AbstractContextManager:
        """Autocast context for this policy (a no-op for fp32)."""
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device_type, dtype=self.dtype)

    def grad_scaler(self) -> torch.amp.GradScaler | None:
        """A GradScaler for fp16 on CUDA, else None."""
        if self.name == "fp16" and self.device_type == "cuda":
            return torch.amp.GradScaler("cuda")
        return None
