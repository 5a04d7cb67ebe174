"""`medseg predict` error paths, `medseg synth/train/evaluate` end to end on tiny phantoms, MONAI metric parity."""

from __future__ import annotations

import csv
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from medseg_testutil import load, make_model_file, write_volume

from medseg.dataset import read_dataset
from medseg.evaluate import case_metrics
from medseg.planning import plan_strides
from medseg.synthetic import save_nifti
from medseg.volume_cli import main
from pipelines.medseg import deep_supervision_weights


def _one_error(capsys, path) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("medseg: error: ") and "Traceback" not in err[0], err
    assert str(path) in err[0] or path.name in err[0], err
    return err[0]


def _bad_inputs(tmp_path):
    aff = np.diag([1.0, 1.0, 2.0, 1.0])
    text = tmp_path / "notes.nii.gz"
    text.write_text("not an image")
    flat = save_nifti(tmp_path / "flat.nii.gz", np.zeros((16, 16, 1), np.float32), aff)
    four = save_nifti(tmp_path / "four.nii.gz", np.zeros((8, 8, 8, 3), np.float32), aff)
    nan = np.full((8, 8, 8), np.nan, np.float32)
    nanf = save_nifti(tmp_path / "nan.nii.gz", nan, aff)
    png = tmp_path / "scan.png"
    png.write_bytes(b"\x89PNG\r\n")
    return {
        "garbage": (text, "not a readable NIfTI"),
        "2d": (flat, "2-D image"),
        "4d": (four, "4-D image with 3 channels; the model expects 1"),
        "nan": (nanf, "no finite voxel"),
        "png": (png, "not a NIfTI file"),
        "missing": (tmp_path / "absent.nii.gz", "file not found"),
    }


@pytest.mark.parametrize("kind", ["garbage", "2d", "4d", "nan", "png", "missing"])
def test_bad_volumes_give_one_line_errors(tmp_path, model_file, capsys, kind):
    path, message = _bad_inputs(tmp_path)[kind]
    assert main(["predict", str(path), "-m", str(model_file), "-o", str(tmp_path / "o.nii.gz")]) == 2
    assert message in _one_error(capsys, path)
    assert not (tmp_path / "o.nii.gz").exists()


def test_model_errors(tmp_path, volume, capsys):
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"\x00" * 64)
    assert main(["predict", str(volume), "-m", str(junk)]) == 2
    _one_error(capsys, junk)
    foreign = make_model_file(tmp_path / "phases.pt", task="phases")
    assert main(["predict", str(volume), "-m", str(foreign)]) == 2
    assert "phases" in _one_error(capsys, foreign)
    two = make_model_file(tmp_path / "two.pt", in_channels=2)
    assert main(["predict", str(volume), "-m", str(two)]) == 2
    assert "the model expects 2" in _one_error(capsys, volume)
    one = make_model_file(tmp_path / "one.pt", num_classes=3)
    assert main(["predict", str(volume), "-m", str(one), "-m", str(two)]) == 2
    assert "ensemble member disagrees" in _one_error(capsys, two)
    assert main(["predict", str(volume), "-m", str(one), "--keep-classes", "kidney"]) == 2
    assert "unknown class 'kidney'" in capsys.readouterr().err


def test_channel_files_must_share_geometry(tmp_path, capsys):
    a = write_volume(tmp_path / "p_0000.nii.gz", shape=(10, 10, 6))
    b = save_nifti(tmp_path / "p_0001.nii.gz", load(a).get_fdata().astype(np.float32), np.diag([2.0, 1, 1, 1]))
    mf = make_model_file(tmp_path / "m2.pt", in_channels=2)
    assert main(["predict", str(a), str(b), "-m", str(mf)]) == 2
    assert "affine differs" in _one_error(capsys, b)


