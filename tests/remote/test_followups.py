"""Follow-ups of issue 23: a run's outputs inside an input folder (parts of other part ids, a joined map, a rerun's
files) are never read as inputs; the SCL-missing notice only when the cloud mask would be used; the offset rule a
model file stores is the rule remote.reader.choose_offset applies."""

from __future__ import annotations

import datetime as dt
import re
import shutil
from pathlib import Path

import numpy as np
import rasterio
from test_area import area  # noqa: F401 - the two-zone STAC fixture (pytest finds it by name)

from remote.cli import main
from remote.discovery import SeriesOptions
from remote.join import mosaic, part_path

DOCS = Path(__file__).resolve().parents[2] / "docs" / "remote.md"


def _copy_images(scene, dst: Path) -> Path:
    shutil.copytree(scene.images, dst)
    return dst


# -- 2. outputs inside an input folder ----------------------------------------------------------------------------
def test_parts_and_reruns_written_into_the_input_folder_are_not_inputs(tmp_path, scene, ffdnn_file, capsys):
    """Part 1 runs after part 0 wrote map.part-0-of-2.tif (and its _prob) into the input folder; a rerun without
    parts and one with three parts follow: each reads the same inputs as a clean run (before: part 1 failed on
    'cannot tell which band is which' for part 0's class map, the rerun on the parts)."""
    images = _copy_images(scene, tmp_path / "images")
    common = ["-m", str(ffdnn_file), "--tile", "32", "--device", "cpu", "--precision", "fp32"]
    assert main(["predict", str(scene.images), *common, "-o", str(tmp_path / "clean.tif"), "-q"]) == 0
    out = images / "map.tif"
    for k in range(2):
        capsys.readouterr()
        assert main(["predict", str(images), *common, "-o", str(out), "--num-parts", "2", "--part-id", str(k)]) == 0
    err = capsys.readouterr().err
    assert "left out 2 file(s)" in err and "map.part-0-of-2.tif" in err and "map_prob.part-0-of-2.tif" in err
    mosaic([part_path(out, k, 2) for k in range(2)], out)                  # the joined map, in the folder too
    mosaic([part_path(images / "map_prob.tif", k, 2) for k in range(2)], images / "map_prob.tif")
    with rasterio.open(tmp_path / "clean.tif") as a, rasterio.open(out) as b:
        assert np.array_equal(a.read(), b.read())
    # reruns: the whole map again (its old outputs, the parts' files) and three parts with --no-prob
    assert main(["predict", str(images), *common, "-o", str(out), "--overwrite", "-q"]) == 0
    capsys.readouterr()
    assert main(["predict", str(images), *common, "-o", str(out), "--num-parts", "3", "--part-id", "2",
                 "--no-prob"]) == 0
    assert "left out 6 file(s)" in capsys.readouterr().err       # map, map_prob, 2 x 2 parts of the first run
    with rasterio.open(tmp_path / "clean.tif") as a, rasterio.open(out) as b:
        assert np.array_equal(a.read(), b.read())


def test_own_outputs_needs_the_tag_beside_the_exact_paths(tmp_path, scene):
    """A file named like a part that remote did not write stays an input (the planner refuses to replace it, the
    series reads it); at the run's own output path it is left out as before."""
    from remote.batch import OUTPUT_TAG
    from remote.discovery import own_outputs

    src = next(scene.images.glob("*_10m.tif"))
    plain = tmp_path / "map.part-1-of-2.tif"
    tagged = tmp_path / "map_prob.part-3-of-4.tif"
    other = tmp_path / "mapping_prob.tif"
    for p in (plain, tagged, other):
        shutil.copy(src, p)
    for p in (tagged, other):
        with rasterio.open(p, "r+") as ds:
            ds.update_tags(**{OUTPUT_TAG: "remote predict"})
    exact = tmp_path / "map.tif"
    shutil.copy(src, exact)
    got = own_outputs([plain, tagged, other, exact], [tmp_path / "map.part-0-of-2.tif", exact])
    assert got == [tagged, exact]


# -- 3. the SCL-missing notice -----------------------------------------------------------------------------------
def _no_scl(scene, dst: Path) -> Path:
    """The scene without its SCL band (the 20 m files rewritten with the six reflectance bands only)."""
    dst.mkdir()
    for p in sorted(scene.images.glob("*.tif")):
        with rasterio.open(p) as src:
            keep = [i for i, d in enumerate(src.descriptions, 1) if d != "SCL"]
            prof = src.profile | {"count": len(keep)}
            with rasterio.open(dst / p.name, "w", **prof) as out:
                out.write(src.read(keep))
                out.update_tags(**src.tags())
                for j, i in enumerate(keep, 1):
                    out.set_band_description(j, src.descriptions[i - 1])
    return dst


