"""Areas: products of several tiles and UTM zones on one date, mosaicked onto one output grid (remote.area).

The products are small but faithful: Earth Search v1 STAC items with per-band GeoTIFF assets (10 m and 20 m bands,
SCL at 20 m) in UTM zones 32N and 33N either side of the 12 deg E zone border, overlapping, with different
processing baselines on one date; and two ESA .SAFE products of one date in one zone. The mosaic is checked pixel by
pixel against a reference built with GDAL's warper (``rasterio.warp.reproject`` of every band of every product onto
the output grid; there is no ``gdalwarp`` binary here, the same library call is what it runs) and the overlap rule
applied in NumPy.
"""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import numpy as np
import pytest
import rasterio
from rasterio.crs import CRS
from rasterio.enums import Resampling
from rasterio.transform import from_origin
from rasterio.warp import reproject, transform
from remote_testutil import predict_whole_and_in_parts, unet_model_file
from s2products import make_safe, mtd_xml, stac_item

from remote.cli import main
from remote.discovery import open_series

Z32, Z33 = CRS.from_epsg(32632), CRS.from_epsg(32633)
BANDS10 = ("B02", "B03", "B04", "B08")
BANDS20 = ("B05", "B06", "B07", "B8A", "B11", "B12")
BANDS = ("B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B11", "B12")   # the model's bands
BASE = {"B02": 0.04, "B03": 0.07, "B04": 0.05, "B05": 0.11, "B06": 0.25, "B07": 0.3, "B08": 0.35, "B8A": 0.36,
        "B11": 0.2, "B12": 0.12}
SCL_INVALID = (0, 1, 3, 8, 9, 10)
N10 = 24            # 240 m tiles: 24 px at 10 m, 12 at 20 m
LON, LAT = 12.0, 47.5   # on the 32N / 33N border


def _ground(band: str, x: np.ndarray, y: np.ndarray, bias: float, day: int) -> np.ndarray:
    """A smooth reflectance field in lon/lat-independent metres (UTM 32N coordinates), plus a product bias."""
    return BASE[band] + 0.03 * np.sin(x / 90.0 + day) * np.cos(y / 70.0) + bias


def _write(path: Path, data: np.ndarray, crs, origin, res) -> str:
    with rasterio.open(path, "w", driver="GTiff", width=data.shape[1], height=data.shape[0], count=1,
                       dtype=data.dtype.name, crs=crs, transform=from_origin(*origin, res, res), nodata=0) as ds:
        ds.write(data[None])
    return str(path)


def _tile(root: Path, name: str, date: dt.date, crs, origin, *, offset: float, bias: float, clouds) -> dict:
    """Per-band GeoTIFFs of one tile and date (DN = reflectance x 10000 - offset) and its STAC item."""
    folder = root / name
    folder.mkdir(parents=True)
    hrefs, files = {}, {}
    for band in (*BANDS10, *BANDS20, "SCL"):
        res = 10 if band in BANDS10 else 20
        n = N10 * 10 // res
        cols, rows = np.meshgrid(np.arange(n) + 0.5, np.arange(n) + 0.5)
        x, y = origin[0] + cols * res, origin[1] - rows * res
        if crs != Z32:   # the ground is one field: evaluate it at the UTM 32N position of each pixel
            xs, ys = transform(crs, Z32, x.ravel(), y.ravel())
            x, y = np.asarray(xs).reshape(n, n), np.asarray(ys).reshape(n, n)
        if band == "SCL":
            data = np.full((n, n), 4, np.uint8)
            for r, c, v in clouds:
                data[r, c] = v
        else:
            refl = _ground(band, x, y, bias, date.toordinal() % 7)
            data = np.round(refl * 10000 - offset).astype(np.uint16)
        files[band] = _write(folder / f"{band}.tif", data, crs, origin, res)
        hrefs[band] = f"{name}/{band}.tif"
    baseline = "05.00" if offset == -1000 else "03.00"
    props = {"s2:processing_baseline": baseline, "earthsearch:boa_offset_applied": False}
    item = stac_item(root / f"{name}.json", date.isoformat(), hrefs, props=props)
    return {"key": name, "date": date, "crs": crs, "files": files, "offset": offset, "item": item,
            "origin": origin}