# ------------------------------------------------------------------------------------------------ evaluate
def test_metrics_equal_monai_and_conventions():
    from monai.metrics import compute_dice, compute_hausdorff_distance
    from monai.networks.utils import one_hot

    ref = np.zeros((20, 20, 10), np.int64)
    ref[4:12, 4:12, 2:8] = 1
    ref[14:18, 14:18, 3:6] = 2
    pred = np.zeros_like(ref)
    pred[5:13, 4:12, 2:8] = 1  # organ shifted by one voxel (1.5 mm along x)
    m = case_metrics(pred, ref, 4, (1.5, 1.0, 2.0))
    inter = ((pred == 1) & (ref == 1)).sum()
    assert m["dice"][0] == pytest.approx(2 * inter / ((pred == 1).sum() + (ref == 1).sum()))
    p, r = (one_hot(torch.from_numpy(a)[None, None], 4) for a in (pred, ref))
    assert m["dice"][0] == pytest.approx(float(compute_dice(p, r, include_background=False)[0, 0]))
    hd = float(compute_hausdorff_distance(p, r, percentile=95, spacing=[1.5, 1.0, 2.0])[0, 0])
    assert m["hd95"][0] == pytest.approx(hd) and hd == pytest.approx(1.5)
    assert m["nsd"][0] == pytest.approx(1.0)  # within the 2 mm tolerance everywhere
    assert m["dice"][1] == 0 and m["nsd"][1] == 0 and np.isnan(m["hd95"][1])  # missed lesion
    assert np.isnan(m["dice"][2]) and np.isnan(m["nsd"][2])  # class absent from both


# ---------------------------------------------------------------------------------------- train, end to end
def test_planning_helpers():
    assert plan_strides([24, 48, 48], [2.5, 1.0, 1.0]) == [[1, 2, 2], [2, 2, 2], [2, 2, 2]]
    assert plan_strides([16, 16, 16], [1, 1, 1], max_pools=2) == [[2, 2, 2], [2, 2, 2]]
    # every output the network builds is weighted (an unweighted head breaks DDP without find_unused_parameters)
    assert deep_supervision_weights(3) == pytest.approx([4 / 7, 2 / 7, 1 / 7])
    assert deep_supervision_weights(1) == [1.0]


def test_synth_train_predict_evaluate(tmp_path, capsys):
    data = tmp_path / "data"
    assert main(["synth", str(data), "--train", "3", "--test", "1", "--quiet"]) == 0
    info = read_dataset(data)
    assert len(info.cases) == 3 and info.classes == ["background", "organ", "lesion", "vessel"]
    model = tmp_path / "m.pt"
    assert (
        main(
            [
                "train",
                str(data),
                "-o",
                str(model),
                "--epochs",
                "1",
                "--steps-per-epoch",
                "2",
                "--batch-size",
                "1",
                "--folds",
                "3",
                "--base-channels",
                "4",
                "--patch",
                "8",
                "16",
                "16",
                "--quiet",
            ]
        )
        == 0
    )
    from shared_backbones.checkpoint import load_model_file

    mf = load_model_file(model)
    assert mf.task == "medseg" and mf.arch == "unet3d" and mf.classes == info.classes
    pre = mf.preprocessing
    assert pre["patch_size"] == [8, 16, 16] and pre["spacing"] == pytest.approx([2.5, 1.0, 1.0], abs=1e-4)
    pred_dir = tmp_path / "pred"
    assert main(["predict", str(data / "imagesTs"), "-m", str(model), "-o", str(pred_dir), "--quiet"]) == 0
    out = pred_dir / "phantom_003.nii.gz"
    ref = data / "labelsTs" / "phantom_003.nii.gz"
    assert np.array_equal(load(out).affine, load(ref).affine) and load(out).shape == load(ref).shape
    table = tmp_path / "scores.csv"
    assert main(["evaluate", str(pred_dir), str(data / "labelsTs"), "--csv", str(table), "--quiet"]) == 0
    printed = capsys.readouterr().out
    assert "organ" in printed and "mean" in printed
    rows = list(csv.DictReader(table.open()))
    assert [r["class"] for r in rows[:3]] == ["organ", "lesion", "vessel"] and rows[-1]["case"] == "mean"
    # the model file refuses to be overwritten; a missing dataset is one line
    assert main(["train", str(data), "-o", str(model), "--quiet"]) == 2
    assert "exists" in capsys.readouterr().err
    assert main(["train", str(tmp_path / "nope"), "-o", str(tmp_path / "x.pt"), "--quiet"]) == 2
    assert "dataset folder not found" in capsys.readouterr().err


