"""Metadata always wins (issue 23): the DN offset of every product comes from the user's --offset for this run, else
the product's own metadata (MTD_MSIL2A.xml, STAC properties, GeoTIFF tags, the product name), else the model's stored
offset with a notice, else the date rule with a notice; saturated / nodata DN are masked for every input kind; the
inputs GDAL users write (/vsizip/, JP2 files and folders from inside a .SAFE, Earth Search file names) are read
like the products they come from; bad inputs are refused in one line."""

from __future__ import annotations

import datetime as dt
import shutil
import tracemalloc
import zipfile

import numpy as np
import pytest
from rasterio.windows import Window
from remote_testutil import write_tif
from s2products import SIZE_10M, make_safe, mtd_xml, native_dn, stac_item, write_jp2, zip_safe

from remote.cli import main
from remote.discovery import SeriesOptions, open_series
from shared_backbones.errors import InputError

FULL = Window(0, 0, SIZE_10M, SIZE_10M)
N0300 = "S2B_MSIL2A_20210512T102619_N0300_R108_T32UQD_20210512T120000.SAFE"
R10M_BANDS = ["B02", "B03", "B04", "B08"]


def _refl(band, offset):
    return (native_dn(band, 10).astype(np.float32) + offset) / 10000


def _model_file(path, offset):
    """An untrained FFDNN model file whose preprocessing stores ``offset`` (as `remote train --offset` does)."""
    import torch

    from remote.models import CLASSES, FFDNN
    from shared_backbones.checkpoint import ModelFile, save_model_file

    torch.manual_seed(0)
    kw = {"channels": 8, "depth": 1, "n_modes": 4}
    m = FFDNN(**kw).eval()
    pre = {"bands": list(m.bands), "dates": ["2021-05-01", "2021-05-13", "2021-05-25"], "offset": offset,
           "scl_invalid": [0, 1, 3, 8, 9, 10]}
    return save_model_file(path, ModelFile.from_model(m, task="remote", arch="ffdnn", arch_kwargs=kw,
                                                      classes=list(CLASSES), preprocessing=pre))


# -- the precedence function -----------------------------------------------------------------------------------------
def test_choose_offset_order_user_metadata_model_date():
    from remote.reader import choose_offset

    new, old = dt.date(2023, 1, 1), dt.date(2021, 6, 1)
    meta = (0.0, "MTD_MSIL2A.xml BOA_ADD_OFFSET")
    assert (choose_offset(new, meta, user=-500.0).offset, choose_offset(new, meta, user=-500.0).source) == \
        (-500.0, "--offset")
    c = choose_offset(new, meta, model=-1000.0)
    assert (c.offset, c.source, c.origin) == (0.0, "metadata", "MTD_MSIL2A.xml BOA_ADD_OFFSET")
    c = choose_offset(old, None, model=-1000.0)
    assert (c.offset, c.source) == (-1000.0, "model") and "model" in c.origin
    assert (choose_offset(old, None).offset, choose_offset(old, None).source) == (0.0, "date")
    assert (choose_offset(new, None).offset, choose_offset(new, None).source) == (-1000.0, "date")


# -- a model trained with --offset no longer forces it ------------------------------------------------------------
def test_model_offset_does_not_override_product_metadata(tmp_path):
    """The former defect: a model trained with --offset -1000 read N0300 products 0.1 too low, shown as [--offset]."""
    safe = make_safe(tmp_path / "p", name=N0300, mtd=mtd_xml("03.00", offsets=False))
    with SeriesOptions().open([safe], default_offset=-1000.0) as s:
        ref = s.sources[0].bands["B04"]
        assert ref.offset == 0 and ref.source == "metadata" and "--offset" not in ref.origin
        r = s.read(FULL, R10M_BANDS, scl_invalid=None)
        assert s.notices == []
    ok = ~np.isnan(r[0, 2])
    np.testing.assert_array_equal(r[0, 2][ok], _refl("B04", 0)[ok])
    # the user's --offset for this run still wins over both
    assert SeriesOptions(offset=-200.0).open([safe], default_offset=-1000.0).sources[0].bands["B08"].offset == -200
    # a product without any metadata: the model's offset, with a notice saying so
    write_tif(tmp_path / "S2_20210501.tif", np.full((4, 4, 4), 3000, np.uint16), R10M_BANDS)
    s = SeriesOptions().open([tmp_path / "S2_20210501.tif"], default_offset=-1000.0)
    ref = s.sources[0].bands["B04"]
    assert ref.offset == -1000 and ref.source == "model"
    assert any("model" in n and "-1000" in n for n in s.notices), s.notices


