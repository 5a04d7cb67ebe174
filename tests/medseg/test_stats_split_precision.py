"""medseg predict's statistics (checked against scipy.ndimage / numpy and TotalSegmentator's formulas), one mask per
class, the preview legend, the imported nnU-Net file's mirroring default, out-of-memory as one line for every
command, and ``--precision auto`` on the CPU."""

from __future__ import annotations

import argparse
import csv
import importlib
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import tomllib
import torch
from medseg_testutil import make_model_file, nnunet_arch, write_nnunet_folder, write_volume
from scipy import ndimage

from medseg.batch import plan_predict
from medseg.outputs import STAT_KEYS, label_statistics, voxel_volume, write_preview
from medseg.volume_cli import _parser, main
from shared_backbones.errors import InputError

ROOT = Path(__file__).resolve().parents[2]


# ----------------------------------------------------------------------------------------------- statistics
def test_statistics_equal_ndimage_numpy_and_totalsegmentator():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 4, (23, 17, 11)).astype(np.uint8)
    labels[labels == 3] = 0                     # class 3 empty
    image = (rng.normal(40, 30, labels.shape) * 7).astype(np.float32)
    classes = ["background", "liver", "spleen", "kidney"]
    st = label_statistics(labels, classes, (0.8, 0.8, 1.0), image=image)["classes"]
    idx = [1, 2]
    for name, i, mean, std, med, lo, hi in zip(
            ["liver", "spleen"], idx, ndimage.mean(image, labels, idx), ndimage.standard_deviation(image, labels, idx),
            ndimage.median(image, labels, idx), ndimage.minimum(image, labels, idx),
            ndimage.maximum(image, labels, idx)):
        e = st[name]
        vals = image[labels == i]
        assert e["label"] == i and e["voxels"] == vals.size
        np.testing.assert_allclose(e["intensity"], mean, rtol=1e-12)     # sums in another order: last bits only
        np.testing.assert_allclose(e["intensity_std"], std, rtol=1e-12)
        assert (e["intensity_median"], e["intensity_min"], e["intensity_max"]) == (med, lo, hi)  # exact
        for q in (5, 25, 75, 95):
            assert e[f"intensity_p{q}"] == np.percentile(vals, q)
        # TotalSegmentator's statistics.json: volume = voxels * voxel volume (mm3), intensity = np.average(ct, mask)
        mask = (labels == i).astype(np.uint8)
        assert e["volume"] == e["volume_mm3"] == pytest.approx(mask.sum() * 0.8 * 0.8 * 1.0, rel=1e-12)
        np.testing.assert_allclose(e["intensity"], np.average(image.astype(np.float64), weights=mask), rtol=1e-12)
    empty = st["kidney"]
    assert empty["voxels"] == 0 and empty["volume"] == 0 and empty["intensity"] == 0.0  # as TotalSegmentator
    assert empty["intensity_median"] is None and empty["intensity_p95"] is None
    assert list(st["liver"]) == list(STAT_KEYS)


def test_volumes_rounded_to_the_voxel_grid():
    # float32 header spacing 0.8 x 0.8 x 1.0: the old code printed 7580.1605 (n * 0.64000004 at 4 decimals)
    sizes = np.array([0.8, 0.8, 1.0], dtype=np.float32).astype(np.float64)
    assert voxel_volume(sizes) == (0.64, 2)
    labels = np.zeros((110, 110, 1), np.uint8)
    labels.flat[:11844] = 1
    e = label_statistics(labels, ["background", "a"], sizes)["classes"]["a"]
    assert e["volume_mm3"] == 7580.16 and e["volume_ml"] == 7.58016
    e = label_statistics(labels[..., :], ["background", "a"], np.array([1, 1, 1], np.float32) * 0.99999999)
    assert e["classes"]["a"]["volume_mm3"] == 11844.0    # not 11843.9999
    assert voxel_volume((0.7, 0.7, 1.5)) == (0.735, 3)


def _predict(tmp_path, *extra):
    model = make_model_file(tmp_path / "tiny.pt")
    vol = write_volume(tmp_path / "case.nii.gz")
    out = tmp_path / "out" / "seg.nii.gz"
    rc = main(["predict", str(vol), "-m", str(model), "-o", str(out), "--device", "cpu", "--quiet", *extra])
    return rc, vol, out


