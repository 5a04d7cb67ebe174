"""One mixed-precision policy for CPU and GPU: ``auto|fp32|bf16|fp16``.

auto = bf16 on CUDA GPUs that support it, fp16 with a GradScaler on older GPUs, fp32 on CPU and on Apple's MPS
(CPU bf16 autocast is available explicitly with ``bf16``). A caller whose agreement with fp32 was measured (medseg's
volume inference: :mod:`medseg.cpu_precision`) may ask for ``cpu_bf16=True``: auto is then bf16 on a CPU with native
bf16 arithmetic (:func:`cpu_bf16_feature`: AVX512-BF16 or AMX), fp32 elsewhere. The resolved policy says why in
``reason``. The same policy maps to Lightning's ``precision=`` string.
"""

from __future__ import annotations

import contextlib
import functools
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .errors import InputError

PRECISION_CHOICES = ("auto", "fp32", "bf16", "fp16")
_LIGHTNING = {"fp32": "32-true", "bf16": "bf16-mixed", "fp16": "16-mixed"}
_DTYPE = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def _mps_available() -> bool:
    backend = getattr(torch.backends, "mps", None)
    return bool(backend is not None and backend.is_available())


def check_device_available(name: str) -> None:
    """Refuse, in one line, a device this machine cannot run (``cuda`` without a GPU, ``mps`` off Apple silicon,
    ``cuda:N`` beyond the GPU count)."""
    base, _, index = name.partition(":")
    if base == "cuda":
        if not torch.cuda.is_available():
            raise InputError("--device cuda: no CUDA GPU is available on this machine (use --device cpu or auto)")
        if index and int(index) >= torch.cuda.device_count():
            raise InputError(f"--device {name}: this machine has {torch.cuda.device_count()} CUDA GPU(s)")
    elif base == "mps" and not _mps_available():
        raise InputError("--device mps: Apple's Metal (MPS) backend is not available here (it needs macOS on Apple "
                         "silicon and a PyTorch built with MPS); use --device cpu or auto")
    elif base not in ("auto", "cpu", "cuda", "mps"):
        raise InputError(f"unknown device {name!r} (use auto, cpu, cuda, cuda:N or mps)")


def resolve_device(name: str | torch.device = "auto") -> torch.device:
    """``auto`` -> cuda when available, else mps (Apple silicon) when available, else cpu; a device this machine
    cannot run is a one-line error."""
    if isinstance(name, torch.device):
        return name
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        return torch.device("mps" if _mps_available() else "cpu")
    check_device_available(name)
    return torch.device(name)


#: CPU flags (Linux ``/proc/cpuinfo``) of native bf16 arithmetic: AMX tiles (Sapphire Rapids+), AVX512-BF16 dot
#: products (Cooper Lake, Zen 4+); without them oneDNN emulates bf16 and it runs no faster than fp32
CPU_BF16_FLAGS = ("amx_bf16", "avx512_bf16")


@functools.lru_cache(maxsize=1)
def cpu_bf16_feature() -> str | None:
    """The first of :data:`CPU_BF16_FLAGS` this CPU has, or None (also where ``/proc/cpuinfo`` cannot be read)."""
    try:
        text = Path("/proc/cpuinfo").read_text(errors="replace")
    except OSError:
        return None
    flags: set[str] = set()
    for line in text.splitlines():
        if line.startswith("flags"):
            flags.update(line.partition(":")[2].split())
            break
    return next((f for f in CPU_BF16_FLAGS if f in flags), None)


def _cuda_bf16_supported(device: torch.device) -> bool:
    return torch.cuda.is_available() and torch.cuda.is_bf16_supported()


@dataclass(frozen=True)
class PrecisionPolicy:
    """A resolved precision: ``name`` in fp32|bf16|fp16 for ``device_type`` cpu|cuda; ``reason``: how auto chose."""

    name: str
    device_type: str
    reason: str = field(default="", compare=False)

    @classmethod
    def resolve(cls, requested: str = "auto", device: str | torch.device = "cpu", *,
                cpu_bf16: bool = False) -> PrecisionPolicy:
        """Resolve ``requested`` for ``device`` (auto rules in the module docstring; ``cpu_bf16``: auto may choose
        bf16 on a CPU with native bf16)."""
        if requested not in PRECISION_CHOICES:
            raise InputError(f"unknown precision {requested!r} (choose from {', '.join(PRECISION_CHOICES)})")
        dev = resolve_device(device) if isinstance(device, str) else device
        dtype = dev.type
        reason = ""
        if requested == "auto":
            if dtype == "cuda":
                requested = "bf16" if _cuda_bf16_supported(dev) else "fp16"
            elif dtype == "cpu" and cpu_bf16 and (feature := cpu_bf16_feature()) is not None:
                requested, reason = "bf16", f"bf16 (this CPU has native bf16: {feature})"
            else:
                requested = "fp32"
                if dtype == "cpu" and cpu_bf16:
                    reason = f"fp32 (this CPU has no native bf16: none of {', '.join(CPU_BF16_FLAGS)})"
        if requested == "bf16" and dtype == "mps":
            raise InputError("bf16 autocast is not offered on mps; use fp16 or fp32")
        if requested == "fp16" and dtype == "cpu":
            raise InputError("fp16 autocast is for GPUs; on CPU use bf16 or fp32")
        return cls(requested, dtype, reason)

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
