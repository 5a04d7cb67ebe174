"""``remote`` command: Sentinel-2 crop-stress mapping (indices, predict, train, evaluate, models, synth).

Inputs are Sentinel-2 L2A products as delivered: ESA ``.SAFE`` folders or ``.SAFE.zip`` files, STAC items (Earth
Search), per-date or per-band GeoTIFFs, folders of any of these, or one stacked GeoTIFF; see docs/remote.md.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from shared_backbones.cliutil import (
    add_command,
    add_common,
    add_deprecated,
    check_output,
    make_parser,
    parse_positive_int,
    prepare_outputs,
    run_cli,
    say,
)
from shared_backbones.errors import InputError
from shared_backbones.options import Number, add_parts, probability, require, seed_int

from .naming import DEFAULT_SCL_INVALID, read_date_list

PROG = "remote"
EXAMPLES = [
    "remote indices S2B_MSIL2A_20240501T102031_N0510_R065_T32UQD_20240501T130000.SAFE.zip downloads/ "
    "-o ndvi.tif --indices NDVI,TCARI/OSAVI",
    "remote predict demo_s2/images -m ffdnn.pt -o stress.tif --fields demo_s2/fields.tif --explain",
    "remote evaluate stress.tif demo_s2/labels.tif -o scores.csv",
]
#: a tile edge in pixels: memory grows with its square (8192: ~64 Mpx per band and date)
TILE = Number(int, min=16, max=8192)
#: map coordinates: any finite number (the grid they span is bounded: remote.resample.MAX_GRID_SIDE)
FINITE = Number(float)
#: a DN offset (BOA_ADD_OFFSET is -1000 from baseline 04.00): within the uint16 range of the digital numbers
OFFSET = Number(float, min=-65535, max=65535)
#: width of the temporal blocks (remote models --width)
WIDTH = Number(int, min=1, max=512)


def _int_list(text: str) -> list[int]:
    try:
        return [int(v) for v in text.replace(",", " ").split()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def _str_list(text: str) -> list[str]:
    return [v for v in text.replace(",", " ").split() if v]


def _add_inputs(p: argparse.ArgumentParser, each: bool = True) -> None:
    p.add_argument("inputs", nargs="+",
                   help="ESA .SAFE folders or .SAFE.zip files, STAC item/collection JSON, per-date or per-band "
                        "GeoTIFFs, folders of them (searched to the product's depth), or one stacked GeoTIFF")
    p.add_argument("--dates", type=_str_list, default=None,
                   help="acquisition dates (YYYY-MM-DD, comma-separated, or a text file with one date per line) "
                        "for files without a date in the name, or for a stacked GeoTIFF (date-major)")
    p.add_argument("--band-order", type=_str_list, default=None,
                   help="band names of files without band descriptions, e.g. B02,B03,B04,B08 (the bands of one "
                        "date for a stack)")
    p.add_argument("--offset", type=OFFSET, default=None,
                   help="DN offset added before dividing by the quantification value, for this run: overrides the "
                        "product metadata (MTD_MSIL2A.xml, STAC, tags); without it a product's metadata decide, "
                        "else a model's training offset, else the date (both with a note)")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--scl-invalid", type=_int_list, default=None,
                   help=f"SCL classes masked as invalid [{','.join(map(str, DEFAULT_SCL_INVALID))}]")
    g.add_argument("--no-cloud-mask", action="store_true", help="ignore the SCL band")
    o = p.add_mutually_exclusive_group()
    o.add_argument("--grid", default=None, metavar="REF.tif",
                   help="write on the grid (CRS, transform, size) of this raster [the 10 m grid of the first date]")
    o.add_argument("--bounds", type=FINITE, nargs=4, default=None, metavar=("MINX", "MINY", "MAXX", "MAXY"),
                   help="write on the 10 m grid extended or cut to these bounds (grid CRS units, or --bounds-crs)")
    p.add_argument("--crs", default=None, metavar="EPSG:N",
                   help="output CRS of an area (a projected CRS, e.g. EPSG:32633) [the UTM zone of the area's centre "
                        "when the inputs span several tiles or zones; else the first date's]")
    p.add_argument("--bounds-crs", default=None, metavar="EPSG:N",
                   help="CRS of --bounds, e.g. EPSG:4326 for longitude/latitude [the output grid's CRS]")
    p.add_argument("--tile", type=TILE, default=256, help="tile size in pixels (memory is bounded by it)")
    if each:
        p.add_argument("--each", action="store_true",
                       help="treat every input as its own time series (e.g. one folder per site): -o is then a "
                            "folder, a bad input is reported and the others go on; inputs whose outputs exist are "
                            "skipped unless --overwrite")
        add_parts(p, "work (with --each: the inputs; otherwise the output grid, as row blocks written to "
                     "X.part-K-of-N.tif and joined by 'remote mosaic')")
    p.add_argument("-v", "--verbose", action="store_true",
                   help="list the file each band of each date is read from, its resolution and radiometry")


def _add_outputs(p: argparse.ArgumentParser, preview_what: str) -> None:
    """Output format of every raster (COG by default) and the quick-look PNG."""
    p.add_argument("--format", choices=("COG", "GTiff"), default="COG",
                   help="raster format: COG = Cloud-Optimised GeoTIFF (512 px tiles, overviews); GTiff = a plain "
                        "tiled GeoTIFF without overviews")
    p.add_argument("--compress", choices=("deflate", "zstd"), default="deflate",
                   help="raster compression (zstd: faster, needs GDAL >= 2.3 to read)")
    if preview_what:
        p.add_argument("--preview", default=None, metavar="PNG",
                       help=f"also write a quick-look PNG ({preview_what}, product footprints, scale bar; at most "
                            "1200 px wide)")


def _read_options(args: argparse.Namespace):
    """How the inputs are read (dates, band order, offset, grid or bounds), with the bounds checked."""
    from .discovery import SeriesOptions

    bounds = getattr(args, "bounds", None)
    if bounds is not None:
        minx, miny, maxx, maxy = bounds
        require(minx < maxx and miny < maxy, f"--bounds must be MINX MINY MAXX MAXY with MINX < MAXX and MINY < MAXY, "
                                             f"got {' '.join(f'{b:g}' for b in bounds)}")
    crs, bounds_crs = getattr(args, "crs", None), getattr(args, "bounds_crs", None)
    if crs is not None or bounds_crs is not None:
        from .area import parse_crs

        require(bounds_crs is None or bounds is not None, "--bounds-crs needs --bounds")
        require(crs is None or getattr(args, "grid", None) is None, "give either --grid or --crs, not both")
        crs = parse_crs(crs) if crs is not None else None
        bounds_crs = parse_crs(bounds_crs) if bounds_crs is not None else None
    return SeriesOptions(dates=read_date_list(args.dates) if args.dates else None, band_order=args.band_order,
                         offset=args.offset, grid=getattr(args, "grid", None), bounds=bounds, crs=crs,
                         bounds_crs=bounds_crs, cloud_mask=not getattr(args, "no_cloud_mask", False))


def _show_series(args: argparse.Namespace):
    """Print a series' provenance (-v) and notices (unless -q)."""
    quiet = getattr(args, "quiet", False)

    def show(series) -> None:
        if getattr(args, "verbose", False):
            print("\n".join(series.provenance()), file=sys.stderr)
        for line in series.notices:
            say(f"{PROG}: note: {line}", quiet)

    return show


