"""Tests for the CLI helpers every command relies on (errors, atomic outputs, registry)."""

from __future__ import annotations

import json
import os
import stat
from importlib.metadata import version

import pytest
import torch.nn as nn

from shared_backbones.cliutil import (
    StageTimer,
    add_command,
    add_common,
    atomic_output,
    check_output,
    lightning_device,
    make_parser,
    package_version,
    prepare_outputs,
    run_batch,
    run_cli,
)
from shared_backbones.errors import InputError, OutputExistsError
from shared_backbones.registry import UnknownModelError, create_model, list_models, model_entry, register_model
from shared_backbones.report import format_table, mean_row, write_report


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


def test_stage_timer_accumulates(monkeypatch):
    ticks = iter([10.0, 11.5, 20.0, 22.0, 30.0, 30.25])
    monkeypatch.setattr("shared_backbones.cliutil.time.perf_counter", lambda: next(ticks))
    t = StageTimer()
    with t("a"):
        pass
    with t("a"):  # a second visit adds to the first (1.5 + 2.0), it does not replace it
        pass
    with t("b"):
        pass
    assert t.times == {"a": 3.5, "b": 0.25}
    assert t.summary() == "a 3.50s, b 0.25s"


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


# ------------------------------------------------------------------------------------------- the contract
def _demo_parser():
    p = make_parser("tool", "A tool.", ["tool run x.nii.gz -m m.pt"])
    sub = p.add_subparsers(dest="command", required=True)
    r = add_command(sub, "run", help="run it", examples=["tool run a -m m.pt", "tool run a b -o out/"])
    r.add_argument("inputs", nargs="+", help="input files")
    r.add_argument("--overlap", type=float, default=0.5, help="window overlap")
    add_common(r, model="many", output="output folder", devices=True, seed=True, resume=True, fold=True)
    return p


def test_contract_options_defaults_and_help(capsys):
    a = _demo_parser().parse_args(["run", "x", "-m", "a.pt", "-m", "b.pt"])
    assert (a.model, a.output, a.device, a.devices, a.precision, a.quiet, a.overwrite, a.seed, a.resume, a.fold) == (
        ["a.pt", "b.pt"], None, "auto", "auto", "auto", False, False, 0, None, 0)
    a = _demo_parser().parse_args(["run", "x", "-m", "a.pt", "-q", "--fold", "all", "--devices", "2", "--resume",
                                   "--device", "cuda:1", "-o", "o"])
    assert (a.quiet, a.fold, a.devices, a.resume, a.device, a.output) == (True, "all", 2, "last", "cuda:1", "o")
    with pytest.raises(SystemExit):
        _demo_parser().parse_args(["run", "x", "-m", "a.pt", "--device", "tpu"])
    assert "expected one of auto, cpu, cuda" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        _demo_parser().parse_args(["run", "--help"])
    out = capsys.readouterr().out
    assert "window overlap (default: 0.5)" in out and out.rstrip().endswith("tool run a b -o out/")
    assert "--out-dir" not in out and "--accelerator" not in out  # old spellings are accepted, not advertised


def test_version_flag(capsys):
    for argv in (["--version"], ["run", "--version"]):
        with pytest.raises(SystemExit) as info:
            _demo_parser().parse_args(argv)
        assert info.value.code == 0
        assert capsys.readouterr().out.strip().endswith(f"(convsuite) {package_version()}")
    assert package_version() == version("convsuite")


def test_old_spellings_work_with_a_deprecation_line(capsys):
    a = _demo_parser().parse_args(["run", "x", "-m", "a.pt", "--out-dir", "d", "--accelerator", "cpu",
                                   "--all-folds"])
    assert (a.output, a.device, a.fold) == ("d", "cpu", "all")
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 3 and all("deprecated" in line for line in err)
    assert "use -o/--output" in err[0] and "use --device" in err[1] and "use --fold all" in err[2]


