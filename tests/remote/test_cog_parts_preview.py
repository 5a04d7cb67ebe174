"""remote outputs: Cloud-Optimised GeoTIFFs (checked with rio-cogeo's validator, values round-trip exactly),
``--num-parts`` row blocks of the output grid joined by ``remote mosaic`` (COG and VRT) equal to the whole run pixel
for pixel (predict and indices), the mosaic's refusals (one line, exit 2), the bounded ordered pool, and the
``--preview`` quick-look PNG (legend, colour bar, footprints, size bound)."""

from __future__ import annotations

import os
import threading
import time

import numpy as np
import pytest
import rasterio
from rasterio.transform import from_origin
from remote_testutil import predict_whole_and_in_parts, unet_model_file
from test_area import area  # noqa: F401 - the two-zone STAC fixture (pytest finds it by name)

from remote.cli import main
from remote.join import RowBlock, map_ordered, mosaic, part_path, part_rows
from remote.preview import footprints_of, write_preview
from remote.resample import Grid
from remote.writer import COG_BLOCK, raster_output
from shared_backbones.errors import InputError

cogeo = pytest.importorskip("rio_cogeo.cogeo", reason="rio-cogeo (the 'test' extra) validates the COGs")


def _err(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "Traceback" not in err, err
    return err


def _valid_cog(path) -> bool:
    ok, errors, _warnings = cogeo.cog_validate(str(path), quiet=True)
    return ok and not errors


def _grid(width: int, height: int, x0: float = 600000.0, y0: float = 5300000.0, res: float = 10.0,
          epsg: int = 32632) -> Grid:
    return Grid(rasterio.crs.CRS.from_epsg(epsg), from_origin(x0, y0, res, res), width, height)


def _write(path, grid: Grid, arr: np.ndarray, nodata, categorical=False, block: RowBlock | None = None,
           fmt="COG", **tags):
    block = block or RowBlock.whole(grid)
    with raster_output(path, block.out_grid, arr.shape[0], str(arr.dtype), nodata, fmt=fmt,
                       categorical=categorical) as ds:
        ds.update_tags(**tags, **block.tags(categorical))
        for i in range(arr.shape[0]):
            ds.set_band_description(i + 1, f"band {i}")
        if categorical:
            ds.write_colormap(1, {0: (10, 20, 30, 255), 1: (200, 100, 0, 255), 255: (0, 0, 0, 0)})
        for rw, ww in block.windows(200):
            ds.write(arr[:, rw.row_off:rw.row_off + rw.height, rw.col_off:rw.col_off + rw.width], window=ww)


# -- COG ---------------------------------------------------------------------------------------------------------------
def test_cog_output_is_valid_with_overviews_and_exact_values(tmp_path):
    rng = np.random.default_rng(0)
    g = _grid(1100, 600)
    cont = rng.normal(size=(2, 600, 1100)).astype(np.float32)
    cont[:, :37, :] = np.nan
    cls = rng.integers(0, 2, (1, 600, 1100)).astype(np.uint8)
    cls[:, 100:150, :] = 255
    _write(tmp_path / "c.tif", g, cont, float("nan"), FOO="bar")
    _write(tmp_path / "k.tif", g, cls, 255, categorical=True)
    for name, ref in (("c.tif", cont), ("k.tif", cls)):
        path = tmp_path / name
        assert _valid_cog(path), name
        assert oct(os.stat(path).st_mode & 0o777) == oct(0o666 & ~_umask())
        with rasterio.open(path) as ds:
            assert ds.tags(ns="IMAGE_STRUCTURE")["LAYOUT"] == "COG"
            assert ds.block_shapes[0] == (COG_BLOCK, COG_BLOCK) and ds.overviews(1)[0] == 2
            assert np.array_equal(ds.read(), ref, equal_nan=True)
            assert ds.descriptions[0] == "band 0" and ds.crs == g.crs and ds.transform == g.transform
    with rasterio.open(tmp_path / "c.tif") as ds:
        assert np.isnan(ds.nodata) and ds.tags()["FOO"] == "bar"
        assert ds.tags(ns="IMAGE_STRUCTURE")["PREDICTOR"] == "3"
        # average overviews leave nodata out: the first overview rows under the NaN rows stay NaN, the rest finite
        ov = ds.read(1, out_shape=(300, 550))
        assert np.isnan(ov[:18]).all() and np.isfinite(ov[19:]).all()
    with rasterio.open(tmp_path / "k.tif") as ds:
        assert ds.nodata == 255 and ds.colormap(1)[1] == (200, 100, 0, 255)
        # nearest overviews keep class values (no 0.5 averages, no mixed codes)
        assert set(np.unique(ds.read(1, out_shape=(300, 550)))) <= {0, 1, 255}
    assert not list(tmp_path.glob(".*")), "temporary files left behind"


def _umask() -> int:
    m = os.umask(0)
    os.umask(m)
    return m


def test_gtiff_format_keeps_the_plain_tiled_geotiff(tmp_path):
    g = _grid(100, 80)
    a = np.arange(8000, dtype=np.float32).reshape(1, 80, 100)
    _write(tmp_path / "g.tif", g, a, float("nan"), fmt="GTiff")
    with rasterio.open(tmp_path / "g.tif") as ds:
        assert "LAYOUT" not in ds.tags(ns="IMAGE_STRUCTURE") and ds.block_shapes[0] == (80, 80)
        assert np.array_equal(ds.read(), a)


def test_failed_write_leaves_nothing(tmp_path):
    g = _grid(40, 40)
    with pytest.raises(RuntimeError), raster_output(tmp_path / "x.tif", g, 1, "uint8", 255) as ds:
        ds.write(np.zeros((1, 40, 40), np.uint8))
        raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []


def test_indices_write_valid_cogs_by_default_and_gtiff_on_request(tmp_path, scene):
    assert main(["indices", str(scene.images), "-o", str(tmp_path / "n.tif"), "-q"]) == 0
    assert _valid_cog(tmp_path / "n.tif")
    assert main(["indices", str(scene.images), "-o", str(tmp_path / "g.tif"), "--format", "GTiff",
                 "--compress", "zstd", "-q"]) == 0
    with rasterio.open(tmp_path / "n.tif") as a, rasterio.open(tmp_path / "g.tif") as b:
        assert b.compression.name == "zstd" and "LAYOUT" not in b.tags(ns="IMAGE_STRUCTURE")
        assert np.array_equal(a.read(), b.read(), equal_nan=True) and a.tags() == b.tags()


# -- parts -------------------------------------------------------------------------------------------------------------
def test_part_rows_are_aligned_cover_the_grid_once_and_refuse_too_many_parts():
    for height, n in ((5000, 3), (5000, 9), (1300, 3), (64, 2), (64, 3), (16, 1)):
        rows = [part_rows(height, n, k) for k in range(n)]
        assert rows[0][0] == 0 and rows[-1][1] == height
        assert all(a[1] == b[0] for a, b in zip(rows, rows[1:])) and all(r1 > r0 for r0, r1 in rows)
        if height >= n * COG_BLOCK:   # big enough: edges on the COG tiles
            assert all(r0 % COG_BLOCK == 0 for r0, _ in rows)
    assert part_rows(5000, 3, 1) == (1536, 3072)
    with pytest.raises(InputError, match="more than the output grid's 4 row block"):
        part_rows(64, 5, 0)


def test_indices_parts_join_to_the_whole_run(tmp_path, scene, capsys):
    whole = tmp_path / "whole.tif"
    assert main(["indices", str(scene.images), "-o", str(whole), "--indices", "NDVI,NDRE", "-q"]) == 0
    for k in (2, 0, 1):   # any order, as array tasks finish
        assert main(["indices", str(scene.images), "-o", str(tmp_path / "ndvi.tif"), "--indices", "NDVI,NDRE",
                     "--num-parts", "3", "--part-id", str(k), "-q"]) == 0
    parts = sorted(tmp_path.glob("ndvi.part-*-of-3.tif"))
    assert [p.name for p in parts] == [part_path("ndvi.tif", k, 3).name for k in range(3)]
    assert all(_valid_cog(p) for p in parts)
    assert main(["mosaic", *map(str, parts[::-1]), "-o", str(tmp_path / "ndvi.tif"), "-q"]) == 0
    assert main(["mosaic", *map(str, parts), "-o", str(tmp_path / "ndvi.vrt"), "-q"]) == 0
    assert _valid_cog(tmp_path / "ndvi.tif")
    with rasterio.open(whole) as w:
        ref, tags, desc, tr = w.read(), w.tags(), w.descriptions, w.transform
    for joined in ("ndvi.tif", "ndvi.vrt"):
        with rasterio.open(tmp_path / joined) as ds:
            assert np.array_equal(ds.read(), ref, equal_nan=True), joined
            assert ds.transform == tr and ds.descriptions == desc
            assert {k: v for k, v in ds.tags().items() if k != "AREA_OR_POINT"} == \
                {k: v for k, v in tags.items() if k != "AREA_OR_POINT"}
    # an existing part needs --overwrite; a part-id outside the parts is refused
    assert main(["indices", str(scene.images), "-o", str(tmp_path / "ndvi.tif"), "--num-parts", "3",
                 "--part-id", "0", "-q"]) == 2
    assert "exists" in _err(capsys)
    assert main(["indices", str(scene.images), "-o", str(tmp_path / "x.tif"), "--num-parts", "3",
                 "--part-id", "3", "-q"]) == 2
    assert "--part-id must be in 0..2" in _err(capsys)


def test_predict_parts_join_to_the_whole_run(tmp_path, scene, ffdnn_file):
    whole = tmp_path / "whole.tif"
    common = [str(scene.images), "-m", str(ffdnn_file), "--tile", "32", "-q"]
    assert main(["predict", *common, "-o", str(whole)]) == 0
    for k in range(2):
        assert main(["predict", *common, "-o", str(tmp_path / "map.tif"), "--num-parts", "2", "--part-id",
                     str(k)]) == 0
    for stem in ("map", "map_prob"):
        parts = [tmp_path / f"{stem}.part-{k}-of-2.tif" for k in range(2)]
        with rasterio.open(parts[0]) as p0, rasterio.open(parts[1]) as p1:
            assert p0.height + p1.height == 64 and p1.bounds.top == p0.bounds.bottom
        mosaic(parts, tmp_path / f"{stem}_joined.tif")
        mosaic(parts, tmp_path / f"{stem}_joined.vrt")
        assert _valid_cog(tmp_path / f"{stem}_joined.tif")
    for ref, joined in (("whole.tif", "map_joined"), ("whole_prob.tif", "map_prob_joined")):
        with rasterio.open(tmp_path / ref) as w:
            a, cmap = w.read(), (w.colormap(1) if w.count == 1 else None)
        for ext in (".tif", ".vrt"):
            with rasterio.open(tmp_path / f"{joined}{ext}") as ds:
                assert np.array_equal(ds.read(), a, equal_nan=True), joined + ext
                if cmap is not None:
                    assert ds.colormap(1) == cmap and ds.tags()["CLASSES"] == "healthy,yellow_rust,nitrogen_deficiency"


def _parts(tmp_path, n=3, name="m.tif", grid=None, value=None):
    grid = grid or _grid(40, 48)
    a = np.arange(grid.width * grid.height, dtype=np.float32).reshape(1, grid.height, grid.width)
    if value is not None:
        a[:] = value
    paths = []
    for k in range(n):
        p = tmp_path / part_path(name, k, n)
        _write(p, grid, a, float("nan"), block=RowBlock.part(grid, n, k))
        paths.append(p)
    return paths


def test_mosaic_refusals_are_one_line_exit_2(tmp_path, capsys):
    parts = _parts(tmp_path)
    out = str(tmp_path / "out.tif")
    assert main(["mosaic", str(parts[0]), str(parts[2]), "-o", out]) == 2
    assert "missing part(s) 1 of 3" in _err(capsys)
    assert main(["mosaic", str(parts[0]), str(parts[1]), str(parts[1]), str(parts[2]), "-o", out]) == 2
    assert "given twice" in _err(capsys)
    other = _parts(tmp_path, n=2, name="o.tif")          # parts of another run (2 parts) over the same grid
    assert main(["mosaic", *map(str, parts[:2]), str(other[1]), "-o", out]) == 2
    assert "another run" in _err(capsys)
    # overlapping rasters (no part tags): the second half overlaps the first by 4 rows
    g = _grid(20, 20)
    a = np.ones((1, 20, 20), np.float32)
    _write(tmp_path / "a.tif", g, a, float("nan"))
    _write(tmp_path / "b.tif", _grid(20, 20, y0=5300000.0 - 160), a, float("nan"))
    assert main(["mosaic", str(tmp_path / "a.tif"), str(tmp_path / "b.tif"), "-o", out]) == 2
    assert "overlaps a.tif" in _err(capsys)
    # a gap between two rasters
    _write(tmp_path / "c.tif", _grid(20, 20, y0=5300000.0 - 250), a, float("nan"))
    assert main(["mosaic", str(tmp_path / "a.tif"), str(tmp_path / "c.tif"), "-o", out]) == 2
    assert "leave a gap" in _err(capsys)
    # different grids: CRS, pixel size, lattice
    for name, grid, msg in (("crs.tif", _grid(20, 20, y0=5300000.0 - 200, epsg=32633), "different CRS"),
                            ("res.tif", _grid(10, 10, y0=5300000.0 - 200, res=20.0), "different pixel size"),
                            ("lat.tif", _grid(20, 20, x0=600003.0, y0=5300000.0 - 200), "pixel lattice")):
        _write(tmp_path / name, grid, np.ones((1, grid.height, grid.width), np.float32), float("nan"))
        assert main(["mosaic", str(tmp_path / "a.tif"), str(tmp_path / name), "-o", out]) == 2
        assert msg in _err(capsys)
    # different bands, a non-raster, an output among the inputs, an output that exists
    _write(tmp_path / "u8.tif", _grid(20, 20, y0=5300000.0 - 200), np.ones((1, 20, 20), np.uint8), 255)
    assert main(["mosaic", str(tmp_path / "a.tif"), str(tmp_path / "u8.tif"), "-o", out]) == 2
    assert "different bands" in _err(capsys)
    (tmp_path / "junk.tif").write_text("not a tiff")
    assert main(["mosaic", str(tmp_path / "a.tif"), str(tmp_path / "junk.tif"), "-o", out]) == 2
    assert "junk.tif" in _err(capsys)
    assert main(["mosaic", *map(str, parts), "-o", str(parts[0]), "--overwrite"]) == 2
    assert "one of the inputs" in _err(capsys)
    assert main(["mosaic", *map(str, parts), "-o", str(tmp_path / "out.png")]) == 2
    assert "cannot write a '.png'" in _err(capsys)
    assert not (tmp_path / "out.tif").exists()
    assert main(["mosaic", *map(str, parts), "-o", out, "-q"]) == 0
    assert main(["mosaic", *map(str, parts), "-o", out, "-q"]) == 2
    assert "exists" in _err(capsys)


def test_mosaic_joins_plain_rasters_that_tile_a_grid(tmp_path):
    left = np.full((1, 20, 20), 1, np.float32)
    right = np.full((1, 20, 30), 2, np.float32)
    _write(tmp_path / "l.tif", _grid(20, 20), left, float("nan"))
    _write(tmp_path / "r.tif", _grid(30, 20, x0=600200.0), right, float("nan"))
    res = mosaic([tmp_path / "r.tif", tmp_path / "l.tif"], tmp_path / "j.tif")
    assert res["size"] == [20, 50]
    with rasterio.open(tmp_path / "j.tif") as ds:
        assert np.array_equal(ds.read(), np.concatenate([left, right], axis=2))
        assert ds.transform == _grid(50, 20).transform


# -- one machine: the bounded ordered pool ---------------------------------------------------------------------------
def test_map_ordered_keeps_order_bounds_work_in_flight_and_raises():
    lock = threading.Lock()
    started: list[int] = []
    done: list[int] = []
    consumed: list[int] = []
    max_ahead = 0

    def work(state, i):
        nonlocal max_ahead
        with lock:
            started.append(i)
            max_ahead = max(max_ahead, len(started) - len(consumed))
        time.sleep(0.002 * ((i * 7) % 5))       # finish out of order
        with lock:
            done.append((state, i))
        return i * i

    states = ["a", "b", "c"]
    for i, r in map_ordered(range(40), work, states, depth=4):
        assert r == i * i
        consumed.append(i)
    assert consumed == list(range(40))
    assert max_ahead <= 4 + 1       # at most `depth` submitted ahead of the consumer (+ the one being handed over)
    assert {s for s, _ in done} <= set(states)

    def bad(state, i):
        if i == 5:
            raise ValueError("tile 5")
        return i

    with pytest.raises(ValueError, match="tile 5"):
        list(map_ordered(range(20), bad, states))


# -- preview -----------------------------------------------------------------------------------------------------------
def test_predict_preview_has_legend_colour_bar_footprints_and_bounded_size(tmp_path, scene, ffdnn_file, capsys):
    from PIL import Image

    out, png = tmp_path / "map.tif", tmp_path / "map.png"
    assert main(["predict", str(scene.images), "-m", str(ffdnn_file), "-o", str(out), "--preview", str(png),
                 "-q"]) == 0
    with Image.open(png) as im:
        assert im.format == "PNG" and im.size[0] <= 1200 and im.size[1] <= 900
        px = np.asarray(im.convert("RGB"))
    # the class colours of the legend are drawn
    from remote.predict import PALETTE

    for colour in PALETTE[:3]:
        assert (np.abs(px.astype(int) - colour).sum(-1) < 6).any(), colour
    res = write_preview(tmp_path / "again.png", class_map=out, probabilities=tmp_path / "map_prob.tif",
                        footprints=footprints_of([scene.labels], rasterio.crs.CRS.from_epsg(32632)),
                        title="t", max_width=600)
    assert [c for c, _ in res.legend] == ["healthy", "yellow_rust", "nitrogen_deficiency"]
    assert res.legend[0][1] == "#{:02x}{:02x}{:02x}".format(*PALETTE[0])
    assert res.colorbar == ("stress probability 1 - p(healthy)", 0.0, 1.0)
    assert res.footprints == [scene.labels.name] and res.scale_bar in (100, 200)
    with Image.open(res.path) as im:
        assert im.size[0] == 600
    # refused: with --num-parts (one map), a non-PNG name
    assert main(["predict", str(scene.images), "-m", str(ffdnn_file), "-o", str(tmp_path / "p.tif"),
                 "--preview", str(tmp_path / "p.png"), "--num-parts", "2", "-q"]) == 2
    assert "--preview shows one map" in _err(capsys)
    assert main(["indices", str(scene.images), "-o", str(tmp_path / "i.tif"), "--preview",
                 str(tmp_path / "i.jpg"), "-q"]) == 2
    assert "--preview cannot write a '.jpg'" in _err(capsys)


def test_indices_and_mosaic_previews_draw_an_index_with_a_colour_bar(tmp_path, scene):
    from PIL import Image

    png = tmp_path / "n.png"
    assert main(["indices", str(scene.images), "-o", str(tmp_path / "n.tif"), "--indices", "NDVI,NDRE",
                 "--preview", str(png), "-q"]) == 0
    res = write_preview(tmp_path / "n2.png", indices=tmp_path / "n.tif")
    assert res.colorbar[0].startswith("NDVI 2024-") and res.colorbar[1] < res.colorbar[2] and not res.legend
    parts = _parts(tmp_path, n=2)
    assert main(["mosaic", *map(str, parts), "-o", str(tmp_path / "j.tif"), "--preview",
                 str(tmp_path / "j.png"), "-q"]) == 0
    for p in (png, tmp_path / "j.png"):
        with Image.open(p) as im:
            assert im.size[0] <= 1200


# -- an area of two UTM zones (the fixture of test_area.py) ----------------------------------------------------------


def test_area_parts_join_to_the_whole_run_pixel_for_pixel(area, tmp_path, ffdnn_file):  # noqa: F811
    """Two overlapping tiles in UTM 32N and 33N: predict and indices split into 2 row blocks (1 and 3 reader
    threads for indices) and joined equal the whole run exactly, not just within a tolerance."""
    from remote.discovery import open_series
    from remote.products import write_index_stack

    _, prods = area
    items = [str(p["item"]) for p in prods]
    common = ["-m", str(ffdnn_file), "--tile", "16", "--device", "cpu", "-q"]
    assert main(["predict", *items, *common, "-o", str(tmp_path / "whole.tif")]) == 0
    for k in range(2):
        assert main(["predict", *items, *common, "-o", str(tmp_path / "map.tif"), "--num-parts", "2",
                     "--part-id", str(k)]) == 0
    with open_series(items) as s:
        n_dates = len(s.dates)
    for k in range(2):
        with open_series(items) as s:
            write_index_stack(s, tmp_path / part_path("ndvi.tif", k, 2), ["NDVI"], tile=16, num_parts=2,
                              part_id=k, workers=1 + 2 * k, quiet=True)
    with open_series(items) as s:
        res = write_index_stack(s, tmp_path / "ndvi_whole.tif", ["NDVI"], tile=16, workers=3, quiet=True)
    assert res["workers"] == 3 and res["bands"] == n_dates
    for whole, stem in (("whole.tif", "map"), ("whole_prob.tif", "map_prob"), ("ndvi_whole.tif", "ndvi")):
        joined = mosaic([tmp_path / part_path(f"{stem}.tif", k, 2) for k in range(2)], tmp_path / f"{stem}_j.tif")
        assert joined["parts"] == 2
        with rasterio.open(tmp_path / whole) as a, rasterio.open(tmp_path / f"{stem}_j.tif") as b:
            assert a.transform == b.transform and a.crs == b.crs
            assert np.array_equal(a.read(), b.read(), equal_nan=True), stem


def test_spatial_model_parts_read_their_halo_across_the_block_edge(tmp_path, scene):
    """A U-Net with a halo: the part edge (row 32) is a tile edge whose halo lies in the other part; the parts read
    it from the whole grid, so the joined maps equal the whole run exactly (clipping the halo at the block edge
    would change the rows next to it)."""
    model = unet_model_file(tmp_path / "unet.pt", [d.isoformat() for d in scene.dates], 10)
    common = [str(scene.images), "-m", str(model), "--tile", "32", "--halo", "32", "--device", "cpu",
              "--precision", "fp32", "-q"]
    whole_path, joined_path = predict_whole_and_in_parts(common, tmp_path)
    with rasterio.open(whole_path) as a, rasterio.open(joined_path) as b:
        assert np.array_equal(a.read(), b.read(), equal_nan=True)
