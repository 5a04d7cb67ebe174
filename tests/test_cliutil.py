"""Tests for the CLI helpers every command relies on (errors, atomic outputs, registry)."""

from __future__ import annotations

import pytest
import torch.nn as nn

from shared_backbones.cliutil import StageTimer, atomic_output, check_output, run_cli
from shared_backbones.errors import InputError, OutputExistsError
from shared_backbones.registry import UnknownModelError, create_model, list_models, model_entry, register_model


def test_run_cli_maps_user_error_to_one_line_exit_2(capsys, tmp_path):
    bad = tmp_path / "scan.txt"

    def main(argv):
        raise InputError("not a NIfTI file", bad)

    assert run_cli(main, [], prog="medseg") == 2
    err = capsys.readouterr().err
    assert err == f"medseg: error: {bad}: not a NIfTI file\n"
    assert "Traceback" not in err


def test_run_cli_passes_return_code_and_lets_bugs_raise():
    assert run_cli(lambda argv: 0, []) == 0
    assert run_cli(lambda argv: None, []) == 0
    assert run_cli(lambda argv: 3, []) == 3
    with pytest.raises(ZeroDivisionError):
        run_cli(lambda argv: 1 / 0, [])


def test_atomic_output_renames_only_on_success(tmp_path):
    out = tmp_path / "sub" / "labels.nii.gz"
    with atomic_output(out) as tmp:
        assert tmp.parent == out.parent and tmp.name.endswith(".nii.gz") and tmp != out
        tmp.write_bytes(b"data")
        assert not out.exists()
    assert out.read_bytes() == b"data"
    assert list(out.parent.iterdir()) == [out]


def test_atomic_output_failure_leaves_nothing_and_keeps_old_file(tmp_path):
    out = tmp_path / "a.wav"
    out.write_bytes(b"old")
    with pytest.raises(RuntimeError):
        with atomic_output(out, overwrite=True) as tmp:
            tmp.write_bytes(b"half")
            raise RuntimeError("boom")
    assert out.read_bytes() == b"old"
    assert list(tmp_path.iterdir()) == [out]


def test_existing_output_needs_overwrite(tmp_path):
    out = tmp_path / "x.tif"
    out.write_bytes(b"1")
    with pytest.raises(OutputExistsError, match="--overwrite"):
        check_output(out, overwrite=False)
    with pytest.raises(OutputExistsError):
        with atomic_output(out):
            pass
    assert check_output(out, overwrite=True) == out


def test_stage_timer_accumulates():
    t = StageTimer()
    with t("a"):
        pass
    with t("a"):
        pass
    assert set(t.times) == {"a"} and t.times["a"] >= 0
    assert t.summary().startswith("a ")


def test_registry_presets_and_unknown_name():
    @register_model("test-linear", task="unit", in_features=4)
    def _linear(in_features: int = 2, out_features: int = 3) -> nn.Module:
        """A linear layer."""
        return nn.Linear(in_features, out_features)

    m = create_model("test-linear")
    assert (m.in_features, m.out_features) == (4, 3)
    assert create_model("test-linear", in_features=5).in_features == 5
    assert "test-linear" in list_models("unit") and model_entry("test-linear").doc == "A linear layer."
    with pytest.raises(UnknownModelError, match="unknown architecture 'nope'"):
        create_model("nope")
    with pytest.raises(ValueError):
        register_model("test-linear", task="unit")(lambda: nn.Identity())
