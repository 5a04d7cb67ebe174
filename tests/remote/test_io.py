"""remote I/O: layouts, 10 m alignment, scaling with the baseline offset, nodata, SCL masking, index stacks."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pytest
import rasterio
from rasterio.windows import Window
from remote_testutil import write_tif

from remote.cli import main
from remote.discovery import open_series
from remote.naming import parse_band, parse_date, read_date_list
from remote.reader import resolve_offset
from shared_backbones.errors import InputError

FULL = Window(0, 0, 4, 4)


def test_parse_names():
    assert parse_date("T32UQD_20240501T102031_B05_20m") == dt.date(2024, 5, 1)
    assert parse_date("S2 2023-07-09 x") == dt.date(2023, 7, 9)
    assert parse_date("no date 20241399") is None
    assert [parse_band(s) for s in ("T32UQD_20240501T102031_B05_20m", "b8a", "B2", "x_SCL_20m", "B8", "foo")] == [
        "B05",
        "B8A",
        "B02",
        "SCL",
        "B08",
        None,
    ]


def test_offset_precedence():
    new, old = dt.date(2023, 1, 1), dt.date(2021, 6, 1)
    assert resolve_offset(None, {}, new)[0] == -1000 and resolve_offset(None, {}, old)[0] == 0
    assert resolve_offset(None, {}, dt.date(2022, 1, 25))[0] == -1000
    assert resolve_offset(None, {"PROCESSING_BASELINE": "03.01"}, new)[0] == 0  # tag beats date
    assert resolve_offset(None, {"PROCESSING_BASELINE": "04.00"}, old)[0] == -1000
    assert resolve_offset(None, {"BOA_ADD_OFFSET_B2": "-500", "PROCESSING_BASELINE": "04.00"}, old)[0] == -500
    assert resolve_offset(0.0, {"BOA_ADD_OFFSET": "-1000"}, new) == (0.0, "--offset")  # flag beats everything


def test_multiband_scaling_nodata_and_georeference(tmp_path):
    dn = np.full((4, 4, 4), 3000, dtype=np.uint16)
    dn[:, 0, 0] = 0  # nodata
    dn[2, 1, 1] = 1000  # reflectance exactly 0 after the offset
    write_tif(tmp_path / "S2_20240501.tif", dn, ["B02", "B03", "B04", "B08"])
    write_tif(tmp_path / "S2_20210501.tif", dn, ["B02", "B03", "B04", "B08"])  # before baseline 04.00
    s = open_series([tmp_path])
    assert s.dates == [dt.date(2021, 5, 1), dt.date(2024, 5, 1)]
    assert [x.offset for x in s.sources] == [0.0, -1000.0]
    assert s.grid.crs.to_epsg() == 32632 and s.grid.transform.c == 600000.0 and s.grid.res == 10.0
    with s:
        r = s.read(FULL, ["B02", "B04", "B08"])
    assert r.shape == (2, 3, 4, 4) and r.dtype == np.float32
    assert np.isnan(r[:, :, 0, 0]).all() and not np.isnan(r[:, :, 1:, 1:]).any()
    assert r[0, 0, 2, 2] == pytest.approx(0.3) and r[1, 0, 2, 2] == pytest.approx(0.2)
    assert r[1, 1, 1, 1] == 0.0 and r[1, 0, 1, 1] == pytest.approx(0.2)
    s2 = open_series([tmp_path / "S2_20240501.tif"], offset=0)
    with s2:
        assert s2.read(FULL, ["B02"])[0, 0, 2, 2] == pytest.approx(0.3)


def test_per_band_files_20m_resampled_and_scl(tmp_path):
    d = tmp_path / "S2_20240601"
    d.mkdir()
    for b in ("B02", "B04", "B08"):
        write_tif(d / f"T32_20240601_{b}_10m.tif", np.full((4, 4), 2000, np.uint16))
    b05 = np.array([[1500, 2500], [3500, 4500]], np.uint16)  # 20 m: one value per 2 x 2 block of 10 m pixels
    write_tif(d / "T32_20240601_B05_20m.tif", np.full((2, 2), 3000, np.uint16), res=20.0)
    write_tif(d / "T32_20240601_B06_20m.tif", b05, res=20.0)
    scl = np.array([[4, 8], [3, 5]], np.uint8)
    write_tif(d / "T32_20240601_SCL_20m.tif", scl, res=20.0)
    s = open_series([tmp_path])
    assert s.bands == ["B02", "B04", "B05", "B06", "B08"] and s.has_scl and s.grid.width == 4
    with s:
        r = s.read(FULL, ["B02", "B05", "B06"], scl_invalid=None)
        masked = s.read(FULL, ["B02", "B05"])
        custom = s.read(FULL, ["B02"], scl_invalid=[5])
    assert np.allclose(r[0, 1], 0.2)  # constant 20 m band stays constant on 10 m
    assert r[0, 2, 0, 0] == pytest.approx(0.05) and r[0, 2, 3, 3] == pytest.approx(0.35)  # block corners kept
    valid = ~np.isnan(masked[0, 0])
    expected = np.kron(~np.isin(scl, [0, 1, 3, 8, 9, 10]), np.ones((2, 2), bool))  # SCL by nearest neighbour
    assert (valid == expected).all() and (np.isnan(masked[0, 1]) == ~expected).all()
    assert (np.isnan(custom[0, 0]) == np.kron(scl == 5, np.ones((2, 2), bool))).all()


def test_stacked_geotiff_with_descriptions_and_with_dates(tmp_path):
    a = np.arange(6 * 16, dtype=np.uint16).reshape(6, 4, 4) + 1001
    desc = [f"{b} {d}" for d in ("2024-05-01", "2024-05-11", "2024-05-21") for b in ("B04", "B08")]
    write_tif(tmp_path / "stack.tif", a, desc)
    s = open_series([tmp_path / "stack.tif"])
    assert s.dates == [dt.date(2024, 5, d) for d in (1, 11, 21)] and s.bands == ["B04", "B08"]
    with s:
        r = s.read(FULL, ["B04", "B08"])
    assert np.allclose(r * 10000 + 1000, a.reshape(3, 2, 4, 4))
    write_tif(tmp_path / "plain.tif", a)
    s2 = open_series(
        [tmp_path / "plain.tif"], dates=[dt.date(2024, 5, d) for d in (1, 11, 21)], band_order=["B4", "B8"]
    )
    with s2:
        assert np.allclose(s2.read(FULL, ["B04", "B08"]), r)


def test_float_input_is_reflectance(tmp_path):
    a = np.full((2, 4, 4), 0.25, np.float32)
    a[:, 0, 0] = np.nan
    write_tif(tmp_path / "x_2024-05-01.tif", a, ["B04", "B08"], nodata=None)
    s = open_series([tmp_path])
    with s:
        r = s.read(FULL, ["B04", "B08"])
    assert np.isnan(r[0, :, 0, 0]).all() and np.allclose(r[0, :, 1:, 1:], 0.25)


def test_input_errors(tmp_path):
    write_tif(tmp_path / "a_20240501.tif", np.ones((2, 4, 4), np.uint16), ["B04", "B08"])
    write_tif(
        tmp_path / "b_20240511.tif",
        np.ones((2, 4, 4), np.uint16),
        ["B04", "B08"],
        crs=rasterio.crs.CRS.from_epsg(32633),
    )
    # dates in two UTM zones are one area on one grid now (remote.area; tests/remote/test_area.py), not refused
    with open_series([tmp_path / "a_20240501.tif", tmp_path / "b_20240511.tif"]) as s:
        assert len(s.dates) == 2 and s.grid.crs in (rasterio.crs.CRS.from_epsg(32632),
                                                    rasterio.crs.CRS.from_epsg(32633))
    (tmp_path / "bad_20240501.tif").write_bytes(b"not a tiff")
    with pytest.raises(InputError, match="bad_20240501.tif: unreadable raster"):
        open_series([tmp_path / "bad_20240501.tif"])
    write_tif(tmp_path / "nodate.tif", np.ones((2, 4, 4), np.uint16), ["B04", "B08"])
    with pytest.raises(InputError, match="no acquisition date"):
        open_series([tmp_path / "nodate.tif"])
    write_tif(tmp_path / "x_20240501.tif", np.ones((3, 4, 4), np.uint16))
    with pytest.raises(InputError, match="cannot tell which band is which"):
        open_series([tmp_path / "x_20240501.tif"])
    s = open_series([tmp_path / "a_20240501.tif"])
    with pytest.raises(InputError, match="missing band.*B05"):
        s.require_bands(["B04", "B05"])
    with pytest.raises(InputError, match="file not found"):
        open_series([tmp_path / "nope.tif"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="no GeoTIFF"):
        open_series([tmp_path / "empty"])


def test_indices_cli_writes_described_georeferenced_stack(tmp_path, capsys):
    dn = np.zeros((4, 4, 4), np.uint16)
    dn[0], dn[1], dn[2], dn[3] = 1500, 2000, 1300, 5000  # B03 B04 B05 B08 -> .05 .10 .03 .40 reflectance
    dn[:, 3, 3] = 0
    for d in ("20240501", "20240511"):
        write_tif(tmp_path / f"S2_{d}.tif", dn, ["B03", "B04", "B05", "B08"], tags={"PROCESSING_BASELINE": "05.09"})
    out = tmp_path / "idx.tif"
    assert (
        main(
            [
                "indices",
                str(tmp_path / "S2_20240501.tif"),
                str(tmp_path / "S2_20240511.tif"),
                "-o",
                str(out),
                "--indices",
                "NDVI,wdvi,TCARI/OSAVI",
                "--soil-slope",
                "2",
                "--quiet",
            ]
        )
        == 0
    )
    with rasterio.open(out) as ds, rasterio.open(tmp_path / "S2_20240501.tif") as src:
        assert ds.crs == src.crs and ds.transform == src.transform and ds.count == 6 and ds.dtypes[0] == "float32"
        assert np.isnan(ds.nodata) and ds.compression.name == "deflate"
        assert ds.descriptions[:3] == ("NDVI 2024-05-01", "WDVI 2024-05-01", "TCARI/OSAVI 2024-05-01")
        v = ds.read()
    n, r, g, re1 = 0.4, 0.1, 0.05, 0.03
    tcari = 3 * ((re1 - r) - 0.2 * (re1 - g) * (re1 / r))
    osavi = (1 + 0.16) * (n - r) / (n + r + 0.16)  # Haboudane et al. 2002
    assert v[0, 0, 0] == pytest.approx((n - r) / (n + r)) and v[1, 0, 0] == pytest.approx(n - 2 * r)
    assert v[2, 0, 0] == pytest.approx(tcari / osavi, rel=1e-5) and np.isnan(v[:, 3, 3]).all()
    assert main(["indices", str(tmp_path / "S2_20240501.tif"), "-o", str(out), "--quiet"]) == 2
    assert "output exists" in capsys.readouterr().err
    assert main(["indices", str(tmp_path / "S2_20240501.tif"), "-o", str(tmp_path / "x.tif"), "--indices", "FOO"]) == 2
    assert "unknown index 'FOO'" in capsys.readouterr().err
    assert main(["indices", str(tmp_path / "S2_20240501.tif"), "-o", str(tmp_path / "y.tif"), "--indices", "PSRI"]) == 2
    assert "missing band(s) B02, B06" in capsys.readouterr().err


def test_stack_with_repeated_band_names_and_a_date_list(tmp_path, capsys):
    a = np.arange(6 * 16, dtype=np.uint16).reshape(6, 4, 4) + 1001
    write_tif(tmp_path / "stack.tif", a, ["B04", "B08"] * 3)  # band names only, date-major
    (tmp_path / "dates.txt").write_text("2024-05-01\n2024-05-11\n2024-05-21\n")
    s = open_series([tmp_path / "stack.tif"], dates=read_date_list([str(tmp_path / "dates.txt")]))
    assert s.dates == [dt.date(2024, 5, d) for d in (1, 11, 21)] and s.bands == ["B04", "B08"]
    with s:
        r = s.read(FULL, ["B08", "B04"])
    assert np.allclose(r * 10000 + 1000, a.reshape(3, 2, 4, 4)[:, ::-1])
    # the same stack with a DATES tag needs no date list
    write_tif(tmp_path / "tagged.tif", a, ["B04", "B08"] * 3, tags={"DATES": "2024-05-01,2024-05-11,2024-05-21"})
    assert open_series([tmp_path / "tagged.tif"]).dates == s.dates
    with pytest.raises(InputError, match=r"stack.tif: stack has 6 bands, but 2 band\(s\) per date x 2 date"):
        open_series([tmp_path / "stack.tif"], dates=[dt.date(2024, 5, 1), dt.date(2024, 5, 11)])
    with pytest.raises(InputError, match="6 bands repeat 2 band names: a stack of 3 dates needs --dates"):
        open_series([tmp_path / "stack.tif"])
    (tmp_path / "bad_dates.txt").write_text("2024-05-01\nsoon\n")
    with pytest.raises(InputError, match="bad_dates.txt: not a date: 'soon'"):
        read_date_list([str(tmp_path / "bad_dates.txt")])
    # through the CLI: --dates FILE
    out = tmp_path / "ndvi.tif"
    assert (
        main(
            ["indices", str(tmp_path / "stack.tif"), "--dates", str(tmp_path / "dates.txt"), "-o", str(out), "--quiet"]
        )
        == 0
    )
    with rasterio.open(out) as ds:
        assert ds.descriptions == ("NDVI 2024-05-01", "NDVI 2024-05-11", "NDVI 2024-05-21")


def test_20m_resampling_matches_gdal_warped_vrt(tmp_path):
    """The fast aligned-grid resampler gives GDAL's WarpedVRT values (bilinear for bands, nearest for SCL), also
    for a 20 m grid whose origin is shifted by one 10 m pixel."""
    from rasterio.enums import Resampling
    from rasterio.vrt import WarpedVRT

    from remote.resample import AlignedResampler

    rng = np.random.default_rng(0)
    write_tif(tmp_path / "x_B04_20240501.tif", rng.integers(1000, 5000, (16, 16)).astype(np.uint16))
    write_tif(tmp_path / "x_B05_20240501.tif", rng.integers(1000, 5000, (8, 8)).astype(np.uint16), res=20.0)
    write_tif(
        tmp_path / "x_B06_20240501.tif",
        rng.integers(1000, 5000, (8, 8)).astype(np.uint16),
        res=20.0,
        origin=(600010.0, 5299990.0),
    )
    write_tif(
        tmp_path / "x_SCL_20240501.tif",
        rng.integers(0, 12, (8, 8)).astype(np.uint8),
        res=20.0,
        origin=(600010.0, 5299990.0),
        nodata=None,
    )
    g = open_series([tmp_path]).grid
    for name, categorical in (("B05", False), ("B06", False), ("SCL", True)):
        with rasterio.open(tmp_path / f"x_{name}_20240501.tif") as src:
            ours = AlignedResampler(src, g, categorical).read([1], Window(0, 0, 16, 16))[0]
            with WarpedVRT(
                src,
                crs=g.crs,
                transform=g.transform,
                width=16,
                height=16,
                resampling=Resampling.nearest if categorical else Resampling.bilinear,
            ) as vrt:
                ref = vrt.read(1).astype(np.float32)
        inside = ref > 0  # both leave the pixels outside the shifted source as nodata (0)
        assert ((ours > 0) == inside)[1:-1, 1:-1].all()
        assert np.abs(ours - ref)[inside].max() <= (0 if categorical else 0.5)  # GDAL rounds to integer DN
