"""remote CLI: predict outputs (georeference, nodata, colour table, probabilities, explanations, field CSV),
train from rasters and tables with spatial folds, evaluate, synth, and every error path (exit 2, one line)."""

from __future__ import annotations

import csv
import json
import sys
from importlib.util import find_spec

import numpy as np
import pytest
import rasterio
import torch
from remote_testutil import write_tif

from remote.cli import main
from remote.evaluate import classification_metrics
from remote.samples import spatial_block_splits
from shared_backbones.checkpoint import ModelFile, load_model_file, save_model_file
from shared_backbones.errors import InputError


def _err(capsys) -> str:
    """The one error line (notes printed before it, such as "no SCL band ...", are not part of the error)."""
    err = "\n".join(x for x in capsys.readouterr().err.strip().splitlines() if not x.startswith("remote: note: "))
    assert err.count("\n") == 0 and "Traceback" not in err, err
    return err


def test_predict_outputs_georeferenced_with_nodata_and_explanations(tmp_path, scene, ffdnn_file, capsys):
    # a copy of the scene where the top-left 8 x 8 pixels are cloud on every date (SCL 9 in the 20 m files)
    img = tmp_path / "img"
    img.mkdir()
    for f in sorted(scene.images.iterdir()):
        with rasterio.open(f) as src:
            a, desc, tags = src.read(), list(src.descriptions), src.tags()
            if "SCL" in desc:
                a[desc.index("SCL"), :4, :4] = 9
            write_tif(img / f.name, a, desc, res=src.res[0], tags=tags)
    out = tmp_path / "out" / "map.tif"
    assert main(["predict", str(img), "-m", str(ffdnn_file), "-o", str(out), "--explain", "--fields",
                 str(scene.fields), "--tile", "32", "--prob-dtype", "uint8", "--quiet"]) == 0
    with rasterio.open(out) as m, rasterio.open(scene.labels) as ref:
        assert m.crs == ref.crs and m.transform == ref.transform and m.nodata == 255 and m.dtypes[0] == "uint8"
        assert m.compression.name == "deflate" and m.block_shapes[0] == (512, 512)   # a COG (512 px tiles)
        assert m.tags(ns="IMAGE_STRUCTURE")["LAYOUT"] == "COG"
        assert m.tags()["CLASSES"] == "healthy,yellow_rust,nitrogen_deficiency"
        assert m.descriptions[0] == "class: 0=healthy, 1=yellow_rust, 2=nitrogen_deficiency"
        assert m.colormap(1)[255] == (0, 0, 0, 0) and m.colormap(1)[0][3] == 255
        cls = m.read(1)
    assert (cls[:8, :8] == 255).all() and (cls[8:, 8:] < 3).all()
    with rasterio.open(tmp_path / "out" / "map_prob.tif") as p:
        prob = p.read()
        assert p.count == 3 and p.dtypes[0] == "uint8" and p.descriptions[1] == "p(yellow_rust)"
        assert p.scales[0] == pytest.approx(1 / 250)
    assert (prob[:, :8, :8] == 255).all() and np.abs(prob[:, 8:, 8:].astype(int).sum(0) - 250).max() <= 2
    assert (prob[:, 8:, 8:].argmax(0) == cls[8:, 8:]).mean() > 0.99
    with rasterio.open(tmp_path / "out" / "map_capsules.tif") as c, \
            rasterio.open(tmp_path / "out" / "map_attribution.tif") as a:
        caps, attr = c.read(), a.read()
        assert a.count == 10 and a.descriptions[0] == f"attribution {scene.dates[0].isoformat()}"
    assert np.isnan(caps[:, :8, :8]).all() and ((caps[:, 8:, 8:] >= 0) & (caps[:, 8:, 8:] < 1)).all()
    assert (caps[:, 8:, 8:].argmax(0) == cls[8:, 8:]).mean() > 0.99 and np.isfinite(attr[:, 8:, 8:]).all()
    with rasterio.open(tmp_path / "out" / "map_frequency.tif") as fq:
        freq = fq.read()
        assert fq.count == 10 // 2 + 1 and fq.descriptions[1] == "attribution mode 1 (period 120 d)"
    assert np.isnan(freq[:, :8, :8]).all() and np.isfinite(freq[:, 8:, 8:]).all()
    rows = list(csv.DictReader(open(tmp_path / "out" / "map_fields.csv")))
    with rasterio.open(scene.fields) as f:
        fid = f.read(1)
    assert len(rows) == int(fid.max())
    r1 = rows[0]
    assert int(r1["pixels"]) == int((fid == 1).sum()) and int(r1["valid_pixels"]) < int(r1["pixels"])
    maj = np.bincount(cls[(fid == 1) & (cls < 3)], minlength=3).argmax()
    assert r1["majority"] == ["healthy", "yellow_rust", "nitrogen_deficiency"][maj]
    # existing outputs need --overwrite; nothing is half-written
    assert main(["predict", str(img), "-m", str(ffdnn_file), "-o", str(out), "--quiet"]) == 2
    assert "output exists" in _err(capsys)
    assert not list((tmp_path / "out").glob(".*part*"))