def test_predict_with_a_model_trained_with_offset_shows_the_true_source(tmp_path, capsys):
    safe = make_safe(tmp_path / "p", name=N0300, mtd=mtd_xml("03.00", offsets=False))
    model = _model_file(tmp_path / "m.pt", -1000.0)
    assert main(["predict", str(safe), "-m", str(model), "-o", str(tmp_path / "map.tif"), "-v", "--no-prob"]) == 0
    err = capsys.readouterr().err
    b04 = next(line for line in err.splitlines() if line.strip().startswith("B04"))
    assert "[--offset]" not in err and "DN +0) / 10000" in b04 and "processing baseline 03.00" in b04, err


# -- Earth Search v0 ------------------------------------------------------------------------------------------------
def test_earth_search_v0_offset_applied_gets_no_second_offset(tmp_path):
    """The former defect: v0 items (sentinel:boa_offset_applied) got the date rule's -1000 again (B08 0.30)."""
    scene = tmp_path / "S2A_32UQD_20220601_0_L2A"
    scene.mkdir()
    hrefs = {b: write_tif(scene / f"{b}.tif", np.full((4, 4), 4000, np.uint16)).name for b in ("B04", "B08")}
    item = stac_item(tmp_path / "v0.json", "2022-06-01", {b: f"{scene.name}/{h}" for b, h in hrefs.items()},
                     style="v0", props={"sentinel:boa_offset_applied": True, "sentinel:processing_baseline": "04.00"})
    with open_series([item]) as s:
        r = s.read(Window(0, 0, 4, 4), ["B04", "B08"], scl_invalid=None)
    np.testing.assert_allclose(r[0, 1], 0.40, rtol=0, atol=1e-7)
    assert not any("radiometric" in n for n in s.notices) and s.sources[0].bands["B08"].source == "metadata"
    not_applied = stac_item(tmp_path / "v0b.json", "2021-06-01", {b: f"{scene.name}/{h}" for b, h in hrefs.items()},
                            style="v0", props={"sentinel:boa_offset_applied": False,
                                               "sentinel:processing_baseline": "04.00"})
    assert open_series([not_applied]).sources[0].bands["B08"].offset == -1000
    old = stac_item(tmp_path / "v0c.json", "2022-06-01", {b: f"{scene.name}/{h}" for b, h in hrefs.items()},
                    style="v0", props={"sentinel:processing_baseline": "03.01"})
    assert open_series([old]).sources[0].bands["B08"].offset == 0


def test_stac_item_without_radiometry_uses_the_date_rule_with_the_notice(tmp_path):
    scene = tmp_path / "scene"
    scene.mkdir()
    hrefs = {b: str(write_tif(scene / f"{b}.tif", np.full((4, 4), 3000, np.uint16))) for b in ("B04", "B08")}
    s = open_series([stac_item(tmp_path / "bare.json", "2024-05-01", hrefs)])
    ref = s.sources[0].bands["B04"]
    assert any(n.startswith("no radiometric metadata") for n in s.notices), s.notices
    assert ref.offset == -1000 and ref.source == "date"
    # the baseline in the ESA product name the item was made from is metadata: no date rule, no notice
    named = stac_item(tmp_path / "named.json", "2024-05-01", hrefs, props={
        "s2:product_uri": "S2B_MSIL2A_20240501T102619_N0213_R108_T32UQD_20240501T120000.SAFE"})
    s = open_series([named])
    assert s.sources[0].bands["B04"].offset == 0 and s.sources[0].bands["B04"].source == "metadata"
    assert not any("radiometric" in n for n in s.notices)


