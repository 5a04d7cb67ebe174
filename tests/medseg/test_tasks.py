"""Several nnU-Net v2 model folders with different label sets as one task (medseg.tasks): the merge rules against a
NumPy merge of each folder's own prediction, task files and their one-line errors, --classes, DICOM SEG segments,
and TotalSegmentator's own CLI on random-weight folders with its expected names."""

from __future__ import annotations

import functools
import json
import os
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from medseg_testutil import nnunet_arch, write_nnunet_folder, write_volume

from medseg.io import read_case
from medseg.predict import load_model, predict_case
from medseg.volume_cli import main

CPU = ["--device", "cpu", "--precision", "fp32", "--quiet"]
PEER = Path(__file__).with_name("totalseg_peer.py")


def make_folder(root: Path, dataset: str, names: list[str], seed: int) -> Path:
    """A random-weight nnU-Net v2 3d_fullres model folder whose dataset.json labels are ``names`` (1, 2, ...); weights
    with the spread of trained ones, so every class wins somewhere."""
    labels = {"background": 0, **{n: i + 1 for i, n in enumerate(names)}}
    return write_nnunet_folder(root, dataset, labels, arch=nnunet_arch((4, 8)), patch=16, spacing=[2.0, 1.2, 1.0],
                               channel="CT", seed=seed, trainer="nnUNetTrainerNoMirroring", weight_scale=3.0)


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("tasks")
    return {"organs": make_folder(root, "Dataset801_Organs", ["liver", "spleen"], 1),
            "kidneys": make_folder(root, "Dataset802_Kidneys", ["kidney", "liver"], 2),   # liver: in both
            "vessels": make_folder(root, "Dataset803_Vessels", ["aorta"], 3),
            "organs_copy": make_folder(root, "Dataset804_Organs", ["liver", "spleen"], 4),
            "volume": write_volume(root / "ct.nii.gz", shape=(22, 18, 12), seed=5)}


@functools.cache
def own(folder: Path, volume: Path) -> tuple[np.ndarray, np.ndarray]:
    """One folder run alone with all its class probabilities: its labels and the probability of each label."""
    pred = predict_case(read_case(volume), [load_model(folder, "cpu", "fp32")], probabilities=True)
    return pred.labels, pred.probabilities.max(-1)


def numpy_merge(parts: list[tuple[np.ndarray, np.ndarray, dict[int, int]]], rule: str) -> np.ndarray:
    """The documented merge, written out: each folder's labels mapped to task values ({} entries missing: not
    claimed); ``probability``: a claim takes a voxel from a strictly lower probability; ``first``: only unclaimed
    voxels; ``last``: always."""
    out = np.zeros(parts[0][0].shape, np.int64)
    best = np.zeros(parts[0][0].shape, np.float32)
    for labels, prob, mapping in parts:
        for src, value in mapping.items():
            claim = labels == src
            if rule == "probability":
                claim &= prob > best
            elif rule == "first":
                claim &= out == 0
            out[claim] = value
            best[claim] = prob[claim]
    return out


def _labels(path: Path) -> np.ndarray:
    return np.asanyarray(nib.load(str(path)).dataobj)