def _series(args: argparse.Namespace):
    series = _read_options(args).open(list(args.inputs))
    _show_series(args)(series)
    return series


def _scl(args: argparse.Namespace) -> list[int] | None:
    if args.no_cloud_mask:
        return []
    return args.scl_invalid


def _parser() -> argparse.ArgumentParser:
    p = make_parser(PROG, __doc__, EXAMPLES)
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    q = add_command(sub, "indices", help="vegetation-index time stack as one GeoTIFF", examples=[
        "remote indices S2B_MSIL2A_20210512T102619_N0500_R108_T32UQD_20230301T120000.SAFE.zip "
        "S2A_MSIL2A_20210522T102619_N0500_R108_T32UQD_20230302T120000.SAFE -o ndvi.tif -v",
        "remote indices demo_s2/images -o stack.tif --indices NDVI,NDRE,TCARI/OSAVI --grid-days 10",
        "remote indices earth-search/items.json -o ndvi.tif --bounds 600000 5290000 610000 5300000",
    ])
    _add_inputs(q)
    add_common(q, output="output GeoTIFF (float32, bands 'NDVI 2024-05-01'...); a folder with --each",
               output_required=True, device=False, precision=False)
    q.add_argument("--indices", type=_str_list, default="NDVI",
                   help="comma-separated: NDVI,NDRE,PSRI,OSAVI,TCARI,TCARI/OSAVI,MCARI,CIRE,MTCI,WDVI")
    q.add_argument("--soil-slope", type=Number(float, min=0, max=100), default=1.0,
                   help="soil-line slope s of WDVI = N - s R")
    q.add_argument("--grid-days", type=Number(int, min=1, max=3660), default=None,
                   help="gap-fill onto a regular grid with this step in days [the acquisition dates]")
    _add_outputs(q, "one index on the date with the most valid pixels, with a colour bar")

    q = add_command(sub, "predict", help="class and probability maps (tiled, any raster size)", examples=[
        "remote predict demo_s2/images -m ffdnn.pt -o stress.tif --fields demo_s2/fields.tif --explain",
        "remote predict downloads/ -m ffdnn.pt -o stress.tif --device cuda --prob-dtype uint8",
        "remote predict site_a/ site_b/ -m ffdnn.pt -o maps/ --each -q",
    ])
    _add_inputs(q)
    add_common(q, model="one", model_help="remote model file (.pt)",
               output="class map GeoTIFF (uint8; X_prob.tif is written beside); a folder with --each",
               output_required=True)
    q.add_argument("--no-prob", action="store_true", help="do not write the probability GeoTIFF")
    q.add_argument("--prob-dtype", choices=("float32", "uint8"), default="float32",
                   help="probabilities as float32 or uint8 scaled by 250 (nodata 255)")
    q.add_argument("--explain", action="store_true",
                   help="also write X_capsules.tif (class-capsule lengths), X_attribution.tif (per-date gradient x "
                        "input) and X_frequency.tif (gradient x input per temporal frequency of the index traits)")
    q.add_argument("--fields", default=None,
                   help="field IDs: a GeoTIFF (0/nodata = no field) or a vector file (GeoJSON; GeoPackage, "
                        "Shapefile... with the 'vector' extra): writes the per-field summary CSV")
    q.add_argument("--field-id-attr", default=None,
                   help="attribute holding the field ID in a vector file [field_id, id, fid, FID or ID]")
    q.add_argument("--per-field", action="store_true",
                   help="classify each field's mean time series instead of every pixel (needs --fields)")
    q.add_argument("--fields-csv", default=None, help="per-field summary path [X_fields.csv]")
    q.add_argument("--halo", type=Number(int, min=0, max=1024), default=None,
                   help="context pixels around each tile (spatial model)")
    q.add_argument("--batch-size", type=Number(int, min=1, max=1 << 24), default=8192,
                   help="pixels per model call (per-pixel models)")
    q.add_argument("--threads", type=parse_positive_int, default=None, metavar="N",
                   help="torch threads for the network [CPUs usable minus one for the reader; above four CPUs "
                        "minus the writer and the reader threads (40%% of the CPUs but two, CONVSUITE_READERS sets "
                        "them); CONVSUITE_THREADS or OMP_NUM_THREADS override the default]")
    _add_outputs(q, "class map with a legend beside the stress probability")

    q = add_command(sub, "mosaic", help="join the parts of a --num-parts run (or rasters tiling one grid) exactly",
                    examples=["remote mosaic stress.part-*-of-8.tif -o stress.tif",
                              "remote mosaic stress_prob.part-*-of-8.tif -o stress_prob.vrt",
                              "remote mosaic ndvi.part-0-of-2.tif ndvi.part-1-of-2.tif -o ndvi.tif --preview ndvi.png"])
    q.add_argument("parts", nargs="+", help="the part rasters (all N parts of one run; any order)")
    add_common(q, output="the joined raster: .tif (a COG, or --format GTiff) or .vrt (a GDAL VRT referring to the "
                         "parts)", output_required=True, device=False, precision=False)
    _add_outputs(q, "the joined map")

    from pipelines.options import RemoteTrainOptions, add_options  # a light module: no torch, no Lightning

    q = add_command(
        sub, "train", help="train a model (spatially blocked k-fold) and export the model file",
        examples=["remote train demo_s2/images --labels demo_s2/labels.tif -o ffdnn.pt --epochs 20",
                  "remote train --table samples.csv -o ffdnn.pt --fold all --devices 2",
                  "remote train demo_s2/images --labels demo_s2/labels.tif -o ffdnn.pt --resume"])
    q.add_argument("inputs", nargs="*", help="image time series (as for predict); omit with --table")
    q.add_argument(
        "--dates",
        type=_str_list,
        default=None,
        help="acquisition dates (comma-separated or a text file) for undated files or a stack",
    )
    q.add_argument(
        "--band-order",
        type=_str_list,
        default=None,
        help="band names of files without band descriptions (the bands of one date for a stack)",
    )
    add_options(q, RemoteTrainOptions)
    add_deprecated(q, "--channels", "--width", "channels")
    add_common(q, output="model file to write (.pt; with --fold all: <stem>_fold<k>.pt)", output_required=True,
               devices=True, seed=True, resume=True, fold=True)

    q = add_command(sub, "evaluate", help="accuracy, per-class F1, confusion matrix and kappa of a class map",
                    examples=["remote evaluate stress.tif demo_s2/labels.tif",
                              "remote evaluate stress.tif labels.tif -o scores.csv -o scores.json --classes "
                              "healthy,yellow_rust,nitrogen_deficiency"])
    q.add_argument("prediction", help="class map written by 'remote predict'")
    q.add_argument("reference", help="reference label raster (class index, 255 = none)")
    q.add_argument("--classes", type=_str_list, default=None, help="class names [from the class map's tags]")
    q.add_argument("-o", "--output", action="append", default=None,
                   help="report file: .csv, .tsv or .json (one row per class, an 'overall' row, confusion matrix "
                        "columns pred_<class>); repeat for several formats")
    add_deprecated(q, "--csv", "-o/--output scores.csv", "csv_report")
    add_deprecated(q, "--json", "-o/--output scores.json", "json_report")
    add_common(q, device=False, precision=False)

    q = add_command(sub, "models", help="list the architectures with their parameter counts (FFDNN vs 1-D CNN)",
                    examples=["remote models", "remote models --width 16 --depth 3 --dates 24"])
    q.add_argument("--bands", type=_str_list, default=None, help="input bands [the 10 and 20 m bands]")
    q.add_argument("--indices", type=_str_list, default=None, help="index traits of the photochemical filter")
    q.add_argument("--width", type=WIDTH, default=None, help="width (channels) of the temporal blocks")
    add_deprecated(q, "--channels", "--width", "width")
    q.add_argument("--depth", type=Number(int, min=1, max=32), default=None, help="number of temporal blocks")
    q.add_argument("--dates", type=Number(int, min=1, max=400), default=12,
                   help="dates of the time grid (unet2d input channels)")
    add_common(q, device=False, precision=False, overwrite=False)

    q = add_command(sub, "synth", help="write a synthetic Sentinel-2 season with labels and field IDs",
                    examples=["remote synth -o demo_s2", "remote synth -o big --size 1024 --n-dates 30 -q"])
    q.add_argument("out_dir", nargs="?", default=None, help="output folder (same as -o/--output)")
    add_common(q, output="output folder (created; must be empty unless --overwrite)", device=False,
               precision=False)
    q.add_argument("--size", type=Number(int, min=16, max=8192), default=128,
                   help="raster size in 10 m pixels (even)")
    q.add_argument("--n-dates", type=Number(int, min=1, max=400), default=24, help="number of acquisition dates")
    q.add_argument("--step-days", type=Number(int, min=1, max=366), default=6, help="days between acquisitions")
    q.add_argument("--field-size", type=Number(int, min=2, max=8192), default=16,
                   help="field size in pixels (at most --size)")
    q.add_argument("--cloud-cover", type=probability, default=0.25, help="mean cloud fraction per date")
    q.add_argument("--seed", type=seed_int, default=0, help="random seed of the scene")
    return p


