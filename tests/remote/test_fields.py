"""Field boundaries: GeoJSON polygons burnt like the field-ID raster (also from lon/lat), per-field mean series,
per-field prediction and training."""

from __future__ import annotations

import csv
import json
import warnings

import numpy as np
import pytest
import rasterio
from rasterio.warp import transform as warp_points
from rasterio.windows import Window

from remote.cli import main
from remote.discovery import open_series
from remote.fields import FieldRaster, FieldVector, field_series, open_fields
from remote.predict import RemoteModel
from remote.timeseries import day_numbers, fill_gaps, regular_grid
from shared_backbones.checkpoint import load_model_file
from shared_backbones.errors import InputError


def _field_boxes(fields_tif, lonlat: bool, names: bool) -> dict:
    """A GeoJSON FeatureCollection with one box polygon per field of the field-ID raster."""
    with rasterio.open(fields_tif) as f:
        fid, t, crs = f.read(1), f.transform, f.crs
    feats = []
    for i in range(1, int(fid.max()) + 1):
        r, c = np.nonzero(fid == i)
        xs = [t.c + t.a * v for v in (c.min(), c.max() + 1, c.max() + 1, c.min(), c.min())]
        ys = [t.f + t.e * v for v in (r.min(), r.min(), r.max() + 1, r.max() + 1, r.min())]
        if lonlat:
            xs, ys = warp_points(crs, "EPSG:4326", xs, ys)
        props = {"name": f"plot-{i:02d}"} if names else {"field_id": i}
        feats.append({"type": "Feature", "properties": props,
                      "geometry": {"type": "Polygon", "coordinates": [[list(p) for p in zip(xs, ys)]]}})
    doc = {"type": "FeatureCollection", "features": feats}
    if not lonlat:
        doc["crs"] = {"type": "name", "properties": {"name": "urn:ogc:def:crs:EPSG::32632"}}
    return doc


@pytest.mark.parametrize("lonlat,names", [(False, False), (True, True)])
def test_geojson_fields_burn_like_the_field_raster(tmp_path, scene, lonlat, names):
    path = tmp_path / "fields.geojson"
    path.write_text(json.dumps(_field_boxes(scene.fields, lonlat, names)))
    grid = open_series([scene.images]).grid
    vec = open_fields(path, grid, "name" if names else None)
    ras = open_fields(scene.fields, grid)
    assert isinstance(vec, FieldVector) and isinstance(ras, FieldRaster)
    for w in (Window(0, 0, 64, 64), Window(8, 24, 24, 16)):
        a, b = vec.read(w), ras.read(w)
        assert np.array_equal(a, b)            # pixel centres inside the boxes = the raster's field pixels
    if names:
        assert vec.label(3) == "plot-03"       # names are numbered in sorted order and reported as given
    else:
        assert vec.label(3) == "3"


def test_field_vector_errors(tmp_path, scene):
    grid = open_series([scene.images]).grid
    far = _field_boxes(scene.fields, False, False)
    for f in far["features"]:
        f["geometry"]["coordinates"] = [[[x + 1e6, y] for x, y in f["geometry"]["coordinates"][0]]]
    (tmp_path / "far.geojson").write_text(json.dumps(far))
    with pytest.raises(InputError, match="far.geojson: no field polygon overlaps the image"):
        open_fields(tmp_path / "far.geojson", grid)
    (tmp_path / "bad.geojson").write_text("{not json")
    with pytest.raises(InputError, match="bad.geojson: unreadable GeoJSON"):
        open_fields(tmp_path / "bad.geojson", grid)
    (tmp_path / "ok.geojson").write_text(json.dumps(_field_boxes(scene.fields, False, False)))
    with pytest.raises(InputError, match="no feature has the attribute 'plot'"):
        open_fields(tmp_path / "ok.geojson", grid, "plot")
    with rasterio.open(scene.fields) as src:
        prof = {**src.profile, "dtype": "float32", "nodata": None}
    with rasterio.open(tmp_path / "float.tif", "w", **prof) as dst:
        dst.write(np.zeros((1, 64, 64), np.float32))
    with pytest.raises(InputError, match="float.tif: field-ID raster must hold integers"):
        open_fields(tmp_path / "float.tif", grid)


@pytest.mark.parametrize("suffix,driver", [(".gpkg", "GPKG"), (".shp", "ESRI Shapefile")])
def test_vector_formats_through_the_vector_extra(tmp_path, scene, suffix, driver):
    pyogrio = pytest.importorskip("pyogrio")
    src = tmp_path / "boxes.geojson"
    src.write_text(json.dumps(_field_boxes(scene.fields, True, True)))
    meta, _, geoms, data = pyogrio.raw.read(str(src))
    out = tmp_path / f"fields{suffix}"
    pyogrio.raw.write(str(out), geoms, data, meta["fields"], driver=driver, crs=meta["crs"],
                      geometry_type=meta["geometry_type"])
    grid = open_series([scene.images]).grid
    vec, ras = open_fields(out, grid, "name"), open_fields(scene.fields, grid)
    full = Window(0, 0, 64, 64)
    assert isinstance(vec, FieldVector) and np.array_equal(vec.read(full), ras.read(full))
    assert vec.label(3) == "plot-03"