def _origin(crs, dx: float, dy: float) -> tuple[float, float]:
    xs, ys = transform("EPSG:4326", crs, [LON], [LAT])
    return (round(xs[0] / 60) * 60 + dx, round(ys[0] / 60) * 60 + dy)


D1, D2 = dt.date(2024, 4, 1), dt.date(2024, 4, 13)


def _overlap_clouds(origin, crs, other_origin, other_crs, value: int, k: int = 2) -> list[tuple[int, int, int]]:
    """``k`` 20 m pixels of a tile well inside the other tile's footprint and clearly nearer to their own tile's
    centre: a cloud there makes the other tile fill the pixel."""
    n = N10 // 2
    rows, cols = np.mgrid[0:n, 0:n] + 0.5
    x, y = origin[0] + cols * 20, origin[1] - rows * 20
    ox, oy = transform(crs, other_crs, x.ravel(), y.ravel())
    ox, oy = np.asarray(ox).reshape(n, n), np.asarray(oy).reshape(n, n)
    inside = ((ox > other_origin[0] + 40) & (ox < other_origin[0] + N10 * 10 - 40)
              & (oy < other_origin[1] - 40) & (oy > other_origin[1] - N10 * 10 + 40))
    own = np.hypot(x - origin[0] - N10 * 5, y - origin[1] + N10 * 5)
    oth = np.hypot(ox - other_origin[0] - N10 * 5, oy - other_origin[1] + N10 * 5)
    r, c = np.nonzero(inside & (own < 0.8 * oth))
    assert len(r) >= k, "the test tiles must overlap"
    return [(int(r[i]), int(c[i]), value) for i in np.linspace(0, len(r) - 1, k).astype(int)]


@pytest.fixture(scope="module")
def area(tmp_path_factory):
    """Two overlapping tiles in 32N (baseline 05.00, offset -1000) and 33N (baseline 03.00) on two dates, with
    clouds (and a nodata SCL pixel) in both, some of them in the overlap strip on each side of its middle."""
    root = tmp_path_factory.mktemp("area")
    oa, ob = _origin(Z32, -200, 120), _origin(Z33, -80, 140)
    ca = _overlap_clouds(oa, Z32, ob, Z33, 9)
    cb = _overlap_clouds(ob, Z33, oa, Z32, 8)
    prods = [
        _tile(root, "a_T32TQT_1", D1, Z32, oa, offset=-1000, bias=0.0, clouds=[(2, 2, 9), *ca]),
        _tile(root, "b_T33TUN_1", D1, Z33, ob, offset=0, bias=0.02, clouds=[(8, 10, 9), (9, 9, 0), *cb]),
        _tile(root, "a_T32TQT_2", D2, Z32, oa, offset=-1000, bias=0.01, clouds=[(1, 1, 9), ca[0][:2] + (3,)]),
        _tile(root, "b_T33TUN_2", D2, Z33, ob, offset=0, bias=0.03, clouds=[(3, 1, 8), (7, 2, 9)]),
    ]
    return root, prods


def _centre(p: dict, crs) -> tuple[float, float]:
    x, y = p["origin"][0] + N10 * 5, p["origin"][1] - N10 * 5
    xs, ys = transform(p["crs"], crs, [x], [y])
    return xs[0], ys[0]


