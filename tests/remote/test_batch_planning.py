"""remote on the shared layer: batches planned before any work (collisions, outputs among the inputs, endings the
writer cannot write), --num-parts/--part-id and skip-if-done for --each, typed numeric options, the library batch
functions, and bounded reading of a .SAFE.zip's metadata."""

from __future__ import annotations

import argparse
import shutil
import tracemalloc
import zipfile

import numpy as np
import pytest
from remote_testutil import write_tif
from s2products import make_safe, zip_safe

from remote.cli import _parser, main
from remote.discovery import SeriesOptions
from remote.products import index_files, plan_indices
from shared_backbones.cliutil import iter_subparsers
from shared_backbones.errors import InputError
from shared_backbones.options import Number


def _err(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "Traceback" not in err, err
    return err


def _sites(tmp_path, scene, names):
    sites = []
    for name in names:
        d = tmp_path / name
        d.mkdir()
        for f in sorted(scene.images.iterdir()):
            shutil.copy(f, d / f.name)
        sites.append(str(d))
    return sites


def test_predict_each_splits_into_parts_and_skips_finished_sites(tmp_path, scene, ffdnn_file, capsys):
    sites = _sites(tmp_path, scene, ["a", "b", "c"])
    maps = tmp_path / "maps"
    run = ["predict", *sites, "-m", str(ffdnn_file), "-o", str(maps), "--each", "--no-prob", "--tile", "64",
           "--device", "cpu"]
    assert main([*run, "--num-parts", "2", "--part-id", "1", "-q"]) == 0
    assert sorted(p.name for p in maps.iterdir()) == ["b.tif"]          # task 1 of 2: the second site only
    stamp = (maps / "b.tif").stat().st_mtime_ns
    assert main([*run, "--num-parts", "2", "--part-id", "0", "-q"]) == 0
    assert sorted(p.name for p in maps.iterdir()) == ["a.tif", "b.tif", "c.tif"]
    assert main(run) == 0                                                # a rerun: everything is done
    assert "remote: skipping 3 input(s) whose outputs exist (use --overwrite to redo them)" in capsys.readouterr().err
    assert (maps / "b.tif").stat().st_mtime_ns == stamp
    assert main([*run, "--overwrite", "-q"]) == 0 and (maps / "b.tif").stat().st_mtime_ns != stamp
    # a site with only some of its outputs (the probabilities were not asked for then) is refused, not half-redone
    assert main([*run[:-5], "--each", "--tile", "64", "--device", "cpu", "-q"]) == 2
    assert "some outputs exist and others do not" in _err(capsys)
    assert main([*run, "--num-parts", "2", "--part-id", "2"]) == 2
    assert "--part-id must be in 0..1 for --num-parts 2" in _err(capsys)


def test_indices_each_parts_through_the_library_functions(tmp_path, scene):
    """A notebook plans and runs the same batch as the CLI, with the same checks."""
    sites = _sites(tmp_path, scene, ["north", "south"])
    out = tmp_path / "stacks"
    done = []
    for part in (0, 1):
        plan = plan_indices(sites, out, each=True, num_parts=2, part_id=part)
        assert plan.total == 2 and [j.name for j in plan.jobs] == [sites[part]]
        assert index_files(plan, ["NDVI"], read=SeriesOptions(), tile=64, quiet=True,
                           report=lambda job, res: done.append(res["path"])) == 0
    assert sorted(p.name for p in out.iterdir()) == ["north_indices.tif", "south_indices.tif"]
    assert len(done) == 2
    plan = plan_indices(sites, out, each=True)
    assert not plan.jobs and len(plan.skipped) == 2
    with pytest.raises(InputError, match="unknown index"):            # checked before any work
        index_files(plan_indices(sites, tmp_path / "x", each=True), ["EVI"])
    assert not (tmp_path / "x").exists()


def test_predict_refuses_bad_output_plans_before_any_work(tmp_path, scene, ffdnn_file, capsys):
    a, a_prob = _sites(tmp_path, scene, ["a", "a_prob"])
    maps = tmp_path / "maps"
    model = ["-m", str(ffdnn_file), "--tile", "64", "--device", "cpu", "-q"]
    # site a's probabilities and site a_prob's class map are one file
    assert main(["predict", a, a_prob, *model, "-o", str(maps), "--each"]) == 2
    assert "a_prob.tif: two inputs map to this output" in _err(capsys)
    assert not maps.exists()
    # a class map the GeoTIFF writer cannot write; a fields table on the class map's path
    o = tmp_path / "map.tif"
    for extra, msg in (([], "-o/--output cannot write a '.png' file (use .tif, .tiff)"),
                       (["--fields", str(scene.fields), "--fields-csv", str(o)], "--fields-csv cannot write a '.tif'")):
        target = tmp_path / "map.png" if not extra else o
        assert main(["predict", a, *model, "-o", str(target), *extra]) == 2
        assert msg in _err(capsys)
    assert not list(tmp_path.glob("map*")) and not list(tmp_path.glob(".map*"))
    # an output that is one of the files of an input folder: refused even with --overwrite, the file untouched
    band = sorted((tmp_path / "a").iterdir())[0]
    before = band.read_bytes()
    for cmd in (["predict", *model], ["indices", "-q"]):
        assert main([cmd[0], a, *cmd[1:], "-o", str(band), "--overwrite"]) == 2
        assert f"{band}: the " in (err := _err(capsys)) and "output is one of the inputs" in err
    assert band.read_bytes() == before
    # the model file is an input too
    assert main(["predict", a, *model, "-o", str(tmp_path / "m.tif"), "--fields", str(scene.fields),
                 "--fields-csv", str(ffdnn_file)]) == 2
    assert "cannot write a '.pt' file" in _err(capsys)


def test_evaluate_reports_are_planned_like_every_output(tmp_path, scene, capsys):
    lab = str(scene.labels)
    for reports, msg in (([tmp_path / "r.csv", tmp_path / "r.csv"], "two outputs of this run have the same path"),
                         ([tmp_path / "r.csv", tmp_path / "r.txt"], "cannot write a '.txt' file (use .csv, .tsv"),
                         ([scene.labels], "cannot write a '.tif' file")):
        assert main(["evaluate", lab, lab, *[a for r in reports for a in ("-o", str(r))], "--overwrite"]) == 2
        assert msg in _err(capsys)
    assert not list(tmp_path.iterdir())


def test_one_product_as_a_folder_and_as_a_zip_map_to_one_output(tmp_path, capsys):
    safe = make_safe(tmp_path / "unzipped")
    (tmp_path / "downloads").mkdir()
    z = zip_safe(safe, tmp_path / "downloads" / f"{safe.name}.zip")
    for extra in ([], ["--overwrite"]):
        assert main(["indices", str(safe), str(z), "--each", "-o", str(tmp_path / "out"), "-q", *extra]) == 2
        err = _err(capsys)
        assert f"{safe.name[:-5]}_indices.tif: two inputs map to this output: {safe} and {z}" in err
    assert not (tmp_path / "out").exists()


def test_own_outputs_in_an_input_folder_are_replaced_but_foreign_files_are_inputs(tmp_path, scene, capsys):
    (site,) = _sites(tmp_path, scene, ["site"])
    out = tmp_path / "site" / "ndvi.tif"
    assert main(["indices", site, "-o", str(out), "--tile", "64", "-q"]) == 0
    assert main(["indices", site, "-o", str(out), "--tile", "64", "-q", "--overwrite"]) == 0  # ours: replaced
    foreign = write_tif(tmp_path / "site" / "S2_20240601.tif", np.full((4, 64, 64), 3000, np.uint16),
                        ["B02", "B03", "B04", "B08"])
    assert main(["indices", site, "-o", str(foreign), "--overwrite", "-q"]) == 2
    assert "S2_20240601.tif: the indices output is one of the inputs" in _err(capsys)


NUMERIC_CASES = [
    (["predict", "x", "-m", "m.pt", "-o", "o.tif"], "--tile", ["0", "15", "8193", "nan", "inf", "-1", "1e30"]),
    (["predict", "x", "-m", "m.pt", "-o", "o.tif"], "--halo", ["-1", "nan", "1e30"]),
    (["predict", "x", "-m", "m.pt", "-o", "o.tif"], "--batch-size", ["0", "-1", "nan"]),
    (["predict", "x", "-m", "m.pt", "-o", "o.tif"], "--offset", ["nan", "inf", "-inf", "1e30", "-70000"]),
    (["indices", "x", "-o", "o.tif"], "--soil-slope", ["nan", "inf", "-1"]),
    (["indices", "x", "-o", "o.tif"], "--grid-days", ["0", "-3", "2.5", "nan"]),
    (["indices", "x", "-o", "o.tif", "--each"], "--num-parts", ["0", "nan"]),
    (["models"], "--width", ["0", "nan", "1e30"]),
    (["models"], "--channels", ["0", "nan"]),
    (["models"], "--depth", ["0", "-1"]),
    (["models"], "--dates", ["0", "inf"]),
    (["synth", "-o", "s"], "--size", ["0", "8", "1e30", "nan"]),
    (["synth", "-o", "s"], "--n-dates", ["0", "-1"]),
    (["synth", "-o", "s"], "--step-days", ["0"]),
    (["synth", "-o", "s"], "--field-size", ["0", "1"]),
    (["synth", "-o", "s"], "--cloud-cover", ["-0.1", "1.5", "nan"]),
    (["synth", "-o", "s"], "--seed", ["-1", "nan", str(2**32)]),
]


@pytest.mark.parametrize(("argv", "option", "values"), NUMERIC_CASES, ids=[c[1] for c in NUMERIC_CASES])
def test_numeric_options_are_typed_and_refused_in_one_usage_line(argv, option, values, capsys):
    for value in values:
        with pytest.raises(SystemExit) as exc:
            main([*argv, option, value])
        assert exc.value.code == 2, (option, value)
        err = capsys.readouterr().err
        assert f"argument {option}" in err and "expected " in err and "Traceback" not in err, (option, value)


def test_bounds_are_finite_and_ordered(scene, tmp_path, capsys):
    for bounds in (["nan", "0", "10", "10"], ["0", "0", "inf", "10"]):
        with pytest.raises(SystemExit):
            main(["indices", str(scene.images), "-o", str(tmp_path / "o.tif"), "--bounds", *bounds])
        assert "argument --bounds" in capsys.readouterr().err
    for bounds in (["10", "0", "0", "10"], ["0", "10", "10", "10"]):
        assert main(["indices", str(scene.images), "-o", str(tmp_path / "o.tif"), "--bounds", *bounds]) == 2
        assert "--bounds must be MINX MINY MAXX MAXY with MINX < MAXX and MINY < MAXY" in _err(capsys)
    # finite but absurd (degrees given for a UTM grid, a typo): the grid they span is refused in one line
    assert main(["indices", str(scene.images), "-o", str(tmp_path / "o.tif"), "--bounds", "0", "0", "1e9",
                 "1e9"]) == 2
    assert "bad --bounds: they span 100000000 x 100000000 pixels of 10 x 10; at most 1048576 per side" in _err(capsys)
    assert not (tmp_path / "o.tif").exists()
    assert main(["synth", "-o", str(tmp_path / "s"), "--size", "17"]) == 2
    assert "--size must be an even number" in _err(capsys)
    assert main(["synth", "-o", str(tmp_path / "s"), "--size", "16", "--field-size", "32"]) == 2
    assert "--field-size (32) must be at most --size (16)" in _err(capsys)


def test_every_numeric_option_of_these_commands_has_a_range():
    for path, parser in iter_subparsers(_parser()):
        if path[:1] == ("train",):
            continue  # the train command's options are declared in pipelines.options
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction) or action.type is None:
                continue
            assert action.type not in (int, float), (path, action.option_strings)
            if isinstance(action.type, Number):
                assert action.type.min is not None or action.type.kind is float, (path, action.option_strings)


