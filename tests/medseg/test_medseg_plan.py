"""`medseg` volume commands on the shared layer: outputs planned and checked before any work (medseg.batch), typed
numeric options, renamed options, a folder's own outputs skipped."""

from __future__ import annotations

import argparse
import zipfile

import numpy as np
import pydicom
import pytest
from medseg_testutil import load, make_model_file, write_volume
from test_dicom import write_series

from medseg.batch import plan_predict, predict_files
from medseg.volume_cli import _parser, main
from shared_backbones.cliutil import iter_subparsers
from shared_backbones.errors import InputError
from shared_backbones.options import Number

VOLUME_COMMANDS = ("predict", "evaluate", "import-stunet", "import-nnunet", "synth")


def _one_error(capsys) -> str:
    err = [line for line in capsys.readouterr().err.strip().splitlines() if "deprecated" not in line]
    assert len(err) == 1 and err[0].startswith("medseg: error: "), err
    return err[0]


def _files(folder) -> dict:
    return {p.relative_to(folder): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture
def series(tmp_path):
    """A small CT series folder S/ (IM0000.dcm ...) and a 3-class model."""
    write_series(tmp_path / "S", n=5, rows=12, cols=14)
    return tmp_path / "S", make_model_file(tmp_path / "tiny3.pt", num_classes=3)


@pytest.fixture
def no_work(monkeypatch):
    """Fail the test if a case is predicted (a refusal must come before any work)."""
    def boom(*a, **k):
        raise AssertionError("the model ran before the refusal")

    monkeypatch.setattr("medseg.predict.predict_case", boom)


# ------------------------------------------------------------------------------------------------ refusals
@pytest.mark.usefixtures("no_work")
def test_two_inputs_that_map_to_one_output_are_refused(tmp_path, model_file, capsys):
    folder = tmp_path / "scans"
    folder.mkdir()
    write_volume(folder / "a.nii.gz")
    write_volume(folder / "a.nii", seed=1)
    before = _files(tmp_path)
    assert main(["predict", str(folder), "-m", str(model_file), "--quiet"]) == 2
    err = _one_error(capsys)
    assert "two inputs map to this output" in err and "a.nii" in err and "a.nii.gz" in err
    assert _files(tmp_path) == before and not (tmp_path / "scans_seg").exists()
    # the library function a notebook calls refuses the same, before loading the model
    with pytest.raises(InputError, match="two inputs map to this output"):
        predict_files([folder], [tmp_path / "no_such_model.pt"])


@pytest.mark.usefixtures("no_work")
def test_output_among_the_series_files_or_the_input_zip_is_refused(series, tmp_path, capsys):
    s, model = series
    before = _files(tmp_path)
    assert main(["predict", str(s), "-m", str(model), "--dicom-seg", str(s / "IM0001.dcm"), "--overwrite",
                 "--quiet"]) == 2
    assert "dicom seg output is one of the inputs" in _one_error(capsys)
    assert _files(tmp_path) == before
    zpath = tmp_path / "S.zip"
    with zipfile.ZipFile(zpath, "w") as z:
        for f in sorted(s.iterdir()):
            z.write(f, f"S/{f.name}")
    before = _files(tmp_path)
    assert main(["predict", str(zpath), "-m", str(model), "--dicom-seg", str(zpath), "--overwrite", "--quiet"]) == 2
    assert "one of the inputs" in _one_error(capsys)
    assert _files(tmp_path) == before


@pytest.mark.usefixtures("no_work")
def test_two_outputs_with_one_path_are_refused(series, tmp_path, capsys):
    s, model = series
    x = tmp_path / "x.nii.gz"
    assert main(["predict", str(s), "-m", str(model), "-o", str(x), "--dicom-seg", str(x), "--overwrite",
                 "--quiet"]) == 2
    assert "two outputs of this run have the same path (labels and dicom seg)" in _one_error(capsys)
    assert not x.exists()


@pytest.mark.parametrize("name,hint", [("seg.dcm", "use --dicom-seg for DICOM SEG"), ("seg.txt", "use .nii.gz")])
@pytest.mark.usefixtures("no_work")
def test_an_output_the_writer_cannot_write_is_refused_before_the_model_runs(tmp_path, model_file, volume, capsys,
                                                                            name, hint):
    assert main(["predict", str(volume), "-m", str(model_file), "-o", str(tmp_path / name), "--quiet"]) == 2
    err = _one_error(capsys)
    assert "-o/--output cannot write" in err and hint in err and name in err
    assert not (tmp_path / name).exists()


@pytest.mark.usefixtures("no_work")
def test_dicom_seg_needs_are_checked_before_the_label_map_is_written(series, tmp_path, capsys):
    s, model = series
    for f in s.iterdir():
        ds = pydicom.dcmread(f)
        del ds.FrameOfReferenceUID
        ds.save_as(f)
    before = _files(tmp_path)
    assert main(["predict", str(s), "-m", str(model), "--dicom-seg", str(tmp_path / "seg.dcm"), "--quiet"]) == 2
    err = _one_error(capsys)
    assert "--dicom-seg: cannot build a DICOM SEG" in err and "Frame Of Reference" in err
    assert _files(tmp_path) == before  # no S_seg.nii.gz


@pytest.mark.usefixtures("no_work")
def test_a_folder_input_needs_a_folder_output(tmp_path, model_file, capsys):
    folder = tmp_path / "scans"
    folder.mkdir()
    write_volume(folder / "a.nii.gz")
    assert main(["predict", str(folder), "-m", str(model_file), "-o", str(tmp_path / "out.nii.gz"), "--quiet"]) == 2
    assert "must be a folder" in _one_error(capsys)
    assert not (tmp_path / "out.nii.gz").exists()


# ------------------------------------------------------------------------------------------------ own outputs
def test_a_series_folder_holding_its_own_label_map_is_still_the_series(series, tmp_path, capsys):
    s, model = series
    assert main(["predict", str(s), "-m", str(model), "-o", f"{s}/", "--quiet", "--device", "cpu"]) == 0
    first = s / "S.nii.gz"
    assert first.is_file() and not (tmp_path / "S" / "S").exists()
    capsys.readouterr()
    # the next run segments the DICOM series (one case, the default name beside it), not the old label map
    assert main(["predict", str(s), "-m", str(model), "--device", "cpu"]) == 0
    err = capsys.readouterr().err
    assert "skipping S.nii.gz (output of medseg predict, not an input)" in err
    out = tmp_path / "S_seg.nii.gz"
    assert out.is_file() and not out.is_dir()
    assert np.array_equal(np.asarray(load(out).dataobj), np.asarray(load(first).dataobj))
    assert np.array_equal(load(out).affine, load(first).affine)
    # a label map written into the series under another name is recognised by its header
    assert main(["predict", str(s), "-m", str(model), "-o", str(s / "liver.nii.gz"), "--quiet"]) == 0
    assert bytes(load(s / "liver.nii.gz").header["descrip"]).startswith(b"medseg predict labels")
    capsys.readouterr()
    assert main(["predict", str(s), "-m", str(model), "-o", str(tmp_path / "again.nii.gz"), "--device", "cpu"]) == 0
    assert "skipping S.nii.gz, liver.nii.gz (output of medseg predict" in capsys.readouterr().err
    assert np.array_equal(np.asarray(load(tmp_path / "again.nii.gz").dataobj), np.asarray(load(first).dataobj))
    # a NIfTI file of someone else's still makes the folder a folder of NIfTI cases (as before)
    write_volume(s / "other.nii.gz", shape=(6, 5, 4))
    pp = plan_predict([s], output=tmp_path / "o")
    assert pp.folder_mode and [j.data.name for j in pp.plan.jobs] == ["other"]  # our label maps are not cases


def test_folder_expansion_skips_the_commands_own_outputs(tmp_path, model_file, capsys):
    folder = tmp_path / "scans"
    folder.mkdir()
    write_volume(folder / "a.nii.gz")
    write_volume(folder / "b_0000.nii.gz", seed=1)
    base = ["--quiet", "--device", "cpu", "-m", str(model_file)]
    assert main(["predict", str(folder / "a.nii.gz"), *base, "--save-probabilities"]) == 0  # a_seg*.nii.gz beside
    assert main(["predict", str(folder / "b_0000.nii.gz"), "-o", str(folder / "b.nii.gz"), *base]) == 0
    capsys.readouterr()
    assert main(["predict", str(folder), *base]) == 0
    assert "skipping 3 file(s) written by medseg predict" in capsys.readouterr().err
    assert sorted(p.name for p in (tmp_path / "scans_seg").iterdir()) == ["a.nii.gz", "b.nii.gz"]
    plan = plan_predict([folder], output=tmp_path / "other").plan
    assert [j.data.files for j in plan.jobs] == [[folder / "a.nii.gz"], [folder / "b_0000.nii.gz"]]


def test_parts_and_skip_done_go_through_the_planner(tmp_path):
    folder = tmp_path / "scans"
    folder.mkdir()
    for i in range(5):
        write_volume(folder / f"c{i}.nii.gz", shape=(6, 5, 4), seed=i)
    out = tmp_path / "segs"
    parts = [plan_predict([folder], output=out, num_parts=2, part_id=k).plan for k in (0, 1)]
    assert [[j.data.name for j in p.jobs] for p in parts] == [["c0", "c2", "c4"], ["c1", "c3"]]
    assert all(p.total == 5 for p in parts)
    out.mkdir()
    (out / "c2.nii.gz").write_bytes(b"done")
    again = plan_predict([folder], output=out, num_parts=2, part_id=0, save_probabilities=False)
    assert [j.data.name for j in again.plan.jobs] == ["c0", "c4"] and "skipping 1 input(s)" in again.notices[-1]
    with pytest.raises(InputError, match="some outputs exist and others do not"):
        plan_predict([folder], output=out, save_probabilities=True)
    with pytest.raises(InputError, match="--num-parts splits a folder"):
        plan_predict([folder / "c0.nii.gz"], num_parts=2, part_id=1)


# ------------------------------------------------------------------------------------------------ options
def _volume_parsers():
    for path, parser in iter_subparsers(_parser()):
        if path and path[0] in VOLUME_COMMANDS:
            yield path[0], parser


def test_every_numeric_option_is_a_bounded_number():
    seen = 0
    for name, parser in _volume_parsers():
        for action in parser._actions:
            assert action.type not in (int, float), f"{name} {action.option_strings}: bare {action.type.__name__}"
            if isinstance(action.type, Number):
                seen += 1
                for bad in ("nan", "inf", "-inf", "1e30", "-1"):
                    with pytest.raises(argparse.ArgumentTypeError):
                        action.type(bad)
    assert seen >= 9  # overlap, batch-size, num-parts, part-id, tolerance, train, test, channels, seed


@pytest.mark.parametrize("argv", [
    ["predict", "x.nii.gz", "-m", "m.pt", "--overlap", "nan"],
    ["predict", "x.nii.gz", "-m", "m.pt", "--overlap", "1"],
    ["predict", "x.nii.gz", "-m", "m.pt", "--overlap", "-0.1"],
    ["predict", "x.nii.gz", "-m", "m.pt", "--batch-size", "0"],
    ["predict", "x.nii.gz", "-m", "m.pt", "--batch-size", "5000"],
    ["predict", "x.nii.gz", "-m", "m.pt", "--part-id", "-1"],
    ["evaluate", "a", "b", "--tolerance", "0"],
    ["evaluate", "a", "b", "--tolerance", "inf"],
    ["evaluate", "a", "b", "--tolerance", "nan"],
    ["synth", "out", "--train", "0"],
    ["synth", "out", "--test", "-1"],
    ["synth", "out", "--channels", "1000"],
    ["synth", "out", "--train", "1e30"],
])
def test_bad_numbers_are_usage_errors(argv, capsys):
    with pytest.raises(SystemExit) as exc:
        _parser().parse_args(argv)
    assert exc.value.code == 2
    assert f"error: argument {argv[-2]}: expected " in capsys.readouterr().err


def test_renamed_options_and_their_old_spellings(capsys):
    p = _parser()
    for flag in ("-f", "--fold"):
        assert p.parse_args(["predict", "x.nii.gz", "-m", "F", flag, "0", "all"]).folds == [0, "all"]
        assert p.parse_args(["import-nnunet", "F", "-o", "m.pt", flag, "1", "2"]).folds == [1, 2]
    assert "deprecated" not in capsys.readouterr().err
    args = p.parse_args(["predict", "x.nii.gz", "-m", "F", "--folds", "0", "1", "--keep-classes", "organ", "3"])
    assert args.folds == [0, 1] and args.classes == ["organ", "3"] and args.inputs == ["x.nii.gz"]
    err = capsys.readouterr().err
    assert "--folds is deprecated" in err and "use -f/--fold" in err and "--keep-classes is deprecated" in err
    for flag in ("--classes", "--roi-subset", "--roi_subset"):  # issue 21: --classes again, TotalSegmentator's alias
        assert p.parse_args(["predict", "x.nii.gz", "-m", "F", flag, "organ"]).classes == ["organ"]
    assert "deprecated" not in capsys.readouterr().err
    for cmd in (["evaluate", "a", "b"], ["import-stunet", "c.model", "-o", "m.pt"]):
        assert p.parse_args([*cmd, "--dataset-json", "d.json"]).dataset_json == "d.json"
        assert p.parse_args([*cmd, "--labels", "d.json"]).dataset_json == "d.json"
        assert "--labels is deprecated" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        p.parse_args(["predict", "x.nii.gz", "-m", "F", "-f", "-1"])


def test_evaluate_refuses_a_missing_dataset_json_and_a_bad_report_name(tmp_path, capsys):
    (tmp_path / "p").mkdir()
    (tmp_path / "r").mkdir()
    assert main(["evaluate", str(tmp_path / "p"), str(tmp_path / "r"), "--dataset-json",
                 str(tmp_path / "none.json")]) == 2
    assert "none.json: file not found" in _one_error(capsys)
    assert main(["evaluate", str(tmp_path / "p"), str(tmp_path / "r"), "-o", str(tmp_path / "s.txt")]) == 2
    assert "cannot write a '.txt' file" in _one_error(capsys)


@pytest.mark.parametrize("command", ["import-stunet", "import-nnunet"])
def test_plain_pickle_checkpoints_are_refused_in_one_line_by_the_importers(tmp_path, capsys, command):
    """torch warns "Detected pickle protocol" before refusing a plain pickle: the user sees only the refusal."""
    import pickle
    import warnings

    plain = {"state_dict": {"w": np.zeros(2)}, "plans": {}}
    if command == "import-stunet":
        src = tmp_path / "base.model"
        src.write_bytes(pickle.dumps(plain, protocol=4))
        (tmp_path / "base.model.pkl").write_bytes(pickle.dumps({"plans_per_stage": {}}, protocol=4))
        argv = [command, str(src), "-o", str(tmp_path / "m.pt")]
    else:
        import json

        folder = tmp_path / "Dataset1_X" / "nnUNetTrainer__nnUNetPlans__3d_fullres"
        (folder / "fold_0").mkdir(parents=True)
        (folder / "fold_0" / "checkpoint_final.pth").write_bytes(pickle.dumps(plain, protocol=4))
        src = folder / "fold_0" / "checkpoint_final.pth"
        (folder / "plans.json").write_text(json.dumps({}))
        (folder / "dataset.json").write_text(json.dumps({}))
        argv = [command, str(folder), "-f", "0", "-o", str(tmp_path / "m.pt")]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        rc = main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and err[0].startswith("medseg: error:"), err
    assert not [w for w in caught if "pickle protocol" in str(w.message)]
    assert str(src) in err[0] and "refused" in err[0]