def test_predict_stats_json_csv_and_split_classes(tmp_path, capsys):
    rc, vol, out = _predict(tmp_path, "--statistics", str(tmp_path / "s.json"), "--split-classes")
    assert rc == 0
    labels_img = nib.load(str(out))
    labels = np.asanyarray(labels_img.dataobj)
    stats = json.loads((tmp_path / "s.json").read_text())
    image = np.asanyarray(nib.load(str(vol)).dataobj).astype(np.float32)
    folder = tmp_path / "out" / "seg"
    assert sorted(p.name for p in folder.iterdir()) == ["lesion.nii.gz", "organ.nii.gz", "vessel.nii.gz"]
    union = np.zeros(labels.shape, np.uint8)
    for name, e in stats["classes"].items():
        img = nib.load(str(folder / f"{name}.nii.gz"))
        mask = np.asanyarray(img.dataobj)
        assert mask.dtype == np.uint8 and set(np.unique(mask)) <= {0, 1}
        assert np.array_equal(img.affine, labels_img.affine)
        for key in ("qform_code", "sform_code", "srow_x", "srow_y", "srow_z", "pixdim", "xyzt_units"):
            assert np.array_equal(img.header[key], labels_img.header[key]), key
        assert np.array_equal(mask, labels == e["label"]) and mask.sum() == e["voxels"]
        union[mask > 0] = e["label"]
        if e["voxels"]:
            np.testing.assert_allclose(e["intensity"], ndimage.mean(image, labels, [e["label"]])[0], rtol=1e-12)
    assert np.array_equal(union, labels)
    # the table: one row per class, the documented columns
    assert main(["predict", str(vol), "-m", str(tmp_path / "tiny.pt"), "-o", str(out), "--device", "cpu", "--quiet",
                 "--overwrite", "--stats", str(tmp_path / "s.csv")]) == 0
    with open(tmp_path / "s.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert list(rows[0]) == ["case", "class", *STAT_KEYS]
    assert [r["class"] for r in rows] == list(stats["classes"]) and rows[0]["case"] == "case"
    assert int(rows[0]["voxels"]) == stats["classes"][rows[0]["class"]]["voxels"]
    # an existing mask needs --overwrite (planned before any work)
    assert main(["predict", str(vol), "-m", str(tmp_path / "tiny.pt"), "-o", str(tmp_path / "out" / "other.nii.gz"),
                 "--device", "cpu", "--quiet"]) == 0
    capsys.readouterr()
    (tmp_path / "out" / "seg.nii.gz").unlink()
    assert main(["predict", str(vol), "-m", str(tmp_path / "tiny.pt"), "-o", str(out), "--device", "cpu",
                 "--quiet", "--split-classes"]) == 2
    err = capsys.readouterr().err
    assert "organ.nii.gz" in err and "--overwrite" in err and len(err.strip().splitlines()) == 1
    assert not out.exists()  # refused before any work


def test_split_classes_plan_refuses_clashing_names(tmp_path):
    vol = write_volume(tmp_path / "case.nii.gz")
    with pytest.raises(InputError, match="would both be written"):
        plan_predict([vol], split_classes=["background", "a/b", "a_b"])
    plan = plan_predict([vol], split_classes=["background", "liver", "../x", "spleen"], keep=[1, 2])
    outs = plan.plan.jobs[0].outputs
    assert outs["class:liver"] == tmp_path / "case_seg" / "liver.nii.gz"
    assert outs["class:../x"] == tmp_path / "case_seg" / "x.nii.gz"     # cannot leave the folder
    assert "class:spleen" not in outs                                    # --keep-classes: only the kept ones


def test_predict_parser_has_both_stats_spellings_and_split_classes():
    opts = {s for a in _parser()._subparsers._group_actions[0].choices["predict"]._actions for s in a.option_strings}
    assert {"--split-classes", "--stats", "--statistics"} <= opts


# ------------------------------------------------------------------------------------------------- preview
def test_preview_legend(tmp_path):
    from medseg.io import read_case

    vol = write_volume(tmp_path / "case.nii.gz")
    case = read_case(vol)
    classes = ["background", "liver", "spleen", "kidney"]
    labels = np.zeros(case.spatial_shape, np.uint8)
    plain = write_preview(tmp_path / "none.png", case, labels, classes)
    labels[2:6, 2:6, 2:5] = 1
    labels[8:12, 8:12, 2:5] = 3
    entries = write_preview(tmp_path / "two.png", case, labels, classes)
    assert plain == [] and [(i, n) for i, n, _ in entries] == [(1, "liver"), (3, "kidney")]
    import matplotlib.pyplot as plt

    assert entries[0][2] == plt.get_cmap("tab10", 10)(0) and entries[1][2] == plt.get_cmap("tab10", 10)(2)
    h0, h1 = plt.imread(tmp_path / "none.png").shape[0], plt.imread(tmp_path / "two.png").shape[0]
    assert h1 > h0  # the legend row adds height
    # the legend's colours are drawn (swatches in the legend row below the slices)
    png = plt.imread(tmp_path / "two.png")[h0:, :, :3]
    for _, _, c in entries:
        assert (np.abs(png - np.array(c[:3])).max(-1) < 0.02).sum() > 20


# ---------------------------------------------------------------------------------- import-nnunet mirroring
def make_nnunet_folder(root: Path, mirror_axes=(0, 1, 2)) -> Path:
    """A minimal random-weight nnU-Net v2 3d_fullres model folder (what nnU-Net's trainer saves)."""
    return write_nnunet_folder(root, "Dataset001_T", {"background": 0, "a": 1, "b": 2}, arch=nnunet_arch((2, 4)),
                               patch=8, spacing=[2.5, 1.2, 1.0], channel="MR", seed=0, mirror_axes=mirror_axes)


def test_imported_nnunet_file_mirrors_by_default_and_the_help_says_so(tmp_path, capsys):
    from medseg.predict import load_model

    folder = make_nnunet_folder(tmp_path)
    model = tmp_path / "t.pt"
    assert main(["import-nnunet", str(folder), "-o", str(model)]) == 0
    assert "mirrors it over axes 0 1 2 by default" in capsys.readouterr().err
    vm = load_model(model, "cpu", "fp32")
    assert vm.pre["mirror_axes"] == [0, 1, 2] and vm.default_tta       # the stored default: mirroring on
    assert load_model(folder, "cpu", "fp32").default_tta
    assert not load_model(make_model_file(tmp_path / "own.pt"), "cpu", "fp32").default_tta
    help_text = " ".join(_parser()._subparsers._group_actions[0].choices["predict"].format_help().split())
    assert "on for nnU-Net models (model folders and files made by import-nnunet)" in help_text
    assert "off for the suite's own model files" in help_text
    # the run says what it did: TTA on for the imported file without --tta
    vol = write_volume(tmp_path / "case.nii.gz")
    assert main(["predict", str(vol), "-m", str(model), "-o", str(tmp_path / "s.nii.gz"), "--device", "cpu",
                 "--precision", "fp32"]) == 0
    assert ", TTA)" in capsys.readouterr().err
    no_mirror = make_nnunet_folder(tmp_path / "nm", mirror_axes=None)
    assert not load_model(no_mirror, "cpu", "fp32").default_tta


# ------------------------------------------------------------------------------------------- out of memory
def _every_cli_main():
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    mains = {name: target for name, target in scripts.items()}
    mains["medseg phases"] = "medseg.phases.cli:main"
    out = []
    for name, target in mains.items():
        mod, func = target.split(":")
        out.append(pytest.param(name, getattr(importlib.import_module(mod), func), id=name))
    return out


CPU_OOM = ("DefaultCPUAllocator: can't allocate memory: you tried to allocate 19957612544 bytes. Error code 12 "
           "(Cannot allocate memory)\nException raised from alloc_cpu at /pytorch/c10/core/impl/alloc_cpu.cpp:121 "
           "(most recent call first):\nframe #0: c10::Error::Error(...)")


@pytest.mark.parametrize("error", [RuntimeError(CPU_OOM),
                                   torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 17.30 GiB\nmore"),
                                   MemoryError()], ids=["cpu", "cuda", "python"])
@pytest.mark.parametrize("prog,cli_main", _every_cli_main())
def test_out_of_memory_is_one_line_for_every_command(prog, cli_main, error, monkeypatch, capsys):
    def raise_oom(self, *a, **k):
        raise error

    monkeypatch.setattr(argparse.ArgumentParser, "parse_known_args", raise_oom)
    argv = ["phases"] if prog == "medseg phases" else []
    rc = cli_main([*argv, "predict", "x"] if prog != "medseg phases" else ["predict", "x"])
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert rc == 1 and len(lines) == 1, err
    assert lines[0].startswith(f"{prog}: error: out of memory while running {prog} predict: ")
    assert "try a smaller --batch-size" in lines[0]
    if isinstance(error, RuntimeError):
        assert str(error).splitlines()[0] in lines[0]


def test_other_runtime_errors_still_propagate(monkeypatch):
    def boom(self, *a, **k):
        raise RuntimeError("shape mismatch")

    monkeypatch.setattr(argparse.ArgumentParser, "parse_known_args", boom)
    with pytest.raises(RuntimeError, match="shape mismatch"):
        main(["predict", "x"])


# ------------------------------------------------------------------------------------------ --precision auto
def test_precision_auto_on_the_cpu(monkeypatch, tmp_path, capsys):
    import shared_backbones.precision as prec
    from medseg.cpu_precision import BF16_LABEL_AGREEMENT, MIN_LABEL_AGREEMENT, auto_policy
    from medseg.predict import load_model
    from shared_backbones.precision import PrecisionPolicy

    cpu = torch.device("cpu")
    monkeypatch.setattr(prec, "cpu_bf16_feature", lambda: "avx512_bf16")
    assert PrecisionPolicy.resolve("auto", "cpu").name == "fp32"          # other domains: unchanged
    assert PrecisionPolicy.resolve("auto", "cpu", cpu_bf16=True).name == "bf16"
    assert BF16_LABEL_AGREEMENT >= MIN_LABEL_AGREEMENT                   # measured on the trained phantom model
    p = auto_policy(cpu)
    assert p.name == "bf16" and "avx512_bf16" in p.reason
    worse = auto_policy(cpu, agreement=0.998)                             # bf16 losing 0.2% of labels: stays fp32
    assert worse.name == "fp32" and "0.20%" in worse.reason and "more than 0.1%" in worse.reason
    model = make_model_file(tmp_path / "m.pt")
    assert load_model(model, "cpu", "auto").policy.name == "bf16"
    assert load_model(model, "cpu", "fp32").policy.name == "fp32"        # an explicit choice is obeyed
    vol = write_volume(tmp_path / "case.nii.gz")
    # a first case of a few windows: fp32, bf16 would not pay off
    assert main(["predict", str(vol), "-m", str(model), "-o", str(tmp_path / "s.nii.gz"), "--device", "cpu"]) == 0
    err = capsys.readouterr().err
    assert "precision auto: fp32 (the first case needs 8 network passes, too few for bf16 to pay off)" in err
    assert "(fp32, 1 model(s))" in err
    import medseg.cpu_precision as cp

    monkeypatch.setattr(cp, "MIN_PASSES_FOR_BF16", 1)
    assert main(["predict", str(vol), "-m", str(model), "-o", str(tmp_path / "a.nii.gz"), "--device", "cpu"]) == 0
    err = capsys.readouterr().err
    assert err.count("precision auto: bf16 (this CPU has native bf16: avx512_bf16); a test window's labels") == 1
    assert "(bf16, 1 model(s))" in err
    # a CPU without native bf16: fp32, and the notice says why
    monkeypatch.setattr(prec, "cpu_bf16_feature", lambda: None)
    p = auto_policy(cpu)
    assert p.name == "fp32" and "no native bf16" in p.reason
    assert main(["predict", str(vol), "-m", str(model), "-o", str(tmp_path / "b.nii.gz"), "--device", "cpu",
                 "--quiet"]) == 0
    assert capsys.readouterr().err == ""                                  # --quiet: no notice


def test_cpu_bf16_feature_reads_the_cpu_flags():
    from shared_backbones.precision import CPU_BF16_FLAGS, cpu_bf16_feature

    try:
        flags = next(line for line in Path("/proc/cpuinfo").read_text().splitlines()
                     if line.startswith("flags")).split(":", 1)[1].split()
    except (OSError, StopIteration):
        pytest.skip("no /proc/cpuinfo flags here")
    expected = next((f for f in CPU_BF16_FLAGS if f in flags), None)
    assert cpu_bf16_feature() == expected


def test_precision_auto_is_judged_on_the_case(monkeypatch, tmp_path):
    """auto's bf16 is kept only when the first case's central window has the same labels in bf16 as in fp32; a
    model whose labels move under bf16 falls back to fp32 and says by how much; the check runs once per model."""
    import shared_backbones.precision as prec
    from medseg.cpu_precision import check_on_window
    from medseg.predict import load_model

    monkeypatch.setattr(prec, "cpu_bf16_feature", lambda: "avx512_bf16")
    window = torch.zeros(1, 1, 4, 4, 4)

    def flips_under_bf16(w):                 # class 1 wins in fp32, class 0 in bf16 on a quarter of the voxels
        out = torch.zeros(1, 2, 4, 4, 4)
        out[:, 1] = 1
        if torch.is_autocast_enabled("cpu"):
            out[:, 1, 0] = -1
        return out

    m = load_model(make_model_file(tmp_path / "m.pt"), "cpu", "auto")
    assert m.policy.name == "bf16" and m.bf16_to_check
    check_on_window(m, flips_under_bf16, window)
    assert m.policy.name == "fp32" and "bf16 changed 25.00% of the labels of a test window" in m.policy.reason
    assert not m.bf16_to_check
    m2 = load_model(make_model_file(tmp_path / "m.pt"), "cpu", "auto")
    check_on_window(m2, lambda w: torch.ones(1, 2, 4, 4, 4), window)
    assert m2.policy.name == "bf16" and "100.00% as in fp32" in m2.policy.reason
    check_on_window(m2, flips_under_bf16, window)                         # once per model: already judged
    assert m2.policy.name == "bf16"
    m3 = load_model(make_model_file(tmp_path / "m.pt"), "cpu", "fp32")
    check_on_window(m3, flips_under_bf16, window)                         # an explicit choice is never judged
    assert m3.policy.name == "fp32" and not getattr(m3, "bf16_to_check", False)