def test_train_from_rasters_exports_model_then_evaluate(tmp_path, scene, capsys):
    out = tmp_path / "m.pt"
    rc = main(["train", str(scene.images), "--labels", str(scene.labels), "-o", str(out), "--epochs", "1",
               "--folds", "2", "--block-size", "16", "--channels", "8", "--depth", "1", "--max-per-class", "300",
               "--device", "cpu", "--precision", "fp32", "--quiet"])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "fold 0" in printed and "kappa" in printed
    mf = load_model_file(out, task="remote")
    assert mf.arch == "ffdnn" and mf.classes == ["healthy", "yellow_rust", "nitrogen_deficiency"]
    pre = mf.preprocessing
    assert pre["bands"] == ["B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B11", "B12"]
    assert len(pre["dates"]) == 10 and pre["grid_days"] == 12 and pre["indices"][0] == "TCARI/OSAVI"
    assert pre["scl_invalid"] == [0, 1, 3, 8, 9, 10] and "offset_rule" in pre
    assert 0 <= mf.metrics["test_overall_accuracy"] <= 1 and mf.metrics["n_test"] > 0 and mf.metrics["buffer"] == 2
    pred = tmp_path / "p.tif"
    assert main(["predict", str(scene.images), "-m", str(out), "-o", str(pred), "--no-prob", "--quiet"]) == 0
    assert not (tmp_path / "p_prob.tif").exists()
    assert main(["evaluate", str(pred), str(scene.labels), "-o", str(tmp_path / "s.csv"),
                 "-o", str(tmp_path / "s.json")]) == 0
    text = capsys.readouterr().out
    assert "overall accuracy" in text and "confusion matrix" in text
    js = json.loads((tmp_path / "s.json").read_text())
    with rasterio.open(pred) as p, rasterio.open(scene.labels) as r:
        a, b = p.read(1), r.read(1)
    keep = (b != 255) & (a != 255)
    overall = js[-1]
    assert overall["class"] == "overall" and overall["support"] == int(keep.sum())
    assert overall["overall_accuracy"] == pytest.approx(float((a[keep] == b[keep]).mean()))
    for k, row in enumerate(js[:-1]):  # confusion-matrix columns: reference class k predicted as j
        assert [row[f"pred_{c}"] for c in mf.classes] == [int(((b == k) & (a == j) & keep).sum()) for j in range(3)]
    rows = list(csv.reader(open(tmp_path / "s.csv")))
    assert rows[0][:5] == ["class", "precision", "recall", "f1", "support"] and rows[4][0] == "overall"
    assert float(rows[4][rows[0].index("overall_accuracy")]) == pytest.approx(overall["overall_accuracy"], rel=1e-5)
    # the former spellings still work, with a deprecation line; an existing report needs --overwrite
    assert main(["evaluate", str(pred), str(scene.labels), "--csv", str(tmp_path / "s.csv"), "-q"]) == 2
    assert "exists" in capsys.readouterr().err
    assert main(["evaluate", str(pred), str(scene.labels), "--csv", str(tmp_path / "s2.csv"), "--json",
                 str(tmp_path / "s2.json"), "-q"]) == 0
    assert "--csv is deprecated" in capsys.readouterr().err
    assert (tmp_path / "s2.csv").read_text() == (tmp_path / "s.csv").read_text()
    assert json.loads((tmp_path / "s2.json").read_text()) == js


