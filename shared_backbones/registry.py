"""Architecture registry: ``@register_model("name", task=...)`` and ``create_model(name, **kwargs)``.

Domain packages register their architectures when their ``models`` module is imported; the suite's
model file stores the registry name and kwargs, so a model is rebuilt with ``create_model``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch.nn as nn

from .errors import ModelFileError


@dataclass(frozen=True)
class ModelEntry:
    """A registered architecture: its factory, task and published presets (kwargs)."""

    name: str
    task: str
    factory: Callable[..., nn.Module]
    defaults: dict = field(default_factory=dict)
    doc: str = ""


_REGISTRY: dict[str, ModelEntry] = {}


def register_model(name: str, *, task: str, **defaults) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    """Decorator registering ``factory`` under ``name`` for ``task``; ``defaults`` are preset kwargs."""

    def deco(factory: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        if name in _REGISTRY and _REGISTRY[name].factory is not factory:
            raise ValueError(f"model name {name!r} registered twice")
        _REGISTRY[name] = ModelEntry(name, task, factory, dict(defaults), (factory.__doc__ or "").strip())
        return factory

    return deco


def model_entry(name: str) -> ModelEntry:
    """Look up a registered architecture; a clear error lists the known names."""
    try:
        return _REGISTRY[name]
    except KeyError:
        known = ", ".join(sorted(_REGISTRY)) or "(none registered; import the domain package's models)"
        raise ModelFileError(f"unknown architecture {name!r}; known: {known}") from None


def create_model(name: str, **kwargs) -> nn.Module:
    """Build the architecture ``name`` with its preset defaults overridden by ``kwargs``."""
    entry = model_entry(name)
    return entry.factory(**{**entry.defaults, **kwargs})


def list_models(task: str | None = None) -> list[str]:
    """Registered names, optionally for one task."""
    return sorted(n for n, e in _REGISTRY.items() if task is None or e.task == task)