def gdal_reference(prods: list[dict], grid, bands=BANDS) -> np.ndarray:
    """[T, B, H, W] reference mosaic: every band of every product warped onto ``grid`` by GDAL (bilinear for
    reflectance with DN 0 excluded, nearest for SCL), scaled with the product's own offset, then per pixel the
    clear observation of the product whose tile centre is nearest (ties: the first key)."""
    dates = sorted({p["date"] for p in prods})
    out = np.full((len(dates), len(bands), grid.height, grid.width), np.nan, np.float32)
    rows, cols = np.mgrid[0:grid.height, 0:grid.width] + 0.5
    gx, gy = grid.transform * (cols, rows)
    for t, d in enumerate(dates):
        best = np.full((grid.height, grid.width), np.inf)
        for p in sorted((p for p in prods if p["date"] == d), key=lambda p: p["key"]):
            stack = np.empty((len(bands), grid.height, grid.width), np.float32)
            for b, band in enumerate(bands):
                with rasterio.open(p["files"][band]) as src:
                    dn = src.read(1).astype(np.float32)
                    dn[dn == 0] = np.nan
                    dst = np.full((grid.height, grid.width), np.nan, np.float32)
                    reproject(dn, dst, src_transform=src.transform, src_crs=src.crs, src_nodata=np.nan,
                              dst_transform=grid.transform, dst_crs=grid.crs, dst_nodata=np.nan,
                              resampling=Resampling.bilinear)
                stack[b] = (dst + p["offset"]) / 10000.0
            with rasterio.open(p["files"]["SCL"]) as src:
                scl = np.zeros((grid.height, grid.width), np.uint8)
                reproject(src.read(1), scl, src_transform=src.transform, src_crs=src.crs, src_nodata=0,
                          dst_transform=grid.transform, dst_crs=grid.crs, dst_nodata=0,
                          resampling=Resampling.nearest)
            clear = np.isfinite(stack).all(0) & ~np.isin(scl, SCL_INVALID)
            cx, cy = _centre(p, grid.crs)
            dist = (gx - cx) ** 2 + (gy - cy) ** 2
            take = clear & (dist < best)
            out[t][:, take] = stack[:, take]
            best[take] = dist[take]
    return out


def _full(grid):
    from rasterio.windows import Window

    return Window(0, 0, grid.width, grid.height)


def _items(prods):
    return [str(p["item"]) for p in prods]


def test_two_zones_mosaic_equals_the_gdal_reference_pixel_by_pixel(area):
    root, prods = area
    s = open_series(_items(prods))
    g = s.grid
    # default grid: 10 m, the UTM zone of the area's centre, on the lattice of that zone's tile
    lon_c, _ = transform(g.crs, "EPSG:4326", [g.transform.c + g.width * 5], [g.transform.f - g.height * 5])
    assert g.crs == (Z32 if lon_c[0] < 12 else Z33) and g.res == 10
    own = next(p for p in prods if p["crs"] == g.crs)
    assert (g.transform.c - own["origin"][0]) % 10 == 0 and (g.transform.f - own["origin"][1]) % 10 == 0
    assert s.dates == [D1, D2] and len(s.sources) == 4
    with s:
        got = s.read(_full(g), BANDS, SCL_INVALID)
        tiled = np.concatenate([np.concatenate([s.read(w, BANDS, SCL_INVALID) for w in row], axis=3)
                                for row in _rows(g, 7)], axis=2)
    ref = gdal_reference(prods, g)
    np.testing.assert_array_equal(np.isnan(got), np.isnan(ref))
    # GDAL's warper approximates the coordinate transform (0.125 px); ours is exact per pixel
    np.testing.assert_allclose(got, ref, atol=3e-4, equal_nan=True)
    np.testing.assert_array_equal(tiled, got)          # windows = one whole-grid read, whatever the tiling
    assert np.isfinite(got).mean() > 0.5


def _rows(grid, tile):
    from rasterio.windows import Window

    return [[Window(c, r, min(tile, grid.width - c), min(tile, grid.height - r)) for c in range(0, grid.width, tile)]
            for r in range(0, grid.height, tile)]


