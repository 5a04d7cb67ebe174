"""Every subcommand of the four command lines (and ``convsuite``) follows the one CLI contract."""

from __future__ import annotations

import argparse
import importlib

import pytest

from shared_backbones.cliutil import HelpFormatter, _Deprecated, iter_subparsers

CLIS = {
    "medseg": "medseg.volume_cli",
    "medseg phases": "medseg.phases.cli",
    "audiosep": "audiosep.cli",
    "remote": "remote.cli",
    "convsuite": "pipelines.convsuite_cli",
    "pipelines": "pipelines.cli",
}
OLD_SPELLINGS = {"--out-dir", "--accelerator", "--all-folds", "--out"}
# report flags that became -o/--output where the report is the command's output (still accepted, hidden)
# ... and the spellings renamed so that one name means one thing across the suite (issue 20)
HIDDEN_OK = OLD_SPELLINGS | {"--csv", "--json"} | {"--folds", "--labels", "--channels", "--classes"}
# the contract's spellings: an option with one of these long names must also have this short one
SHORT = {"--output": "-o", "--model": "-m", "--quiet": "-q"}


def _leaf_parsers():
    for prog, module in CLIS.items():
        root = importlib.import_module(module)._parser()
        for path, parser in iter_subparsers(root):
            if not any(isinstance(a, argparse._SubParsersAction) for a in parser._actions):
                yield f"{prog} {' '.join(path)}".strip(), parser


LEAVES = list(_leaf_parsers())


def test_every_cli_has_subcommands():
    progs = {name.split()[0] if not name.startswith("medseg phases") else "medseg phases" for name, _ in LEAVES}
    assert progs == set(CLIS)
    assert len(LEAVES) >= 20


@pytest.mark.parametrize("name,parser", LEAVES, ids=[n for n, _ in LEAVES])
def test_subcommand_follows_the_contract(name, parser):
    opts = {s: a for a in parser._actions for s in a.option_strings}
    assert "--version" in opts, f"{name}: no --version"
    assert "--quiet" in opts and "-q" in opts["--quiet"].option_strings, f"{name}: no -q/--quiet"
    assert parser.formatter_class is HelpFormatter, f"{name}: not the suite's help formatter"
    for action in parser._actions:
        if action.help == argparse.SUPPRESS:
            if isinstance(action, _Deprecated):  # an old spelling kept for one release (prints a deprecation line)
                continue
            assert set(action.option_strings) <= HIDDEN_OK, f"{name}: hidden option {action.option_strings}"
            continue
        assert action.help and action.help.strip(), f"{name}: {action.option_strings or action.dest} has no help"
        if action.default not in (None, False, argparse.SUPPRESS):  # a derived default (None) may be described
            assert "(default" not in action.help, f"{name}: {action.option_strings} writes its default by hand"
        for long, short in SHORT.items():
            if long in action.option_strings:
                assert short in action.option_strings, f"{name}: {long} without {short}"
        assert not set(action.option_strings) & OLD_SPELLINGS, f"{name}: old spelling {action.option_strings} shown"
    for bad in ("--accelerator", "--out-dir", "--all-folds"):
        if bad in opts:
            assert opts[bad].help == argparse.SUPPRESS
    epilog = parser.epilog or ""
    examples = [line.strip() for line in epilog.splitlines()[1:] if line.strip()]
    assert epilog.startswith("examples:") and 2 <= len(examples) <= 4, f"{name}: needs 2-3 examples in --help"
    prog = name.split()[0]
    assert all(e.startswith(prog) for e in examples), f"{name}: examples must be real command lines"
