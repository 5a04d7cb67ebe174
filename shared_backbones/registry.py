"""Architecture registry: ``@register_model("name", task=...)`` and ``create_model(name, **kwargs)``.

Domain packages register their architectures in their ``models`` modules, which the installed distribution
names under the ``convsuite.models`` entry-point group: the registry imports them the first time it is asked for a
name it does not know, so ``create_model("unet3d")`` works with no import of ``medseg.models`` by the caller. The
suite's model file stores the registry name and kwargs, so a model is rebuilt with ``create_model``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch.nn as nn

from .errors import UserError


class UnknownModelError(UserError, KeyError):
    """An architecture name that no installed package registers."""

    def __str__(self) -> str:
        return str(self.args[0])


@dataclass(frozen=True)
class ModelEntry:
    """A registered architecture: its factory, task and published presets (kwargs)."""

    name: str
    task: str
    factory: Callable[..., nn.Module]
    defaults: dict = field(default_factory=dict)
    doc: str = ""


_REGISTRY: dict[str, ModelEntry] = {}
_PLUGINS_LOADED = False
ENTRY_POINT_GROUP = "convsuite.models"


def load_plugins() -> None:
    """Import every module registered under the ``convsuite.models`` entry points (once)."""
    global _PLUGINS_LOADED
    if _PLUGINS_LOADED:
        return
    _PLUGINS_LOADED = True
    from importlib.metadata import entry_points

    for ep in entry_points(group=ENTRY_POINT_GROUP):
        ep.load()


def register_model(
    name: str, *, task: str, **defaults
) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    """Decorator registering ``factory`` under ``name`` for ``task``; ``defaults`` are preset kwargs."""

    def deco(factory: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        if name in _REGISTRY and _REGISTRY[name].factory is not factory:
            raise ValueError(f"model name {name!r} registered twice")
        _REGISTRY[name] = ModelEntry(name, task, factory, dict(defaults), (factory.__doc__ or "").strip())
        return factory

    return deco


def model_entry(name: str) -> ModelEntry:
    """Look up a registered architecture; a clear error lists the known names."""
    if name not in _REGISTRY:
        load_plugins()
    try:
        return _REGISTRY[name]
    except KeyError:
        known = ", ".join(sorted(_REGISTRY)) or "(none registered: is convsuite installed?)"
        raise UnknownModelError(f"unknown architecture {name!r}; known: {known}") from None


def create_model(name: str, **kwargs) -> nn.Module:
    """Build the architecture ``name`` with its preset defaults overridden by ``kwargs``."""
    entry = model_entry(name)
    return entry.factory(**{**entry.defaults, **kwargs})


def list_models(task: str | None = None) -> list[str]:
    """Registered names, optionally for one task."""
    load_plugins()
    return sorted(n for n, e in _REGISTRY.items() if task is None or e.task == task)
