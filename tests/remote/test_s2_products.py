"""Sentinel-2 products as delivered: ESA .SAFE (folder and zip), STAC items, native-resolution bands, radiometry from
the product metadata, explicit output grid. Small faithful products built by ``s2products``; pixel-exact checks."""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil

import numpy as np
import pytest
import rasterio
from rasterio.windows import Window
from remote_testutil import write_tif
from s2products import SIZE_10M, make_safe, mtd_xml, native_dn, stac_item, write_jp2, zip_safe

from remote.discovery import open_series
from remote.naming import parse_baseline, safe_product_date
from remote.safe import parse_metadata, read_safe
from shared_backbones.errors import InputError

FULL = Window(0, 0, SIZE_10M, SIZE_10M)
ALL = ["B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B09", "B11", "B12"]


def test_jp2_driver_is_there_and_lossless(tmp_path):
    with rasterio.Env() as env:
        assert "JP2OpenJPEG" in env.drivers()
    a = native_dn("B04", 10)
    with rasterio.open(write_jp2(tmp_path / "x.jp2", a, 10)) as src:
        assert src.driver == "JP2OpenJPEG" and (src.read(1) == a).all()


def test_metadata_fields_and_names():
    rad = parse_metadata(mtd_xml("05.00"))
    assert rad.baseline == 5.0 and rad.quantification == 10000 and rad.saturated == 65535 and rad.nodata == 0
    assert rad.offsets == {b: -1000.0 for b in ALL + ["B10"]}
    assert rad.sensing_date == dt.date(2021, 5, 12)
    assert parse_metadata(mtd_xml("03.00", offsets=False)).offsets == {}
    assert parse_baseline("S2B_MSIL2A_20210512T102619_N0500_R108_T32UQD_20230301T120000.SAFE") == 5.0
    assert parse_baseline("S2A_MSIL2A_20190101T000000_N0213_R108_T32UQD_20190101T000000") == 2.13
    assert safe_product_date("S2B_MSIL2A_20210512T102619_N0500_R108_T32UQD_20230301T120000.SAFE") == \
        dt.date(2021, 5, 12)
    with pytest.raises(InputError, match="bad value"):
        parse_metadata(mtd_xml("five"))


def _expected_10m(band):
    return (native_dn(band, 10).astype(np.float32) - 1000) / 10000


def test_safe_folder_native_bands_metadata_offset_and_masks(tmp_path):
    safe = make_safe(tmp_path)
    prod = read_safe(safe)
    assert {b.band for b in prod.bands} == set(ALL) | {"SCL"}
    assert sorted(x.split()[0].rsplit("_", 2)[1] for x in prod.ignored) == sorted(["AOT", "WVP", "TCI"] * 3)
    s = open_series([safe])
    assert s.dates == [dt.date(2021, 5, 12)] and s.bands == ALL and s.has_scl
    assert s.sources[0].offset == -1000 and s.sources[0].offset_rule == "MTD_MSIL2A.xml BOA_ADD_OFFSET"
    src = s.sources[0]
    # every band from its native-resolution file, never from sen2cor's coarser copies
    for band, ref in src.bands.items():
        native = {"B01": 60, "B09": 60, "B02": 10, "B03": 10, "B04": 10, "B08": 10}.get(band, 20)
        assert f"/R{native}m/" in str(ref.path) and ref.res == native, band
        assert band == "SCL" or (ref.offset == -1000 and ref.origin == "MTD_MSIL2A.xml BOA_ADD_OFFSET")
    assert s.grid.res == 10 and (s.grid.width, s.grid.height) == (SIZE_10M, SIZE_10M)
    assert s.grid.transform.c == 600000.0 and s.grid.transform.f == 5300000.0
    with s:
        r = s.read(FULL, ALL)
        r_nomask = s.read(FULL, ALL, scl_invalid=None)
    # 2021 sensing date, reprocessed at baseline 05.00: the metadata's -1000, not the calendar's 0
    b04 = _expected_10m("B04")
    cloud = np.zeros((SIZE_10M, SIZE_10M), bool)
    cloud[:2, :2] = True  # the cloudy 20 m SCL pixel, nearest onto 10 m
    sat = np.zeros_like(cloud)
    sat[5, 7] = True  # B04 saturated (65535) in the product
    ok = ~cloud & ~sat
    np.testing.assert_array_equal(r[0, 3][ok], b04[ok])
    np.testing.assert_array_equal(r[0, 1][ok], _expected_10m("B02")[ok])
    assert np.isnan(r[0][:, cloud]).all() and np.isnan(r[0][:, sat]).all()
    assert not np.isnan(r_nomask[0][:, cloud]).any() and np.isnan(r_nomask[0][:, sat]).all()
    # 20 m and 60 m bands are constant in the native files: exact after resampling; copies would give 0.8
    np.testing.assert_allclose(r_nomask[0, ALL.index("B05")][~sat], 0.2, rtol=0, atol=1e-7)
    np.testing.assert_allclose(r_nomask[0, ALL.index("B09")][~sat], 0.02, rtol=0, atol=1e-7)
    prov = "\n".join(s.provenance())
    assert "B05  <- " in prov and "R20m/T32UQD_20210512T102619_B05_20m.jp2" in prov
    assert "skipped B05 in T32UQD_20210512T102619_B05_60m.jp2 (60 m copy; native 20 m" in prov
    assert "skipped B04 in T32UQD_20210512T102619_B04_20m.jp2" in prov and "TCI_10m.jp2 (not a reflectance" in prov
    assert s.notices == []


