"""``medseg`` command for 3-D volumes: ``predict``, ``train``, ``evaluate``, ``import-stunet``, ``synth``.

The work is done by library functions (:mod:`medseg.predict`, :mod:`medseg.evaluate`, :mod:`medseg.importers`,
:mod:`medseg.synthetic`, :mod:`pipelines.medseg`); this module parses arguments, shows progress and reports.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from shared_backbones.cliutil import (
    StageTimer,
    add_command,
    add_common,
    add_run_options,
    check_output,
    progress,
    run_cli,
    say,
)
from shared_backbones.errors import InputError

PROG = "medseg"


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog=PROG,
        description="3-D medical image segmentation (NIfTI in, NIfTI out). "
        "'medseg phases ...' runs the colonoscopy phase pipeline.",
    )
    sub = ap.add_subparsers(dest="command", required=True)

    p = sub.add_parser("predict", help="segment NIfTI volumes with one or more model files")
    p.add_argument(
        "inputs",
        nargs="+",
        help="a .nii/.nii.gz file, several files forming the channels of one "
        "case, or one folder of cases (<case>_0000.nii.gz ... for multi-channel models)",
    )
    p.add_argument(
        "-m",
        "--model",
        action="append",
        required=True,
        help="model file (.pt); repeat to ensemble (probabilities averaged)",
    )
    p.add_argument(
        "-o", "--output", help="output file (one case) or folder (default: <input>_seg.nii.gz / <folder>_seg/)"
    )
    p.add_argument("--tta", action="store_true", help="mirror test-time augmentation (8 flips, ~8x slower)")
    p.add_argument("--overlap", type=float, default=0.5, help="window overlap fraction (default 0.5)")
    p.add_argument("--batch-size", type=int, default=2, help="windows per forward pass (default 2)")
    p.add_argument(
        "--save-probabilities",
        action="store_true",
        help="also write <case>_probabilities.nii.gz (4-D float32, one volume per class)",
    )
    p.add_argument("--largest-component", action="store_true", help="keep the largest connected part per class")
    p.add_argument("--classes", nargs="+", help="only keep these classes (names or label numbers)")
    p.add_argument("--stats", help="write per-class voxel counts and volumes (mm^3) to this JSON file")
    p.add_argument(
        "--preview", help="write a PNG with three orthogonal slices and the labels (a folder when predicting a folder)"
    )
    add_run_options(p)

    from pipelines.options import MedsegTrainOptions, add_options  # a light module: no torch, no Lightning

    t = add_command(
        sub, "train", help="train on an nnU-Net/MSD dataset folder (imagesTr/, labelsTr/, dataset.json)",
        examples=["medseg train phantoms -o unet.pt --epochs 20 --optimizer adamw",
                  "medseg train Task04 -o unet.pt --devices 4 --precision bf16 --max-time 12:00:00",
                  "medseg train Task04 -o unet.pt --resume"])
    t.add_argument("dataset", help="dataset folder")
    add_options(t, MedsegTrainOptions)
    add_common(t, output="model file to write (.pt)", output_required=True, devices=True, seed=True, resume=True,
               fold=True)

    e = sub.add_parser("evaluate", help="Dice, HD95 and NSD per class of a prediction folder against references")
    e.add_argument("pred_dir")
    e.add_argument("ref_dir")
    e.add_argument("--csv", help="write per case/class metrics and means to this CSV")
    e.add_argument("--tolerance", type=float, default=2.0, help="NSD tolerance in mm (default 2)")
    e.add_argument("--labels", help="dataset.json with class names (default: <ref_dir>/../dataset.json if present)")
    e.add_argument("--overwrite", action="store_true")
    e.add_argument("--quiet", action="store_true")

    i = sub.add_parser("import-stunet", help="convert an official STU-Net .model (+ .model.pkl plans) to a model file")
    i.add_argument("checkpoint", help="nnU-Net v1 .model file (plans read from <file>.pkl)")
    i.add_argument("-o", "--output", required=True)
    i.add_argument("--plans", help="plans pickle (default: <checkpoint>.pkl)")
    i.add_argument("--labels", help="dataset.json giving the class names")
    i.add_argument("--overwrite", action="store_true")
    i.add_argument("--quiet", action="store_true")

    s = sub.add_parser("synth", help="write a synthetic phantom dataset (nnU-Net/MSD layout) to try the tools")
    s.add_argument("output", help="dataset folder to create")
    s.add_argument("--train", type=int, default=8)
    s.add_argument("--test", type=int, default=2)
    s.add_argument("--channels", type=int, default=1)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--overwrite", action="store_true")
    s.add_argument("--quiet", action="store_true")
    return ap


# --------------------------------------------------------------------------------------------------- predict
def _plan_cases(inputs: list[str], output: str | None, channels: int) -> list[tuple[str, list[Path], Path]]:
    """(case name, channel files, output path) for every case to predict."""
    from .io import case_name, discover_cases

    paths = [Path(p) for p in inputs]
    for p in paths:
        if not p.exists():
            raise InputError("file not found", p)
    if len(paths) == 1 and paths[0].is_dir():
        out_dir = Path(output) if output else paths[0].with_name(paths[0].name + "_seg")
        if out_dir.exists() and not out_dir.is_dir():
            raise InputError("output must be a folder when the input is a folder", out_dir)
        return [(name, files, out_dir / f"{name}.nii.gz") for name, files in discover_cases(paths[0], channels).items()]
    if any(p.is_dir() for p in paths):
        raise InputError(
            "give either one folder or NIfTI files (the channels of one case)", next(p for p in paths if p.is_dir())
        )
    name = case_name(paths[0])
    out = Path(output) if output else paths[0].with_name(f"{name}_seg.nii.gz")
    if out.is_dir():
        out = out / f"{name}.nii.gz"
    return [(name, paths, out)]


def _predict(args: argparse.Namespace) -> int:
    from .io import check_channels, read_case, write_labels, write_like
    from .predict import (
        class_indices,
        count_windows,
        keep_classes,
        label_statistics,
        largest_component,
        load_models,
        predict_case,
        write_json,
        write_preview,
    )

    start = time.perf_counter()
    timer = StageTimer()
    with timer("load model"):
        models = load_models(args.model, args.device, args.precision)
    classes = models[0].classes
    keep = class_indices(args.classes, classes)
    cases = _plan_cases(args.inputs, args.output, models[0].in_channels)
    folder_mode = len(args.inputs) == 1 and Path(args.inputs[0]).is_dir()
    for _, _, out in cases:  # refuse before any work
        check_output(out, args.overwrite)
    if args.stats:
        check_output(args.stats, args.overwrite)
    all_stats = {}
    bar_cases = progress(total=len(cases), desc="cases", unit="case", quiet=args.quiet or len(cases) == 1)
    for name, files, out in cases:
        with timer("read"):
            case = read_case(files, name=name)
            check_channels(case, models[0].in_channels)
        bar = progress(total=count_windows(case, models), desc=f"{name} windows", unit="win", quiet=args.quiet)
        pred = predict_case(
            case,
            models,
            tta=args.tta,
            overlap=args.overlap,
            batch_size=args.batch_size,
            probabilities=args.save_probabilities,
            timer=timer,
            on_window=bar.update,
        )
        bar.close()
        with timer("postprocess"):
            labels = keep_classes(pred.labels, keep)
            if args.largest_component:
                labels = largest_component(labels)
        with timer("write"):
            write_labels(out, labels, case, overwrite=args.overwrite)
            if pred.probabilities is not None:
                write_like(
                    out.with_name(out.name.replace(".nii.gz", "").replace(".nii", "") + "_probabilities.nii.gz"),
                    pred.probabilities,
                    case,
                    overwrite=args.overwrite,
                )
            stats = label_statistics(labels, classes, case.voxel_sizes)
            all_stats[name] = stats
            if args.preview:
                target = Path(args.preview) / f"{name}.png" if folder_mode else Path(args.preview)
                write_preview(target, case, labels, classes, overwrite=args.overwrite)
        found = (
            ", ".join(f"{k} {v['volume_ml']:.1f} ml" for k, v in stats["classes"].items() if v["voxels"]) or "nothing"
        )
        say(f"{name}: {out} ({found})", args.quiet)
        bar_cases.update(1)
    bar_cases.close()
    if args.stats:
        write_json(
            args.stats,
            all_stats[cases[0][0]] if len(cases) == 1 and not folder_mode else all_stats,
            overwrite=args.overwrite,
        )
    say(
        f"{len(cases)} case(s) in {time.perf_counter() - start:.1f}s on {models[0].device} "
        f"({models[0].policy.name}, {len(models)} model(s){', TTA' if args.tta else ''}): {timer.summary()}",
        args.quiet,
    )
    return 0


# ---------------------------------------------------------------------------------------------------- others
def _train(args: argparse.Namespace) -> int:
    from pipelines.medseg import train_medseg
    from pipelines.options import MedsegTrainOptions, options_from

    check_output(args.output, args.overwrite)
    res = train_medseg(args.dataset, args.output, **options_from(MedsegTrainOptions, args))
    if not res.is_global_zero:  # other DDP ranks: rank 0 reports and writes the model file
        return 0
    say(
        f"model file: {res.model_file} "
        f"(best val_dice {res.best_score if res.best_score is not None else float('nan'):.4f}; "
        f"checkpoints and logs in {res.best_checkpoint.parent.parent if res.best_checkpoint else args.work_dir})",
        args.quiet,
    )
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    from .evaluate import evaluate_folders, format_table, write_csv

    if args.csv:
        check_output(args.csv, args.overwrite)
    bar = progress(desc="cases", unit="case", quiet=args.quiet)
    ev = evaluate_folders(
        args.pred_dir,
        args.ref_dir,
        tolerance_mm=args.tolerance,
        dataset_json=args.labels,
        on_case=lambda _: bar.update(1),
    )
    bar.close()
    print(format_table(ev))
    if args.csv:
        write_csv(args.csv, ev, overwrite=args.overwrite)
        say(f"wrote {args.csv} ({len(ev.rows)} rows)", args.quiet)
    return 0


def _import_stunet(args: argparse.Namespace) -> int:
    from .evaluate import class_names_from
    from .importers import import_stunet

    classes = None
    if args.labels:
        if not Path(args.labels).is_file():
            raise InputError("file not found", args.labels)
        classes = class_names_from(args.labels, 2)
    mf = import_stunet(args.checkpoint, args.output, plans_path=args.plans, classes=classes, overwrite=args.overwrite)
    pre = mf.preprocessing
    say(
        f"{args.output}: {mf.arch} ({mf.arch_kwargs['in_channels']} -> {mf.arch_kwargs['num_classes']} classes), "
        f"spacing {pre['spacing']} mm, patch {pre['patch_size']}, normalisation {pre['normalization'][0]['scheme']}",
        args.quiet,
    )
    return 0


def _synth(args: argparse.Namespace) -> int:
    from .synthetic import write_dataset

    out = Path(args.output)
    if out.exists() and any(out.iterdir()) and not args.overwrite:
        raise InputError("output folder exists and is not empty (use --overwrite)", out)
    write_dataset(out, args.train, args.test, channels=args.channels, seed=args.seed)
    say(
        f"{out}: {args.train} training + {args.test} test phantoms (imagesTr/, labelsTr/, imagesTs/, labelsTs/, "
        f"dataset.json)",
        args.quiet,
    )
    return 0


_COMMANDS = {
    "predict": _predict,
    "train": _train,
    "evaluate": _evaluate,
    "import-stunet": _import_stunet,
    "synth": _synth,
}


def _main(argv: Sequence[str] | None) -> int:
    args = _parser().parse_args(argv)
    return _COMMANDS[args.command](args)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point (``medseg`` dispatches here for everything except ``phases``)."""
    return run_cli(_main, argv, prog=PROG)


if __name__ == "__main__":
    sys.exit(main())
