"""Typed command-line values shared by every CLI: numbers, durations, devices, part splits.

Every numeric option of the suite takes its type from :class:`Number` (``type=Number(int, min=1)``): finite, in a
declared range, refused by argparse in one usage line (exit 2) otherwise. The range is kept on the type
(``.kind``, ``.min``, ``.max``, ``.min_open``, ``.max_open``) so the tests can walk every parser and attack every
numeric option with NaN, inf, 0, negative and huge values (``tests/test_cli_gauntlet.py``). Relations between
options (an overlap shorter than half a chunk) are checked with :func:`require` after parsing.

Durations have one syntax everywhere (:func:`parse_duration`): ``90s``, ``45m``, ``2h``, ``1.5h``, ``3d``, ``8 min``,
``DD:HH:MM:SS`` (and ``HH:MM:SS``, ``MM:SS``); the value is seconds.

Devices have one resolver (:func:`parse_device` at parse time, no torch import; ``precision.resolve_device`` at run
time): ``auto`` (cuda, then mps, then cpu), ``cpu``, ``cuda``, ``cuda:N``, ``mps`` (Apple silicon).
"""

from __future__ import annotations

import argparse
import math
import re
from typing import Any

from .errors import InputError

DEVICE_CHOICES = ("auto", "cpu", "cuda", "mps")
#: the largest whole number an integer option accepts unless it declares a smaller maximum (beyond it, a value is a
#: typo, and torch/NumPy would overflow on it)
INT_LIMIT = 2**31 - 1


class Number:
    """An argparse type for a finite number of ``kind`` (int or float) in a declared range.

    ``min``/``max`` are inclusive unless ``min_open``/``max_open``; ``None`` leaves that side open (integers are
    still capped at :data:`INT_LIMIT`). ``special`` maps extra spellings to values (``{"auto": "auto"}``)."""

    def __init__(self, kind: type = float, *, min: float | None = None, max: float | None = None,
                 min_open: bool = False, max_open: bool = False, special: dict[str, Any] | None = None,
                 unit: str = "") -> None:
        if kind not in (int, float):
            raise TypeError("kind must be int or float")
        self.kind = kind
        self.min = min
        self.max = max if max is not None or kind is float else INT_LIMIT
        self.min_open = min_open
        self.max_open = max_open
        self.special = dict(special or {})
        self.unit = unit
        self.__name__ = self.describe()  # argparse names the type in "invalid <name> value" messages

    def describe(self) -> str:
        """``a whole number >= 1``, ``a number in [0, 1)``, ``a number > 0`` ..."""
        what = "a whole number" if self.kind is int else "a number"
        lo, hi = self.min, self.max
        hi_shown = hi if not (self.kind is int and hi == INT_LIMIT) else None
        if lo is not None and hi_shown is not None:
            rng = f"in {'(' if self.min_open else '['}{_fmt(lo)}, {_fmt(hi_shown)}{')' if self.max_open else ']'}"
        elif lo is not None:
            rng = f"{'>' if self.min_open else '>='} {_fmt(lo)}"
        elif hi_shown is not None:
            rng = f"{'<' if self.max_open else '<='} {_fmt(hi_shown)}"
        else:
            rng = ""
        extra = "".join(f" or {k}" for k in self.special)
        return f"{what}{' ' + rng if rng else ''}{extra}"

    def __call__(self, text: str) -> Any:
        if text in self.special:
            return self.special[text]
        value = _parse_number(text, self.kind)
        if value is None or not self.contains(value):
            raise argparse.ArgumentTypeError(f"expected {self.describe()}, got {text!r}")
        return value

    def contains(self, value: float) -> bool:
        """True when ``value`` is finite and in the declared range."""
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            return False
        if self.min is not None and (value < self.min or (self.min_open and value == self.min)):
            return False
        return not (self.max is not None and (value > self.max or (self.max_open and value == self.max)))

    def __repr__(self) -> str:
        return f"Number({self.kind.__name__}: {self.describe()})"


def _fmt(v: float) -> str:
    return str(int(v)) if float(v).is_integer() and abs(v) < 1e15 else repr(v)


def _parse_number(text: str, kind: type) -> float | None:
    text = text.strip()
    if kind is int:
        if not re.fullmatch(r"[+-]?\d+", text):
            return None
        return int(text)
    try:
        value = float(text)
    except ValueError:
        return None
    return value if math.isfinite(value) else None


# the shapes most options take
positive_int = Number(int, min=1)
positive_float = Number(float, min=0, min_open=True)
fraction = Number(float, min=0, max=1, max_open=True)  # [0, 1): overlaps, dropout
probability = Number(float, min=0, max=1)
seed_int = Number(int, min=0, max=2**32 - 1)  # what NumPy's seeding accepts


def require(condition: bool, message: str) -> None:
    """A relation between options that must hold (``require(overlap < chunk / 2, "--overlap-seconds must ...")``):
    one-line error, exit 2."""
    if not condition:
        raise InputError(message)


