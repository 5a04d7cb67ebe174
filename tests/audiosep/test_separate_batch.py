"""audiosep on the shared layer: the separate batch planned whole before any work (colliding stems, outputs among
the inputs, own outputs in a folder, parts, skip-if-done), typed numeric options, one-line refusals."""

from __future__ import annotations

import math
import os
import pickle
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from audiosep.cli import main
from shared_backbones.checkpoint import ModelFile, save_model_file
from shared_backbones.errors import InputError
from shared_backbones.registry import create_model

SMALL = dict(enc_num_feats=16, msk_num_feats=8, msk_num_hidden_feats=12, msk_num_layers=3, msk_num_stacks=2)


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    m = create_model("convtasnet-small", **SMALL)
    mf = ModelFile.from_model(m, task="audiosep", arch="convtasnet-small", arch_kwargs={"num_sources": 2, **SMALL},
                              preprocessing={"sample_rate": 8000})
    return save_model_file(tmp_path_factory.mktemp("model") / "sep.pt", mf)


def _audio(path: Path, n: int = 2400, rate: int = 8000, fmt: str | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, (0.3 * np.sin(np.arange(n) * 0.05)).astype("float32"), rate, format=fmt)
    return path


def _listing(root: Path) -> dict[str, int]:
    """Every file and folder under ``root`` with its modification time (what a refusal must leave unchanged)."""
    return {str(p.relative_to(root)): p.stat().st_mtime_ns for p in sorted(root.rglob("*"))}


def _one_line(err: str) -> str:
    assert err.count("\n") == 1 and "Traceback" not in err, err
    return err


def test_two_inputs_with_one_output_refused_even_with_overwrite(tmp_path, model, capsys):
    folder = tmp_path / "in"
    _audio(folder / "a.flac", fmt="FLAC")
    _audio(folder / "a.wav")
    _audio(folder / "b.wav")
    before = _listing(tmp_path)
    for extra in ([], ["--overwrite"], ["-o", str(tmp_path / "out")], ["-o", str(tmp_path / "out"), "--overwrite"]):
        assert main(["separate", str(folder), "-m", str(model), "-q", *extra]) == 2, extra
        err = _one_line(capsys.readouterr().err)
        assert "a_s1.wav: two inputs map to this output" in err and "a.flac" in err and "a.wav" in err, err
        assert _listing(tmp_path) == before  # nothing written, no folder created, b.wav not separated either
    from audiosep.separate import separate_files

    with pytest.raises(InputError, match="two inputs map to this output"):  # the library gets the same check
        separate_files([folder], model, overwrite=True)
    assert _listing(tmp_path) == before


def test_output_that_is_an_input_or_the_model_file_is_refused(tmp_path, model, capsys):
    a = _audio(tmp_path / "a.wav")
    given = _audio(tmp_path / "a_s1.wav")  # given by name: an input, so a.wav cannot write it
    m = tmp_path / "a_s2.wav"  # the model file under a name a.wav's outputs would take
    m.write_bytes(model.read_bytes())
    before = _listing(tmp_path)
    for argv in (["separate", str(a), str(given), "-m", str(model)],
                 ["separate", str(a), "-m", str(m)]):
        for extra in ([], ["--overwrite"]):
            assert main([*argv, "-q", *extra]) == 2
            err = _one_line(capsys.readouterr().err)
            assert "output is one of the inputs" in err, err
            assert _listing(tmp_path) == before  # the model file is never replaced by a separated source


