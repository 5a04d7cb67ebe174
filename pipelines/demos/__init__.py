"""Demo parts run by ``convsuite demo``: one module per pipeline, each exposing

    run(out_dir: pathlib.Path, *, quick: bool = False, quiet: bool = False) -> DemoResult

which generates its own synthetic data under ``out_dir``, trains a tiny model through ``pipelines``
for a short budget, predicts, evaluates and returns the figures.
"""

from __future__ import annotations

import math
import re
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
    not_judged: list[str] = field(default_factory=list)  # figures whose target this run does not judge (--quick)
    error: str = ""  # why the part did not run end to end ("" when it did)

    def verdicts(self) -> dict[str, str]:
        """Per figure with a target that states a comparison: ``"ok"``, ``"MISSED"`` (NaN included) or
        ``"not judged (--quick)"``."""
        out = {}
        for name, target in self.targets.items():
            if name in self.not_judged:
                out[name] = "not judged (--quick)"
            elif name in self.figures:
                met = meets(self.figures[name], target)
                if met is not None:
                    out[name] = "ok" if met else "MISSED"
        return out

    def missed(self) -> list[str]:
        """One ``"<pipeline> <figure> <value> <failed comparison>"`` per missed target, e.g.
        ``"audiosep si_snri_db 6.06 < 8"``."""
        flip = {">=": "<", ">": "<=", "<=": ">", "<": ">="}
        lines = []
        for name, verdict in self.verdicts().items():
            if verdict == "MISSED":
                op, bound = _comparison(self.targets[name])  # type: ignore[misc]
                lines.append(f"{self.pipeline} {name} {self.figures[name]:.3g} {flip[op]} {bound:g}")
        return lines


_TARGET = re.compile(r"\s*(>=|<=|>|<)\s*([-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)")


def _comparison(target: str) -> tuple[str, float] | None:
    m = _TARGET.match(target)
    return (m.group(1), float(m.group(2))) if m else None


def meets(value: float, target: str) -> bool | None:
    """Whether ``value`` meets ``target`` (``">= 0.9"``, ``"< 2 (a remark)"``); None when the target states no
    comparison. A NaN never meets a target."""
    cmp = _comparison(target)
    if cmp is None:
        return None
    op, bound = cmp
    if math.isnan(value):
        return False
    return {">=": value >= bound, ">": value > bound, "<=": value <= bound, "<": value < bound}[op]