def test_vector_formats_without_the_extra_name_it(tmp_path, scene, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda n, *a: None if n in ("pyogrio", "fiona") else real(n, *a))
    (tmp_path / "f.gpkg").write_bytes(b"SQLite format 3\x00")
    with pytest.raises(InputError, match=r"f.gpkg: reading .gpkg files needs the 'vector' extra \(pyogrio\): "
                                         r"`pip install 'convsuite\[vector\]'`"):
        open_fields(tmp_path / "f.gpkg", open_series([scene.images]).grid)


def test_field_series_is_the_mean_of_valid_pixels_then_gap_filled(scene):
    series = open_series([scene.images])
    bands = ["B04", "B05", "B08"]
    grid_dates = regular_grid(scene.dates[0], scene.dates[-1], 6)
    fs = field_series(series, open_fields(scene.fields, series.grid), bands, grid_dates,
                      [0, 1, 3, 8, 9, 10], tile=24)   # 24 px tiles: fields straddle windows
    with series, rasterio.open(scene.fields) as f:
        obs = series.read(Window(0, 0, 64, 64), bands, [0, 1, 3, 8, 9, 10])
        fid = f.read(1)
    assert fs.ids.tolist() == list(range(1, int(fid.max()) + 1))
    gaps = 0
    for i, f_id in enumerate(fs.ids):
        m = fid == f_id
        v = obs[:, :, m]                                            # [T, B, P]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            mean = np.nanmean(v, axis=2)                            # NaN where the date has no valid pixel
        gaps += int(np.isnan(mean[:, 0]).sum())
        expected = fill_gaps(mean, day_numbers(series.dates), day_numbers(grid_dates))
        assert np.allclose(fs.x[i], expected, atol=1e-6)
        assert fs.pixels[i] == m.sum() and fs.dates_observed[i] == (~np.isnan(v[:, 0])).any(1).sum()
        rr, cc = np.nonzero(m)
        assert fs.rows[i] == pytest.approx(rr.mean() + 0.5) and fs.cols[i] == pytest.approx(cc.mean() + 0.5)
    assert fs.x.shape == (len(fs.ids), len(grid_dates), 3)
    assert gaps > 0                     # some field-dates are fully cloudy: the gap filling is exercised


def test_predict_per_field_paints_each_fields_class(tmp_path, scene, ffdnn_file):
    out = tmp_path / "pf.tif"
    assert main(["predict", str(scene.images), "-m", str(ffdnn_file), "-o", str(out), "--fields", str(scene.fields),
                 "--per-field", "--explain", "--tile", "24", "--quiet"]) == 0
    rm = RemoteModel.from_file(ffdnn_file, "cpu", "fp32")
    series = open_series([scene.images])
    fs = field_series(series, open_fields(scene.fields, series.grid), rm.bands, rm.grid_dates, rm.scl_invalid)
    expected = rm.pixel_probabilities(fs.x)
    with rasterio.open(out) as c, rasterio.open(tmp_path / "pf_prob.tif") as p, \
            rasterio.open(scene.fields) as f, rasterio.open(tmp_path / "pf_attribution.tif") as a:
        cls, prob, fid, attr = c.read(1), p.read(), f.read(1), a.read()
        assert c.tags()["MODE"] == "per-field"
    assert (cls[fid == 0] == 255).all() and np.isnan(prob[:, fid == 0]).all()
    for i, f_id in enumerate(fs.ids):
        m = fid == f_id
        assert (cls[m] == expected[i].argmax()).all()
        assert np.allclose(prob[:, m], expected[i][:, None], atol=1e-6)
        assert np.ptp(attr[:, m], axis=1).max() == 0              # one explanation per field
    rows = list(csv.DictReader(open(tmp_path / "pf_fields.csv")))
    assert [int(r["field_id"]) for r in rows] == fs.ids.tolist()
    assert rows[0]["class"] == rm.classes[int(expected[0].argmax())]
    assert float(rows[0]["p_healthy"]) == pytest.approx(expected[0][0], abs=1e-4)
    assert int(rows[0]["pixels"]) == int((fid == 1).sum())
    assert 0 < int(rows[0]["dates_observed"]) <= len(scene.dates)


def test_train_per_field_from_rasters(tmp_path, scene, capsys):
    out = tmp_path / "pf.pt"
    assert main(["train", str(scene.images), "--labels", str(scene.labels), "--fields", str(scene.fields),
                 "--per-field", "-o", str(out), "--epochs", "1", "--folds", "2", "--block-size", "32",
                 "--buffer", "0", "--channels", "8", "--depth", "1", "--device", "cpu", "--precision", "fp32",
                 "--quiet"]) == 0
    mf = load_model_file(out, task="remote")
    with rasterio.open(scene.fields) as f:
        n_fields = int(f.read(1).max())
    assert mf.preprocessing["input"] == "field"
    assert mf.metrics["n_train"] + mf.metrics["n_test"] == n_fields   # one sample per field
    assert "parameters" in capsys.readouterr().out