# -- JP2 files and folders from inside a .SAFE -----------------------------------------------------------------------
def test_jp2_files_from_inside_a_safe_use_the_product_metadata(tmp_path):
    """The former defect: B04 of a 2021 product reprocessed at 05.00, given as a file, read +0.1 (the calendar's 0)."""
    safe = make_safe(tmp_path)
    r10 = next(safe.glob("GRANULE/*/IMG_DATA/R10m"))
    files = [next(r10.glob(f"*_{b}_10m.jp2")) for b in R10M_BANDS]
    with open_series(files) as s:
        ref = s.sources[0].bands["B04"]
        assert s.dates == [dt.date(2021, 5, 12)] and sorted(s.sources[0].bands) == R10M_BANDS
        assert ref.offset == -1000 and ref.origin == "MTD_MSIL2A.xml BOA_ADD_OFFSET" and ref.saturated == 65535
        r = s.read(FULL, R10M_BANDS, scl_invalid=None)
    sat = np.zeros((SIZE_10M, SIZE_10M), bool)
    sat[5, 7] = True  # B04 saturated in the product: the date-pixel is nodata in every band
    np.testing.assert_array_equal(r[0, 0][~sat], _refl("B02", -1000)[~sat])
    assert np.isnan(r[0][:, sat]).all()
    # the IMG_DATA and R10m/R20m folders: accepted, AOT/WVP/TCI set aside as in the product reader
    with open_series([r10]) as s:
        assert sorted(s.sources[0].bands) == R10M_BANDS
        assert any("AOT_10m.jp2" in x for x in s.sources[0].skipped)
        np.testing.assert_array_equal(s.read(FULL, R10M_BANDS, scl_invalid=None), r)
    with open_series([r10.parent]) as s, open_series([safe]) as whole:
        assert s.bands == whole.bands and s.has_scl
        np.testing.assert_array_equal(s.read(FULL, s.bands), whole.read(FULL, s.bands))
    with open_series([r10.parent / "R20m"]) as s:
        assert s.sources[0].bands["B05"].res == 20 and s.sources[0].bands["B04"].res == 20
    # without MTD_MSIL2A.xml the product name's N0500 decides, not the 2021 date
    bare = make_safe(tmp_path / "bare", mtd="")
    f = next(bare.glob("GRANULE/*/IMG_DATA/R10m/*_B04_10m.jp2"))
    ref = open_series([f]).sources[0].bands["B04"]
    assert ref.offset == -1000 and "05.00" in ref.origin and ref.source == "metadata"


# -- saturation and nodata for every input kind -----------------------------------------------------------------------
def test_saturated_and_nodata_are_masked_for_every_input_kind(tmp_path):
    """The former defect: DN 65535 became reflectance 6.45 outside .SAFE and STAC inputs."""
    dn = native_dn("B04", 10)
    dn[1, 2], dn[3, 4] = 65535, 0
    bad = np.zeros(dn.shape, bool)
    bad[1, 2] = bad[3, 4] = True
    # an Earth Search scene folder without its item (v0 file names)
    scene = tmp_path / "S2B_32UQD_20240501_0_L2A"
    scene.mkdir()
    write_tif(scene / "B04.tif", dn, nodata=None)
    write_tif(scene / "B08.tif", native_dn("B08", 10), nodata=None)
    # a multiband GeoTIFF with a baseline tag
    write_tif(tmp_path / "S2_20240511.tif", np.stack([dn, native_dn("B08", 10)]), ["B04", "B08"], nodata=None,
              tags={"PROCESSING_BASELINE": "05.10"})
    # explicit JP2 files outside any product
    jp2 = [write_jp2(tmp_path / "jp2" / f"T32UQD_20240521T102031_{b}_10m.jp2", d, 10)
           for b, d in (("B04", dn), ("B08", native_dn("B08", 10)))]
    for inputs in ([scene], [tmp_path / "S2_20240511.tif"], jp2):
        with open_series(inputs) as s:
            r = s.read(FULL, ["B04", "B08"], scl_invalid=None)
        assert np.isnan(r[0][:, bad]).all(), inputs
        np.testing.assert_array_equal(r[0, 0][~bad], _refl("B04", -1000)[~bad])


