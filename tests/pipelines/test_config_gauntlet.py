"""The config side of the gauntlet: every numeric value of the example config (``pipelines fit -c``), walked from the
YAML itself, is replaced by NaN, inf, 0, a negative and a huge value; each run is one line with exit 2 or a valid
(one-step) run, never a traceback."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from pipelines.cli import main

CONFIG = Path(__file__).resolve().parents[2] / "pipelines" / "configs" / "example.yaml"
HOSTILE = ("nan", "inf", "0", "-1", "1e30")
SKIP = {"trainer.devices"}  # more CPU processes than asked is a valid (slow) run: the DDP tests cover it


def _numeric_leaves(node, prefix=""):
    if isinstance(node, dict):
        for k, v in node.items():
            yield from _numeric_leaves(v, f"{prefix}.{k}" if prefix else str(k))
    elif isinstance(node, (int, float)) and not isinstance(node, bool):
        yield prefix


def _override(key: str, value: str, cfg: dict) -> list[str]:
    """A command-line override; values inside a dict argument (arch_kwargs) replace the whole dict."""
    parts = key.split(".")
    if "arch_kwargs" in parts:
        i = parts.index("arch_kwargs")
        holder = cfg
        for p in parts[: i + 1]:
            holder = holder[p]
        new = {**holder, parts[i + 1]: value if value in ("nan", "inf") else json.loads(value)}
        text = json.dumps(new).replace('"nan"', "NaN").replace('"inf"', "Infinity")
        return [f"--{'.'.join(parts[: i + 1])}", text]
    return [f"--{key}", value]


CFG = yaml.safe_load(CONFIG.read_text())
KEYS = [k for k in _numeric_leaves(CFG) if k not in SKIP]


def test_the_walk_finds_the_config_numbers():
    assert {"trainer.max_epochs", "model.init_args.lr", "data.init_args.batch_size",
            "model.init_args.arch_kwargs.channels"} <= set(KEYS)


@pytest.mark.parametrize("key", KEYS)
def test_hostile_config_values_are_one_line_or_a_valid_run(tmp_path, capsys, monkeypatch, key):
    monkeypatch.chdir(tmp_path)
    for value in HOSTILE:
        argv = ["fit", "-c", str(CONFIG), "-q", "--trainer.max_steps", "1", "--trainer.limit_val_batches", "1",
                "--trainer.logger", "false", "--trainer.enable_checkpointing", "false",
                "--trainer.default_root_dir", str(tmp_path / "run"), *_override(key, value, CFG)]
        rc = main(argv)
        err = capsys.readouterr().err
        assert "Traceback" not in err, f"{key}={value}: {err[-2000:]}"
        if rc == 0:
            continue
        lines = [line for line in err.strip().splitlines() if line.strip()]
        assert rc == 2, f"{key}={value}: exit {rc}: {err[-500:]}"
        assert lines and lines[-1].startswith("pipelines: error:"), f"{key}={value}: {lines[-3:]}"
        assert sum(": error:" in line for line in lines) == 1