def test_folder_rerun_skips_own_outputs_and_finished_inputs(tmp_path, model, capsys):
    folder = tmp_path / "in"
    _audio(folder / "meeting.wav")
    assert main(["separate", str(folder), "-m", str(model), "-q"]) == 0
    assert sorted(p.name for p in folder.iterdir()) == ["meeting.wav", "meeting_s1.wav", "meeting_s2.wav"]
    first = _listing(tmp_path)
    # a rerun takes meeting_s1.wav / meeting_s2.wav for what they are, and meeting.wav is done
    assert main(["separate", str(folder), "-m", str(model)]) == 0
    err = capsys.readouterr().err
    assert "skipping 2 file(s) of the input folder(s) that are this command's outputs for other inputs" in err
    assert "skipping 1 input(s) whose outputs exist" in err and "separated 0 of 0 file(s)" in err
    assert _listing(tmp_path) == first
    # a new file in the folder is the only work of the next run
    _audio(folder / "talk.wav")
    assert main(["separate", str(folder), "-m", str(model), "-q"]) == 0
    after = _listing(tmp_path)
    assert {k: v for k, v in after.items() if k in first and k != "in"} == {k: v for k, v in first.items() if k != "in"}
    assert sorted(after) == sorted([*first, "in/talk.wav", "in/talk_s1.wav", "in/talk_s2.wav"])
    # --overwrite redoes every input, still not the outputs
    assert main(["separate", str(folder), "-m", str(model), "-q", "--overwrite"]) == 0
    redone = _listing(tmp_path)
    assert sorted(redone) == sorted(after) and redone["in/meeting_s1.wav"] != after["in/meeting_s1.wav"]
    # with -o, the outputs beside the inputs (of an earlier run without -o) are skipped as well
    assert main(["separate", str(folder), "-m", str(model), "-q", "-o", str(tmp_path / "out")]) == 0
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        "meeting_s1.wav", "meeting_s2.wav", "talk_s1.wav", "talk_s2.wav"]
    # a file given by name is separated whatever its name
    assert main(["separate", str(folder / "meeting_s1.wav"), "-m", str(model), "-q", "-o", str(tmp_path / "o2")]) == 0
    assert (tmp_path / "o2" / "meeting_s1_s1.wav").is_file()


def test_parts_share_a_folder_like_a_slurm_array(tmp_path, model, capsys):
    folder = tmp_path / "in"
    names = [f"f{i}" for i in range(5)]
    for name in names:
        _audio(folder / f"{name}.wav", n=1200)
    out = tmp_path / "out"
    done: set[str] = set()
    for part in range(3):
        assert main(["separate", str(folder), "-m", str(model), "-o", str(out), "-q", "--num-parts", "3",
                     "--part-id", str(part)]) == 0
        now = {p.name for p in out.iterdir()}
        assert now - done == {f"{n}_s{k}.wav" for n in names[part::3] for k in (1, 2)}  # this part's share only
        done = now
    assert len(done) == 10
    before = _listing(tmp_path)
    assert main(["separate", str(folder), "-m", str(model), "-o", str(out), "--num-parts", "3", "--part-id", "1"]) == 0
    assert "skipping 2 input(s) whose outputs exist" in capsys.readouterr().err and _listing(tmp_path) == before
    assert main(["separate", str(folder), "-m", str(model), "-o", str(out), "--num-parts", "3", "--part-id", "3"]) == 2
    assert "--part-id must be in 0..2 for --num-parts 3, got 3" in _one_line(capsys.readouterr().err)
    for bad in (["--num-parts", "0"], ["--part-id", "-1"], ["--num-parts", "nan"]):
        with pytest.raises(SystemExit) as exc:
            main(["separate", str(folder), "-m", str(model), *bad])
        assert exc.value.code == 2
    capsys.readouterr()


@pytest.mark.parametrize("option,value", [("--chunk-seconds", v) for v in ("nan", "inf", "0", "-3", "1e30", "0.01")]
                         + [("--overlap-seconds", v) for v in ("nan", "-inf", "-1", "1e30")])
def test_chunk_and_overlap_out_of_range_are_usage_errors_before_anything(tmp_path, model, capsys, option, value):
    src = _audio(tmp_path / "x.wav")
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as exc:
        main(["separate", str(src), "-m", str(model), "-o", str(out), f"{option}={value}"])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert f"argument {option}: expected a number" in err and "Traceback" not in err
    assert not out.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["x.wav"]


