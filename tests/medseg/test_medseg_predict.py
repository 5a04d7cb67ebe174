"""`medseg predict`: geometry round trips, small volumes, multi-channel cases, outputs and options."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest
import torch
from medseg_testutil import load, make_model_file, write_volume

from medseg.io import Geometry, read_case
from medseg.predict import largest_component, load_models, predict_case
from medseg.synthetic import oblique_affine, save_nifti
from medseg.volume_cli import main

GEOMETRY_FIELDS = ("qform_code", "sform_code", "quatern_b", "quatern_c", "quatern_d", "qoffset_x", "qoffset_y",
                   "qoffset_z", "srow_x", "srow_y", "srow_z", "pixdim", "xyzt_units")


def _affines():
    rng = np.random.default_rng(3)
    ras = np.diag([0.8, 0.8, 3.0, 1.0])
    lps = np.diag([-0.7, -0.7, 2.5, 1.0])
    lps[:3, 3] = [120, 100, -40]
    permuted = np.array([[0, 0, 2.0, 5], [-1.1, 0, 0, 3], [0, 0.9, 0, 1], [0, 0, 0, 1]])  # sagittal-like slices
    return {"oblique": oblique_affine((0.9, 1.3, 2.7), rng, max_deg=35), "ras": ras, "lps": lps, "permuted": permuted}


@pytest.mark.parametrize("kind", ["oblique", "ras", "lps", "permuted"])
def test_output_geometry_equals_input(tmp_path, model_file, kind, capsys):
    aff = _affines()[kind]
    src = write_volume(tmp_path / f"{kind}.nii.gz", shape=(21, 17, 9), affine=aff)
    before = src.read_bytes()
    out = tmp_path / "out" / "seg.nii.gz"
    assert main(["predict", str(src), "-m", str(model_file), "-o", str(out), "--quiet", "--device", "cpu"]) == 0
    a, b = load(src), load(out)
    assert b.shape == a.shape and b.get_data_dtype() == np.uint8
    assert np.array_equal(b.affine, a.affine)
    for k in GEOMETRY_FIELDS:
        assert np.array_equal(a.header[k], b.header[k]), k
    assert src.read_bytes() == before  # input untouched
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".")]  # no temporary left behind


@pytest.mark.parametrize("kind", ["oblique", "lps", "permuted"])
def test_labels_follow_the_anatomy(tmp_path, kind):
    """A structure seen by the model lands on the same voxels in the output: geometry forward/backward invert."""
    aff = _affines()[kind]
    rng = np.random.default_rng(0)
    data = rng.random((1, 7, 5, 6)).astype(np.float32)
    geom = Geometry.from_affine(aff, (7, 5, 6))
    m = geom.forward(data)
    assert m.shape[1:] == geom.model_shape
    assert np.array_equal(geom.backward(m[0]), data[0])
    assert np.array_equal(geom.backward(m), np.moveaxis(data, 0, -1))
    vs = np.sqrt((aff[:3, :3] ** 2).sum(0))
    assert sorted(geom.spacing) == pytest.approx(sorted(vs))


def test_anisotropic_resampling_keeps_grid(tmp_path):
    """Model spacing differs from the file's: output is still on the input grid, labels near where they belong."""
    src = write_volume(tmp_path / "c.nii.gz", shape=(24, 20, 8))
    mf = make_model_file(tmp_path / "m.pt", spacing=[1.5, 0.7, 1.7], patch=(8, 16, 16))
    out = tmp_path / "c_seg.nii.gz"
    assert main(["predict", str(src), "-m", str(mf), "--quiet", "--device", "cpu"]) == 0  # default output name
    assert load(out).shape == (24, 20, 8) and np.array_equal(load(out).affine, load(src).affine)


def test_volume_smaller_than_patch(tmp_path):
    src = write_volume(tmp_path / "small.nii.gz", shape=(6, 5, 4))
    mf = make_model_file(tmp_path / "m.pt", patch=(8, 16, 16))
    out = tmp_path / "small_seg.nii.gz"
    assert main(["predict", str(src), "-m", str(mf), "-o", str(out), "--quiet"]) == 0
    assert load(out).shape == (6, 5, 4)