def test_overlap_rule_clear_wins_then_the_nearest_tile_centre(area):
    """In the overlap strip: where both tiles are clear the nearer centre wins (both tiles win somewhere, so the
    strip is split, not double counted); where the nearer tile is cloudy the other one fills the pixel."""
    root, prods = area
    s = open_series(_items(prods))
    g = s.grid
    with s:
        got = s.read(_full(g), BANDS, SCL_INVALID)
    t = 0
    singles = {}
    for p in (p for p in prods if p["date"] == D1):
        with open_series([str(p["item"])], grid=g) as one:
            singles[p["key"]] = one.read(_full(g), BANDS, SCL_INVALID)[0]
    a, b = singles["a_T32TQT_1"], singles["b_T33TUN_1"]
    rows, cols = np.mgrid[0:g.height, 0:g.width] + 0.5
    gx, gy = g.transform * (cols, rows)
    da = np.hypot(gx - _centre(prods[0], g.crs)[0], gy - _centre(prods[0], g.crs)[1])
    db = np.hypot(gx - _centre(prods[1], g.crs)[0], gy - _centre(prods[1], g.crs)[1])
    ca, cb = np.isfinite(a).all(0), np.isfinite(b).all(0)
    both = ca & cb
    assert (both & (da < db)).sum() > 5 and (both & (db < da)).sum() > 5
    np.testing.assert_array_equal(got[t][:, both & (da < db)], a[:, both & (da < db)])
    np.testing.assert_array_equal(got[t][:, both & (db < da)], b[:, both & (db < da)])
    # a cloud (or nodata) in the nearer tile: the other tile's clear observation
    a_hidden = ~ca & cb & (da < db) & _inside(prods[0], g)
    b_hidden = ca & ~cb & (db < da) & _inside(prods[1], g)
    assert a_hidden.sum() > 0 and b_hidden.sum() > 0
    np.testing.assert_array_equal(got[t][:, a_hidden], b[:, a_hidden])
    np.testing.assert_array_equal(got[t][:, b_hidden], a[:, b_hidden])
    # nothing clear: nodata
    assert np.isnan(got[t][:, ~ca & ~cb]).all()
    # the two baselines keep their own radiometry: the same ground reads the same reflectance (+ the tiles' bias)
    diff = (b - a)[:, both]
    np.testing.assert_allclose(np.median(diff, axis=1), 0.02, atol=2e-3)


def _inside(p: dict, grid) -> np.ndarray:
    """Output pixels whose centre lies inside the tile's footprint (by more than one 20 m pixel)."""
    rows, cols = np.mgrid[0:grid.height, 0:grid.width] + 0.5
    gx, gy = grid.transform * (cols, rows)
    xs, ys = transform(grid.crs, p["crs"], gx.ravel(), gy.ravel())
    xs, ys = np.asarray(xs).reshape(gx.shape), np.asarray(ys).reshape(gx.shape)
    x0, y0 = p["origin"]
    return (xs > x0 + 20) & (xs < x0 + N10 * 10 - 20) & (ys < y0 - 20) & (ys > y0 - N10 * 10 + 20)


def test_crs_and_bounds_crs_choose_the_grid(area, tmp_path):
    root, prods = area
    items = _items(prods)
    for crs in (Z32, Z33):
        with open_series(items, crs=crs) as s:
            assert s.grid.crs == crs and s.grid.res == 10
            ref = gdal_reference(prods, s.grid)
            got = s.read(_full(s.grid), BANDS, SCL_INVALID)
        np.testing.assert_array_equal(np.isnan(got), np.isnan(ref))
        np.testing.assert_allclose(got, ref, atol=3e-4, equal_nan=True)
    # bounds in longitude/latitude: the grid covers them in the zone of their centre, nothing more
    w, s_, e, n = LON - 0.001, LAT - 0.0008, LON + 0.0015, LAT + 0.0004
    with open_series(items, bounds=(w, s_, e, n), bounds_crs="EPSG:4326") as s:
        g = s.grid
        assert g.crs == Z33      # centre east of 12 deg E
        from rasterio.warp import transform_bounds

        bx = transform_bounds("EPSG:4326", Z33, w, s_, e, n, densify_pts=21)
        assert g.transform.c <= bx[0] < g.transform.c + 10 and g.transform.f >= bx[3] > g.transform.f - 10
        assert g.width == pytest.approx((bx[2] - bx[0]) / 10, abs=2)
    # through the CLI: --crs and --bounds/--bounds-crs, one-line errors
    o = tmp_path / "ndvi.tif"
    assert main(["indices", *items, "-o", str(o), "--crs", "EPSG:32632", "-q"]) == 0
    with rasterio.open(o) as ds:
        assert ds.crs == Z32
    assert main(["indices", *items, "-o", str(o), "--overwrite", "--bounds", str(w), str(s_), str(e), str(n),
                 "--bounds-crs", "EPSG:4326", "-q"]) == 0
    with rasterio.open(o) as ds:
        assert ds.crs == Z33 and (ds.width, ds.height) == (g.width, g.height)
    assert main(["indices", *items, "-o", str(o), "--overwrite", "--crs", "EPSG:4326", "-q"]) == 2
    assert main(["indices", *items, "-o", str(o), "--overwrite", "--crs", "EPSG:nope", "-q"]) == 2
    assert main(["indices", *items, "-o", str(o), "--overwrite", "--bounds-crs", "EPSG:4326", "-q"]) == 2