def test_scl_missing_notice_only_when_the_mask_would_be_used(tmp_path, scene, ffdnn_file, capsys):
    images = _no_scl(scene, tmp_path / "images")
    notice = re.compile(r"no SCL band for 10 date\(s\)")
    common = ["-m", str(ffdnn_file), "--tile", "64", "--device", "cpu", "--no-prob"]
    assert main(["predict", str(images), *common, "-o", str(tmp_path / "a.tif")]) == 0
    assert notice.search(capsys.readouterr().err)
    assert main(["predict", str(images), *common, "-o", str(tmp_path / "b.tif"), "--no-cloud-mask"]) == 0
    assert not notice.search(capsys.readouterr().err)
    assert main(["indices", str(images), "-o", str(tmp_path / "n.tif")]) == 0
    assert notice.search(capsys.readouterr().err)
    assert main(["indices", str(images), "-o", str(tmp_path / "m.tif"), "--no-cloud-mask"]) == 0
    assert not notice.search(capsys.readouterr().err)
    # the library: the option and the run's choice (a model masking no class) both turn it off
    assert any(notice.search(n) for n in SeriesOptions().open([images]).notices)
    assert not any(notice.search(n) for n in SeriesOptions(cloud_mask=False).open([images]).notices)
    assert not any(notice.search(n) for n in SeriesOptions().open([images], cloud_mask=False).notices)


# -- 4. the stored offset rule -----------------------------------------------------------------------------------
def test_stored_offset_rule_is_the_rule_choose_offset_applies(scene):
    from pipelines.remote import prepare_remote_data
    from remote.discovery import open_series
    from remote.reader import OFFSET_RULE, OFFSET_SOURCES, choose_offset

    data = prepare_remote_data(series=open_series([scene.images]), labels=scene.labels, folds=2, block_size=16,
                               max_per_class=30)
    assert data.pre["offset_rule"] == OFFSET_RULE
    assert "--offset flag" not in OFFSET_RULE
    steps = OFFSET_RULE.split(" > ")
    assert len(steps) == len(OFFSET_SOURCES) == 4
    for step, word in zip(steps, ("--offset", "metadata", "model", "date")):
        assert word in step
    # the order the text states is the order choose_offset applies
    d = dt.date(2021, 5, 1)
    meta = (-1000.0, "MTD_MSIL2A.xml BOA_ADD_OFFSET")
    assert [choose_offset(d, meta, user=-5.0, model=-7.0).source, choose_offset(d, meta, model=-7.0).source,
            choose_offset(d, None, model=-7.0).source, choose_offset(d).source] == list(OFFSET_SOURCES)
    assert OFFSET_RULE in (choose_offset.__doc__ or "")
    assert OFFSET_RULE in " ".join(DOCS.read_text().split())


# -- 5. several reader threads -----------------------------------------------------------------------------------
def test_several_readers_write_the_same_maps_bit_for_bit(tmp_path, scene, ffdnn_file, area, monkeypatch):  # noqa: F811
    """The reader pool (each reader with its own copy of the series, tiles back in order) writes exactly what the
    single prefetch reader writes, for a single tile's grid and for a two-zone area; the defaults keep one reader up
    to four CPUs and give readers a share of larger machines (all but two CPUs beside a GPU)."""
    import torch

    import remote.predict as rp
    from remote.discovery import open_series
    from remote.predict import PredictOutputs, RemoteModel, predict_series

    rm = RemoteModel.from_file(str(ffdnn_file), "cpu", "fp32")
    items = [str(p["item"]) for p in area[1]]
    for name, inputs in (("tile", [scene.images]), ("area", items)):
        runs = {}
        for readers in (1, 3):
            out = tmp_path / f"{name}{readers}.tif"
            s = predict_series(open_series(inputs), rm, PredictOutputs.beside(out), tile=16, quiet=True,
                               threads=1, readers=readers)
            assert s["readers"] == readers and s["tiles"] >= 6 and s["seconds"]["read"] > 0
            with rasterio.open(out) as a, rasterio.open(tmp_path / f"{name}{readers}_prob.tif") as b:
                runs[readers] = (a.read(), b.read())
        assert np.isfinite(runs[1][1]).mean() > 0.5, name
        assert np.array_equal(runs[1][0], runs[3][0]) and np.array_equal(runs[1][1], runs[3][1], equal_nan=True)

    for var in ("CONVSUITE_READERS", "CONVSUITE_THREADS", "OMP_NUM_THREADS"):
        monkeypatch.delenv(var, raising=False)
    for cpus, readers, threads in ((2, 1, 1), (4, 1, 3), (8, 2, 5), (16, 6, 9)):
        monkeypatch.setattr(rp.os, "sched_getaffinity", lambda pid, n=cpus: set(range(n)))
        assert (rp.default_readers(), rp.default_threads()) == (readers, threads), cpus
    assert rp.default_readers(torch.device("cuda")) == 14
    monkeypatch.setenv("OMP_NUM_THREADS", "12")
    assert rp.default_readers() == 3 and rp.default_threads() == 12
    monkeypatch.setenv("CONVSUITE_READERS", "4")
    assert rp.default_readers() == 4