# ------------------------------------------------------------------------------------------------ durations
_UNITS = {"s": 1, "sec": 1, "second": 1, "m": 60, "min": 60, "minute": 60, "h": 3600, "hr": 3600, "hour": 3600,
          "d": 86400, "day": 86400}
DURATION_HELP = "90s, 45m, 2h, 1.5h, 3d or DD:HH:MM:SS"
#: a budget longer than this is a typo (Lightning's timedelta would overflow on absurd values)
MAX_DURATION_S = 366 * 86400.0


def duration_seconds(value: str | float | int | dict | None, option: str = "--max-time") -> float | None:
    """Seconds from ``90s``, ``45m``, ``2h``, ``1.5h``, ``8 min``, ``3d``, ``DD:HH:MM:SS`` / ``HH:MM:SS`` / ``MM:SS``,
    a plain number of seconds, or a dict such as ``{"hours": 2}`` (Lightning's spelling). ``None``/"" = no limit.

    Raises :class:`InputError` (one line) for anything else, for zero, negative or non-finite values, and for more
    than a year."""
    if value is None or value == "":
        return None
    bad = f"{option}: cannot read {value!r} (use {DURATION_HELP})"
    if isinstance(value, bool):
        raise InputError(bad)
    if isinstance(value, (int, float)):
        seconds = float(value)
    elif isinstance(value, dict):
        import datetime as dt

        try:
            seconds = dt.timedelta(**value).total_seconds()
        except (TypeError, OverflowError):
            raise InputError(bad) from None
    else:
        text = str(value).strip().lower()
        if ":" in text:
            parts = text.split(":")
            if len(parts) > 4 or not all(re.fullmatch(r"\d+(\.\d+)?", p) for p in parts):
                raise InputError(bad)
            seconds = sum(float(p) * m for p, m in zip(reversed(parts), (1, 60, 3600, 86400)))
        else:
            m = re.fullmatch(r"(\d+(?:\.\d*)?|\.\d+)\s*([a-z]*)", text)
            unit = (m.group(2) if m else "") or "s"
            if unit not in _UNITS and unit.endswith("s") and unit[:-1] in _UNITS:
                unit = unit[:-1]
            if not m or unit not in _UNITS:
                raise InputError(bad)
            seconds = float(m.group(1)) * _UNITS[unit]
    if not math.isfinite(seconds) or seconds <= 0:
        raise InputError(f"{option} must be a positive duration ({DURATION_HELP}), got {value!r}")
    if seconds > MAX_DURATION_S:
        raise InputError(f"{option} must be at most a year, got {value!r}")
    return seconds


def parse_duration(text: str) -> float:
    """argparse type for ``--max-time``: seconds (see :func:`duration_seconds`)."""
    try:
        seconds = duration_seconds(text)
    except InputError as exc:
        raise argparse.ArgumentTypeError(str(exc).removeprefix("--max-time: ").removeprefix("--max-time ")) from None
    if seconds is None:
        raise argparse.ArgumentTypeError(f"expected a duration ({DURATION_HELP}), got {text!r}")
    return seconds


parse_duration.__name__ = "duration"  # type: ignore[attr-defined]


# ------------------------------------------------------------------------------------------------ devices
def parse_device(text: str) -> str:
    """``--device`` values: auto, cpu, cuda, cuda:N, mps (checked against the machine when the model loads)."""
    base, _, index = text.partition(":")
    if base not in DEVICE_CHOICES or (index and (base != "cuda" or not index.isdigit())):
        raise argparse.ArgumentTypeError(f"expected one of auto, cpu, cuda, cuda:N, mps; got {text!r}")
    return text


def parse_devices(text: str) -> int | str:
    """``--devices`` values: a count (1..1024), a comma list of indices (``0,2``), or ``auto``."""
    if text == "auto":
        return "auto"
    if text.isdigit() and 0 < int(text) <= 1024:
        return int(text)
    if "," in text and all(p.strip().isdigit() for p in text.split(",")):
        return text
    raise argparse.ArgumentTypeError(f"expected a device count (1..1024), a list such as 0,1, or 'auto'; got {text!r}")


def check_part(num_parts: int, part_id: int) -> None:
    """``--num-parts N --part-id K``: K must be in 0..N-1 (one line, exit 2)."""
    require(0 <= part_id < num_parts, f"--part-id must be in 0..{num_parts - 1} for --num-parts {num_parts}, "
                                      f"got {part_id}")


def add_parts(parser: argparse.ArgumentParser, what: str = "inputs") -> None:
    """``--num-parts`` / ``--part-id``: split a batch between the tasks of a SLURM array (every task plans the whole
    batch, checks it, then works on items part-id, part-id + num-parts, ...; finished items are skipped)."""
    parser.add_argument("--num-parts", type=Number(int, min=1, max=100000), default=1,
                        help=f"split the {what} into this many parts (e.g. one per SLURM array task)")
    parser.add_argument("--part-id", type=Number(int, min=0, max=99999), default=0,
                        help="which part (0 .. num-parts-1) this run does: items part-id, part-id+num-parts, ...")