# -- bounded metadata reads --------------------------------------------------------------------------------------------
def test_safe_zip_with_a_2gib_metadata_member_is_refused_with_bounded_memory(tmp_path):
    safe = make_safe(tmp_path / "p", mtd="")
    z = tmp_path / f"{safe.name}.zip"
    with zipfile.ZipFile(z, "w", zipfile.ZIP_DEFLATED, compresslevel=1) as zf:
        for p in sorted(safe.rglob("*")):
            zf.write(p, p.relative_to(safe.parent).as_posix())
        with zf.open(f"{safe.name}/MTD_MSIL2A.xml", "w", force_zip64=True) as fh:
            chunk = b" " * (1 << 22)
            for _ in range(512):  # 2 GiB of spaces, written as a stream
                fh.write(chunk)
    shutil.rmtree(safe)
    tracemalloc.start()
    try:
        with pytest.raises(InputError, match="MTD_MSIL2A.xml inflates to 2048 MiB") as e:
            open_series([z])
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 100 << 20 and str(z) in str(e.value) and "\n" not in str(e.value)


def test_safe_folder_with_a_2gib_metadata_file_is_refused_with_bounded_memory(tmp_path):
    safe = make_safe(tmp_path, mtd="")
    with open(safe / "MTD_MSIL2A.xml", "wb") as fh:
        fh.truncate(2 << 30)  # sparse: no disk used
    jp2 = next(safe.glob("GRANULE/*/IMG_DATA/R10m/*_B04_10m.jp2"))
    for inputs in ([safe], [jp2]):
        tracemalloc.start()
        try:
            with pytest.raises(InputError, match="MTD_MSIL2A.xml.*2048 MiB") as e:
                open_series(inputs)
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        assert peak < 100 << 20 and "\n" not in str(e.value)


# -- inputs as GDAL users write them -----------------------------------------------------------------------------------
def test_vsizip_product_paths_are_accepted(tmp_path):
    safe = make_safe(tmp_path / "p")
    z = zip_safe(safe, tmp_path / f"{safe.name}.zip")
    with open_series([safe]) as ref:
        expected = ref.read(FULL, ref.bands)
    for text in (f"/vsizip/{z}", f"/vsizip/{z}/{safe.name}", f"/vsizip/{{{z}}}/{safe.name}/"):
        with open_series([text]) as s:
            assert s.dates == [dt.date(2021, 5, 12)] and s.bands == ref.bands
            assert s.sources[0].bands["B04"].origin == "MTD_MSIL2A.xml BOA_ADD_OFFSET"
            np.testing.assert_array_equal(s.read(FULL, s.bands), expected)
    inner = next(safe.glob("GRANULE/*/IMG_DATA/R10m/*_B04_10m.jp2")).relative_to(tmp_path / "p").as_posix()
    s = open_series([f"/vsizip/{z}/{inner}"])
    assert list(s.sources[0].bands) == ["B04"] and s.sources[0].bands["B04"].offset == -1000
    with pytest.raises(InputError, match="file not found"):
        open_series([f"/vsizip/{tmp_path / 'missing.zip'}/x.SAFE"])


