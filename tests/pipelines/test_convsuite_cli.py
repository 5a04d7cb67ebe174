"""The ``convsuite`` command: demo frame, summary table, errors."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from pipelines.convsuite_cli import format_table, main
from pipelines.demos import DemoResult


def test_format_table_lists_every_figure_and_note():
    rows = [DemoResult("medseg", {"mean_dice": 0.93, "hd95": 1.5}, {"mean_dice": ">= 0.9"}, ["a.nii.gz"], 12.0,
                       notes="phantoms"),
            DemoResult("audiosep", error="RuntimeError: boom")]
    text = format_table(rows)
    lines = text.splitlines()
    assert lines[1].split()[:6] == ["medseg", "mean_dice", "0.93", ">=", "0.9", "ok"]
    assert "hd95" in lines[2] and "a.nii.gz" in lines[1] and "note: phantoms" in text
    assert lines[4].split()[:2] == ["audiosep", "-"] and "FAILED" in lines[4]
    assert "error: RuntimeError: boom" in text


def test_targets_are_judged_from_their_comparison():
    r = DemoResult("audiosep", {"si_snri_db": 6.057, "sdri_db": 6.5, "steps": 3000.0, "hd95": float("nan")},
                   {"si_snri_db": ">= 8", "sdri_db": "> 6.5 (remark)", "steps": "3000 (no comparison)",
                    "hd95": "<= 2"})
    assert r.verdicts() == {"si_snri_db": "MISSED", "sdri_db": "MISSED", "hd95": "MISSED"}
    assert r.missed() == ["audiosep si_snri_db 6.06 < 8", "audiosep sdri_db 6.5 <= 6.5", "audiosep hd95 nan > 2"]
    ok = DemoResult("x", {"a": 0.9, "b": 1e-3, "c": -2.0}, {"a": ">= 0.9", "b": "< 1e-2", "c": ">-3"})
    assert ok.verdicts() == {"a": "ok", "b": "ok", "c": "ok"} and ok.missed() == []
    quick = DemoResult("x", {"a": 0.1, "b": 0.1}, {"a": ">= 0.9", "b": ">= 0.9"}, not_judged=["a"])
    assert quick.verdicts() == {"a": "not judged (--quick)", "b": "MISSED"} and quick.missed() == ["x b 0.1 < 0.9"]


def _fake_parts(monkeypatch, results):
    """Demo parts replaced by modules whose ``run`` returns (or raises) the given result, without any training."""
    import sys
    import types

    for name, res in results.items():
        def run(out_dir, *, quick=False, quiet=False, res=res):
            if isinstance(res, Exception):
                raise res
            Path(out_dir).mkdir(parents=True, exist_ok=True)
            return res
        monkeypatch.setitem(sys.modules, f"pipelines.demos.{name}", types.SimpleNamespace(run=run))


def test_missed_target_is_listed_and_the_demo_still_exits_0(monkeypatch, tmp_path, capsys):
    """The exit code says whether every part ran end to end: a missed target is marked and listed, not a failure
    (``make demo`` exited 2 on a fresh clone when audiosep reached 6.06 of its 8 dB)."""
    _fake_parts(monkeypatch, {
        "medseg": DemoResult("medseg", {"mean_dice": 0.95}, {"mean_dice": ">= 0.9"}),
        "audiosep": DemoResult("audiosep", {"si_snri_db": 6.057, "sdri_db": 6.5}, {"si_snri_db": ">= 8"})})
    assert main(["demo", "--only", "medseg,audiosep", "-o", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    table = out[out.index("convsuite demo summary"):].splitlines()
    assert table[2].split()[:6] == ["medseg", "mean_dice", "0.95", ">=", "0.9", "ok"]
    assert table[3].split()[:6] == ["audiosep", "si_snri_db", "6.057", ">=", "8", "MISSED"]
    assert "missed targets: audiosep si_snri_db 6.06 < 8" in out
    assert "every part ran end to end (medseg, audiosep)" in out
    summary = {r["pipeline"]: r for r in json.loads((tmp_path / "summary.json").read_text())}
    assert summary["audiosep"]["verdicts"] == {"si_snri_db": "MISSED"} and summary["audiosep"]["ran"] is True
    assert summary["audiosep"]["missed"] == ["audiosep si_snri_db 6.06 < 8"]
    assert summary["medseg"]["verdicts"] == {"mean_dice": "ok"} and summary["medseg"]["missed"] == []


def test_a_failing_part_makes_the_exit_code_1_and_is_listed(monkeypatch, tmp_path, capsys):
    _fake_parts(monkeypatch, {
        "medseg": RuntimeError("medseg predict failed on the demo phantoms"),
        "remote": DemoResult("remote", {"heldout_map_accuracy": 0.97}, {"heldout_map_accuracy": ">= 0.8"})})
    assert main(["demo", "--only", "medseg,remote", "-o", str(tmp_path)]) == 1
    out = capsys.readouterr().out
    assert "failed parts (1 of 2): medseg (RuntimeError: medseg predict failed on the demo phantoms)" in out
    assert "missed targets: none" in out and "every part ran" not in out
    table = out[out.index("convsuite demo summary"):].splitlines()
    assert table[2].split()[:3] == ["medseg", "-", "nan"] and "FAILED" in table[2]
    assert table[4].split()[:6] == ["remote", "heldout_map_accuracy", "0.97", ">=", "0.8", "ok"]  # still ran
    summary = {r["pipeline"]: r for r in json.loads((tmp_path / "summary.json").read_text())}
    assert summary["medseg"]["ran"] is False and "predict failed" in summary["medseg"]["error"]


def test_quick_figures_say_they_are_not_judged(monkeypatch, tmp_path, capsys):
    _fake_parts(monkeypatch, {"phases": DemoResult("phases", {"accuracy": 12.0}, {"accuracy": ">= 80"},
                                                   not_judged=["accuracy"])})
    assert main(["demo", "--only", "phases", "--quick", "-o", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    row = next(line for line in out.splitlines() if line.startswith("phases"))
    assert row.split()[:7] == ["phases", "accuracy", "12", ">=", "80", "not", "judged"] and "(--quick)" in row
    assert "missed targets: none" in out and "not judged (--quick" in out and "phases accuracy" in out


def test_unknown_part_is_one_line_exit_2(capsys, tmp_path):
    assert main(["demo", "--only", "nope", "-o", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "unknown demo part" in err


def test_demo_refuses_earlier_outputs_without_overwrite(capsys, tmp_path):
    (tmp_path / "summary.json").write_text("[]")
    assert main(["demo", "--only", "backbones", "--quick", "-o", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--overwrite" in err and str(tmp_path) in err
    assert (tmp_path / "summary.json").read_text() == "[]" and not (tmp_path / "backbones").exists()
    (tmp_path / "summary.json").unlink()
    (tmp_path / "file").write_text("x")
    assert main(["demo", "--only", "backbones", "--quick", "-o", str(tmp_path / "file" / "sub")]) == 2
    assert "a parent path is a file" in capsys.readouterr().err


def test_models_lists_every_task_without_imports(capsys):
    assert main(["models", "--task", "medseg"]) == 0
    names = capsys.readouterr().out.split()
    assert {"unet3d", "stunet-s", "revunet3d"} <= set(names[::2]) and set(names[1::2]) == {"medseg"}
    assert main(["models", "--task", "nope"]) == 2


def test_quick_backbones_demo_writes_summary(tmp_path, capsys):
    assert main(["demo", "--only", "backbones", "--quick", "--quiet", "-o", str(tmp_path)]) == 0
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary[0]["pipeline"] == "backbones" and summary[0]["figures"]["mem_ratio_depth8"] > 4
    assert summary[0]["verdicts"] == {"heldout_accuracy": "not judged (--quick)", "mem_ratio_depth8": "ok"}
    assert (tmp_path / "backbones" / "example_model.pt").is_file()
    assert "convsuite demo summary" in capsys.readouterr().out


def test_quick_medseg_and_remote_demo_parts_run(tmp_path):
    """Every task part is installed; the quick medseg and remote parts run end to end and write their outputs."""
    assert main(["demo", "--only", "medseg,remote", "--quick", "--quiet", "-o", str(tmp_path)]) == 0
    summary = {r["pipeline"]: r for r in json.loads((tmp_path / "summary.json").read_text())}
    assert set(summary) == {"medseg", "remote"}
    preds = sorted((tmp_path / "medseg" / "predictions").glob("*.nii.gz"))
    assert len(preds) == 1
    # the reported Dice is the one computed here, independently, from the written prediction and its reference
    pred = np.asarray(nib.load(preds[0]).dataobj)
    ref = np.asarray(nib.load(tmp_path / "medseg" / "data" / "labelsTs" / preds[0].name).dataobj)
    assert pred.shape == ref.shape
    dice = [2 * np.sum((pred == c) & (ref == c)) / (np.sum(pred == c) + np.sum(ref == c))
            for c in range(1, 4) if np.any(ref == c) or np.any(pred == c)]
    assert summary["medseg"]["figures"]["mean_dice"] == pytest.approx(float(np.mean(dice)), abs=1e-6)
    assert all(Path(o).exists() for r in summary.values() for o in r["outputs"])


def test_quick_audiosep_demo_part_scores_what_it_wrote(tmp_path):
    """The quick speech part runs end to end (one-thread training, then BSS-eval scoring in the same process: the
    thread-count change once broke torch's batched solve) and reports the mean of its scores.csv."""
    pytest.importorskip("espeakng_loader")
    import csv

    assert main(["demo", "--only", "audiosep", "--quick", "--quiet", "-o", str(tmp_path)]) == 0
    res = json.loads((tmp_path / "summary.json").read_text())[0]
    assert res["pipeline"] == "audiosep" and "FAILED" not in res["notes"]
    rows = list(csv.DictReader(open(tmp_path / "audiosep" / "scores.csv")))
    assert rows[-1]["file"] == "mean" and len(rows) == 5  # 4 held-out mixtures and their mean
    assert res["figures"]["si_snri_db"] == pytest.approx(float(rows[-1]["si_snri"]), abs=1e-3)
    assert np.isfinite(res["figures"]["sdri_db"]) and res["figures"]["train_cpu_seconds"] > 0
    assert all(Path(o).exists() for o in res["outputs"])


@pytest.mark.parametrize("part, trainer", [("backbones", "build_trainer"), ("medseg", "train_medseg"),
                                           ("phases", "train_phases"), ("audiosep", "train_audiosep"),
                                           ("remote", "train_remote")])
def test_full_demo_budgets_are_steps_not_wall_time(part, trainer, monkeypatch, tmp_path):
    """Every full (not --quick) part trains for a number of steps or epochs, never a wall-time budget: under load
    the audiosep part got 119 steps instead of ~3000 from its 3-minute budget, and its figures with them. The data
    makers and the training call are replaced: the test reads the budget the part asks for."""
    import importlib
    from unittest import mock

    module = importlib.import_module(f"pipelines.demos.{part}")
    seen: dict = {}

    class Asked(Exception):
        pass

    def train(*args, **kwargs):
        seen.update(kwargs)
        raise Asked

    monkeypatch.setattr(module, trainer, train)
    for maker in ("write_corpus", "write_dataset", "make_season", "open_series"):
        if hasattr(module, maker):
            monkeypatch.setattr(module, maker, mock.MagicMock())
    with pytest.raises(Asked):
        module.run(tmp_path / part, quick=False, quiet=True)
    assert seen.get("max_time") is None and seen.get("scheduler") != "time-cosine"
    epochs = seen.get("max_epochs", seen.get("epochs"))
    steps = seen.get("max_steps", -1)
    assert (isinstance(epochs, int) and 0 < epochs <= 1000) and (steps == -1 or 0 < steps <= 10000)
    if part == "audiosep":
        assert steps == module.STEPS == 3000 and seen["scheduler"] == "cosine"
