"""The ``convsuite`` command: demo frame, summary table, errors."""

from __future__ import annotations

import json
from pathlib import Path

from pipelines.convsuite_cli import format_table, main
from pipelines.demos import DEMO_PARTS, DemoResult, available_parts


def test_format_table_lists_every_figure_and_note():
    rows = [DemoResult("medseg", {"mean_dice": 0.93, "hd95": 1.5}, {"mean_dice": ">= 0.9"}, ["a.nii.gz"], 12.0),
            DemoResult("audiosep", notes="FAILED: boom", passed=False)]
    text = format_table(rows)
    lines = text.splitlines()
    assert lines[1].split()[:4] == ["medseg", "mean_dice", "0.93", ">="]
    assert "hd95" in lines[2] and "a.nii.gz" in lines[1]
    assert "note: FAILED: boom" in text


def test_unknown_part_is_one_line_exit_2(capsys, tmp_path):
    assert main(["demo", "--only", "nope", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "unknown demo part" in err


def test_quick_backbones_demo_writes_summary(tmp_path, capsys):
    assert "backbones" in available_parts() and set(available_parts()) <= set(DEMO_PARTS)
    assert main(["demo", "--only", "backbones", "--quick", "--quiet", "--out", str(tmp_path)]) == 0
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary[0]["pipeline"] == "backbones" and summary[0]["figures"]["mem_ratio_depth8"] > 4
    assert (tmp_path / "backbones" / "example_model.pt").is_file()
    assert "convsuite demo summary" in capsys.readouterr().out


def test_quick_medseg_and_remote_demo_parts_run(tmp_path):
    """Every task part is installed; the quick medseg and remote parts run end to end and write their outputs."""
    assert set(available_parts()) == set(DEMO_PARTS)
    assert main(["demo", "--only", "medseg,remote", "--quick", "--quiet", "--out", str(tmp_path)]) == 0
    summary = {r["pipeline"]: r for r in json.loads((tmp_path / "summary.json").read_text())}
    assert set(summary) == {"medseg", "remote"}
    assert 0 <= summary["medseg"]["figures"]["mean_dice"] <= 1
    assert len(list((tmp_path / "medseg" / "predictions").glob("*.nii.gz"))) == 1
    assert all(Path(o).exists() for r in summary.values() for o in r["outputs"])
