"""Demo parts run by ``convsuite demo``: one module per pipeline, each exposing

    run(out_dir: pathlib.Path, *, quick: bool = False, quiet: bool = False) -> DemoResult

which generates its own synthetic data under ``out_dir``, trains a tiny model through ``pipelines``
for a short budget, predicts, evaluates and returns the figures.
"""

from __future__ import annotations

from dataclasses import dataclass, field

#: Demo parts in the order ``convsuite demo`` runs them (module name under ``pipelines.demos``).
DEMO_PARTS: tuple[str, ...] = ("backbones", "medseg", "phases", "audiosep", "remote")


@dataclass
class DemoResult:
    """What one pipeline's demo measured and where it wrote its outputs."""

    pipeline: str
    figures: dict[str, float] = field(default_factory=dict)  # e.g. {"mean_dice": 0.93}
    targets: dict[str, str] = field(default_factory=dict)    # e.g. {"mean_dice": ">= 0.9"}
    outputs: list[str] = field(default_factory=list)          # paths a user can open
    seconds: float = 0.0
    notes: str = ""
    passed: bool | None = None  # whether the figures meet the targets (None: no target)