def test_multichannel_files_folder_and_4d(tmp_path):
    mf = make_model_file(tmp_path / "m2.pt", in_channels=2)
    img = write_volume(tmp_path / "4d.nii.gz", shape=(16, 16, 8), channels=2)
    data = load(img).get_fdata()
    folder = tmp_path / "cases"
    folder.mkdir()
    for c in range(2):
        save_nifti(folder / f"pat_{c:04d}.nii.gz", data[..., c].astype(np.float32), load(img).affine)
    # one 4-D file, two channel files, and a folder with nnU-Net naming give the same labels
    assert main(["predict", str(img), "-m", str(mf), "-o", str(tmp_path / "a.nii.gz"), "--quiet"]) == 0
    assert main(["predict", str(folder / "pat_0000.nii.gz"), str(folder / "pat_0001.nii.gz"), "-m", str(mf),
                 "-o", str(tmp_path / "b.nii.gz"), "--quiet"]) == 0
    assert main(["predict", str(folder), "-m", str(mf), "-o", str(tmp_path / "outdir"), "--quiet"]) == 0
    a = load(tmp_path / "a.nii.gz").get_fdata()
    assert a.shape == (16, 16, 8)
    assert np.array_equal(a, load(tmp_path / "b.nii.gz").get_fdata())
    assert np.array_equal(a, load(tmp_path / "outdir" / "pat.nii.gz").get_fdata())


def test_options_stats_preview_probabilities_classes(tmp_path, model_file, volume, capsys):
    out = tmp_path / "seg.nii.gz"
    args = ["predict", str(volume), "-m", str(model_file), "-m", str(model_file), "-o", str(out), "--tta",
            "--save-probabilities", "--largest-component", "--stats", str(tmp_path / "s.json"),
            "--preview", str(tmp_path / "p.png"), "--device", "cpu", "--precision", "fp32"]
    assert main(args) == 0
    err = capsys.readouterr().err
    assert "network" in err and "write" in err and "TTA" in err  # timings per stage and summary
    probs = load(tmp_path / "seg_probabilities.nii.gz")
    assert probs.shape == (20, 18, 10, 4) and np.array_equal(probs.affine, load(volume).affine)
    p = probs.get_fdata()
    assert np.allclose(p.sum(-1), 1, atol=1e-4)
    labels = load(out).get_fdata().astype(int)
    assert np.array_equal(labels, p.argmax(-1)) or (labels != p.argmax(-1)).mean() < 0.05  # cleanup may drop islands
    stats = json.loads((tmp_path / "s.json").read_text())
    vox = float(np.prod(load(volume).header.get_zooms()))
    for _name, s in stats["classes"].items():
        assert s["voxels"] == int((labels == s["label"]).sum())
        assert s["volume_mm3"] == pytest.approx(s["voxels"] * vox, rel=1e-4)
    assert (tmp_path / "p.png").read_bytes()[:4] == b"\x89PNG"
    # existing outputs need --overwrite
    assert main(args) == 2 and "output exists" in capsys.readouterr().err


def test_keep_classes_keeps_exactly_the_chosen_labels_on_their_voxels(tmp_path, model_file, volume, capsys):
    """--classes (names or numbers) sets every other label to background and leaves the kept ones where the
    full prediction has them; the old spelling --keep-classes does the same with a deprecation line."""
    base = ["predict", str(volume), "-m", str(model_file), "--quiet", "--device", "cpu", "--precision", "fp32"]
    assert main([*base, "-o", str(tmp_path / "all.nii.gz")]) == 0
    full = np.asarray(load(tmp_path / "all.nii.gz").dataobj)
    present = set(np.unique(full).tolist()) - {0}
    assert {1, 2} <= present  # the tiny model predicts organ (1) and lesion (2): both keeping and dropping happen
    for i, (flag, chosen) in enumerate([("--classes", ["organ", "3"]), ("--roi-subset", ["2"]),
                                        ("--keep-classes", ["3,lesion"])]):
        out = tmp_path / f"kept{i}.nii.gz"
        assert main([*base, "-o", str(out), flag, *chosen]) == 0
        keep = {"organ": 1, "lesion": 2}
        ids = {keep.get(t, None) or int(t) for c in chosen for t in c.split(",")}
        expected = np.where(np.isin(full, sorted(ids)), full, 0)
        got = np.asarray(load(out).dataobj)
        np.testing.assert_array_equal(got, expected)
        assert got.any() and (got != full).any()
    assert "--keep-classes is deprecated" in capsys.readouterr().err
    assert main([*base, "-o", str(tmp_path / "x.nii.gz"), "--classes", "kidney"]) == 2
    assert "unknown class 'kidney'" in capsys.readouterr().err and not (tmp_path / "x.nii.gz").exists()