def _cmd_indices(args: argparse.Namespace) -> int:
    from .products import index_files, plan_indices

    read = _read_options(args)
    plan = plan_indices(args.inputs, args.output, each=args.each, overwrite=args.overwrite,
                        num_parts=args.num_parts, part_id=args.part_id, preview=args.preview)
    scl = _scl(args)

    def report(job, res: dict) -> None:
        part = f" (part {res['part']}: rows {res['rows'][0]}..{res['rows'][1] - 1})" if "part" in res else ""
        say(f"wrote {res['path']}{part}: {len(res['indices'])} index(es) x {res['dates']} dates = {res['bands']} "
            f"bands, {res['size'][0]} x {res['size'][1]} px" + (f"; preview {res['preview'].path}"
                                                                 if "preview" in res else ""), args.quiet)

    return index_files(plan, args.indices, read=read, soil_slope=args.soil_slope,
                       scl_invalid=DEFAULT_SCL_INVALID if scl is None else scl, grid_days=args.grid_days,
                       tile=args.tile, overwrite=args.overwrite, quiet=args.quiet, fmt=args.format,
                       compress=args.compress, on_series=_show_series(args), report=report, prog=PROG)


def _cmd_predict(args: argparse.Namespace) -> int:
    import time

    from shared_backbones.checkpoint import load_model_file

    from .predict import RemoteModel, plan_predict, predict_files, writes_capsules

    read = _read_options(args)
    t0 = time.perf_counter()
    mf = load_model_file(args.model, task=RemoteModel.TASK)  # read (not built): its kind decides the outputs
    plan = plan_predict(args.inputs, args.output, model=args.model, each=args.each, probabilities=not args.no_prob,
                        explain=args.explain, capsules=writes_capsules(mf), fields=args.fields is not None,
                        fields_csv=args.fields_csv, overwrite=args.overwrite, num_parts=args.num_parts,
                        part_id=args.part_id, preview=args.preview)
    rm = RemoteModel.from_model_file(mf, args.device, args.precision, path=Path(args.model)) if plan.jobs else None
    load_s = time.perf_counter() - t0

    def report(job, s: dict) -> None:
        frac = ", ".join(f"{c} {n / max(1, s['valid_pixels']):.1%}" for c, n in s["class_counts"].items())
        fields = f", {s['fields_with_data']}/{s['fields']} fields with data" if "fields" in s else ""
        part = f" (part {s['part']}: rows {s['rows'][0]}..{s['rows'][1] - 1})" if "part" in s else ""
        say(f"wrote {', '.join(s['outputs'].values())}{part}\n{s['valid_pixels']}/{s['pixels']} pixels with data"
            f"{fields} "
            f"({s['dates']} dates -> {s['grid_dates']}-date grid, {s['tiles']} tiles, {s['mode']}, "
            f"{s['threads']} network thread(s)): {frac}; load {load_s:.2f}s, read + predict "
            f"{s['seconds']['job']:.2f}s", args.quiet)

    return predict_files(plan, rm, read=read, tile=args.tile, halo=args.halo, batch_size=args.batch_size,
                         prob_dtype=args.prob_dtype, fields=args.fields, field_id_attr=args.field_id_attr,
                         per_field=args.per_field, scl_invalid=_scl(args), overwrite=args.overwrite,
                         quiet=args.quiet, threads=args.threads, fmt=args.format, compress=args.compress,
                         on_series=_show_series(args), report=report, prog=PROG)