def test_overlap_must_be_less_than_half_a_chunk_and_the_library_checks_the_same(tmp_path, model, capsys):
    from audiosep.cli import MAX_CHUNK_SECONDS as CLI_MAX
    from audiosep.cli import MIN_CHUNK_SECONDS as CLI_MIN
    from audiosep.separate import MAX_CHUNK_SECONDS, MIN_CHUNK_SECONDS, Separator, separate_file, separate_files

    assert (CLI_MIN, CLI_MAX) == (MIN_CHUNK_SECONDS, MAX_CHUNK_SECONDS)
    src = _audio(tmp_path / "x.wav")
    out = tmp_path / "out"
    for chunk, overlap in (("1", "0.5"), ("1", "0.7"), ("0.1", "0.05")):
        assert main(["separate", str(src), "-m", str(model), "-o", str(out), "--chunk-seconds", chunk,
                     "--overlap-seconds", overlap]) == 2
        err = _one_line(capsys.readouterr().err)
        assert f"--overlap-seconds ({overlap}) must be less than half of --chunk-seconds ({chunk})" in err
        assert not out.exists()
    sep = Separator.from_file(model, "cpu", "fp32")
    for chunk, overlap in ((0.0, 0.0), (-3.0, 0.0), (math.inf, 1.0), (1.0, math.nan), (1.0, -0.1), (1.0, 0.5)):
        with pytest.raises(InputError):
            separate_file(src, sep, out, chunk_seconds=chunk, overlap_seconds=overlap)
        with pytest.raises(InputError):
            separate_files([src], sep, out, chunk_seconds=chunk, overlap_seconds=overlap)
    assert not out.exists()
    # at the edge: a chunk of 0.1 s with no overlap runs
    assert main(["separate", str(src), "-m", str(model), "-o", str(out), "-q", "--chunk-seconds", "0.1",
                 "--overlap-seconds", "0"]) == 0
    assert sf.info(out / "x_s1.wav").frames == 2400


def test_numeric_options_of_separate_evaluate_import_are_typed_and_refuse_junk(capsys):
    from audiosep.cli import _parser
    from shared_backbones.cliutil import iter_subparsers
    from shared_backbones.options import Number

    base = {"separate": ["x.wav", "-m", "m.pt"], "evaluate": ["e", "d"], "import": ["w.pt", "-o", "m.pt"]}
    checked = 0
    for path, parser in iter_subparsers(_parser()):
        if not path or path[-1] not in base:
            continue  # train: the training path's own options
        for action in parser._actions:
            assert action.type not in (int, float), (path, action.option_strings)
            if not isinstance(action.type, Number):
                continue
            checked += 1
            for value in ("nan", "inf", "-inf", "0", "-1", "1e30", "99999999999"):
                try:
                    ns = parser.parse_args([*base[path[-1]], f"{action.option_strings[-1]}={value}"])
                except SystemExit as exc:
                    assert exc.code == 2
                    continue
                assert action.type.contains(getattr(ns, action.dest)), (action.option_strings, value)
    assert checked >= 6  # chunk, overlap, num-parts, part-id, sample-rate, layers
    capsys.readouterr()
    for bad in (["--sample-rate", "0"], ["--sample-rate", "nan"], ["--layers", "0"], ["--layers", "1e3"]):
        with pytest.raises(SystemExit) as exc:
            main(["import", "w.pt", "-o", "m.pt", *bad])
        assert exc.value.code == 2 and f"argument {bad[0]}: expected a whole number" in capsys.readouterr().err