def test_earth_search_v1_file_names_in_a_scene_folder_without_item(tmp_path):
    scene = tmp_path / "S2B_32UQD_20240501_0_L2A"
    scene.mkdir()
    names = {"coastal": "B01", "blue": "B02", "green": "B03", "red": "B04", "rededge1": "B05", "rededge2": "B06",
             "rededge3": "B07", "nir": "B08", "nir08": "B8A", "nir09": "B09", "swir16": "B11", "swir22": "B12"}
    for key, band in names.items():
        res = {"B01": 60, "B09": 60, "B02": 10, "B03": 10, "B04": 10, "B08": 10}.get(band, 20)
        write_tif(scene / f"{key}.tif", np.full((SIZE_10M * 10 // res,) * 2, 2000 + int(band[1:3].strip("A")) * 10,
                                                np.uint16), res=res)
    write_tif(scene / "scl.tif", np.full((6, 6), 4, np.uint8), res=20)
    write_tif(scene / "aot.tif", np.full((6, 6), 100, np.uint16), res=20)
    write_tif(scene / "visual.tif", np.full((3, 12, 12), 90, np.uint8))
    with open_series([scene]) as s:
        assert s.dates == [dt.date(2024, 5, 1)] and s.bands == sorted(names.values(), key=s.bands.index) and s.has_scl
        assert len(s.bands) == 12 and s.sources[0].bands["B8A"].res == 20
        assert any("aot.tif" in x for x in s.sources[0].skipped)
        r = s.read(FULL, ["B02", "B8A"])
    np.testing.assert_allclose(r[0, 0], (2020 - 1000) / 10000, atol=1e-7)
    np.testing.assert_allclose(r[0, 1], (2080 - 1000) / 10000, atol=1e-7)


def test_indices_bounds_outside_the_data_are_refused(tmp_path, capsys):
    safe = make_safe(tmp_path / "p")
    out = tmp_path / "ndvi.tif"
    rc = main(["indices", str(safe), "-o", str(out), "--bounds", "700000", "5200000", "700100", "5200100", "-q"])
    err = capsys.readouterr().err
    assert rc == 2 and not out.exists() and len(err.strip().splitlines()) == 1 and "outside" in err, err


def test_missing_scl_gives_a_notice(tmp_path):
    write_tif(tmp_path / "S2_20240501.tif", np.full((4, 4, 4), 3000, np.uint16), R10M_BANDS,
              tags={"PROCESSING_BASELINE": "05.10"})
    s = open_series([tmp_path])
    assert any("SCL" in n and "2024-05-01" in n and "cloud" in n for n in s.notices), s.notices
    assert not any("SCL" in n for n in open_series([make_safe(tmp_path / "p")]).notices)


def test_truncated_jp2_names_the_file_and_the_problem(tmp_path, capsys):
    d = tmp_path / "jp2"
    for b in R10M_BANDS:
        p = write_jp2(d / f"T32UQD_20240501T102031_{b}_10m.jp2", np.tile(native_dn(b, 10), (20, 20)), 10)
    data = p.read_bytes()
    p.write_bytes(data[:len(data) // 2])
    rc = main(["indices", str(d), "-o", str(tmp_path / "n.tif"), "-q"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1 and p.name in err and "truncated" in err, err
    assert "See previous exception" not in err


def test_truncated_jp2_inside_a_safe_zip_names_the_member_and_the_problem(tmp_path):
    safe = make_safe(tmp_path / "p")
    b08 = next(safe.glob("GRANULE/*/IMG_DATA/R10m/*_B08_10m.jp2"))
    b08.write_bytes(b08.read_bytes()[:-40])
    z = zip_safe(safe, tmp_path / f"{safe.name}.zip")
    with pytest.raises(InputError) as e, open_series([z]) as s:
        s.read(FULL, ["B04", "B08"])
    msg = str(e.value)
    assert b08.name in msg and "truncated JPEG2000 file" in msg and "See previous" not in msg and "\n" not in msg