def test_train_from_csv_table(tmp_path, capsys, monkeypatch):
    rng = np.random.default_rng(0)
    dates = ["2024-04-01", "2024-04-11", "2024-04-21", "2024-05-01", "2024-05-11", "2024-05-21"]
    bands = ["B02", "B03", "B04", "B05", "B06", "B08"]
    path = tmp_path / "t.csv"
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["field_id", "label"] + [f"{b}_{d}" for d in dates for b in bands])
        for i in range(60):
            lab = i % 3
            vals = rng.uniform(0.02, 0.4, len(dates) * len(bands)) + 0.1 * lab
            row = [f"{v:.4f}" for v in vals]
            row[3] = ""  # a missing value
            w.writerow([i // 6, ["healthy", "yellow_rust", "nitrogen_deficiency"][lab]] + row)
    out = tmp_path / "t.pt"
    assert main(["train", "--table", str(path), "-o", str(out), "--epochs", "1", "--folds", "2",
                 "--channels", "8", "--depth", "1", "--device", "cpu", "--quiet"]) == 0
    mf = load_model_file(out)
    assert mf.preprocessing["bands"] == bands and mf.preprocessing["dates"] == dates
    assert mf.arch_kwargs["bands"] == bands and mf.metrics["n_test"] + mf.metrics["n_train"] == 60


def test_parquet_table_through_the_tables_extra_equals_the_csv(tmp_path, monkeypatch):
    """Parquet is read by pandas + pyarrow (the 'tables' extra): typed values (floats, None, integer labels) give
    the same samples as the same table in CSV; without the extra, one line names it."""
    from remote.tables import read_table

    pd = pytest.importorskip("pandas")
    pytest.importorskip("pyarrow")
    cols = {"label": [0, 2, None, 1], "field_id": [1, 1, 2, 3], "B04_2024-05-01": [0.1, None, 0.3, 0.4],
            "B08_2024-05-01": [0.5, 0.6, 0.7, 0.8], "B04_2024-05-11": [0.11, 0.21, float("nan"), 0.41],
            "B08_2024-05-11": [0.51, 0.61, 0.71, 0.81]}
    pd.DataFrame(cols).astype({"label": "Int64"}).to_parquet(tmp_path / "t.parquet")
    obs, dates, bands, y, extra = read_table(tmp_path / "t.parquet", ["a", "b", "c"])
    with open(tmp_path / "t.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(list(cols))
        for i in range(4):
            w.writerow(["" if cols[c][i] is None or cols[c][i] != cols[c][i] else cols[c][i] for c in cols])
    obs_c, dates_c, bands_c, y_c, extra_c = read_table(tmp_path / "t.csv", ["a", "b", "c"])
    assert dates == dates_c and bands == bands_c == ["B04", "B08"] and y.tolist() == y_c.tolist() == [0, 2, -1, 1]
    assert np.array_equal(obs, obs_c, equal_nan=True) and np.isnan(obs[1, 0, 0]) and np.isnan(obs[2, 1, 0])
    assert extra["field_id"].tolist() == extra_c["field_id"].tolist() == [1, 1, 2, 3]
    (tmp_path / "bad.parquet").write_bytes(b"PAR1 not really")
    with pytest.raises(InputError, match="bad.parquet: unreadable Parquet table"):
        read_table(tmp_path / "bad.parquet", ["a", "b", "c"])
    monkeypatch.setitem(sys.modules, "pandas", None)  # as on a machine without the extra
    with pytest.raises(InputError, match=r"t.parquet: Parquet tables need the 'tables' extra \(pandas \+ pyarrow\)"
                                         r": `pip install 'convsuite\[tables\]'`"):
        read_table(tmp_path / "t.parquet", ["a", "b", "c"])


def test_spatial_block_folds_are_disjoint_with_buffer():
    rr, cc = np.meshgrid(np.arange(40), np.arange(40), indexing="ij")
    rows, cols = rr.ravel(), cc.ravel()
    splits = spatial_block_splits(rows, cols, block_size=10, k=4, buffer=2, seed=0)
    assert len(splits) == 4
    all_test = np.concatenate([te for _, te in splits])
    assert np.array_equal(np.sort(all_test), np.arange(1600))          # every pixel is tested exactly once
    for tr, te in splits:
        assert not set(tr) & set(te)
        # Chebyshev distance between every training and every test pixel exceeds the buffer
        d = np.maximum(np.abs(rows[tr][:, None] - rows[te][None]), np.abs(cols[tr][:, None] - cols[te][None]))
        assert d.min() > 2
        # test folds are whole blocks
        assert len({(r // 10, c // 10) for r, c in zip(rows[te], cols[te])}) * 100 == len(te)
    no_buffer = spatial_block_splits(rows, cols, 10, 4, 0, 0)
    assert all(len(a) + len(b) == 1600 for a, b in no_buffer)
    with pytest.raises(Exception, match="fewer than 5 folds"):
        spatial_block_splits(rows[:100], cols[:100], 10, 5)


def test_metrics_hand_example():
    m = classification_metrics(np.array([0, 0, 1, 1, 2, 2]), np.array([0, 1, 1, 1, 2, 0]), ["a", "b", "c"])
    assert m["overall_accuracy"] == pytest.approx(4 / 6)
    assert m["confusion_matrix"] == [[1, 0, 1], [1, 2, 0], [0, 0, 1]]
    pe = (2 * 2 + 3 * 2 + 1 * 2) / 36
    assert m["kappa"] == pytest.approx((4 / 6 - pe) / (1 - pe))
    assert m["per_class"]["b"]["f1"] == pytest.approx(0.8)


def test_synth_cli(tmp_path, capsys):
    assert main(["synth", str(tmp_path / "s"), "--size", "32", "--n-dates", "3", "--quiet"]) == 0
    files = sorted(p.name for p in (tmp_path / "s" / "images").iterdir())
    assert len(files) == 6 and files[0].endswith("_10m.tif")
    with rasterio.open(tmp_path / "s" / "images" / files[1]) as src:
        assert src.descriptions[-1] == "SCL" and src.res == (20.0, 20.0) and src.crs.to_epsg() == 32632
        assert src.tags()["PROCESSING_BASELINE"] == "05.10" and src.read(1).min() >= 1000
    assert main(["synth", str(tmp_path / "s"), "--size", "32"]) == 2
    assert "not empty" in _err(capsys)


@pytest.fixture()
def other_task_model(tmp_path):
    m = torch.nn.Linear(2, 2)
    return save_model_file(tmp_path / "audio.pt", ModelFile.from_model(m, task="audiosep", arch="x", arch_kwargs={}))


def test_error_paths(tmp_path, scene, ffdnn_file, other_task_model, capsys):
    img = str(scene.images)
    o = str(tmp_path / "o.tif")
    (tmp_path / "f.gpkg").write_bytes(b"SQLite format 3\x00")
    cases = [
        (["predict", img, "-m", str(other_task_model), "-o", o], "model file is for task 'audiosep', not 'remote'"),
        (["predict", img, "-m", str(tmp_path / "none.pt"), "-o", o], "model file not found"),
        (["predict", str(tmp_path / "nothing"), "-m", str(ffdnn_file), "-o", o], "file not found"),
        (["predict", img, "-m", str(ffdnn_file), "-o", o, "--fields", str(tmp_path / "f.gpkg")],
         "f.gpkg: reading .gpkg files needs the 'vector' extra"
         if find_spec("pyogrio") is None and find_spec("fiona") is None
         else "f.gpkg: unreadable vector file"),
        (["predict", img, "-m", str(ffdnn_file), "-o", o, "--per-field"], "--per-field needs --fields"),
        (["train", img, "--labels", str(scene.labels), "-o", str(tmp_path / "m.pt"), "--per-field"],
         "give rasters, --labels and --fields"),
        (["indices", img, "-o", o, "--dates", "2024-13-45"], "not a date"),
        (["train", img, "-o", str(tmp_path / "m.pt")], "needs --labels"),
        (["train", img, "--labels", str(scene.labels), "-o", str(tmp_path / "m.pt"), "--folds", "50"],
         "fewer than 50 folds"),
        (["train", "-o", str(tmp_path / "m.pt")], "give either input rasters"),
        (["evaluate", o, str(scene.labels)], "file not found"),
    ]
    for argv, msg in cases:
        assert main(argv) == 2, argv
        err = _err(capsys)
        assert err.startswith("remote: error: ") and msg in err, (argv, err)
    # missing bands: a series with only the 10 m files
    ten = tmp_path / "ten"
    ten.mkdir()
    for f in scene.images.glob("*_10m.tif"):
        (ten / f.name).write_bytes(f.read_bytes())
    assert main(["predict", str(ten), "-m", str(ffdnn_file), "-o", o]) == 2
    assert "missing band(s) B05, B06, B07, B8A, B11, B12" in _err(capsys)
    # no valid dates: observations outside the model's season
    late = tmp_path / "late"
    late.mkdir()
    for f in sorted(scene.images.iterdir())[:4]:
        (late / f.name.replace("2024032", "2024092").replace("2024040", "2024100")).write_bytes(f.read_bytes())
    assert main(["predict", str(late), "-m", str(ffdnn_file), "-o", o]) == 2
    assert "no valid dates" in _err(capsys)
    # no valid dates: every observation masked as cloud; no output is left behind
    assert main(["predict", img, "-m", str(ffdnn_file), "-o", o, "--scl-invalid", "0,1,2,3,4,5,6,7,8,9,10,11",
                 "--quiet"]) == 2
    assert "no valid dates: every pixel is nodata or masked by SCL classes 0,1,2" in _err(capsys)
    assert not list(tmp_path.glob("o*.tif")) and not list(tmp_path.glob(".o*"))
    # dates in different CRSs are an area now (tests/remote/test_area.py); a CRS that cannot hold the file's
    # coordinates is refused in one line naming the file
    bad = tmp_path / "crs"
    bad.mkdir()
    write_tif(bad / "a_20240501.tif", np.ones((2, 4, 4), np.uint16), ["B04", "B08"])
    write_tif(bad / "b_20240511.tif", np.ones((2, 4, 4), np.uint16), ["B04", "B08"],
              crs=rasterio.crs.CRS.from_epsg(4326))
    assert main(["indices", str(bad), "-o", o]) == 2
    assert "b_20240511.tif: bounds 600000 5.29996e+06 600040 5.3e+06 are not longitude/latitude" in _err(capsys)
    # unreadable raster and field raster in another CRS
    (bad / "a_20240501.tif").write_bytes(b"\x00" * 100)
    assert main(["indices", str(bad / "a_20240501.tif"), "-o", o]) == 2
    assert "a_20240501.tif: unreadable raster" in _err(capsys)
    wrong = write_tif(tmp_path / "fid.tif", np.ones((64, 64), np.int32), crs=rasterio.crs.CRS.from_epsg(32633))
    assert main(["predict", img, "-m", str(ffdnn_file), "-o", o, "--fields", str(wrong)]) == 2
    assert "fid.tif: CRS mismatch" in _err(capsys)
    assert not (tmp_path / "o.tif").exists()


def test_models_command_prints_counts_that_follow_the_options(capsys):
    def counts(*argv):
        assert main(["models", "-q", *argv]) == 0
        out = capsys.readouterr().out
        return {line.split()[0]: int(line.split()[1].replace(",", "")) for line in out.splitlines()}, out

    base, out = counts("--width", "16", "--depth", "3")
    assert "3 Fourier blocks" in out and "3 conv blocks" in out
    assert base["ffdnn"] < base["cnn1d"]
    assert f"({base['cnn1d'] / base['ffdnn']:.2f}x the FFDNN)" in out
    # the options reach the models: more channels / blocks, more parameters
    wider, _ = counts("--width", "32", "--depth", "3")
    deeper, _ = counts("--width", "16", "--depth", "4")
    assert wider["ffdnn"] > base["ffdnn"] and wider["cnn1d"] > base["cnn1d"]
    assert deeper["ffdnn"] > base["ffdnn"] and deeper["cnn1d"] > base["cnn1d"]
    # unet2d: one more date adds 10 input channels to ResNet-18's first conv (64 filters, 7 x 7, no bias) only
    more, _ = counts("--width", "16", "--depth", "3", "--dates", "13")
    assert more["unet2d"] - base["unet2d"] == 64 * 7 * 7 * 10 and more["ffdnn"] == base["ffdnn"]
    # fewer bands: the first conv shrinks by 64 x 49 per band and date
    few, _ = counts("--bands", "B02,B03,B04,B08", "--indices", "NDVI")
    assert counts()[0]["unet2d"] - few["unet2d"] == 64 * 7 * 7 * 12 * 6
    # --channels is the old spelling of --width (one meaning per spelling: --channels = input channels)
    assert main(["models", "--channels", "32", "--depth", "3"]) == 0
    out, err = capsys.readouterr()
    assert "--channels is deprecated" in err and "use --width" in err
    assert int(out.splitlines()[0].split()[1].replace(",", "")) == wider["ffdnn"]


def test_train_unet2d_on_chips_then_predict_with_halo(tmp_path, scene, capsys):
    out = tmp_path / "u.pt"
    assert main(["train", str(scene.images), "--labels", str(scene.labels), "-o", str(out), "--arch", "unet2d",
                 "--bands", "B03,B04,B05,B08", "--chip", "32", "--folds", "2", "--epochs", "1", "--batch-size", "2",
                 "--device", "cpu", "--precision", "fp32", "--quiet"]) == 0
    assert "unet2d" in capsys.readouterr().out
    mf = load_model_file(out, task="remote")
    pre = mf.preprocessing
    assert mf.arch == "unet2d" and mf.arch_kwargs["in_channels"] == 10 * 4 and pre["input"] == "spatial"
    assert len(pre["norm_mean"]) == len(pre["norm_std"]) == 4 and min(pre["norm_std"]) > 0
    assert mf.metrics["n_train"] + mf.metrics["n_test"] == 4 and mf.metrics["block_size"] == 32   # 4 chips of 32
    pred = tmp_path / "u.tif"
    assert main(["predict", str(scene.images), "-m", str(out), "-o", str(pred), "--tile", "32", "--quiet"]) == 0
    with rasterio.open(pred) as p:
        assert (p.read(1) < 3).mean() > 0.9
    for extra, msg in ((["--explain"], "--explain needs a per-pixel model"),
                       (["--fields", str(scene.fields), "--per-field"], "--per-field needs a per-pixel model")):
        assert main(["predict", str(scene.images), "-m", str(out), "-o", str(tmp_path / "x.tif")] + extra) == 2
        assert msg in _err(capsys)


def test_predict_threads_option_sets_the_network_threads(tmp_path, scene, ffdnn_file, monkeypatch, capsys):
    """``--threads N`` sets the network's torch threads (said in the summary) and restores them, the maps do not
    depend on it, and a count below 1 is a usage error."""
    import torch

    seen: list[int] = []
    real = torch.set_num_threads
    monkeypatch.setattr(torch, "set_num_threads", lambda n: (seen.append(n), real(n)))
    before = torch.get_num_threads()
    maps = {}
    for n in (1, 2):
        out = tmp_path / f"t{n}.tif"
        assert main(["predict", str(scene.images), "-m", str(ffdnn_file), "-o", str(out), "--threads", str(n),
                     "--no-prob"]) == 0
        assert seen[0] == n and seen[-1] == before          # set for the network, then restored
        assert f"{n} network thread(s)" in capsys.readouterr().err      # said in the summary line
        seen.clear()
        with rasterio.open(out) as m:
            maps[n] = m.read(1)
    assert np.array_equal(maps[1], maps[2])
    with pytest.raises(SystemExit) as exc:                   # argparse: usage error, exit code 2
        main(["predict", str(scene.images), "-m", str(ffdnn_file), "-o", str(tmp_path / "x.tif"), "--threads", "0"])
    assert exc.value.code == 2
    assert "--threads" in capsys.readouterr().err
