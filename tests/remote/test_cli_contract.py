"""remote on the CLI contract: --version, help with examples, -q everywhere, output preflight, --each batches,
products on the command line with -v provenance and --bounds."""

from __future__ import annotations

import numpy as np
import pytest
import rasterio
from remote_testutil import write_tif
from s2products import SIZE_10M, make_safe, native_dn, zip_safe

from remote.cli import main
from remote.predict import RemoteModel
from shared_backbones.loaded import LoadedModel

COMMANDS = ("indices", "predict", "train", "evaluate", "models", "synth")


def test_version_help_examples_and_quiet(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0 and capsys.readouterr().out.startswith("remote (convsuite) ")
    for cmd in COMMANDS:
        with pytest.raises(SystemExit):
            main([cmd, "--help"])
        out = capsys.readouterr().out
        assert "examples:" in out or cmd == "train", cmd
        assert out.count("\n  remote ") >= 2 or cmd == "train", cmd
        assert "-q, --quiet" in out or cmd == "train", cmd  # train: converted by its owner
        if cmd in ("indices", "predict"):
            assert "--grid REF.tif" in out and "--bounds MINX MINY MAXX MAXY" in out and "-v, --verbose" in out


def test_remote_model_is_a_loaded_model(ffdnn_file):
    rm = RemoteModel.from_file(ffdnn_file, "cpu", "fp32")
    assert isinstance(rm, LoadedModel) and RemoteModel.TASK == "remote" and rm.path == ffdnn_file
    assert rm.model is rm.net and rm.classes == ["healthy", "yellow_rust", "nitrogen_deficiency"]
    assert len(rm.grid_dates) == 10 and rm.bands[0] == "B02" and rm.scl_invalid == (0, 1, 3, 8, 9, 10)


def test_indices_on_a_safe_zip_with_provenance_and_bounds(tmp_path, capsys):
    safe = make_safe(tmp_path / "p")
    z = zip_safe(safe, tmp_path / f"{safe.name}.zip")
    out = tmp_path / "ndvi.tif"
    assert main(["indices", str(z), "-o", str(out), "-v", "--no-cloud-mask", "--bounds", "600000", "5299880",
                 "600180", "5300000"]) == 0
    err = capsys.readouterr().err
    assert f"B04  <- /vsizip/{z}/{safe.name}/GRANULE/" in err
    assert "_B04_10m.jp2 (band 1, 10 m, (DN -1000) / 10000 [MTD_MSIL2A.xml BOA_ADD_OFFSET])" in err
    assert "skipped B04 in T32UQD_20210512T102619_B04_60m.jp2" in err
    assert "remote: note: 2021-05-12 covers 66.7% of the output grid" in err
    with rasterio.open(out) as ds:
        assert (ds.width, ds.height, ds.transform.c, ds.count) == (18, SIZE_10M, 600000.0, 1)
        ndvi = ds.read(1)
    n, r = ((native_dn(b, 10).astype(np.float64) - 1000) / 10000 for b in ("B08", "B04"))
    expected = ((n - r) / (n + r)).astype(np.float32)
    expected[5, 7] = np.nan  # B04 saturated in the product
    np.testing.assert_allclose(ndvi[:, :SIZE_10M], expected, rtol=1e-6)
    assert np.isnan(ndvi[:, SIZE_10M:]).all()


def test_output_preflight_and_each_batch(tmp_path, capsys):
    make_safe(tmp_path / "site_a")
    (tmp_path / "site_b").mkdir()
    (tmp_path / "site_b" / "S2_20240501.tif").write_bytes(b"\x00" * 64)  # a broken download
    c = make_safe(tmp_path / "site_c", saturated_at=None)
    tif = write_tif(tmp_path / "S2_20240501.tif", np.full((4, 4, 4), 3000, np.uint16), ["B02", "B03", "B04", "B08"])
    assert main(["indices", str(tif), "-o", str(tif), "--overwrite"]) == 2
    assert "S2_20240501.tif: the indices output is one of the inputs" in capsys.readouterr().err
    occupied = tmp_path / "maps"
    occupied.mkdir()
    (occupied / "site_a_indices.tif").write_bytes(b"")
    sites = [str(tmp_path / "site_a"), str(tmp_path / "site_b"), str(tmp_path / "site_c")]
    # with --each, an input whose outputs exist is done: skipped with a notice (a SLURM array task or a rerun
    # finishes what is left)
    rc = main(["indices", *sites, "--each", "-o", str(occupied)])
    err = capsys.readouterr().err
    assert rc == 2 and "skipping 1 input(s) whose outputs exist" in err and "1 of 2 inputs failed" in err
    assert (occupied / "site_a_indices.tif").stat().st_size == 0 and (occupied / "site_c_indices.tif").exists()
    rc = main(["indices", *sites, "--each", "-o", str(tmp_path / "out"), "-q"])
    err = capsys.readouterr().err
    assert rc == 2 and "remote: 1 of 3 inputs failed:" in err and "S2_20240501.tif: unreadable raster" in err
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["site_a_indices.tif", "site_c_indices.tif"]
    assert c.exists()


def test_synth_output_spellings(tmp_path, capsys):
    assert main(["synth", "-o", str(tmp_path / "s"), "--size", "16", "--n-dates", "2", "-q"]) == 0
    assert len(list((tmp_path / "s" / "images").glob("*.tif"))) == 4
    assert main(["synth", "--out-dir", str(tmp_path / "t"), "--size", "16", "--n-dates", "2", "-q"]) == 0
    assert "--out-dir is deprecated" in capsys.readouterr().err
    (tmp_path / "file").write_text("x")
    assert main(["synth", "-o", str(tmp_path / "file" / "sub"), "--size", "16", "-q"]) == 2
    assert "a parent path is a file" in capsys.readouterr().err


def test_predict_each_site_equals_predicting_it_alone(tmp_path, scene, ffdnn_file, capsys):
    import shutil

    sites = []
    for name, files in (("north", sorted(scene.images.iterdir())), ("south", sorted(scene.images.iterdir())[2:])):
        d = tmp_path / name
        d.mkdir()
        for f in files:
            shutil.copy(f, d / f.name)
        sites.append(d)
    assert main(["predict", *map(str, sites), "-m", str(ffdnn_file), "-o", str(tmp_path / "maps"), "--each",
                 "--device", "cpu", "-q"]) == 0
    assert sorted(p.name for p in (tmp_path / "maps").iterdir()) == ["north.tif", "north_prob.tif", "south.tif",
                                                                      "south_prob.tif"]
    assert main(["predict", str(sites[1]), "-m", str(ffdnn_file), "-o", str(tmp_path / "alone.tif"), "--device",
                 "cpu", "-q"]) == 0
    with rasterio.open(tmp_path / "maps" / "south_prob.tif") as a, rasterio.open(tmp_path / "alone_prob.tif") as b:
        np.testing.assert_array_equal(a.read(), b.read())
    assert capsys.readouterr().err == ""  # -q: no progress, no summary


def test_outputs_in_the_input_folder_are_not_read_back(tmp_path, capsys):
    """Writing the stack into the downloads folder, then rerunning with --overwrite, reads the products only."""
    make_safe(tmp_path / "downloads")
    out = tmp_path / "downloads" / "ndvi.tif"
    for extra in ([], ["--overwrite"]):
        assert main(["indices", str(tmp_path / "downloads"), "-o", str(out), "-q", *extra]) == 0, capsys.readouterr()
    with rasterio.open(out) as ds:
        assert ds.count == 1 and ds.descriptions == ("NDVI 2021-05-12",)
