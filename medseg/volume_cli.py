"""``medseg`` command for 3-D volumes: ``predict``, ``train``, ``evaluate``, ``import-stunet``, ``import-nnunet``,
``synth``.

The work is done by library functions (:mod:`medseg.predict`, :mod:`medseg.nnunet`, :mod:`medseg.evaluate`,
:mod:`medseg.importers`, :mod:`medseg.synthetic`, :mod:`pipelines.medseg`); this module parses arguments, checks
outputs before any work, shows progress and reports.
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
    add_deprecated,
    check_output,
    make_parser,
    prepare_outputs,
    progress,
    run_batch,
    run_cli,
    say,
)
from shared_backbones.errors import InputError

PROG = "medseg"
NNUNET_FOLDER = "nnUNet_results/Dataset123_Liver/nnUNetTrainer__nnUNetPlans__3d_fullres"


def _fold(text: str) -> int | str:
    if text == "all":
        return "all"
    if not text.isdigit():
        raise argparse.ArgumentTypeError(f"expected a fold number or 'all', got {text!r}")
    return int(text)


def _positive(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return int(text)


def _overlap(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1), got {text!r}") from None
    if not 0 <= v < 1:
        raise argparse.ArgumentTypeError(f"overlap must be in [0, 1), got {v}")
    return v


def _nnunet_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("-f", "--folds", nargs="+", type=_fold, metavar="K",
                   help="nnU-Net model folders: folds to ensemble (numbers, or 'all' for fold_all); "
                        "default: every fold_<k> present, as nnU-Net does")
    p.add_argument("--checkpoint", default="checkpoint_final.pth",
                   help="nnU-Net model folders: checkpoint file in each fold folder (e.g. checkpoint_best.pth)")


def _parser() -> argparse.ArgumentParser:
    ap = make_parser(
        PROG,
        "3-D medical image segmentation (NIfTI in, NIfTI out) with suite model files or nnU-Net v2 model folders. "
        "'medseg phases ...' runs the colonoscopy phase pipeline.",
        [f"{PROG} predict ct.nii.gz -m model.pt -o ct_seg.nii.gz",
         f"{PROG} predict scans/ -m {NNUNET_FOLDER} -o segs/",
         f"{PROG} evaluate segs/ labelsTs/ -o scores.csv"],
    )
    sub = ap.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = add_command(sub, "predict", help="segment NIfTI volumes with model files or an nnU-Net v2 model folder",
                    examples=[f"{PROG} predict ct.nii.gz -m model.pt -o ct_seg.nii.gz --stats ct.json",
                              f"{PROG} predict scans/ -m {NNUNET_FOLDER} -f 0 1 2 3 4 -o segs/",
                              f"{PROG} predict scans/ -m model.pt -o segs/ --num-parts 8 --part-id 3"])
    p.add_argument("inputs", nargs="+",
                   help="a .nii/.nii.gz file, several files forming the channels of one case, or one folder of cases "
                        "(<case>_0000.nii.gz ... for multi-channel models), or one DICOM series (a folder or .zip "
                        "of CT/MR slices)")
    add_common(p, model="many", output="output file (one case) or folder (default: <input>_seg.nii.gz / "
                                        "<folder>_seg/)",
               model_help="model file (.pt), or an nnU-Net v2 model folder (<Trainer>__<Plans>__<configuration>/ with "
                          "plans.json, dataset.json, fold_<k>/); repeat model files to ensemble (probabilities "
                          "averaged)")
    _nnunet_options(p)
    p.add_argument("--tta", action=argparse.BooleanOptionalAction, default=None,
                   help="mirror test-time augmentation (up to 8 flips, as many times slower); default: on for nnU-Net "
                        "model folders over the trainer's allowed axes (as nnU-Net predicts), off for model files")
    p.add_argument("--overlap", type=_overlap, default=0.5,
                   help="fraction of a window shared with its neighbour (0.5 = nnU-Net's step size 0.5)")
    p.add_argument("--batch-size", type=_positive, default=None,
                   help="windows per forward pass (default: 1 on the CPU, where batching gains no speed and doubles "
                        "the network's working memory; 2 on a GPU)")
    p.add_argument("--save-probabilities", action="store_true",
                   help="also write <case>_probabilities.nii.gz (4-D float32, one volume per class or region)")
    p.add_argument("--largest-component", action="store_true", help="keep the largest connected part per class")
    p.add_argument("--classes", nargs="+", help="only keep these classes (names or label numbers)")
    p.add_argument("--stats", help="write per-class voxel counts and volumes (mm^3) to this JSON file")
    p.add_argument("--preview",
                   help="write a PNG with three orthogonal slices and the labels (a folder when predicting a folder)")
    p.add_argument("--num-parts", type=_positive, default=1,
                   help="split a folder's cases into this many parts (e.g. one per SLURM array task)")
    p.add_argument("--part-id", type=int, default=0,
                   help="which part (0 .. num-parts-1) this run predicts: cases part-id, part-id+num-parts, ...")
    p.add_argument("--series", metavar="UID",
                   help="SeriesInstanceUID to read when a DICOM folder or zip holds several series")
    p.add_argument("--dicom-seg", metavar="OUT.dcm",
                   help="also write the labels as a DICOM SEG object referencing the source series (DICOM input only)")

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

    e = add_command(sub, "evaluate", help="Dice, HD95 and NSD per class of a prediction folder against references",
                    examples=[f"{PROG} evaluate segs/ labelsTs/",
                              f"{PROG} evaluate segs/ labelsTs/ -o scores.csv --tolerance 1",
                              f"{PROG} evaluate segs/ labelsTs/ -o scores.json --labels dataset.json"])
    e.add_argument("pred_dir", help="folder of predicted label maps (<case>.nii.gz)")
    e.add_argument("ref_dir", help="folder of reference label maps with the same case names")
    add_common(e, output="report of per case/class metrics and means (.csv, .tsv or .json)", device=False,
               precision=False, old_spellings=False)
    add_deprecated(e, "--csv", "-o/--output", "output")
    e.add_argument("--tolerance", type=float, default=2.0, help="NSD tolerance in mm")
    e.add_argument("--labels", help="dataset.json with class names (default: <ref_dir>/../dataset.json if present)")

    i = add_command(sub, "import-stunet",
                    help="convert an official STU-Net .model (+ .model.pkl plans) to a model file",
                    examples=[f"{PROG} import-stunet base_ep4k.model -o stunet_b.pt",
                              f"{PROG} import-stunet large_ep4k.model -o stunet_l.pt --labels dataset.json"])
    i.add_argument("checkpoint", help="nnU-Net v1 .model file (plans read from <file>.pkl)")
    add_common(i, output="model file to write (.pt)", output_required=True, device=False, precision=False,
               old_spellings=False)
    i.add_argument("--plans", help="plans pickle (default: <checkpoint>.pkl)")
    i.add_argument("--labels", help="dataset.json giving the class names")

    n = add_command(sub, "import-nnunet", help="convert an nnU-Net v2 model folder (folds ensembled) to one model file",
                    examples=[f"{PROG} import-nnunet {NNUNET_FOLDER} -o liver.pt",
                              f"{PROG} import-nnunet {NNUNET_FOLDER} -f 0 --checkpoint checkpoint_best.pth -o f0.pt"])
    n.add_argument("folder", help="<Trainer>__<Plans>__<configuration>/ folder (plans.json, dataset.json, fold_<k>/)")
    add_common(n, output="model file to write (.pt)", output_required=True, device=False, precision=False,
               old_spellings=False)
    _nnunet_options(n)

    s = add_command(sub, "synth", help="write a synthetic phantom dataset (nnU-Net/MSD layout) to try the tools",
                    examples=[f"{PROG} synth phantoms/", f"{PROG} synth phantoms/ --train 20 --channels 2 --seed 1"])
    s.add_argument("output", help="dataset folder to create")
    s.add_argument("--train", type=int, default=8, help="training cases (imagesTr/, labelsTr/)")
    s.add_argument("--test", type=int, default=2, help="test cases (imagesTs/, labelsTs/)")
    s.add_argument("--channels", type=int, default=1, help="image channels per case")
    add_common(s, device=False, precision=False, seed=True)
    return ap


# --------------------------------------------------------------------------------------------------- predict
def _plan_cases(inputs: list[str], output: str | None, channels: int) -> tuple[list[tuple[str, list[Path], Path]],
                                                                              Path | None]:
    """(case name, channel files, output path) for every case, and the output folder in folder mode."""
    from .io import case_name, discover_cases, is_dicom_input

    paths = [Path(p) for p in inputs]
    for p in paths:
        if not p.exists():
            raise InputError("file not found", p)
    if is_dicom_input(paths):  # one DICOM series (folder or zip): one case named after it
        from .dicom import source_name

        name = source_name(paths[0])
        out = Path(output) if output else paths[0].with_name(f"{name}_seg.nii.gz")
        return [(name, paths, out / f"{name}.nii.gz" if out.is_dir() else out)], None
    if len(paths) == 1 and paths[0].is_dir():
        out_dir = Path(output) if output else paths[0].with_name(paths[0].name + "_seg")
        if out_dir.exists() and not out_dir.is_dir():
            raise InputError("output must be a folder when the input is a folder", out_dir)
        cases = discover_cases(paths[0], channels).items()
        return [(name, files, out_dir / f"{name}.nii.gz") for name, files in cases], out_dir
    if any(p.is_dir() for p in paths):
        raise InputError(
            "give either one folder or NIfTI files (the channels of one case)", next(p for p in paths if p.is_dir())
        )
    name = case_name(paths[0])
    out = Path(output) if output else paths[0].with_name(f"{name}_seg.nii.gz")
    if out.is_dir():
        out = out / f"{name}.nii.gz"
    return [(name, paths, out)], None


def _probabilities_path(out: Path) -> Path:
    return out.with_name(out.name.replace(".nii.gz", "").replace(".nii", "") + "_probabilities.nii.gz")


def _predict(args: argparse.Namespace) -> int:
    from shared_backbones.memory import return_freed_memory

    # before anything allocates (PyTorch reads the huge-page setting once): window after window, freed mid-sized
    # tensors go back to the system (a lower peak RSS) and large ones fault in 2 MiB pages (less system time)
    return_freed_memory()
    from .io import check_channels, is_dicom_input, read_case, write_labels, write_like
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
    if not 0 <= args.part_id < args.num_parts:
        raise InputError(f"--part-id must be in 0..{args.num_parts - 1}, got {args.part_id}")
    timer = StageTimer()
    with timer("load model"):
        models = load_models(args.model, args.device, args.precision, folds=args.folds, checkpoint=args.checkpoint)
    classes = models[0].classes
    keep = class_indices(args.classes, classes)
    batch_size = args.batch_size or (1 if models[0].device.type == "cpu" else 2)
    cases, out_dir = _plan_cases(args.inputs, args.output, models[0].in_channels)
    folder_mode = out_dir is not None
    if args.num_parts > 1:
        if not folder_mode:
            raise InputError("--num-parts splits a folder of cases; give one input folder")
        cases = cases[args.part_id::args.num_parts]
    skipped = 0
    if folder_mode and not args.overwrite:  # a rerun (or another array task) skips what is done
        todo = [c for c in cases if not c[2].exists()]
        skipped, cases = len(cases) - len(todo), todo
    inputs = [f for _, files, _ in cases for f in files] + [Path(m) for m in args.model]
    outputs = [out for _, _, out in cases]
    if args.save_probabilities:
        outputs += [_probabilities_path(out) for _, _, out in cases]
    if args.preview and not folder_mode:
        outputs.append(Path(args.preview))
    if args.stats:
        outputs.append(Path(args.stats))
    if args.dicom_seg:
        if len(cases) != 1 or not is_dicom_input(cases[0][1]):
            raise InputError("--dicom-seg needs one DICOM input (a series folder or zip)", args.inputs[0])
        outputs.append(Path(args.dicom_seg))
    prepare_outputs(outputs, inputs, overwrite=args.overwrite,
                    folders=[f for f in (out_dir, Path(args.preview) if args.preview and folder_mode else None) if f])
    if folder_mode:
        out_dir.mkdir(parents=True, exist_ok=True)
    if skipped:
        say(f"skipping {skipped} case(s) whose output exists (use --overwrite to redo them)", args.quiet)
    all_stats: dict[str, dict] = {}
    bar_cases = progress(total=len(cases), desc="cases", unit="case", quiet=args.quiet or len(cases) <= 1)

    def one(item: tuple[str, list[Path], Path]) -> None:
        name, files, out = item
        with timer("read"):
            case = read_case(files, name=name, series=args.series)
            check_channels(case, models[0].in_channels)
        if case.nonfinite_count:
            say(f"{name}: {case.nonfinite_count} NaN/Inf voxels treated as background (left out of the "
                "normalisation, labelled 0)", False)
        bar = progress(total=count_windows(case, models, args.overlap), desc=f"{name} windows", unit="win",
                       quiet=args.quiet)
        try:
            pred = predict_case(case, models, tta=args.tta, overlap=args.overlap, batch_size=batch_size,
                                probabilities=args.save_probabilities, timer=timer, on_window=bar.update)
        finally:
            bar.close()
        with timer("postprocess"):
            labels = keep_classes(pred.labels, keep)
            if args.largest_component:
                labels = largest_component(labels)
        with timer("write"):
            write_labels(out, labels, case, overwrite=args.overwrite)
            if args.dicom_seg:
                from .dicom import write_dicom_seg

                write_dicom_seg(args.dicom_seg, labels, case, classes, model_name=models[0].path.stem,
                                overwrite=args.overwrite)
            if pred.probabilities is not None:
                write_like(_probabilities_path(out), pred.probabilities, case, overwrite=args.overwrite)
            stats = label_statistics(labels, classes, case.voxel_sizes)
            all_stats[name] = stats
            if args.preview:
                target = Path(args.preview) / f"{name}.png" if folder_mode else Path(args.preview)
                write_preview(target, case, labels, classes, overwrite=args.overwrite)
        found = ", ".join(f"{k} {v['volume_ml']:.1f} ml" for k, v in stats["classes"].items() if v["voxels"])
        say(f"{name}: {out} ({found or 'nothing'})", args.quiet)
        bar_cases.update(1)

    rc = run_batch(cases, one, prog=PROG, quiet=args.quiet, name=lambda c: c[0]) if cases else 0
    bar_cases.close()
    if args.stats and all_stats:
        write_json(args.stats, all_stats[cases[0][0]] if len(cases) == 1 and not folder_mode else all_stats,
                   overwrite=args.overwrite)
    m0 = models[0]
    tta = args.tta if args.tta is not None else m0.is_nnunet
    say(f"{len(all_stats)} case(s) in {time.perf_counter() - start:.1f}s on {m0.device} ({m0.policy.name}, "
        f"{_describe(models)}{', TTA' if tta else ''})"
        f"{f', {skipped} skipped' if skipped else ''}: {timer.summary()}", args.quiet)
    return rc


def _describe(models: Sequence) -> str:
    m0 = models[0]
    if m0.is_nnunet:
        ex = m0.file.extra
        folds = ex.get("folds") or [str(f) for f in range(int(m0.file.arch_kwargs.get("n_folds", 1)))]
        return f"nnU-Net {m0.pre.get('configuration', '')}, fold(s) {' '.join(map(str, folds))}"
    return f"{len(models)} model(s)"


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

    for d in (args.pred_dir, args.ref_dir):
        if not Path(d).is_dir():
            raise InputError("folder not found", d)
    if args.output:
        if Path(args.output).suffix.lower() not in (".csv", ".tsv", ".json"):
            raise InputError("report must be .csv, .tsv or .json", args.output)
        prepare_outputs([args.output], [args.pred_dir, args.ref_dir], overwrite=args.overwrite)
    bar = progress(desc="cases", unit="case", quiet=args.quiet)
    ev = evaluate_folders(
        args.pred_dir,
        args.ref_dir,
        tolerance_mm=args.tolerance,
        dataset_json=args.labels,
        on_case=lambda _: bar.update(1),
    )
    bar.close()
    for note in ev.notes:
        say(note, False)
    print(format_table(ev))
    if args.output:
        write_csv(args.output, ev, overwrite=args.overwrite)
        say(f"wrote {args.output} ({len(ev.rows)} rows)", args.quiet)
    return 0


def _import_stunet(args: argparse.Namespace) -> int:
    from .evaluate import class_names_from
    from .importers import import_stunet

    prepare_outputs([args.output], [args.checkpoint] + ([args.plans] if args.plans else []), overwrite=args.overwrite)
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


def _import_nnunet(args: argparse.Namespace) -> int:
    from .nnunet import import_nnunet

    prepare_outputs([args.output], [args.folder], overwrite=args.overwrite)
    mf = import_nnunet(args.folder, args.output, folds=args.folds, checkpoint=args.checkpoint,
                       overwrite=args.overwrite)
    pre, kw = mf.preprocessing, mf.arch_kwargs
    say(f"{args.output}: nnU-Net {pre['configuration']} {kw['network_class_name'].rsplit('.', 1)[-1]}, "
        f"fold(s) {' '.join(mf.extra['folds'])} ({kw['in_channels']} -> {len(mf.classes)} classes"
        f"{', region-based' if pre.get('regions') else ''}), spacing {pre['spacing']} mm, patch {pre['patch_size']}, "
        f"normalisation {', '.join(n['scheme'] for n in pre['normalization'])}", args.quiet)
    return 0


def _synth(args: argparse.Namespace) -> int:
    from .synthetic import write_dataset

    out = Path(args.output)
    if out.exists() and not out.is_dir():
        raise InputError("output must be a folder", out)
    if out.exists() and any(out.iterdir()) and not args.overwrite:
        raise InputError("output folder exists and is not empty (use --overwrite)", out)
    prepare_outputs([], folders=[out])
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
    "import-nnunet": _import_nnunet,
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
