"""medseg phases CLI: predict outputs, layouts, train (k-fold by centre), evaluate, error paths."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch

from medseg.cli import main
from medseg.phases.io import load_features, load_labels
from medseg.phases.models import COLON_CLASSES
from medseg.phases.synthetic import write_dataset
from shared_backbones.checkpoint import load_model_file


def test_predict_writes_frames_segments_summary_png(tmp_path, model_file):
    feats = np.random.default_rng(0).standard_normal((16, 400)).astype("float32")  # [D, T]: auto layout
    np.save(tmp_path / "v.npy", feats)
    (tmp_path / "ref.txt").write_text("\n".join(["insertion"] * 200 + [""] * 20 + ["cecum"] * 180))
    assert main(["phases", str(tmp_path / "v.npy"), "-m", str(model_file), "-o", str(tmp_path / "out"),
                 "--reference", str(tmp_path / "ref.txt"), "--quiet"]) == 0
    rows = list(csv.DictReader(open(tmp_path / "out" / "v_phases.csv")))
    assert len(rows) == 400 and rows[5]["time_s"] == "1.000" and rows[0]["label"] in COLON_CLASSES
    probs = np.array([[float(r[f"p_{c}"]) for c in COLON_CLASSES] for r in rows])
    assert np.allclose(probs.sum(1), 1, atol=1e-3)
    segs = list(csv.DictReader(open(tmp_path / "out" / "v_segments.csv")))
    assert int(segs[0]["start_frame"]) == 0 and int(segs[-1]["end_frame"]) == 399
    assert sum(float(s["duration_s"]) for s in segs) == pytest.approx(80.0)
    summary = json.loads((tmp_path / "out" / "v_summary.json").read_text())
    assert summary["frames"] == 400 and "accuracy" in summary["metrics"] and summary["reference_withdrawal_s"] == 36.0
    assert (tmp_path / "out" / "v_timeline.png").read_bytes()[:4] == b"\x89PNG"


def test_layouts_and_labels(tmp_path):
    a = np.arange(24, dtype="float32").reshape(4, 6)
    np.save(tmp_path / "a.npy", a)
    assert load_features(tmp_path / "a.npy", "tc").shape == (4, 6)
    assert load_features(tmp_path / "a.npy", "ct").shape == (6, 4)
    assert load_features(tmp_path / "a.npy", "auto", expected_dim=4).shape == (6, 4)
    (tmp_path / "l.txt").write_text("cecum\n2\n\nunlabeled\nRECTUM\n")
    assert load_labels(tmp_path / "l.txt", COLON_CLASSES).tolist() == [2, 2, -1, -1, 8]


def test_error_paths(tmp_path, model_file, capsys):
    np.save(tmp_path / "wrong.npy", np.zeros((50, 15), dtype="float32"))
    np.save(tmp_path / "nan.npy", np.full((50, 16), np.nan, dtype="float32"))
    np.save(tmp_path / "three.npy", np.zeros((2, 50, 16), dtype="float32"))
    (tmp_path / "text.npy").write_text("hello")
    np.save(tmp_path / "ok.npy", np.zeros((50, 16), dtype="float32"))
    (tmp_path / "bad.txt").write_text("cecum\nstomach\n")
    (tmp_path / "long.txt").write_text("cecum\n" * 52)
    np.save(tmp_path / "square.npy", np.zeros((16, 16), dtype="float32"))
    other = tmp_path / "other.pt"
    torch.save({**torch.load(model_file, weights_only=True), "task": "audiosep"}, other)
    m = str(model_file)
    cases = [(["wrong.npy", "-m", m], "shape (50, 15), neither axis is the model's 16 dims per frame"),
             (["nan.npy", "-m", m], "NaN"), (["three.npy", "-m", m], "2-D array"),
             (["text.npy", "-m", m], "not a NumPy .npy"), (["missing.npy", "-m", m], "file not found"),
             (["ok.npy", "-m", str(other)], "model file is for task 'audiosep'"),
             (["ok.npy", "-m", m, "--reference", str(tmp_path / "bad.txt")], "line 2: unknown label 'stomach'"),
             (["ok.npy", "-m", m, "--reference", str(tmp_path / "long.txt")],
              "long.txt: 52 labels for 50 feature frames (at most one frame of difference is tolerated)"),
             (["square.npy", "-m", m], "as many frames as feature dims, the layout is ambiguous"),
             (["ok.npy", "-m", m, "--background", "stomach"], "unknown class 'stomach'"),
             (["extract", "video.mp4", "-o", "f.npy"], "video decoding is not available")]
    for argv, msg in cases:
        argv = [str(tmp_path / argv[0]) if argv[0].endswith(".npy") else argv[0], *argv[1:]]
        assert main(["phases", *argv, "--quiet"] if argv[0] != "extract" else ["phases", *argv]) == 2, msg
        err = capsys.readouterr().err
        assert msg in err and err.count("\n") == 1, err
    assert main(["phases", str(tmp_path / "ok.npy"), "-m", m, "--quiet", "--no-png"]) == 0
    assert main(["phases", str(tmp_path / "ok.npy"), "-m", m, "--quiet", "--no-png"]) == 2
    assert "output exists" in capsys.readouterr().err


def test_label_length_rule_is_one_rule(tmp_path, model_file, capsys):
    """At most one frame of difference, with a notice; more is a one-line error naming the label file: the same
    in predict --reference and in evaluate (which used to give a traceback or truncate silently)."""
    feats = tmp_path / "d" / "features"
    feats.mkdir(parents=True)
    (tmp_path / "d" / "labels").mkdir()
    rng = np.random.default_rng(0)
    for vid, n_labels in (("a", 59), ("b", 61), ("c", 60)):
        np.save(feats / f"{vid}.npy", rng.standard_normal((60, 16)).astype("float32"))
        (tmp_path / "d" / "labels" / f"{vid}.txt").write_text("cecum\n" * n_labels)
    assert main(["phases", "evaluate", str(tmp_path / "d"), "-m", str(model_file),
                 "--csv", str(tmp_path / "e.csv")]) == 0
    err = capsys.readouterr().err
    assert "a.txt: notice: 59 labels for 60 feature frames: the last frame is unlabeled (ignored)" in err
    assert "b.txt: notice: 61 labels for 60 feature frames: the extra last label is ignored" in err
    rows = list(csv.DictReader(open(tmp_path / "e.csv")))
    assert [r["video"] for r in rows] == ["a", "b", "c", "ALL"]
    (tmp_path / "d" / "labels" / "b.txt").write_text("cecum\n" * 62)
    assert main(["phases", "evaluate", str(tmp_path / "d"), "-m", str(model_file), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "b.txt: 62 labels for 60 feature frames (at most one frame" in err
    assert main(["phases", str(feats / "a.npy"), "-m", str(model_file), "-o", str(tmp_path / "o"), "--no-png",
                 "--reference", str(tmp_path / "d" / "labels" / "a.txt")]) == 0
    assert "a.txt: notice: 59 labels for 60 feature frames" in capsys.readouterr().err
    summary = json.loads((tmp_path / "o" / "a_summary.json").read_text())
    assert summary["reference_withdrawal_s"] == pytest.approx(59 / 5)


def test_train_all_folds_by_centre_and_evaluate(tmp_path, capsys):
    data = write_dataset(tmp_path / "d", n_videos=4, dim=16, centres=2, seed=0, time_scale=0.2)
    out = tmp_path / "m.pt"
    assert main(["phases", "train", str(data), "-o", str(out), "--blocks", "3", "--folds", "0", "--groups",
                 str(data / "groups.csv"), "--fold", "all", "--epochs", "1", "--device", "cpu",
                 "--csv", str(tmp_path / "folds.csv"), "--quiet"]) == 0
    rows = list(csv.DictReader(open(tmp_path / "folds.csv")))
    assert [r["fold"] for r in rows] == ["0", "1", "mean"]
    assert float(rows[2]["accuracy"]) == pytest.approx((float(rows[0]["accuracy"]) + float(rows[1]["accuracy"])) / 2,
                                                       rel=1e-4)
    mf = load_model_file(tmp_path / "m_fold0.pt", task="phases")
    assert mf.classes == COLON_CLASSES and mf.arch_kwargs["in_features"] == 16 and mf.preprocessing["fps"] == 5.0
    printed = capsys.readouterr().out
    assert printed.splitlines()[0].split()[:3] == ["fold", "accuracy", "edit"] and "mean" in printed
    assert main(["phases", "evaluate", str(data), "-m", str(tmp_path / "m_fold1.pt"), "--quiet",
                 "--background", "outside"]) == 0
    text = capsys.readouterr().out
    assert "ALL" in text and "cecum" in text and "f1@50" in text
    # old spellings still work for one release, with a deprecation line; the outputs now exist
    assert main(["phases", "train", str(data), "-o", str(out), "--blocks", "3", "--folds", "0", "--groups",
                 str(data / "groups.csv"), "--all-folds", "--epochs", "1", "--accelerator", "cpu", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "--all-folds is deprecated" in err and "--accelerator is deprecated" in err
    assert "m_fold0.pt: output exists (use --overwrite to replace it)" in err


def test_extract_features_from_frames(tmp_path, capsys):
    from PIL import Image

    from medseg.phases.extract import frame_encoder

    frames = tmp_path / "frames"
    frames.mkdir()
    rng = np.random.default_rng(0)
    for i in range(10):
        Image.fromarray(rng.integers(0, 255, (120, 160, 3), dtype=np.uint8)).save(frames / f"{i:04d}.png")
    torch.manual_seed(0)
    enc = frame_encoder()
    torch.save(enc.state_dict(), tmp_path / "enc.pth")
    out = tmp_path / "f.npy"
    assert main(["phases", "extract", str(frames), "-o", str(out), "--encoder", str(tmp_path / "enc.pth"),
                 "--source-fps", "10", "--fps", "5", "--quiet"]) == 0
    feats = np.load(out)
    assert feats.shape == (5, 2048) and np.isfinite(feats).all()
    # the same weights give the same features
    assert main(["phases", "extract", str(frames), "-o", str(out), "--encoder", str(tmp_path / "enc.pth"),
                 "--source-fps", "10", "--fps", "5", "--quiet", "--overwrite"]) == 0
    assert np.array_equal(np.load(out), feats)
    (frames / "0003.png").write_bytes(b"broken")
    assert main(["phases", "extract", str(frames), "-o", str(tmp_path / "g.npy"), "--source-fps", "5", "--quiet"]) == 2
    assert "0003.png: not a readable image" in capsys.readouterr().err


def test_fixed_split_bundles(tmp_path):
    from pipelines.phases import bundle_splits

    ids = ["a", "b", "c", "d"]
    (tmp_path / "train.split1.bundle").write_text("a.txt\nb.txt\n")
    (tmp_path / "test.split1.bundle").write_text("c.txt\nd.txt\n")
    (tmp_path / "train.split2.bundle").write_text("c.txt\nd.txt\n")
    (tmp_path / "test.split2.bundle").write_text("a.txt\nb.txt\n")
    assert bundle_splits(tmp_path, ids) == [([0, 1], [2, 3]), ([2, 3], [0, 1])]
    (tmp_path / "test.split2.bundle").write_text("zz.txt\n")
    from shared_backbones.errors import InputError

    with pytest.raises(InputError, match="unknown video 'zz'"):
        bundle_splits(tmp_path, ids)


def test_cli_contract_help_examples_version(capsys):
    import argparse

    from medseg.phases.cli import _parser
    from shared_backbones.cliutil import iter_subparsers

    commands = dict(iter_subparsers(_parser()))
    assert set(commands) == {(), ("predict",), ("evaluate",), ("train",), ("extract",)}
    for path, parser in commands.items():
        examples = [line for line in (parser.epilog or "").splitlines() if line.startswith("  medseg phases")]
        assert 2 <= len(examples) <= 3, path
        for action in parser._actions:
            if action.option_strings and action.help != argparse.SUPPRESS:
                assert action.help, (path, action.option_strings)
        opts = {o for a in parser._actions for o in a.option_strings}
        if path:
            assert {"-q", "--quiet", "--version"} <= opts, path
    train = {o for a in commands[("train",)]._actions for o in a.option_strings}
    assert {"--devices", "--seed", "--resume", "--precision", "--max-time", "--fold", "--device", "--layout"} <= train
    with pytest.raises(SystemExit) as e:
        main(["phases", "train", "--version"])
    assert e.value.code == 0 and "(convsuite)" in capsys.readouterr().out
    with pytest.raises(SystemExit) as e:  # one duration syntax for every --max-time (12h, 00:12:00:00, 45m ...)
        main(["phases", "train", "d", "-o", "m.pt", "--max-time", "12 parsecs"])
    err = capsys.readouterr().err
    assert e.value.code == 2 and "argument --max-time" in err and "90s, 45m, 2h" in err


def test_predict_folder_batch_goes_on_past_a_bad_file(tmp_path, model_file, capsys):
    feats = tmp_path / "feats"
    feats.mkdir()
    np.save(feats / "a.npy", np.zeros((30, 16), dtype="float32"))
    np.save(feats / "b.npy", np.zeros((30, 7), dtype="float32"))
    np.save(feats / "c.npy", np.ones((16, 40), dtype="float32"))  # [D, T]
    assert main(["phases", "predict", str(feats), "-m", str(model_file), "--out-dir", str(tmp_path / "o"),
                 "--no-png", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "--out-dir is deprecated" in err and "1 of 3 inputs failed" in err and "b.npy: features have shape" in err
    assert sorted(p.name for p in (tmp_path / "o").iterdir()) == [
        "a_phases.csv", "a_segments.csv", "a_summary.json", "c_phases.csv", "c_segments.csv", "c_summary.json"]
    assert json.loads((tmp_path / "o" / "c_summary.json").read_text())["frames"] == 40
    # every output is checked before any work: one existing output refuses the whole batch, nothing is written
    (tmp_path / "o2").mkdir()
    (tmp_path / "o2" / "c_summary.json").write_text("{}")
    assert main(["phases", "predict", str(feats / "a.npy"), str(feats / "c.npy"), "-m", str(model_file),
                 "-o", str(tmp_path / "o2"), "--no-png", "--quiet"]) == 2
    assert "c.npy: some outputs exist and others do not" in capsys.readouterr().err
    assert sorted(p.name for p in (tmp_path / "o2").iterdir()) == ["c_summary.json"]
