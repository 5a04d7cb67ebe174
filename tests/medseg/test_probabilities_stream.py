"""``--save-probabilities`` written slab by slab (issue 21): the streamed file equals the in-memory result for the
suite's models (one, an ensemble, NaN voxels, any orientation) and the geometry helper it relies on."""

from __future__ import annotations

import itertools

import nibabel as nib
import numpy as np
import pytest
from medseg_testutil import make_model_file, write_volume

from medseg.io import Geometry, read_case
from medseg.predict import load_models, predict_case, probability_writer
from medseg.volume_cli import main


@pytest.mark.parametrize("orientation", ["RAS", "LPS"])
def test_backward_box_is_where_backward_puts_a_part(orientation):
    """For every axis permutation and flip of a file: the part of a model array at ``box`` lands at
    ``backward_box(box)`` of the file array, and nowhere else."""
    rng = np.random.default_rng(0)
    for perm in itertools.permutations(range(3)):
        for flips in itertools.product([1, -1], repeat=3):
            aff = np.eye(4)
            aff[:3, :3] = 0
            for i, ax in enumerate(perm):
                aff[ax, i] = flips[i] * (0.5 + i)
            geom = Geometry.from_affine(aff, (5, 6, 7), orientation)
            ms = geom.model_shape
            box = tuple(slice(min(a, m - 1), min(a + n, m)) for a, n, m in zip((1, 2, 0), (3, 2, 4), ms))
            part = rng.random([s.stop - s.start for s in box]).astype(np.float32) + 1
            full = np.zeros(ms, np.float32)
            full[box] = part
            back = geom.backward(full)
            fbox = geom.backward_box(box)
            assert np.array_equal(back[fbox], geom.backward(part))
            back[fbox] = 0
            assert not back.any()


@pytest.mark.parametrize("ensemble", [False, True])
def test_streamed_probabilities_equal_in_memory(tmp_path, ensemble):
    """A flipped, permuted file with NaN voxels: the slab-by-slab file holds exactly the whole-array result."""
    aff = np.array([[0, 0, -2.5, 10], [-1.0, 0, 0, 5], [0, 1.2, 0, -3], [0, 0, 0, 1]])
    vol = write_volume(tmp_path / "case.nii.gz", affine=aff)
    img = nib.load(vol)
    data = np.asanyarray(img.dataobj).astype(np.float32)
    data[0, 0, :3] = np.nan
    nib.save(nib.Nifti1Image(data, img.affine), str(vol))
    paths = [make_model_file(tmp_path / "a.pt", seed=1)]
    if ensemble:
        paths.append(make_model_file(tmp_path / "b.pt", seed=2, spacing=[2.0, 1.5, 1.5]))
    models = load_models(paths, "cpu", "fp32")
    case = read_case(vol)
    whole = predict_case(case, models, probabilities=True)
    out = tmp_path / "p.nii.gz"
    with probability_writer(out, case, models[0]) as writer:
        streamed = predict_case(case, models, probabilities=writer)
    assert streamed.probabilities is None and np.array_equal(streamed.labels, whole.labels)
    got = nib.load(out)
    assert got.shape == (*case.spatial_shape, 4) and np.allclose(got.affine, case.affine)
    assert np.array_equal(np.asanyarray(got.dataobj), whole.probabilities)
    assert whole.probabilities[0, 0, 0].tolist() == [1, 0, 0, 0]       # a NaN voxel: background
    assert whole.probabilities.std() > 1e-3


def test_cli_writes_probabilities_without_holding_them(tmp_path, monkeypatch):
    """The CLI goes through the writer (no K x voxels array reaches write_like) and leaves no temporary file."""
    import medseg.io as mio

    vol = write_volume(tmp_path / "case.nii.gz")
    model = make_model_file(tmp_path / "m.pt")
    calls = []
    real = mio.write_like
    monkeypatch.setattr(mio, "write_like", lambda path, data, *a, **k: (calls.append(data.shape), real(path, data, *a,
                                                                                                    **k))[1])
    assert main(["predict", str(vol), "-m", str(model), "-o", str(tmp_path / "seg.nii.gz"), "--save-probabilities",
                 "--quiet"]) == 0
    assert all(len(s) == 3 for s in calls)                                # labels only
    probs = nib.load(tmp_path / "seg_probabilities.nii.gz")
    assert probs.shape == (20, 18, 10, 4)
    assert np.allclose(np.asanyarray(probs.dataobj).sum(-1), 1, atol=1e-5)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["case.nii.gz", "m.pt", "seg.nii.gz",
                                                          "seg_probabilities.nii.gz"]


def test_more_classes_than_features_blend_features_and_equal_nnunet(tmp_path):
    """A 10-class model folder made by nnU-Net (planning + trainer) whose last decoder stage has 2 features: the
    open rows and the way back hold the 2 features (the seg layer is applied to resampled features, a class chunk
    at a time), and probabilities and labels equal nnUNetPredictor's own (float32 sums, mirroring on)."""
    import json
    import subprocess
    import sys
    from pathlib import Path

    import medseg.engine as engine

    pytest.importorskip("nnunetv2")
    peer = Path(__file__).with_name("nnunet_peer.py")
    proc = subprocess.run([sys.executable, str(peer), "make", str(tmp_path), "--kinds", "ct", "--classes", "9",
                           "--features", "2", "--predict"], capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = json.loads(proc.stdout.strip().splitlines()[-1])["ct"]
    ref = res["predictions"]["3d_fullres"]["mirror"]
    models = load_models([res["folders"]["3d_fullres"]], "cpu", "fp32")
    assert len(models[0].classes) == 10 and models[0].net.head()[0].shape == (10, 2)
    seen = []
    real = engine.stream_windows
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(engine, "stream_windows", lambda *a, **k: (seen.append(k["num_outputs"]), real(*a, **k))[1])
        pred = predict_case(read_case(res["test_image"]), models, tta=True, probabilities=True)
    assert seen == [2]                                          # the open rows hold the 2 features, not 10 scores
    ref_probs = np.load(ref["probabilities"])["probabilities"]
    ours = pred.probabilities.transpose(3, 2, 1, 0)
    assert ours.shape == ref_probs.shape and ref_probs.shape[0] == 10
    assert float(np.abs(ours - ref_probs).max()) < 1e-4 and ref_probs.std() > 1e-2
    assert (pred.labels == np.asanyarray(nib.load(ref["labels"]).dataobj)).mean() >= 0.999
    assert len(np.unique(pred.labels)) >= 3