def test_predict_and_indices_mosaic_the_area(area, tmp_path, ffdnn_file):
    """Through the CLI: the class/probability maps and the index stack of the two-zone area equal the model and the
    index applied to the GDAL reference mosaic."""
    import torch

    from remote.indices import ndvi
    from remote.predict import RemoteModel
    from remote.timeseries import align_grid, day_numbers, fill_gaps

    root, prods = area
    items = _items(prods)
    o = tmp_path / "map.tif"
    assert main(["predict", *items, "-m", str(ffdnn_file), "-o", str(o), "-q", "--tile", "16",
                 "--device", "cpu"]) == 0
    with open_series(items) as s:
        g = s.grid
    ref = gdal_reference(prods, g)
    with rasterio.open(o) as ds, rasterio.open(tmp_path / "map_prob.tif") as dp:
        assert ds.crs == g.crs and ds.transform.almost_equals(g.transform) and (ds.width, ds.height) == (g.width,
                                                                                                        g.height)
        cls, prob = ds.read(1), dp.read()
    rm = RemoteModel.from_file(str(ffdnn_file), "cpu", "fp32")
    valid = ~np.isnan(ref).any(1).all(0)
    filled = fill_gaps(ref, day_numbers([D1, D2]), day_numbers(align_grid(rm.grid_dates, [D1, D2])))
    with torch.inference_mode():
        p = rm.pixel_probabilities(np.ascontiguousarray(filled[:, :, valid].transpose(2, 0, 1)))
    np.testing.assert_array_equal(cls != 255, valid)
    np.testing.assert_allclose(prob[:, valid].T, p, atol=2e-3)
    # indices mosaic the same way
    o2 = tmp_path / "ndvi.tif"
    assert main(["indices", *items, "-o", str(o2), "-q", "--tile", "16"]) == 0
    with rasterio.open(o2) as ds:
        got = ds.read()
    want = ndvi(ref[:, BANDS.index("B08")], ref[:, BANDS.index("B04")])
    np.testing.assert_array_equal(np.isnan(got), np.isnan(want))
    np.testing.assert_allclose(got, want, atol=2e-3, equal_nan=True)


def test_two_safe_tiles_of_one_date_in_one_zone_are_mosaicked(tmp_path, capsys):
    """Two .SAFE products of one date in one zone, baselines 05.00 (offset -1000) and 03.00 (no offset): refused
    before ("band ... in two files of the same resolution"); now one mosaic, each product with its own radiometry."""
    a = make_safe(tmp_path, saturated_at=None)
    b = make_safe(tmp_path, "S2A_MSIL2A_20210512T102619_N0300_R108_T32UQE_20210512T150000.SAFE",
                  mtd=mtd_xml("03.00", offsets=False), saturated_at=None, origin=(600060.0, 5299940.0))
    o = tmp_path / "ndvi.tif"
    assert main(["indices", str(a), str(b), "-o", str(o), "-q"]) == 0
    with open_series([a, b]) as s:
        g = s.grid
        assert (g.width, g.height) == (18, 18) and len(s.sources) == 2 and s.dates == [dt.date(2021, 5, 12)]
        got = s.read(_full(g), ["B04", "B08"], None)[0]
    # the N0500 tile (top-left) reads (DN - 1000) / 10000, the N0300 tile (bottom-right) DN / 10000
    from s2products import native_dn

    np.testing.assert_allclose(got[0, :6, :6], (native_dn("B04", 10)[:6, :6] - 1000) / 1e4, atol=1e-6)
    np.testing.assert_allclose(got[1, 12:, 12:], native_dn("B08", 10)[6:, 6:] / 1e4, atol=1e-6)
    assert np.isnan(got[:, :6, 12:]).all() and np.isnan(got[:, 12:, :6]).all()     # outside both tiles