def test_safe_zip_is_read_in_place_like_the_folder(tmp_path):
    safe = make_safe(tmp_path / "p")
    z = zip_safe(safe, tmp_path / f"{safe.name}.zip")
    shutil.rmtree(tmp_path / "p")
    before = sorted(os.listdir(tmp_path))
    s = open_series([z])
    assert all(str(r.path).startswith(f"/vsizip/{z}/{safe.name}/GRANULE/") for r in s.sources[0].bands.values())
    with s:
        r = s.read(FULL, ALL, scl_invalid=None)
    assert sorted(os.listdir(tmp_path)) == before  # nothing unpacked
    ref_safe = make_safe(tmp_path / "again")
    with open_series([ref_safe]) as s2:
        np.testing.assert_array_equal(r, s2.read(FULL, ALL, scl_invalid=None))


def test_safe_without_metadata_uses_the_name_baseline_then_the_date(tmp_path):
    s = open_series([make_safe(tmp_path, mtd="")])
    assert s.sources[0].bands["B04"].offset == -1000 and "N0500" not in s.sources[0].bands["B04"].origin
    assert s.sources[0].bands["B04"].origin == "processing baseline 05.00 (product name)" and s.notices == []
    old = make_safe(tmp_path / "o", name="S2A_MSIL2A_20190512T102619_N0213_R108_T32UQD_20190512T120000.SAFE",
                    mtd=mtd_xml("02.13", offsets=False))
    assert open_series([old]).sources[0].bands["B04"].offset == 0
    assert open_series([old], offset=-1000).sources[0].bands["B08"].offset == -1000  # the flag beats metadata


def test_geotiff_set_with_resampled_copies_reads_native_whatever_the_order(tmp_path):
    """The former defect: the last of B04_10m/B04_20m/B04_60m won, so bands were silently read at 60 m."""
    d = tmp_path / "S2_20240501"
    d.mkdir()
    files = []
    for res in (10, 20, 60):
        n = SIZE_10M * 10 // res
        for band in ("B04", "B08", "B05"):
            native = res == (20 if band == "B05" else 10)
            data = native_dn(band, res) if native else np.full((n, n), 9000, np.uint16)
            files.append(write_tif(d / f"T32UQD_20240501T102031_{band}_{res}m.tif", data, res=res,
                                   tags={"PROCESSING_BASELINE": "05.10"}))
    for order in (files, files[::-1]):
        with open_series(order) as s:
            r = s.read(FULL, ["B04", "B05", "B08"])
            assert s.sources[0].bands["B05"].res == 20 and s.sources[0].bands["B04"].res == 10
        np.testing.assert_array_equal(r[0, 0], _expected_10m("B04"))
        np.testing.assert_allclose(r[0, 1], 0.2, atol=1e-7)
        np.testing.assert_array_equal(r[0, 2], _expected_10m("B08"))
    dup = write_tif(tmp_path / "T32UQD_20240501T102031_B04_10m.tif", native_dn("B04", 10))
    with pytest.raises(InputError, match="B04 of 2024-05-01 is in two files of the same resolution"):
        open_series([*files, dup])


