"""``remote`` command: Sentinel-2 crop-stress mapping (indices, predict, train, evaluate, synth).

Examples::

    remote synth demo_s2                                   # synthetic season with labels and field IDs
    remote indices demo_s2/images -o ndvi.tif --indices NDVI,NDRE,TCARI/OSAVI
    remote train demo_s2/images --labels demo_s2/labels.tif -o ffdnn.pt --epochs 20
    remote predict demo_s2/images -m ffdnn.pt -o stress.tif --fields demo_s2/fields.tif --explain
    remote evaluate stress.tif demo_s2/labels.tif --csv scores.csv
    remote models                                          # parameter counts: FFDNN vs the same-depth 1-D CNN
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from shared_backbones.cliutil import StageTimer, add_command, add_common, check_output, run_cli, say
from shared_backbones.errors import InputError
from shared_backbones.precision import PRECISION_CHOICES

from .io import DEFAULT_SCL_INVALID, read_date_list


def _int_list(text: str) -> list[int]:
    try:
        return [int(v) for v in text.replace(",", " ").split()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def _str_list(text: str) -> list[str]:
    return [v for v in text.replace(",", " ").split() if v]


def _add_inputs(p: argparse.ArgumentParser) -> None:
    p.add_argument("inputs", nargs="+", help="per-date GeoTIFFs, per-band GeoTIFFs, folders of them, or one stack")
    p.add_argument(
        "--dates",
        type=_str_list,
        default=None,
        help="acquisition dates (YYYY-MM-DD, comma-separated, or a text file with one date per line) "
        "for files without a date in the name, or for a stacked GeoTIFF (date-major)",
    )
    p.add_argument(
        "--band-order",
        type=_str_list,
        default=None,
        help="band names of files without band descriptions, e.g. B02,B03,B04,B08 (the bands of one date for a stack)",
    )
    p.add_argument(
        "--offset",
        type=float,
        default=None,
        help="DN offset added before /10000 (overrides metadata: -1000 for baseline >= 04.00, 0 before)",
    )
    g = p.add_mutually_exclusive_group()
    g.add_argument(
        "--scl-invalid",
        type=_int_list,
        default=None,
        help=f"SCL classes masked as invalid (default {','.join(map(str, DEFAULT_SCL_INVALID))})",
    )
    g.add_argument("--no-cloud-mask", action="store_true", help="ignore the SCL band")
    p.add_argument("--tile", type=int, default=256, help="tile size in pixels (memory is bounded by it)")
    p.add_argument("--quiet", action="store_true", help="no progress bar or summary")


def _add_out(p: argparse.ArgumentParser) -> None:
    p.add_argument("--overwrite", action="store_true", help="replace existing outputs")


def _series(args: argparse.Namespace, offset: float | None = None):
    from .io import open_series

    dates = read_date_list(args.dates) if args.dates else None
    return open_series(
        args.inputs, dates=dates, band_order=args.band_order, offset=args.offset if args.offset is not None else offset
    )


def _scl(args: argparse.Namespace) -> list[int] | None:
    if args.no_cloud_mask:
        return []
    return args.scl_invalid


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="remote", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = p.add_subparsers(dest="command", required=True)

    q = sub.add_parser("indices", help="vegetation-index time stack as one GeoTIFF")
    _add_inputs(q)
    q.add_argument("-o", "--output", required=True, help="output GeoTIFF (float32, bands 'NDVI 2024-05-01'...)")
    q.add_argument(
        "--indices",
        type=_str_list,
        default=["NDVI"],
        help="comma-separated: NDVI,NDRE,PSRI,OSAVI,TCARI,TCARI/OSAVI,MCARI,CIRE,MTCI,WDVI (default NDVI)",
    )
    q.add_argument("--soil-slope", type=float, default=1.0, help="soil-line slope s of WDVI = N - s R (default 1)")
    q.add_argument(
        "--grid-days",
        type=int,
        default=None,
        help="gap-fill onto a regular grid with this step in days (default: the acquisition dates)",
    )
    _add_out(q)

    q = sub.add_parser("predict", help="class and probability maps (tiled, any raster size)")
    _add_inputs(q)
    q.add_argument("-m", "--model", required=True, help="remote model file (.pt)")
    q.add_argument("-o", "--output", required=True, help="class map GeoTIFF (uint8; X_prob.tif is written beside)")
    q.add_argument("--no-prob", action="store_true", help="do not write the probability GeoTIFF")
    q.add_argument(
        "--prob-dtype",
        choices=("float32", "uint8"),
        default="float32",
        help="probabilities as float32 or uint8 scaled by 250 (nodata 255)",
    )
    q.add_argument(
        "--explain",
        action="store_true",
        help="also write X_capsules.tif (class-capsule lengths), X_attribution.tif (per-date gradient x "
        "input) and X_frequency.tif (gradient x input per temporal frequency of the index traits)",
    )
    q.add_argument(
        "--fields",
        default=None,
        help="field IDs: a GeoTIFF (0/nodata = no field) or a vector file (GeoJSON; GeoPackage/Shapefile "
        "with fiona): writes the per-field summary CSV",
    )
    q.add_argument(
        "--field-id-attr",
        default=None,
        help="attribute holding the field ID in a vector file (default field_id, id, fid, FID or ID)",
    )
    q.add_argument(
        "--per-field",
        action="store_true",
        help="classify each field's mean time series instead of every pixel (needs --fields)",
    )
    q.add_argument("--fields-csv", default=None, help="per-field summary path (default X_fields.csv)")
    q.add_argument("--halo", type=int, default=None, help="context pixels around each tile (spatial model)")
    q.add_argument("--batch-size", type=int, default=8192, help="pixels per model call (per-pixel models)")
    q.add_argument("--device", default="auto", help="auto, cpu or cuda")
    q.add_argument("--precision", choices=PRECISION_CHOICES, default="auto")
    _add_out(q)

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
    add_common(q, output="model file to write (.pt; with --fold all: <stem>_fold<k>.pt)", output_required=True,
               devices=True, seed=True, resume=True, fold=True)

    q = sub.add_parser("evaluate", help="accuracy, per-class F1, confusion matrix and kappa of a class map")
    q.add_argument("prediction", help="class map written by 'remote predict'")
    q.add_argument("reference", help="reference label raster (class index, 255 = none)")
    q.add_argument("--classes", type=_str_list, default=None, help="class names (default: from the class map)")
    q.add_argument("--csv", default=None, help="write per-class scores + confusion matrix as CSV")
    q.add_argument("--json", default=None, help="write all metrics as JSON")
    _add_out(q)

    q = sub.add_parser("models", help="list the architectures with their parameter counts (FFDNN vs 1-D CNN)")
    q.add_argument("--bands", type=_str_list, default=None, help="input bands (default the 10 and 20 m bands)")
    q.add_argument("--indices", type=_str_list, default=None, help="index traits of the photochemical filter")
    q.add_argument("--channels", type=int, default=None, help="width of the temporal blocks")
    q.add_argument("--depth", type=int, default=None, help="number of temporal blocks")
    q.add_argument("--dates", type=int, default=12, help="dates of the time grid (unet2d input channels)")

    q = sub.add_parser("synth", help="write a synthetic Sentinel-2 season with labels and field IDs")
    q.add_argument("out_dir")
    q.add_argument("--size", type=int, default=128, help="raster size in 10 m pixels (even; default 128)")
    q.add_argument("--n-dates", type=int, default=24)
    q.add_argument("--step-days", type=int, default=6)
    q.add_argument("--field-size", type=int, default=16)
    q.add_argument("--cloud-cover", type=float, default=0.25)
    q.add_argument("--seed", type=int, default=0)
    q.add_argument("--quiet", action="store_true")
    _add_out(q)
    return p


def _cmd_indices(args: argparse.Namespace) -> int:
    from .products import write_index_stack

    check_output(args.output, args.overwrite)
    series = _series(args)
    scl = _scl(args)
    res = write_index_stack(
        series,
        args.output,
        args.indices,
        soil_slope=args.soil_slope,
        scl_invalid=DEFAULT_SCL_INVALID if scl is None else scl,
        grid_days=args.grid_days,
        tile=args.tile,
        overwrite=args.overwrite,
        quiet=args.quiet,
    )
    say(
        f"wrote {res['path']}: {len(res['indices'])} index(es) x {res['dates']} dates = {res['bands']} bands, "
        f"{res['size'][0]} x {res['size'][1]} px",
        args.quiet,
    )
    return 0


def _cmd_predict(args: argparse.Namespace) -> int:
    from .predict import PredictOutputs, RemoteModel, predict_series

    timer = StageTimer()
    outs = PredictOutputs.beside(
        args.output, probabilities=not args.no_prob, explain=args.explain, fields=args.fields is not None
    )
    if args.fields_csv:
        outs.fields_csv = Path(args.fields_csv)
    for p in outs.paths():
        check_output(p, args.overwrite)
    with timer("load"):
        rm = RemoteModel.from_file(args.model, args.device, args.precision)
        series = _series(args, offset=rm.preprocessing.get("offset"))
    with timer("predict"):
        s = predict_series(
            series,
            rm,
            outs,
            tile=args.tile,
            halo=args.halo,
            batch_size=args.batch_size,
            prob_dtype=args.prob_dtype,
            fields=args.fields,
            field_id_attr=args.field_id_attr,
            per_field=args.per_field,
            scl_invalid=_scl(args),
            overwrite=args.overwrite,
            quiet=args.quiet,
        )
    frac = ", ".join(f"{c} {n / max(1, s['valid_pixels']):.1%}" for c, n in s["class_counts"].items())
    fields = f", {s['fields_with_data']}/{s['fields']} fields with data" if "fields" in s else ""
    say(
        f"wrote {', '.join(s['outputs'].values())}\n{s['valid_pixels']}/{s['pixels']} pixels with data{fields} "
        f"({s['dates']} dates -> {s['grid_dates']}-date grid, {s['tiles']} tiles, {s['mode']}): {frac}; "
        f"{timer.summary()}",
        args.quiet,
    )
    return 0


def _cmd_train(args: argparse.Namespace) -> int:
    from pipelines.options import RemoteTrainOptions, options_from
    from pipelines.remote import train_remote

    out = Path(args.output)
    if args.fold == "all":
        for k in range(args.folds):
            check_output(out.with_name(f"{out.stem}_fold{k}{out.suffix}"), args.overwrite)
    else:
        check_output(out, args.overwrite)
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
    from .evaluate import evaluate_maps, format_report, write_reports

    for p in (args.csv, args.json):
        if p:
            check_output(p, args.overwrite)
    m = evaluate_maps(args.prediction, args.reference, args.classes)
    print(format_report(m))
    write_reports(m, args.csv, args.json, args.overwrite)
    return 0


def _cmd_models(args: argparse.Namespace) -> int:
    from shared_backbones.registry import create_model

    from .io import DEFAULT_BANDS
    from .models import DEFAULT_INDICES

    bands = args.bands or list(DEFAULT_BANDS)
    kw = {"bands": bands, "indices": args.indices or list(DEFAULT_INDICES)}
    kw.update({k: v for k, v in (("channels", args.channels), ("depth", args.depth)) if v is not None})
    try:
        sizes = {a: sum(p.numel() for p in create_model(a, **kw).parameters()) for a in ("ffdnn", "cnn1d")}
        sizes["unet2d"] = sum(
            p.numel() for p in create_model("unet2d", in_channels=args.dates * len(bands)).parameters()
        )
    except (KeyError, ValueError) as exc:
        raise InputError(str(exc.args[0]) if exc.args else str(exc)) from None
    depth = kw.get("depth", 2)
    print(f"ffdnn   {sizes['ffdnn']:>12,} parameters  index filter -> {depth} Fourier blocks -> capsules + routing")
    print(
        f"cnn1d   {sizes['cnn1d']:>12,} parameters  same filter -> {depth} conv blocks (same depth) -> linear "
        f"({sizes['cnn1d'] / sizes['ffdnn']:.2f}x the FFDNN)"
    )
    print(
        f"unet2d  {sizes['unet2d']:>12,} parameters  smp U-Net (resnet18), {args.dates} dates x {len(bands)} bands in"
    )
    return 0


def _cmd_synth(args: argparse.Namespace) -> int:
    from .synthetic import make_season

    out = Path(args.out_dir)
    if out.exists() and any(out.iterdir()) and not args.overwrite:
        raise InputError("output folder exists and is not empty (use --overwrite)", out)
    if args.size < 16 or args.size % 2:
        raise InputError(f"--size must be an even number >= 16, not {args.size}")
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
    say(
        f"wrote {len(sc.dates)} dates ({sc.dates[0]} .. {sc.dates[-1]}) under {sc.images}, labels {sc.labels}, "
        f"fields {sc.fields}",
        args.quiet,
    )
    return 0


def _main(argv: Sequence[str] | None) -> int:
    args = _parser().parse_args(argv)
    for name in ("tile", "batch_size", "epochs"):
        if getattr(args, name, 1) is not None and getattr(args, name, 1) < 1:
            raise InputError(f"--{name.replace('_', '-')} must be >= 1")
    return {
        "indices": _cmd_indices,
        "predict": _cmd_predict,
        "train": _cmd_train,
        "evaluate": _cmd_evaluate,
        "models": _cmd_models,
        "synth": _cmd_synth,
    }[args.command](args)


def main(argv: Sequence[str] | None = None) -> int:
    return run_cli(_main, argv, prog="remote")


if __name__ == "__main__":
    sys.exit(main())