def test_ensemble_averages_probabilities(tmp_path, volume):
    m1, m2 = make_model_file(tmp_path / "a.pt", seed=1), make_model_file(tmp_path / "b.pt", seed=2)
    case = read_case(volume)
    p1 = predict_case(case, load_models([m1], "cpu", "fp32"), probabilities=True).probabilities
    p2 = predict_case(case, load_models([m2], "cpu", "fp32"), probabilities=True).probabilities
    both = predict_case(case, load_models([m1, m2], "cpu", "fp32"), probabilities=True)
    assert np.allclose(both.probabilities, (p1 + p2) / 2, atol=1e-5)
    assert np.array_equal(both.labels, both.probabilities.argmax(-1))


def test_largest_component_and_uint16():
    lab = np.zeros((8, 8, 8), dtype=np.int32)
    lab[0:3, 0:3, 0:3] = 2
    lab[6:8, 6:8, 6:8] = 2
    lab[5, 0, 0] = 1
    out = largest_component(lab)
    assert (out == 2).sum() == 27 and (out == 1).sum() == 1
    from medseg.io import label_dtype

    assert label_dtype(255) == np.uint8 and label_dtype(300) == np.uint16


def test_uint16_output_for_many_classes(tmp_path, volume):
    mf = make_model_file(tmp_path / "many.pt", num_classes=300)
    # bias the last head towards class 299 so labels above 255 appear
    from shared_backbones.checkpoint import load_model_file, save_model_file

    m = load_model_file(mf)
    key = [k for k in m.state_dict if k.startswith("heads.") and k.endswith("bias")][-1]
    m.state_dict[key] = torch.zeros_like(m.state_dict[key])
    m.state_dict[key][299] = 100.0
    save_model_file(mf, m)
    out = tmp_path / "o.nii.gz"
    assert main(["predict", str(volume), "-m", str(mf), "-o", str(out), "--quiet"]) == 0
    img = nib.load(str(out))
    assert img.get_data_dtype() == np.uint16 and int(img.get_fdata().max()) == 299


@pytest.mark.parametrize("overlap", [0.25, 0.5, 0.75])
def test_progress_total_follows_overlap(model_file, volume, overlap):
    """The windows bar's total equals the windows predict runs, whatever --overlap is."""
    from medseg.predict import count_windows

    models = load_models([model_file], "cpu", "fp32")
    case = read_case(volume)
    done = []
    predict_case(case, models, overlap=overlap, on_window=done.append)
    assert sum(done) == count_windows(case, models, overlap) > 0


def test_folder_parts_skip_done_cases_and_go_on_past_bad_ones(tmp_path, model_file, capsys):
    """--num-parts/--part-id split a folder; a rerun skips cases whose output exists; a bad case does not stop it."""
    src = tmp_path / "scans"
    src.mkdir()
    for i in range(4):
        write_volume(src / f"c{i}.nii.gz", seed=i)
    out = tmp_path / "segs"
    base = ["predict", str(src), "-m", str(model_file), "-o", str(out), "--device", "cpu"]
    assert main([*base, "--num-parts", "2", "--part-id", "1", "--quiet"]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["c1.nii.gz", "c3.nii.gz"]
    (src / "c2.nii.gz").write_bytes(b"not a nifti")
    assert main(base) == 2  # c0 written, c2 fails, c1/c3 skipped
    err = capsys.readouterr().err
    assert "skipping 2 input(s)" in err and "1 of 2 inputs failed" in err and "c2" in err
    assert sorted(p.name for p in out.iterdir()) == ["c0.nii.gz", "c1.nii.gz", "c3.nii.gz"]
    assert main([*base, "--num-parts", "2", "--part-id", "2", "--quiet"]) == 2
    assert "--part-id must be in 0..1" in capsys.readouterr().err