def test_date_rule_is_the_last_resort_with_a_notice(tmp_path):
    write_tif(tmp_path / "S2_20210501.tif", np.full((4, 4, 4), 3000, np.uint16), ["B02", "B03", "B04", "B08"])
    s = open_series([tmp_path])
    radiometric = [n for n in s.notices if "radiometric" in n]  # (the other notice: no SCL, no cloud mask)
    assert s.sources[0].offset == 0 and len(radiometric) == 1 and radiometric[0].startswith("no radiometric metadata")
    tagged = tmp_path / "t"
    tagged.mkdir()
    write_tif(tagged / "S2_20210501.tif", np.full((4, 4, 4), 3000, np.uint16), ["B02", "B03", "B04", "B08"],
              tags={"PROCESSING_BASELINE": "05.00"})
    s = open_series([tagged])
    assert s.sources[0].bands["B04"].offset == -1000 and not any("radiometric" in n for n in s.notices)


def _cog_scene(folder, date, dn_shift=0):
    folder.mkdir(parents=True)
    hrefs = {}
    for band, res in (("B02", 10), ("B04", 10), ("B08", 10), ("B05", 20)):
        hrefs[band] = str(write_tif(folder / f"{band}.tif", native_dn(band, res) - dn_shift, res=res).name)
    scl = np.full((6, 6), 4, np.uint8)
    scl[5, 5] = 8
    hrefs["SCL"] = write_tif(folder / "SCL.tif", scl, res=20).name
    return hrefs


def test_stac_items_in_both_key_styles(tmp_path):
    # v1 (sentinel-2-l2a): DNs as delivered, raster:bands scale 1e-4 and offset -0.1
    h1 = _cog_scene(tmp_path / "S2B_32UQD_20240501_0_L2A", "2024-05-01")
    item1 = stac_item(tmp_path / "S2B_32UQD_20240501_0_L2A" / "S2B_32UQD_20240501_0_L2A.json", "2024-05-01", h1,
                      style="v1", props={"earthsearch:boa_offset_applied": False},
                      raster={"nodata": 0, "data_type": "uint16", "scale": 0.0001, "offset": -0.1})
    # v0 keys (sentinel-s2-l2a-cogs) with the offset already applied by the provider
    h0 = _cog_scene(tmp_path / "v0" / "S2A_32UQD_20240511_0_L2A", "2024-05-11", dn_shift=1000)
    h0 = {b: f"S2A_32UQD_20240511_0_L2A/{p}" for b, p in h0.items()}
    item0 = stac_item(tmp_path / "v0" / "item.json", "2024-05-11", h0, style="v0",
                      props={"earthsearch:boa_offset_applied": True, "s2:processing_baseline": "05.10"})
    for inputs in ([item1, item0], [tmp_path]):  # items directly, or the folder searched for them
        with open_series(inputs) as s:
            assert s.dates == [dt.date(2024, 5, 1), dt.date(2024, 5, 11)]
            assert sorted(s.sources[0].bands) == ["B02", "B04", "B05", "B08", "SCL"]
            r = s.read(FULL, ["B02", "B04", "B08", "B05"])
        for t in range(2):
            np.testing.assert_allclose(r[t, 1][:10, :10], _expected_10m("B04")[:10, :10], rtol=0, atol=1e-7)
            np.testing.assert_allclose(r[t, 3][:10, :10], 0.2, atol=1e-6)
            assert np.isnan(r[t][:, 10:, 10:]).all()  # SCL 8 in the last 20 m pixel
    assert s.sources[0].bands["B04"].origin.endswith("raster:bands scale/offset")
    # an item that declares offset 0 while saying the offset was not applied at baseline 05.00: -1000 DN still
    flagged = stac_item(tmp_path / "flagged.json", "2024-05-01", {b: str(item1.parent / h) for b, h in h1.items()},
                        props={"earthsearch:boa_offset_applied": False, "s2:processing_baseline": "05.00"},
                        raster={"scale": 0.0001, "offset": 0.0})
    ref = open_series([flagged]).sources[0].bands["B04"]
    assert ref.offset == -1000 and ref.quantification == 10000
    assert s.sources[1].bands["B04"].origin.endswith("earthsearch:boa_offset_applied")
    # the same two items as one ItemCollection file (hrefs made absolute, as a search result saved to disk)
    docs = []
    for item in (item1, item0):
        d = json.loads(item.read_text())
        for a in d["assets"].values():
            if not a["href"].startswith("https:"):
                a["href"] = str((item.parent / a["href"]).resolve())
        docs.append(d)
    coll = tmp_path / "items.json"
    coll.write_text(json.dumps({"type": "FeatureCollection", "features": docs}))
    (tmp_path / "search").mkdir()
    coll_in_folder = tmp_path / "search" / "items.json"
    coll.rename(coll_in_folder)
    for inputs in ([coll_in_folder], [coll_in_folder.parent]):  # the file, or a folder holding it
        with open_series(inputs) as s2:
            assert s2.dates == s.dates
            np.testing.assert_array_equal(s2.read(FULL, ["B02", "B04", "B08", "B05"]), r)