def test_area_of_one_date_with_the_predict_summary(area, tmp_path, ffdnn_file):
    """The provenance names every product and the overlap rule (-v)."""
    root, prods = area
    with open_series(_items(prods)) as s:
        text = "\n".join(s.provenance())
    assert "nearest tile centre" in text and all(p["key"] in text for p in prods)
    assert json.loads(Path(prods[0]["item"]).read_text())["properties"]["s2:processing_baseline"] == "05.00"


def test_row_blocks_of_the_area_grid_join_exactly(area, tmp_path):
    """The --num-parts path (remote.join.RowBlock, what predict and indices use): the blocks cover the area grid
    once, on its lattice; each part reads windows of the WHOLE grid (every part opens the whole area), so the parts'
    mosaics stacked equal the whole mosaic bit for bit; and a spatial model (U-Net, halo 16 px) split at a block
    edge inside the overlap of the two UTM zones joins to the whole run exactly (a halo stopping at the block edge,
    as the removed area.open_part did, changes the rows next to it)."""
    from remote.join import RowBlock

    root, prods = area
    items = _items(prods)
    with open_series(items) as s:
        g = s.grid
        whole = s.read(_full(g), BANDS, SCL_INVALID)
    assert g.height > 16, "the area grid must hold two row blocks of 16 rows"
    parts, rows = [], 0
    for k in range(2):
        block = RowBlock.part(g, 2, k)
        og = block.out_grid
        assert block.row0 == rows and og.width == g.width and og.transform.c == g.transform.c
        assert og.transform.f == g.transform.f - rows * 10 and og.height == block.height
        rows += block.height
        got = np.full((2, len(BANDS), og.height, og.width), -1.0, np.float32)
        with open_series(items) as s:      # as a part's run: the whole area, windows of the whole grid
            assert s.grid == g
            for rw, ww in block.windows(7):
                got[:, :, ww.row_off:ww.row_off + ww.height, ww.col_off:ww.col_off + ww.width] = \
                    s.read(rw, BANDS, SCL_INVALID)
        parts.append(got)
    assert rows == g.height
    np.testing.assert_array_equal(np.concatenate(parts, axis=2), whole)     # bit for bit

    model = unet_model_file(tmp_path / "unet.pt", [D1.isoformat(), D2.isoformat()], 2)
    common = [*items, "-m", str(model), "--tile", "16", "--halo", "16", "--device", "cpu", "--precision", "fp32",
              "-q"]
    whole_path, joined_path = predict_whole_and_in_parts(common, tmp_path)
    with rasterio.open(whole_path) as a, rasterio.open(joined_path) as b:
        assert a.transform == b.transform
        whole_p, joined = a.read(), b.read()
    assert np.isfinite(whole_p).mean() > 0.5
    np.testing.assert_array_equal(joined, whole_p)
    # the halo matters here: a run on the first block alone (its halo stopping at the block edge) differs
    edge = RowBlock.part(g, 2, 0).row1
    assert main(["predict", *items, "-m", str(model), "--tile", "16", "--halo", "16", "--device", "cpu",
                 "--precision", "fp32", "-q", "--grid", str(tmp_path / "u.part-0-of-2.tif"),
                 "-o", str(tmp_path / "cut.tif")]) == 0
    with rasterio.open(tmp_path / "cut_prob.tif") as c:
        cut = c.read()
    assert np.nanmax(np.abs(cut[:, edge - 4:edge] - whole_p[:, edge - 4:edge])) > 1e-3