def _cmd_train(args: argparse.Namespace) -> int:
    from pipelines.options import RemoteTrainOptions, options_from
    from pipelines.remote import train_remote

    out = Path(args.output)
    if args.fold == "all":
        for k in range(args.folds):
            check_output(out.with_name(f"{out.stem}_fold{k}{out.suffix}"), args.overwrite)
    else:
        check_output(out, args.overwrite or args.resume is not None)
    if args.table and args.inputs:
        raise InputError("give either input rasters or --table, not both")
    series = _series(args) if args.inputs else None
    res = train_remote(out, series=series, **options_from(RemoteTrainOptions, args))
    for r in res:  # empty on DDP ranks other than 0
        m = r.metrics
        f1 = ", ".join(f"{c} {v['f1']:.3f}" for c, v in m["per_class"].items())
        print(
            f"fold {r.fold}: {r.model_file} ({args.arch}, {r.parameters:,} parameters; train {r.n_train}, "
            f"held-out {r.n_test}) overall accuracy "
            f"{m['overall_accuracy']:.4f}, kappa {m['kappa']:.4f}, F1: {f1}"
        )
    return 0


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from shared_backbones.planning import Job, plan_outputs
    from shared_backbones.report import REPORT

    from .evaluate import evaluate_maps, format_report, write_reports

    outputs = [*(args.output or []),
               *(p for p in (getattr(args, "csv_report", None), getattr(args, "json_report", None)) if p)]
    roles = {f"report {i + 1}": Path(p) for i, p in enumerate(outputs)}
    plan_outputs([Job(args.prediction, [Path(args.prediction), Path(args.reference)], roles)],
                 writers=dict.fromkeys(roles, REPORT), overwrite=args.overwrite)
    m = evaluate_maps(args.prediction, args.reference, args.classes)
    print(format_report(m))
    write_reports(m, outputs, overwrite=args.overwrite)
    say(f"wrote {', '.join(map(str, outputs))}" if outputs else "", args.quiet or not outputs)
    return 0