def test_earth_search_scene_folder_takes_its_date_from_the_folder_name(tmp_path):
    scene = tmp_path / "S2B_32UQD_20240501_0_L2A"
    _cog_scene(scene, "2024-05-01")
    s = open_series([scene])
    assert s.dates == [dt.date(2024, 5, 1)] and sorted(s.sources[0].bands) == ["B02", "B04", "B05", "B08", "SCL"]


def test_folder_of_products_searched_to_their_depth(tmp_path):
    make_safe(tmp_path / "downloads" / "a")
    later = make_safe(tmp_path / "downloads" / "b",
                      name="S2B_MSIL2A_20210522T102619_N0500_R108_T32UQD_20230301T120000.SAFE")
    zip_safe(later, tmp_path / "downloads" / f"{later.name}.zip")
    shutil.rmtree(later)
    s = open_series([tmp_path / "downloads"])
    assert s.dates == [dt.date(2021, 5, 12), dt.date(2021, 5, 22)]
    assert str(s.sources[1].bands["B04"].path).startswith("/vsizip/")


def test_output_grid_default_bounds_grid_and_partial_coverage(tmp_path):
    make_safe(tmp_path / "a")
    # the second date lies 60 m east: half of it outside the first date's grid, half of the grid not covered
    make_safe(tmp_path / "b", name="S2B_MSIL2A_20210522T102619_N0500_R108_T32UQD_20230301T120000.SAFE",
              origin=(600060.0, 5300000.0), saturated_at=None)
    s = open_series([tmp_path])
    assert s.grid.transform.c == 600000.0 and s.grid.width == SIZE_10M
    assert len(s.notices) == 1 and s.notices[0].startswith("2021-05-22 covers 50.0% of the output grid")
    with s:
        r = s.read(FULL, ["B04"], scl_invalid=None)
    assert np.isnan(r[1, 0][:, :6]).all() and not np.isnan(r[1, 0][:, 6:]).any()
    np.testing.assert_array_equal(r[1, 0][:, 6:], _expected_10m("B04")[:, :6])
    # --bounds covering both dates, snapped to the 10 m pixels of the default grid
    s = open_series([tmp_path], bounds=(600003.0, 5299880.0, 600180.0, 5300000.0))
    assert (s.grid.transform.c, s.grid.width, s.grid.height) == (600000.0, 18, 12)
    assert [round(d.coverage, 3) for d in s.sources] == [0.667, 0.667]
    with s:
        r = s.read(Window(0, 0, 18, 12), ["B04"], scl_invalid=None)
    np.testing.assert_array_equal(r[1, 0][:, 6:], _expected_10m("B04"))
    # --grid: a reference raster's grid (20 m here) is copied
    ref = write_tif(tmp_path / "grid.tif", np.zeros((3, 3), np.uint8), res=20, origin=(600020.0, 5299980.0))
    s = open_series([tmp_path / "a"], grid=ref)
    assert (s.grid.res, s.grid.width, s.grid.transform.c) == (20.0, 3, 600020.0)
    with pytest.raises(InputError, match="either --grid or --bounds"):
        open_series([tmp_path / "a"], grid=ref, bounds=(0, 0, 1, 1))


def test_product_errors(tmp_path):
    bad = tmp_path / "x.SAFE.zip"
    bad.write_bytes(b"not a zip")
    with pytest.raises(InputError, match="not a readable zip"):
        open_series([bad])
    l1c = tmp_path / "S2B_MSIL1C_20210512T102619_N0500_R108_T32UQD_20230301T120000.SAFE"
    l1c.mkdir()
    (l1c / "MTD_MSIL1C.xml").write_text("<x/>")
    with pytest.raises(InputError, match="Level-1C"):
        open_series([l1c])
    remote_item = stac_item(tmp_path / "r.json", "2024-05-01", {"B04": "https://example.invalid/B04.tif"})
    with pytest.raises(InputError, match="is not local"):
        open_series([remote_item])