def test_lightning_device_mapping():
    assert lightning_device("cpu") == {"accelerator": "cpu", "devices": 1}
    assert lightning_device("cpu", 2) == {"accelerator": "cpu", "devices": 2}
    assert lightning_device("auto") == {"accelerator": "auto", "devices": "auto"}
    import torch

    if torch.cuda.device_count() >= 2:
        assert lightning_device("cuda", 4) == {"accelerator": "gpu", "devices": 4}
        assert lightning_device("cuda:1") == {"accelerator": "gpu", "devices": [1]}
    else:  # a device the machine cannot run is refused before Lightning starts
        with pytest.raises(InputError, match="--device cuda"):
            lightning_device("cuda:1")
    with pytest.raises(InputError):
        lightning_device("tpu")


def test_prepare_outputs_checks_before_any_work(tmp_path):
    src = tmp_path / "in.wav"
    src.write_bytes(b"x")
    with pytest.raises(InputError, match="one of the inputs"):
        prepare_outputs([tmp_path / "." / "in.wav"], [src], overwrite=True)
    (tmp_path / "file").write_bytes(b"x")
    with pytest.raises(InputError, match="a parent path is a file"):
        prepare_outputs([tmp_path / "file" / "sub" / "out.wav"], [src])
    with pytest.raises(OutputExistsError):
        prepare_outputs([tmp_path / "file"], [src])
    assert prepare_outputs([tmp_path / "new" / "deep" / "o.wav"], [src]) == [tmp_path / "new" / "deep" / "o.wav"]
    assert not (tmp_path / "new").exists()  # checked, not created
    with pytest.raises(InputError, match="must be a folder"):
        prepare_outputs([], [src], folders=[tmp_path / "file"])


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes to read-only folders")
def test_prepare_outputs_refuses_read_only_folder(tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        with pytest.raises(InputError, match="not writable"):
            prepare_outputs([ro / "o.nii.gz"])
    finally:
        ro.chmod(0o755)


def test_outputs_get_normal_permissions(tmp_path):
    old = os.umask(0o022)
    try:
        with atomic_output(tmp_path / "a.csv") as tmp:
            tmp.write_text("x")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "a.csv").stat().st_mode) == 0o644


def test_run_batch_goes_on_and_lists_failures(capsys):
    done = []

    def work(name):
        if name.startswith("bad"):
            raise InputError("not audio", name)
        done.append(name)

    assert run_batch(["a", "bad1", "b", "bad2"], work, prog="tool") == 2
    assert done == ["a", "b"]
    err = capsys.readouterr().err.splitlines()
    assert err[-3:] == ["tool: 2 of 4 inputs failed:", "  bad1: not audio", "  bad2: not audio"]  # path once
    assert run_batch(["a", "b"], work, prog="tool") == 0
    with pytest.raises(InputError):  # a single input fails as an unbatched command would
        run_batch(["bad"], work, prog="tool")


def test_report_writer_csv_json_and_table(tmp_path):
    rows = [{"case": "a", "dice": 0.5, "hd95": float("nan")}, {"case": "b", "dice": 1.0, "extra": 3}]
    write_report(tmp_path / "r.csv", rows)
    lines = (tmp_path / "r.csv").read_text().splitlines()
    assert lines == ["case,dice,hd95,extra", "a,0.5,,", "b,1,,3"]
    write_report(tmp_path / "r.json", rows + [mean_row(rows, "case")])
    data = json.loads((tmp_path / "r.json").read_text())
    assert data[0]["hd95"] is None and data[2] == {"case": "mean", "dice": 0.75, "hd95": None, "extra": 3.0}
    with pytest.raises(OutputExistsError):
        write_report(tmp_path / "r.csv", rows)
    with pytest.raises(InputError, match="must be .csv"):
        write_report(tmp_path / "r.xlsx", rows)
    table = format_table(rows, ["case", "dice"]).splitlines()
    assert table == ["case    dice", "a     0.5000", "b     1.0000"]


def test_run_cli_gives_ctrl_c_back_to_a_command_started_with_sigint_ignored():
    """A command started as a background job of a script inherits SIGINT ignored: every CLI restores Ctrl-C."""
    import signal

    from shared_backbones.cliutil import run_cli

    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        assert run_cli(lambda argv: 0 if signal.getsignal(signal.SIGINT) is signal.default_int_handler else 3,
                       [], prog="x") == 0
    finally:
        signal.signal(signal.SIGINT, previous)
