"""One report writer for every evaluator and per-fold table: rows of dicts to CSV, JSON or a terminal table."""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from .cliutil import atomic_output
from .errors import InputError
from .planning import Writer

Row = Mapping[str, Any]


#: what :func:`write_report` writes: the planner's writer for every report output (``-o scores.csv``)
REPORT = Writer((".csv", ".tsv", ".json"))


def _columns(rows: Sequence[Row], columns: Sequence[str] | None) -> list[str]:
    if columns is not None:
        return list(columns)
    cols: list[str] = []
    for r in rows:
        cols += [k for k in r if k not in cols]
    return cols


def _plain(value: Any) -> Any:
    if hasattr(value, "item") and not isinstance(value, (str, bytes)):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None if math.isnan(value) else str(value)
    return value


def write_report(path: str | Path, rows: Sequence[Row], columns: Sequence[str] | None = None, *,
                 overwrite: bool = False) -> Path:
    """Write ``rows`` to ``path``: CSV (``.csv``, ``.tsv``) with one header, or JSON (``.json``: a list of rows).

    Columns are ``columns`` or the union of the rows' keys in first-seen order; missing cells are empty.
    """
    path = Path(path)
    cols = _columns(rows, columns)
    suffix = path.suffix.lower()
    if suffix not in REPORT.suffixes:
        raise InputError("report must be .csv, .tsv or .json", path)
    with atomic_output(path, overwrite) as tmp:
        if suffix == ".json":
            tmp.write_text(json.dumps([{c: _plain(r.get(c)) for c in cols} for r in rows], indent=2) + "\n")
        else:
            with open(tmp, "w", newline="") as fh:
                w = csv.DictWriter(fh, fieldnames=cols, delimiter="\t" if suffix == ".tsv" else ",",
                                   extrasaction="ignore")
                w.writeheader()
                for r in rows:
                    w.writerow({c: _cell(r.get(c)) for c in cols})
    return path


def _cell(value: Any) -> Any:
    value = _plain(value)
    if isinstance(value, float):
        return f"{value:.6g}"
    return "" if value is None else value


def format_table(rows: Sequence[Row], columns: Sequence[str] | None = None, *, digits: int = 4,
                 first_width: int | None = None) -> str:
    """A fixed-width text table of ``rows`` (numbers right-aligned with ``digits`` significant decimals)."""
    cols = _columns(rows, columns)

    def fmt(v: Any) -> str:
        v = _plain(v)
        if isinstance(v, float):
            return f"{v:.{digits}f}"
        return "" if v is None else str(v)

    cells = [[fmt(r.get(c)) for c in cols] for r in rows]
    widths = [max([len(c)] + [len(row[i]) for row in cells]) for i, c in enumerate(cols)]
    if first_width and widths:
        widths[0] = max(widths[0], first_width)
    lines = ["  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(cols, widths)))]
    for row in cells:
        lines.append("  ".join(v.ljust(w) if i == 0 else v.rjust(w) for i, (v, w) in enumerate(zip(row, widths))))
    return "\n".join(lines)


def mean_row(rows: Sequence[Row], label_column: str, label: str = "mean") -> dict[str, Any]:
    """A row holding the mean of every numeric column (NaN cells ignored) under ``label``."""
    out: dict[str, Any] = {label_column: label}
    for c in _columns(rows, None):
        if c == label_column:
            continue
        vals = [float(_plain(r[c])) for r in rows if isinstance(_plain(r.get(c)), (int, float))
                and not isinstance(_plain(r.get(c)), bool)]
        vals = [v for v in vals if not math.isnan(v)]
        if vals:
            out[c] = sum(vals) / len(vals)
    return out