def test_safe_zip_with_an_inflating_metadata_member_is_refused_in_one_line(tmp_path, capsys):
    """MTD_MSIL2A.xml that inflates past the metadata bound (64 MiB): one line, exit 2, and the member is not
    inflated into memory (the zip itself is tiny)."""
    safe = make_safe(tmp_path / "p")
    z = tmp_path / f"{safe.name}.zip"
    chunk = b" " * (1 << 20)
    with zipfile.ZipFile(z, "w", zipfile.ZIP_DEFLATED) as zf:
        for p in sorted(safe.rglob("*")):
            if p.name != "MTD_MSIL2A.xml":
                zf.write(p, p.relative_to(safe.parent).as_posix())
        with zf.open(f"{safe.name}/MTD_MSIL2A.xml", "w", force_zip64=True) as fh:
            fh.write(b"<?xml version='1.0'?><n1:Level-2A_User_Product>")
            for _ in range(72):                                   # 72 MiB of spaces
                fh.write(chunk)
    assert z.stat().st_size < 2 << 20
    tracemalloc.start()
    try:
        rc = main(["indices", str(z), "-o", str(tmp_path / "ndvi.tif")])
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert rc == 2
    err = _err(capsys)
    assert err.startswith(f"remote: error: {z}: zip member {safe.name}/MTD_MSIL2A.xml inflates to 72 MiB")
    assert "more than a metadata member may hold (64 MiB); refused" in err
    assert peak < 16 << 20, peak                                   # far below the member's 72 MiB
    assert not (tmp_path / "ndvi.tif").exists()