def test_evaluate_errors(tmp_path, capsys):
    pred, ref = tmp_path / "pred", tmp_path / "ref"
    pred.mkdir()
    ref.mkdir()
    save_nifti(ref / "a.nii.gz", np.zeros((6, 6, 6), np.uint8), np.eye(4))
    assert main(["evaluate", str(pred), str(ref)]) == 2
    assert "no prediction for reference a.nii.gz" in capsys.readouterr().err
    save_nifti(pred / "a.nii.gz", np.zeros((6, 6, 5), np.uint8), np.eye(4))
    assert main(["evaluate", str(pred), str(ref)]) == 2
    assert "differs from the reference" in capsys.readouterr().err
    nib.save(nib.Nifti1Image(np.full((6, 6, 6), 0.5, np.float32), np.eye(4)), str(pred / "a.nii.gz"))
    assert main(["evaluate", str(pred), str(ref)]) == 2
    assert "not a label map" in capsys.readouterr().err


def test_cached_cases_are_memory_mapped_and_equal_fresh_preprocessing(tmp_path):
    from medseg.dataset import PatchDataset, cached_case, crop_patch, preprocess_case
    from medseg.planning import plan_training

    data = tmp_path / "data"
    assert main(["synth", str(data), "--train", "2", "--test", "0", "--quiet"]) == 0
    info = read_dataset(data)
    plan = plan_training(info)
    name, files, lab = info.cases[0]
    fresh = preprocess_case(files, lab, plan, name)
    cache = tmp_path / "cache"
    first = cached_case(cache, files, lab, plan, name)
    again = cached_case(cache, files, lab, plan, name)  # read back, not recomputed
    assert isinstance(again.image, np.memmap) and sorted(p.name for p in cache.iterdir()) == [
        f"{name}.npy",
        f"{name}_fg.pt",
        f"{name}_seg.npy",
    ]
    for v in (first, again):
        assert np.array_equal(np.asarray(v.image), fresh.image.numpy())
        assert np.array_equal(np.asarray(v.label), fresh.label.numpy())
        assert all(torch.equal(a, b) for a, b in zip(v.foreground, fresh.foreground))
    # patches partly outside the volume are zero padded, equal to padding the whole volume first
    z, y, x = again.shape
    img, lbl = crop_patch(again, [-3, y - 5, 2], [8, 16, 16])
    full_img = torch.nn.functional.pad(fresh.image, (0, 16, 0, 16, 3, 8))
    full_lab = torch.nn.functional.pad(fresh.label, (0, 16, 0, 16, 3, 8)).long()
    assert torch.equal(img, full_img[:, 0:8, y - 5 : y + 11, 2:18]) and torch.equal(
        lbl, full_lab[0:8, y - 5 : y + 11, 2:18]
    )
    big = [z + 5, y + 2, x]  # larger than the volume: centred, exact shape
    ds = PatchDataset([again], big, 3, augment=False)
    xs, ys = ds[0]
    assert xs.shape == (1, *big) and ys.shape == tuple(big) and int(ys.sum()) == int(fresh.label.long().sum())


