"""The loaded model every predictor uses: model file, network, device, precision policy, preprocessing.

``medseg`` (volumes and phases), ``audiosep`` and ``remote`` subclass :class:`LoadedModel` and add only what their
domain needs (window size, sample rate, band list ...); loading, device and precision resolution happen here once.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import torch
import torch.nn as nn

from .checkpoint import ModelFile, load_model_file
from .precision import PrecisionPolicy, resolve_device

L = TypeVar("L", bound="LoadedModel")


@dataclass
class LoadedModel:
    """A suite model file built in eval mode on a device, with its precision policy."""

    path: Path | None
    file: ModelFile
    net: nn.Module
    device: torch.device
    policy: PrecisionPolicy

    #: the task a subclass accepts (``None`` = any)
    TASK: ClassVar[str | None] = None

    @classmethod
    def from_file(cls: type[L], path: str | Path, device: str = "auto", precision: str = "auto") -> L:
        """Load ``path`` (``torch.load(weights_only=True)``), check its task, build it on ``device``."""
        mf = load_model_file(path, task=cls.TASK)
        return cls.from_model_file(mf, device, precision, path=Path(path))

    @classmethod
    def from_model_file(cls: type[L], mf: ModelFile, device: str | torch.device = "auto",
                        precision: str = "auto", path: Path | None = None) -> L:
        """Build an already loaded :class:`ModelFile` on ``device``."""
        dev = resolve_device(device)
        net = mf.build().to(dev).eval()
        return cls(path, mf, net, dev, PrecisionPolicy.resolve(precision, dev))

    @property
    def preprocessing(self) -> dict[str, Any]:
        return self.file.preprocessing

    @property
    def classes(self) -> list[str]:
        return list(self.file.classes)

    @property
    def model(self) -> nn.Module:
        """The network (alias of ``net``)."""
        return self.net