def _one_error(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("medseg: error: "), err
    return err[0]


def test_folders_with_different_label_sets_merge_by_probability(folders, tmp_path, capsys):
    """-m A -m B -m C with different label sets: one map, classes numbered in folder order (a shared name is one
    class), the higher probability wins a voxel two folders claim; equal to the NumPy merge of each folder's own
    prediction."""
    vol, out, stats = folders["volume"], tmp_path / "seg.nii.gz", tmp_path / "s.json"
    assert main(["predict", str(vol), "-m", str(folders["organs"]), "-m", str(folders["kidneys"]), "-m",
                 str(folders["vessels"]), "-o", str(out), "--stats", str(stats), "--device", "cpu", "--precision",
                 "fp32"]) == 0
    assert "task: 3 folder(s), 4 class(es), overlap by probability" in capsys.readouterr().err
    table = {k: v["label"] for k, v in json.loads(stats.read_text())["classes"].items()}
    assert table == {"liver": 1, "spleen": 2, "kidney": 3, "aorta": 4}
    parts = [(*own(folders["organs"], vol), {1: 1, 2: 2}), (*own(folders["kidneys"], vol), {1: 3, 2: 1}),
             (*own(folders["vessels"], vol), {1: 4})]
    got = _labels(out)
    np.testing.assert_array_equal(got, numpy_merge(parts, "probability"))
    assert {1, 2, 3, 4} <= set(np.unique(got).tolist())
    # the rule decided voxels: the other orders give other maps, and each folder won some contested voxels
    assert (got != numpy_merge(parts, "last")).any() and (got != numpy_merge(parts, "first")).any()
    assert np.array_equal(nib.load(str(out)).affine, nib.load(str(vol)).affine)


def test_folders_of_one_label_set_keep_todays_ensemble_refusal(folders, tmp_path, capsys):
    assert main(["predict", str(folders["volume"]), "-m", str(folders["organs"]), "-m", str(folders["organs_copy"]),
                 "-o", str(tmp_path / "x.nii.gz"), *CPU]) == 2
    assert "cannot be ensembled with other models" in _one_error(capsys)


def _task_file(tmp_path: Path, folders: dict, fmt: str, overlap: str) -> Path:
    doc = {"name": "abdomen", "overlap": overlap,
           "folders": {"organs": os.path.relpath(folders["organs"], tmp_path),
                       "kidneys": os.path.relpath(folders["kidneys"], tmp_path),
                       "vessels": str(folders["vessels"])},
           "classes": {10: {"folder": "organs", "class": "liver", "name": "Liver"},
                       20: "kidneys/kidney",
                       21: {"folder": "kidneys", "class": 2, "name": "liver_b"},
                       30: "vessels/aorta"}}
    path = tmp_path / f"abdomen.{fmt}"
    if fmt == "json":
        path.write_text(json.dumps(doc))
    else:
        import yaml

        path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


@pytest.mark.parametrize("fmt,overlap", [("yaml", "last"), ("json", "first")])
def test_task_file(folders, tmp_path, fmt, overlap):
    """A task file: folders relative to it, a class table with own values and names (spleen left out), the overlap
    rule; the output equals the NumPy merge with that rule."""
    task = _task_file(tmp_path, folders, fmt, overlap)
    vol, out, stats = folders["volume"], tmp_path / "seg.nii.gz", tmp_path / "s.json"
    assert main(["predict", str(vol), "--task", str(task), "-o", str(out), "--stats", str(stats), *CPU]) == 0
    table = {k: v["label"] for k, v in json.loads(stats.read_text())["classes"].items()}
    assert table == {"Liver": 10, "kidney": 20, "liver_b": 21, "aorta": 30}
    parts = [(*own(folders["organs"], vol), {1: 10}), (*own(folders["kidneys"], vol), {1: 20, 2: 21}),
             (*own(folders["vessels"], vol), {1: 30})]
    np.testing.assert_array_equal(_labels(out), numpy_merge(parts, overlap))


def test_classes_run_only_the_folders_holding_them(folders, tmp_path, capsys):
    """--classes (names or values; --roi-subset spelling; --keep-classes deprecated): only the folders holding them
    load and run (a broken folder without them is never read), only they are written, with their task values."""
    import shutil

    work = tmp_path / "w"
    work.mkdir()
    for key in ("organs", "kidneys", "vessels"):
        shutil.copytree(folders[key].parent, work / folders[key].parent.name)
    local = {k: work / folders[k].parent.name / folders[k].name for k in ("organs", "kidneys", "vessels")}
    task = _task_file(work, {**folders, **local}, "yaml", "probability")
    ckpt = local["organs"] / "fold_0" / "checkpoint_final.pth"
    ckpt.write_bytes(ckpt.read_bytes()[:500])  # the organs folder cannot load: it must not be needed
    vol = folders["volume"]
    kid, _ = own(folders["kidneys"], vol)
    aorta, _ = own(folders["vessels"], vol)
    for i, spelling in enumerate((["--classes", "kidney", "30"], ["--roi-subset", "kidney,aorta"],
                                  ["--roi_subset", "20", "aorta"])):
        out = tmp_path / f"seg{i}.nii.gz"
        assert main(["predict", str(vol), "--task", str(task), "-o", str(out), *spelling, *CPU]) == 0
        # kidney from its folder (liver_b left out: not a claim), aorta where the vessels folder is more certain
        parts = [(kid, own(folders["kidneys"], vol)[1], {1: 20}), (aorta, own(folders["vessels"], vol)[1], {1: 30})]
        np.testing.assert_array_equal(_labels(out), numpy_merge(parts, "probability"))
        assert set(np.unique(_labels(out))) <= {0, 20, 30}
    assert main(["predict", str(vol), "--task", str(task), "-o", str(tmp_path / "k.nii.gz"), "--keep-classes",
                 "kidney", *CPU]) == 0
    assert "--keep-classes is deprecated" in capsys.readouterr().err.replace("'", "")
    assert set(np.unique(_labels(tmp_path / "k.nii.gz"))) <= {0, 20}
    assert main(["predict", str(vol), "--task", str(task), "-o", str(tmp_path / "u.nii.gz"), "--classes",
                 "kidnee", *CPU]) == 2
    err = _one_error(capsys)
    assert "unknown class 'kidnee'" in err and "Liver, kidney, liver_b, aorta" in err and "abdomen.yaml" in err
    # the same option on one model: names or values of its classes, one line listing them when unknown
    assert main(["predict", str(vol), "-m", str(local["kidneys"]), "-o", str(tmp_path / "v.nii.gz"), "--classes",
                 "spleen", *CPU]) == 2
    assert "unknown class 'spleen'" in _one_error(capsys)


BAD_TASKS = [
    ("x.yaml", "folders: [a\n", "not valid YAML (line"),
    ("x.json", "{", "not valid JSON"),
    ("x.toml", "a = 1", "YAML (.yaml, .yml) or JSON"),
    ("x.yaml", "- a\n", "a task file holds a mapping"),
    ("x.yaml", "folders: {a: ORGANS}\nlabels: {}\n", "unknown key 'labels'"),
    ("x.yaml", "name: t\n", "folders: expected a mapping"),
    ("x.yaml", "folders: {a: nowhere}\n", "folders: a: not an nnU-Net v2 model folder"),
    ("x.yaml", "folders: {a: ORGANS}\noverlap: max\n", "overlap: 'max' is not one of probability, first, last"),
    ("x.yaml", "folders: {a: ORGANS}\nclasses: {one: a/liver}\n", "classes: key 'one' is not a label value"),
    ("x.yaml", "folders: {a: ORGANS}\nclasses: {0: a/liver}\n", "classes: key 0 is not a label value"),
    ("x.yaml", "folders: {a: ORGANS}\nclasses: {1: liver}\n", "classes: 1: expected 'FOLDER/CLASS'"),
    ("x.yaml", "folders: {a: ORGANS}\nclasses: {1: b/liver}\n", "classes: 1: folder 'b' is not one of folders (a)"),
    ("x.yaml", "folders: {a: ORGANS}\nclasses: {1: a/kidney}\n",
     "classes: 1: class 'kidney' is not a class of folder 'a' (its classes: liver, spleen)"),
    ("x.yaml", "folders: {a: ORGANS}\nclasses: {1: {folder: a, class: liver, colour: red}}\n",
     "classes: 1: unknown key 'colour'"),
    ("x.yaml", "folders: {a: ORGANS}\nclasses: {1: a/liver, 2: {folder: a, class: spleen, name: liver}}\n",
     "classes: 2: name 'liver' already names label 1"),
    ("x.json", '{"folders": {"a": "ORGANS"}, "classes": {"1": "a/liver", "01": "a/spleen"}}',
     "classes: label value 1 given twice"),
]


@pytest.mark.parametrize("name,text,message", BAD_TASKS, ids=[m[:28] for _, _, m in BAD_TASKS])
def test_task_file_errors_are_one_line_naming_the_file_and_key(folders, tmp_path, capsys, name, text, message):
    path = tmp_path / name
    path.write_text(text.replace("ORGANS", str(folders["organs"])))
    assert main(["predict", str(folders["volume"]), "--task", str(path), "-o", str(tmp_path / "s.nii.gz"),
                 *CPU]) == 2
    err = _one_error(capsys)
    assert f"{path}: " in err and message in err, err
    assert not (tmp_path / "s.nii.gz").exists()


def test_task_and_model_are_exclusive_and_one_is_needed(folders, tmp_path, capsys):
    task = _task_file(tmp_path, folders, "yaml", "last")
    vol = str(folders["volume"])
    assert main(["predict", vol, "--task", str(task), "-m", str(folders["organs"]), *CPU]) == 2
    assert "either -m/--model or --task" in _one_error(capsys)
    assert main(["predict", vol, *CPU]) == 2
    assert "give a model: -m/--model" in _one_error(capsys)
    assert main(["predict", vol, "--task", str(task), "--save-probabilities", "-o", str(tmp_path / "p.nii.gz"),
                 *CPU]) == 2
    assert "--save-probabilities is not available for a task" in _one_error(capsys)


def test_dicom_seg_of_a_merged_task_has_a_named_segment_per_class(folders, tmp_path):
    """A merged task's DICOM SEG: one segment per task class with its name (a table with gaps: numbered 1..N),
    read back by highdicom voxel for voxel equal to the label map."""
    import highdicom as hd
    import pydicom
    from test_dicom import ORIENTATIONS, write_series

    write_series(tmp_path / "s", ORIENTATIONS["axial"], n=12, rows=20, cols=18)
    task = _task_file(tmp_path, folders, "yaml", "probability")
    out, seg_path = tmp_path / "seg.nii.gz", tmp_path / "seg.dcm"
    assert main(["predict", str(tmp_path / "s"), "--task", str(task), "-o", str(out), "--dicom-seg", str(seg_path),
                 "--classes", "Liver", "aorta", "kidney", *CPU]) == 0
    labels = _labels(out)
    seg = hd.seg.segread(seg_path)
    assert [(int(s.SegmentNumber), s.SegmentLabel) for s in seg.SegmentSequence] == [(1, "Liver"), (2, "kidney"),
                                                                                     (3, "aorta")]
    case = read_case(tmp_path / "s")
    uids = [ds.SOPInstanceUID for ds in case.source.datasets]
    stack = seg.get_pixels_by_source_instance(source_sop_instance_uids=uids, combine_segments=True,
                                              skip_overlap_checks=True)
    from medseg.dicom import seg_frames

    lut = np.zeros(31, np.uint8)
    lut[[10, 20, 30]] = [1, 2, 3]
    assert set(np.unique(labels)) <= {0, 10, 20, 30} and len(np.unique(labels)) > 2
    np.testing.assert_array_equal(stack, seg_frames(lut[labels], case.source))
    assert pydicom.dcmread(seg_path).SeriesDescription == "medseg abdomen"


# ------------------------------------------------------------------------------------------ TotalSegmentator
def test_total_task_equals_totalsegmentator(tmp_path):
    """TotalSegmentator's own CLI (task 'total': five nnU-Net folders, parts written over each other in order) on
    random-weight folders with its expected names and plans (made by nnU-Net's planner and trainer), run offline,
    against ``medseg predict --task`` with a task file built from TotalSegmentator's class maps (overlap: last, its
    tile step 0.8 = --overlap 0.2): the merged label maps and class tables agree: equal to TotalSegmentator run with
    float32 sliding-window sums, and >= 99% equal to it as shipped (nnU-Net's float16 sums flip near-tied voxels of
    random-weight networks: 0.8% here, which the overlapping parts compound)."""
    pytest.importorskip("totalsegmentator", reason="TotalSegmentator (peers extra) is not installed")
    pytest.importorskip("nnunetv2", reason="nnunetv2 (peers extra) is not installed")
    proc = subprocess.run([sys.executable, str(PEER), str(tmp_path)], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = json.loads(proc.stdout.strip().splitlines()[-1])
    out = tmp_path / "medseg.nii.gz"
    assert main(["predict", res["image"], "--task", res["task"], "-o", str(out), "--overlap", "0.2", *CPU]) == 0
    ours, theirs = _labels(out), _labels(Path(res["totalseg_fp32"]))
    assert ours.shape == theirs.shape
    agree = float((ours == theirs).mean())
    assert agree >= 0.9999, agree
    shipped = float((ours == _labels(Path(res["totalseg"]))).mean())
    assert shipped >= 0.99, shipped
    # the names agree value by value, and the map holds classes of several parts (they overlap: the order decides)
    from medseg.tasks import read_task

    table = {c.value: c.name for c in read_task(res["task"]).classes}
    assert table == {int(k): v for k, v in res["class_map"].items()}
    present = {table[v] for v in np.unique(theirs) if v}
    assert sum(any(n in present for n in part) for part in res["parts"].values()) >= 3, present


def test_winning_probability_and_the_merge_rule_on_single_voxels():
    """The probability a folder keeps per voxel is its label's (softmax maximum; for region models the sigmoid of
    the region that painted the voxel, 0 where none did); a tie keeps the earlier folder's class; a voxel one
    folder calls background and another claims, however unsure, is the claim's."""
    from medseg.nnunet import _nonlin_and_labels, winning_probability
    from medseg.tasks import merge_into

    torch.manual_seed(0)
    logits = torch.randn(4, 3, 5, 6) * 3
    p, lab = _nonlin_and_labels(logits, False, None, torch.uint8)
    assert torch.equal(winning_probability(p, False, None), p.gather(0, lab.long()[None])[0])
    p, lab = _nonlin_and_labels(logits[:3], True, [1, 2, 3], torch.uint8)
    win = winning_probability(p, True, [1, 2, 3])
    for c in (1, 2, 3):
        assert torch.equal(win[lab == c], p[c - 1][lab == c]) and (lab == c).any()
    assert (lab == 0).any() and (win[lab == 0] == 0).all()
    out, best = np.zeros(4, np.uint8), np.zeros(4, np.float32)
    merge_into(out, best, np.array([1, 1, 0, 2]), np.array([.5, .5, .9, .8], np.float32), np.array([0, 7, 8], np.uint8),
               "probability")
    merge_into(out, best, np.array([1, 1, 1, 0]), np.array([.5, .6, .2, .9], np.float32), np.array([0, 9], np.uint8),
               "probability")
    assert out.tolist() == [7, 9, 9, 8] and best.tolist() == pytest.approx([.5, .6, .2, .8])