def test_evaluate_refuses_a_report_it_cannot_write_before_scoring(tmp_path, capsys):
    rng = np.random.default_rng(0)
    s1, s2 = (rng.standard_normal(2000).astype("float32") * 0.2 for _ in range(2))
    for d, a in (("mix", s1 + s2), ("s1", s1), ("s2", s2)):
        (tmp_path / "data" / d).mkdir(parents=True)
        sf.write(tmp_path / "data" / d / "u1.wav", a, 8000, subtype="FLOAT")
    (tmp_path / "est").mkdir()
    sf.write(tmp_path / "est" / "u1_s1.wav", s1, 8000, subtype="FLOAT")
    sf.write(tmp_path / "est" / "u1_s2.wav", s2, 8000, subtype="FLOAT")
    base = ["evaluate", str(tmp_path / "est"), str(tmp_path / "data")]
    before = _listing(tmp_path)
    for out, msg in ((tmp_path / "r.txt", "r.txt: -o/--output cannot write a '.txt' file (use .csv, .tsv, .json)"),
                     (tmp_path / "est" / "u1_s1.wav", "u1_s1.wav: -o/--output cannot write a '.wav' file")):
        assert main([*base, "-o", str(out)]) == 2
        captured = capsys.readouterr()
        assert msg in _one_line(captured.err) and captured.out == ""  # refused before the scoring, no table
        assert _listing(tmp_path) == before
    assert main([*base, "-o", str(tmp_path / "no" / "r.csv"), "-q"]) == 0  # a new folder for the report: created
    assert (tmp_path / "no" / "r.csv").read_text().startswith("file,si_snr,si_snri,sdr,sdri\n")
    capsys.readouterr()
    assert main([*base, "-o", str(tmp_path / "no" / "r.csv")]) == 2
    captured = capsys.readouterr()
    assert "r.csv: output exists" in _one_line(captured.err) and captured.out == ""


def test_import_refuses_to_write_over_its_input(tmp_path, model, capsys):
    before = model.read_bytes()
    assert main(["import", str(model), "-o", str(model), "--overwrite", "-q"]) == 2
    assert "output is one of the inputs" in _one_line(capsys.readouterr().err) and model.read_bytes() == before


def _plain_pickle(path: Path) -> Path:
    with open(path, "wb") as fh:  # not a torch.save file: torch warns about its protocol, then refuses it
        pickle.dump({"state_dict": {"w": [1.0, 2.0]}}, fh, protocol=4)
    return path


def test_plain_pickle_model_is_refused_in_one_line_by_audiosep_and_medseg(tmp_path, capsys):
    import nibabel as nib

    from medseg.cli import main as medseg_main

    plain = _plain_pickle(tmp_path / "plain.pt")
    src = _audio(tmp_path / "ok.wav")
    ct = tmp_path / "ct.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((8, 8, 8), np.float32), np.eye(4)), ct)
    runs = [
        (main, ["separate", str(src), "-m", str(plain), "-o", str(tmp_path / "out")]),
        (main, ["import", str(plain), "-o", str(tmp_path / "m.pt")]),
        (medseg_main, ["predict", str(ct), "-m", str(plain), "-o", str(tmp_path / "seg.nii.gz")]),
    ]
    for cli, argv in runs:
        with warnings.catch_warnings(record=True) as caught:  # what a user's terminal would show as well
            warnings.simplefilter("always")
            assert cli([*argv, "-q"]) == 2
        err = _one_line(capsys.readouterr().err)
        assert "plain.pt: refused" in err
        assert [str(w.message) for w in caught if "pickle" in str(w.message)] == [], argv
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ct.nii.gz", "ok.wav", "plain.pt"]


def test_plain_pickle_refusal_is_one_line_in_a_real_process(tmp_path):
    plain = _plain_pickle(tmp_path / "plain.pt")
    src = _audio(tmp_path / "ok.wav")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path), "PYTHONWARNINGS": "default"}
    proc = subprocess.run([sys.executable, "-m", "audiosep.cli", "separate", str(src), "-m", str(plain)],
                          env=env, capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert proc.returncode == 2
    assert proc.stderr.splitlines() == [f"audiosep: error: {plain}: refused: the file contains pickled objects that "
                                        "are not plain data (not executed)"]