def test_lightning_cli_config_trains_and_exports(tmp_path, monkeypatch):
    """`pipelines fit -c pipelines/configs/medseg.yaml`: the datamodule plans, the module builds the network for the
    plan, the checkpoint exports to a model file that `medseg predict` uses."""
    from pathlib import Path

    import pipelines
    from pipelines.cli import main as pipelines_main

    config = Path(pipelines.__file__).parent / "configs" / "medseg.yaml"
    monkeypatch.chdir(tmp_path)
    assert main(["synth", "phantoms", "--train", "3", "--test", "1", "--quiet"]) == 0
    assert (
        pipelines_main(
            [
                "fit",
                "-c",
                str(config),
                "--trainer.max_epochs",
                "1",
                "--data.steps_per_epoch",
                "2",
                "--data.folds",
                "3",
                "--data.batch_size",
                "1",
                "--trainer.enable_progress_bar",
                "false",
                "--trainer.enable_model_summary",
                "false",
            ]
        )
        == 0
    )
    ckpts = list((tmp_path / "runs" / "medseg" / "checkpoints").glob("best-*.ckpt"))
    assert len(ckpts) == 1 and len(list((tmp_path / "runs" / "medseg" / "preprocessed").glob("*/*.npy"))) == 6
    assert pipelines_main(["export", str(ckpts[0]), "-o", "unet.pt"]) == 0
    from shared_backbones.checkpoint import load_model_file

    mf = load_model_file("unet.pt", task="medseg")
    assert mf.arch_kwargs["base_channels"] == 8 and mf.arch_kwargs["num_classes"] == 4
    assert mf.classes == ["background", "organ", "lesion", "vessel"] and mf.preprocessing["patch_size"] == [24, 48, 48]
    assert main(["predict", "phantoms/imagesTs", "-m", "unet.pt", "-o", "segs", "--quiet"]) == 0
    assert (tmp_path / "segs" / "phantom_003.nii.gz").is_file()


def test_parallel_preprocessing_fills_the_same_cache(tmp_path):
    from pipelines.medseg import MedsegDataModule

    data = tmp_path / "data"
    assert main(["synth", str(data), "--train", "2", "--test", "0", "--quiet"]) == 0
    arrays = []
    for workers in (0, 2):
        dm = MedsegDataModule(str(data), workers=workers, cache_dir=str(tmp_path / f"cache{workers}"), folds=2)
        dm.prepare_data()
        files = sorted(Path(dm.cache_dir).glob("*.npy"))
        assert [f.name for f in files] == [
            "phantom_000.npy",
            "phantom_000_seg.npy",
            "phantom_001.npy",
            "phantom_001_seg.npy",
        ]
        arrays.append([np.load(f) for f in files])
    # labels identical; images equal up to float summation order (one thread per worker)
    assert all(np.allclose(a, b, atol=1e-5) and (a.dtype != np.uint8 or np.array_equal(a, b)) for a, b in zip(*arrays))


def test_training_normalisation_leaves_nonfinite_voxels_out(tmp_path):
    """NaN voxels (outside an SPM field of view) are background in training too: the z-score statistics come from
    the finite voxels only (the filled minimum would pull the mean down and inflate the std), and the planner
    names the case."""
    from medseg.dataset import preprocess_case
    from medseg.io import model_array, read_case
    from medseg.planning import plan_training

    data = tmp_path / "data"
    assert main(["synth", str(data), "--train", "2", "--test", "0", "--quiet"]) == 0
    info = read_dataset(data)
    name, files, lab = info.cases[0]
    img = nib.load(str(files[0]))
    arr = np.asarray(img.dataobj, dtype=np.float32)
    arr[:, :12] = np.nan                                         # a quarter of the volume outside the field of view
    nib.save(nib.Nifti1Image(arr, img.affine, img.header), str(files[0]))
    found: list[tuple[str, int]] = []
    plan = plan_training(info, nonfinite=found)
    assert found == [(name, int(np.isnan(arr).sum()))]
    vol = preprocess_case(files, lab, plan, name)
    case = read_case(files)
    keep = ~model_array(case, plan["orientation"])[1].forward(case.nonfinite[None])[0]
    ref = model_array(read_case(files), plan["orientation"])[0][0][keep]
    expected = (ref - ref.mean()) / (ref.std() + 1e-8)
    got = vol.image[0].numpy()[keep]
    assert vol.image.shape[1:] == keep.shape and np.isfinite(vol.image.numpy()).all()
    assert np.allclose(got, expected, atol=1e-4), np.abs(got - expected).max()
