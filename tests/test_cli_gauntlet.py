"""A gauntlet generated from the parsers: every numeric option of every subcommand of every CLI is attacked with NaN,
inf, 0, negative and huge values; each must be a one-line usage error (exit 2) or a value inside the option's declared
range, never a traceback. A new option or command is covered without touching this file.

The parsers are walked, not listed: ``medseg`` (volumes and ``phases``), ``audiosep``, ``remote``, ``pipelines``
(``export``) and ``convsuite``. Run ``python tests/test_cli_gauntlet.py`` for the counts (commands, options, cases).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import io
import math
import sys

import pytest

from shared_backbones.cliutil import iter_subparsers
from shared_backbones.options import Number, parse_duration

ROOTS = {
    "medseg": "medseg.volume_cli",
    "medseg phases": "medseg.phases.cli",
    "audiosep": "audiosep.cli",
    "remote": "remote.cli",
    "pipelines": "pipelines.cli",
    "convsuite": "pipelines.convsuite_cli",
}
HOSTILE = ("nan", "NaN", "inf", "-inf", "0", "-1", "-0.5", "1e30", str(10**30), "1e-320", "", "1,5")
#: non-numeric argparse types that read numbers inside a list or a special syntax: attacked too (they must never
#: raise anything but a usage error), though they cannot declare a range
LIST_TYPES_OK = {"_int_list", "_str_list", "parse_fold", "parse_devices", "parse_device", "duration"}


def _root_parsers():
    for prog, module in ROOTS.items():
        mod = importlib.import_module(module)
        if hasattr(mod, "_parser"):
            yield prog, mod._parser()


def _leaves():
    for prog, root in _root_parsers():
        for path, parser in iter_subparsers(root):
            if not any(isinstance(a, argparse._SubParsersAction) for a in parser._actions):
                yield prog, root, path, parser


def _is_numeric(action: argparse.Action) -> bool:
    t = action.type
    return t in (int, float) or isinstance(t, Number) or t is parse_duration or \
        getattr(t, "__name__", "") in LIST_TYPES_OK


def _required_argv(parser: argparse.ArgumentParser, skip: argparse.Action) -> list[str]:
    """The smallest argv that satisfies ``parser`` apart from ``skip``: positionals and required options get 'x'."""
    argv: list[str] = []
    for a in parser._actions:
        if a is skip or isinstance(a, (argparse._HelpAction, argparse._VersionAction)):
            continue
        if not a.option_strings:
            if a.nargs in ("?", "*"):
                continue
            n = a.nargs if isinstance(a.nargs, int) else 1
            argv += ["x"] * n
        elif a.required:
            argv += [a.option_strings[-1], "x"]
    return argv


def _cases():
    for prog, root, path, parser in _leaves():
        for action in parser._actions:
            if action.option_strings and _is_numeric(action) and action.help != argparse.SUPPRESS:
                yield prog, root, path, parser, action


CASES = list(_cases())
IDS = [f"{prog} {' '.join(path)} {a.option_strings[-1]}".replace("  ", " ") for prog, _, path, _, a in CASES]


def test_the_walk_finds_every_cli_and_many_numeric_options():
    progs = {prog for prog, *_ in _leaves()}
    assert progs == set(ROOTS)
    assert len(CASES) >= 60, f"only {len(CASES)} numeric options found"


@pytest.mark.parametrize("prog,root,path,parser,action", CASES, ids=IDS)
def test_every_numeric_option_declares_a_finite_range(prog, root, path, parser, action):
    """No bare int/float: a bare float takes 'nan' and 'inf', a bare int any size."""
    assert action.type not in (int, float), (
        f"{prog} {' '.join(path)} {action.option_strings[-1]}: bare type={action.type.__name__}; use "
        "shared_backbones.options.Number(...) with the option's range")


def _parse(root: argparse.ArgumentParser, argv: list[str]) -> tuple[int | None, argparse.Namespace | None, str]:
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            ns = root.parse_args(argv)
        except SystemExit as exc:
            return int(exc.code or 0), None, err.getvalue()
    return None, ns, err.getvalue()


def _values(action: argparse.Action, text: str) -> list[str]:
    n = action.nargs if isinstance(action.nargs, int) else 1
    return [text] * n if action.nargs not in (0,) else []


@pytest.mark.parametrize("prog,root,path,parser,action", CASES, ids=IDS)
def test_hostile_values_are_usage_errors_or_in_range(prog, root, path, parser, action):
    base = [*path, *_required_argv(parser, action)]
    opt = action.option_strings[-1]
    for text in HOSTILE:
        code, ns, err = _parse(root, [*base, opt, *_values(action, text)])
        if code is not None:
            assert code == 2, f"{opt} {text!r}: exit {code}"
            last = err.strip().splitlines()[-1]
            assert "error:" in last and (opt in last or action.dest in last or "argument" in last), last
            continue
        value = getattr(ns, action.dest)
        values = value if isinstance(value, list) else [value]
        for v in values:
            if isinstance(action.type, Number):
                assert v in action.type.special.values() or action.type.contains(v), \
                    f"{opt} {text!r} gave {v!r}, outside {action.type.describe()}"
            elif isinstance(v, float):
                assert math.isfinite(v), f"{opt} {text!r} gave {v!r}"


def counts() -> dict[str, int]:
    """Commands walked, numeric options attacked, hostile cases generated."""
    leaves = list(_leaves())
    return {"clis": len(ROOTS), "commands": len(leaves), "numeric_options": len(CASES),
            "numeric_cases": len(CASES) * len(HOSTILE)}


if __name__ == "__main__":
    print(counts(), file=sys.stdout)
