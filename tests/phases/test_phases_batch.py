"""medseg phases on the shared layer: predict batches planned before any work (collisions, outputs among the inputs),
--num-parts/--part-id and skip-if-done, the library batch function, evaluate -o like every report, typed options."""

from __future__ import annotations

import csv

import numpy as np
import pytest

from medseg.cli import main
from medseg.phases.predict import PhaseModel, plan_predict, predict_files


def _videos(folder, names, frames=40):
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for n in names:
        np.save(folder / f"{n}.npy", rng.standard_normal((frames, 16)).astype("float32"))
    return folder


def _err(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "Traceback" not in err, err
    return err


def test_predict_parts_and_skip_done(tmp_path, model_file, capsys):
    feats = _videos(tmp_path / "feats", ["a", "b", "c"])
    out = tmp_path / "o"
    run = ["phases", "predict", str(feats), "-m", str(model_file), "-o", str(out), "--no-png"]
    assert main([*run, "--num-parts", "2", "--part-id", "1", "-q"]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["b_phases.csv", "b_segments.csv", "b_summary.json"]
    stamp = (out / "b_phases.csv").stat().st_mtime_ns
    assert main([*run, "--num-parts", "2", "--part-id", "0", "-q"]) == 0
    assert len(list(out.iterdir())) == 9
    assert main(run) == 0                                        # a rerun of the folder: every video is done
    assert "skipping 3 input(s) whose outputs exist (use --overwrite to redo them)" in capsys.readouterr().err
    assert (out / "b_phases.csv").stat().st_mtime_ns == stamp
    assert main([*run, "--overwrite", "-q"]) == 0 and (out / "b_phases.csv").stat().st_mtime_ns != stamp
    assert main([*run, "--num-parts", "3", "--part-id", "3"]) == 2
    assert "--part-id must be in 0..2 for --num-parts 3" in _err(capsys)
    # one file named on its own is not a batch: its existing outputs need --overwrite
    assert main(["phases", "predict", str(feats / "a.npy"), "-m", str(model_file), "-o", str(out), "--no-png"]) == 2
    assert "output exists (use --overwrite" in _err(capsys)


def test_predict_refuses_colliding_and_input_outputs_before_any_work(tmp_path, model_file, capsys):
    _videos(tmp_path / "site1", ["v"])
    _videos(tmp_path / "site2", ["v"])
    out = tmp_path / "o"
    assert main(["phases", "predict", str(tmp_path / "site1"), str(tmp_path / "site2"), "-m", str(model_file),
                 "-o", str(out), "--overwrite", "-q"]) == 2
    err = _err(capsys)
    assert "v_phases.csv: two inputs map to this output" in err and "site1/v.npy and " in err
    assert not out.exists()
    # the reference labels are an input: an output on their path is refused, the labels untouched
    ref = tmp_path / "site1" / "v_phases.csv"
    ref.write_text("cecum\n" * 40)
    assert main(["phases", "predict", str(tmp_path / "site1" / "v.npy"), "-m", str(model_file), "--reference",
                 str(ref), "--overwrite", "-q"]) == 2
    assert "v_phases.csv: the frames output is one of the inputs" in _err(capsys)
    assert ref.read_text() == "cecum\n" * 40 and not (tmp_path / "site1" / "v_segments.csv").exists()


def test_predict_files_is_the_batch_a_notebook_calls(tmp_path, model_file):
    feats = _videos(tmp_path / "feats", ["a", "b"])
    (feats / "broken.npy").write_text("not an array")
    plan = plan_predict([feats], tmp_path / "o", png=False, model=model_file)
    assert [j.inputs[0].name for j in plan.jobs] == ["a.npy", "b.npy", "broken.npy"]
    assert set(plan.jobs[0].outputs) == {"frames", "segments", "summary"}
    seen = []
    pm = PhaseModel.from_file(model_file, "cpu", "fp32")
    assert predict_files(plan, pm, png=False, quiet=True, report=lambda j, s: seen.append(s["frames"])) == 2
    assert seen == [40, 40]                                      # the bad file did not stop the batch


def test_evaluate_report_is_dash_o_like_every_report(tmp_path, model_file, capsys):
    data = tmp_path / "d"
    _videos(data / "features", ["a", "b"])
    (data / "labels").mkdir()
    for v in ("a", "b"):
        (data / "labels" / f"{v}.txt").write_text("cecum\n" * 40)
    assert main(["phases", "evaluate", str(data), "-m", str(model_file), "-o", str(tmp_path / "e.csv"), "-q"]) == 0
    assert [r["video"] for r in csv.DictReader(open(tmp_path / "e.csv"))] == ["a", "b", "ALL"]
    assert main(["phases", "evaluate", str(data), "-m", str(model_file), "--csv", str(tmp_path / "e.tsv"), "-q"]) == 0
    assert "--csv is deprecated" in capsys.readouterr().err and (tmp_path / "e.tsv").exists()
    assert main(["phases", "evaluate", str(data), "-m", str(model_file), "--output", str(tmp_path / "e.csv")]) == 2
    assert "e.csv: output exists" in _err(capsys)
    assert main(["phases", "evaluate", str(data), "-m", str(model_file), "-o", str(tmp_path / "e.txt")]) == 2
    assert "cannot write a '.txt' file (use .csv, .tsv, .json)" in _err(capsys)


@pytest.mark.parametrize(("argv", "option", "values"), [
    (["predict", "x.npy", "-m", "m.pt"], "--fps", ["0", "-1", "nan", "inf", "1e30"]),
    (["predict", "x.npy", "-m", "m.pt"], "--num-parts", ["0", "nan"]),
    (["extract", "frames", "-o", "x.npy"], "--source-fps", ["0", "nan", "-5"]),
    (["extract", "frames", "-o", "x.npy"], "--fps", ["0", "inf"]),
    (["extract", "frames", "-o", "x.npy"], "--batch-size", ["0", "-1", "1e30"]),
])
def test_numeric_options_are_typed(argv, option, values, capsys):
    for value in values:
        with pytest.raises(SystemExit) as exc:
            main(["phases", *argv, option, value])
        assert exc.value.code == 2
        err = capsys.readouterr().err
        assert f"argument {option}" in err and "expected " in err and "Traceback" not in err, (option, value)


def test_extract_refuses_a_rate_above_the_source_and_a_non_npy_output(tmp_path, capsys):
    frames = tmp_path / "frames"
    frames.mkdir()
    from PIL import Image

    Image.new("RGB", (8, 8)).save(frames / "0001.png")
    assert main(["phases", "extract", str(frames), "-o", str(tmp_path / "f.npy"), "--source-fps", "5", "--fps",
                 "25"]) == 2
    assert "--fps (25) must be at most --source-fps (5)" in _err(capsys)
    assert main(["phases", "extract", str(frames), "-o", str(tmp_path / "f.pt")]) == 2
    assert "cannot write a '.pt' file (use .npy)" in _err(capsys)
    assert main(["phases", "extract", str(frames), "-o", str(frames / "0001.png"), "--overwrite"]) == 2
    assert "0001.png: " in (err := _err(capsys)) and "cannot write a '.png' file" in err
    assert not list(tmp_path.glob("f.*"))