def _cmd_mosaic(args: argparse.Namespace) -> int:
    from .join import mosaic

    res = mosaic(args.parts, args.output, fmt=args.format, compress=args.compress, overwrite=args.overwrite,
                 preview=args.preview)
    say(f"wrote {res['path']} ({res['format']}): {res['parts']} part(s), {res['size'][0]} x {res['size'][1]} px"
        + (f"; preview {args.preview}" if args.preview else ""), args.quiet)
    return 0


def model_sizes(bands: Sequence[str] | None = None, indices: Sequence[str] | None = None,
                width: int | None = None, depth: int | None = None, dates: int = 12) -> list[dict]:
    """Parameter counts of the registered remote architectures for one configuration (``remote models``)."""
    from shared_backbones.registry import create_model

    from .models import DEFAULT_INDICES
    from .naming import DEFAULT_BANDS

    bands = list(bands or DEFAULT_BANDS)
    kw: dict = {"bands": bands, "indices": list(indices or DEFAULT_INDICES)}
    kw.update({k: v for k, v in (("channels", width), ("depth", depth)) if v is not None})
    sizes = {a: sum(p.numel() for p in create_model(a, **kw).parameters()) for a in ("ffdnn", "cnn1d")}
    sizes["unet2d"] = sum(p.numel() for p in create_model("unet2d", in_channels=dates * len(bands)).parameters())
    d = kw.get("depth", 2)
    return [
        {"arch": "ffdnn", "parameters": sizes["ffdnn"],
         "description": f"index filter -> {d} Fourier blocks -> capsules + routing"},
        {"arch": "cnn1d", "parameters": sizes["cnn1d"],
         "description": f"same filter -> {d} conv blocks (same depth) -> linear "
                        f"({sizes['cnn1d'] / sizes['ffdnn']:.2f}x the FFDNN)"},
        {"arch": "unet2d", "parameters": sizes["unet2d"],
         "description": f"smp U-Net (resnet18), {dates} dates x {len(bands)} bands in"},
    ]


