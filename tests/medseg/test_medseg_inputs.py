"""Non-finite voxels (NaN outside the field of view) and labels outside the class list in `medseg evaluate`."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest
import torch
from medseg_testutil import make_model_file, write_volume

from medseg.evaluate import case_metrics, evaluate_folders
from medseg.io import read_case
from medseg.predict import load_models, predict_case
from medseg.preprocess import normalise
from medseg.synthetic import save_nifti
from medseg.volume_cli import main


def _with_nan(tmp_path):
    src = write_volume(tmp_path / "clean.nii.gz", shape=(20, 18, 10))
    img = nib.load(str(src))
    data = img.get_fdata().astype(np.float32)
    data[:4] = np.nan  # outside the field of view, as SPM writes it
    data[-1, -1, -1] = np.inf
    return save_nifti(tmp_path / "spm.nii.gz", data, img.affine), data


def test_nonfinite_voxels_are_background_for_normalisation_and_prediction(tmp_path, capsys):
    path, raw = _with_nan(tmp_path)
    bad = ~np.isfinite(raw)
    case = read_case(path)
    assert case.nonfinite_count == int(bad.sum()) == 4 * 18 * 10 + 1
    np.testing.assert_array_equal(case.nonfinite, bad)
    assert np.isfinite(case.data).all() and (case.data[0][bad] == raw[~bad].min()).all()
    np.testing.assert_array_equal(case.data[0][~bad], raw[~bad])

    # z-score statistics come from the finite voxels only
    x = torch.from_numpy(case.data)
    z = normalise(x, [{"scheme": "zscore"}], exclude=torch.from_numpy(bad))
    finite = raw[~bad].astype(np.float64)
    np.testing.assert_allclose(z[0][~bad].numpy(), (finite - finite.mean()) / (finite.std() + 1e-8), rtol=1e-4,
                               atol=1e-4)

    model = make_model_file(tmp_path / "m.pt")
    out = tmp_path / "seg.nii.gz"
    assert main(["predict", str(path), "-m", str(model), "-o", str(out), "--precision", "fp32", "--quiet"]) == 0
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"spm: {int(bad.sum())} NaN/Inf voxels treated as background (left out of the normalisation, "
                   "labelled 0)"]
    seg = nib.load(str(out))
    ref = nib.load(str(path))
    assert seg.shape == ref.shape
    np.testing.assert_array_equal(seg.affine, ref.affine)
    labels = np.asarray(seg.dataobj)
    assert (labels[bad] == 0).all() and labels[~bad].any()
    # the finite voxels get what the network predicts on the filled, finite-statistics image
    pred = predict_case(case, load_models([model], "cpu", "fp32"))
    np.testing.assert_array_equal(labels, pred.labels)


def test_all_nonfinite_image_is_refused(tmp_path, capsys):
    path = save_nifti(tmp_path / "void.nii.gz", np.full((6, 6, 6), np.nan, np.float32), np.eye(4))
    model = make_model_file(tmp_path / "m.pt")
    assert main(["predict", str(path), "-m", str(model), "-o", str(tmp_path / "o.nii.gz")]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"medseg: error: {path}: image has no finite voxel (all NaN/Inf)"


def test_labels_outside_the_class_list_count_as_wrong(tmp_path, capsys):
    ref = np.zeros((12, 12, 8), np.uint8)
    ref[2:6, 2:6, 2:6] = 1
    ref[7:10, 7:10, 3:6] = 3
    pred = ref.copy()
    pred[ref == 3] = 5  # a label the model/dataset does not have, on the whole class-3 structure
    m = case_metrics(pred.astype(np.int64), ref.astype(np.int64), 4, (1.0, 1.0, 1.0))
    assert m["dice"][0] == pytest.approx(1.0)
    assert m["dice"][2] == 0.0 and m["nsd"][2] == 0.0 and np.isnan(m["hd95"][2])  # was 1.0 when clipped to 3

    root = tmp_path / "ds"
    (root / "labelsTs").mkdir(parents=True)
    (root / "pred").mkdir()
    (root / "dataset.json").write_text(json.dumps({"labels": {"background": 0, "organ": 1, "lesion": 2,
                                                              "vessel": 3}}))
    save_nifti(root / "labelsTs" / "a.nii.gz", ref, np.eye(4))
    save_nifti(root / "pred" / "a.nii.gz", pred, np.eye(4))
    ev = evaluate_folders(root / "pred", root / "labelsTs")
    assert [r["dice"] for r in ev.rows if r["class"] == "vessel"] == [0.0]
    assert ev.notes == [f"{root / 'pred' / 'a.nii.gz'}: 27 voxels with labels [5] outside the 4 classes count as "
                        "wrong"]
    assert main(["evaluate", str(root / "pred"), str(root / "labelsTs")]) == 0
    out = capsys.readouterr()
    assert "labels [5] outside the 4 classes count as wrong" in out.err
    assert out.out.splitlines()[3].split() == ["vessel", "0.0000", "nan", "0.0000"]

    # a reference label outside the class list is an error, not a silent clip
    ref[0, 0, 0] = 7
    save_nifti(root / "labelsTs" / "a.nii.gz", ref, np.eye(4))
    assert main(["evaluate", str(root / "pred"), str(root / "labelsTs"), "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == (f"medseg: error: {root / 'labelsTs' / 'a.nii.gz'}: reference label 7 is not in the class list "
                   f"of {root / 'dataset.json'} (4 classes: background, organ, lesion, vessel)")