def _cmd_models(args: argparse.Namespace) -> int:
    try:
        rows = model_sizes(args.bands, args.indices, args.width, args.depth, args.dates)
    except (KeyError, ValueError) as exc:
        raise InputError(str(exc.args[0]) if exc.args else str(exc)) from None
    for r in rows:
        print(f"{r['arch']:<7} {r['parameters']:>12,} parameters  {r['description']}")
    return 0


def _cmd_synth(args: argparse.Namespace) -> int:
    from .synthetic import make_season

    if args.out_dir and args.output and Path(args.out_dir) != Path(args.output):
        raise InputError("give the output folder once (positional or -o/--output)")
    target = args.output or args.out_dir
    if not target:
        raise InputError("no output folder: remote synth -o FOLDER")
    out = Path(target)
    prepare_outputs([], folders=[out])
    if out.exists() and any(out.iterdir()) and not args.overwrite:
        raise InputError("output folder exists and is not empty (use --overwrite)", out)
    require(args.size % 2 == 0, f"--size must be an even number, not {args.size}")
    require(args.field_size <= args.size, f"--field-size ({args.field_size}) must be at most --size ({args.size})")
    sc = make_season(
        out,
        height=args.size,
        width=args.size,
        n_dates=args.n_dates,
        step_days=args.step_days,
        field_size=args.field_size,
        seed=args.seed,
        cloud_cover=args.cloud_cover,
        overwrite=True,
    )
    say(f"wrote {len(sc.dates)} dates ({sc.dates[0]} .. {sc.dates[-1]}) under {sc.images}, labels {sc.labels}, "
        f"fields {sc.fields}", args.quiet)
    return 0


def _main(argv: Sequence[str] | None) -> int:
    args = _parser().parse_args(argv)
    return {
        "indices": _cmd_indices,
        "predict": _cmd_predict,
        "train": _cmd_train,
        "evaluate": _cmd_evaluate,
        "mosaic": _cmd_mosaic,
        "models": _cmd_models,
        "synth": _cmd_synth,
    }[args.command](args)


def main(argv: Sequence[str] | None = None) -> int:
    return run_cli(_main, argv, prog=PROG)


if __name__ == "__main__":
    sys.exit(main())
