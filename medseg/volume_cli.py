"""``medseg`` command for 3-D volumes: ``predict``, ``train``, ``evaluate``, ``import-stunet``, ``import-nnunet``,
``synth``.

The work is done by library functions (:mod:`medseg.predict`, :mod:`medseg.nnunet`, :mod:`medseg.evaluate`,
:mod:`medseg.importers`, :mod:`medseg.synthetic`, :mod:`pipelines.medseg`); this module parses arguments, checks
outputs before any work, shows progress and reports.
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
    parse_fold,
    progress,
    run_cli,
    say,
)
from shared_backbones.errors import InputError
from shared_backbones.options import Number, add_parts
from shared_backbones.planning import plan_outputs
from shared_backbones.report import REPORT

PROG = "medseg"
NNUNET_FOLDER = "nnUNet_results/Dataset123_Liver/nnUNetTrainer__nnUNetPlans__3d_fullres"


#: --overlap: a fraction of the window; above 0.95 the windows multiply (20x per axis) for no gain
OVERLAP = Number(float, min=0, max=0.95)
#: --batch-size: windows per forward pass
BATCH_SIZE = Number(int, min=1, max=1024)
#: evaluate --tolerance: NSD tolerance in mm (finite, > 0; beyond a metre every surface is within it)
TOLERANCE_MM = Number(float, min=0, min_open=True, max=1000)
#: synth: phantom counts and channels
SYNTH_TRAIN = Number(int, min=1, max=10000)
SYNTH_TEST = Number(int, min=0, max=10000)
SYNTH_CHANNELS = Number(int, min=1, max=16)
#: evaluate's report


def _nnunet_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("-f", "--fold", dest="folds", nargs="+", type=parse_fold, metavar="K",
                   help="nnU-Net model folders: folds to ensemble (numbers, or 'all' for fold_all); "
                        "default: every fold_<k> present, as nnU-Net does")
    add_deprecated(p, "--folds", "-f/--fold", "folds", metavar="K")
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
                              f"{PROG} predict scans/ -m model.pt -o segs/ --num-parts 8 --part-id 3",
                              f"{PROG} predict ct.nii.gz --task total.yaml --classes liver spleen -o seg.nii.gz"])
    p.add_argument("inputs", nargs="+",
                   help="a .nii/.nii.gz file, several files forming the channels of one case, or one folder of cases "
                        "(<case>_0000.nii.gz ... for multi-channel models), or one DICOM series (a folder or .zip "
                        "of CT/MR slices)")
    add_common(p, model="many", output="output file (one case: .nii.gz or .nii) or folder (an existing folder or a "
                                        "name ending in /: <case>.nii.gz inside; default: <input>_seg.nii.gz / "
                                        "<folder>_seg/)",
               model_help="model file (.pt), or an nnU-Net v2 model folder (<Trainer>__<Plans>__<configuration>/ with "
                          "plans.json, dataset.json, fold_<k>/); repeat model files to ensemble (probabilities "
                          "averaged); repeat nnU-Net folders with different label sets to run them as one task "
                          "(one merged label map, see --task)")
    p._option_string_actions["--model"].required = False  # or --task
    p.add_argument("--task", metavar="TASK.yaml",
                   help="task file (YAML or JSON): several nnU-Net v2 model folders with different label sets, the "
                        "class table and the overlap rule, merged into one label map (e.g. TotalSegmentator's "
                        "'total'); instead of -m")
    _nnunet_options(p)
    p.add_argument("--tta", action=argparse.BooleanOptionalAction, default=None,
                   help="mirror test-time augmentation (up to 8 flips, as many times slower); default: on for nnU-Net "
                        "models (model folders and files made by import-nnunet) over the trainer's allowed axes (as "
                        "nnU-Net predicts), off for the suite's own model files (train, import-stunet)")
    p.add_argument("--overlap", type=OVERLAP, default=0.5,
                   help="fraction of a window shared with its neighbour (0.5 = nnU-Net's step size 0.5)")
    p.add_argument("--batch-size", type=BATCH_SIZE, default=None,
                   help="windows per forward pass (default: 1 on the CPU, where batching gains no speed and doubles "
                        "the network's working memory; 2 on a GPU)")
    p.add_argument("--save-probabilities", action="store_true",
                   help="also write <case>_probabilities.nii.gz (4-D float32, one volume per class or region)")
    p.add_argument("--largest-component", action="store_true", help="keep the largest connected part per class")
    p.add_argument("--classes", "--roi-subset", "--roi_subset", dest="classes", nargs="+", metavar="CLASS",
                   help="only predict and write these classes (names or label numbers; with a task, only the folders "
                        "holding them run); --roi-subset as in TotalSegmentator")
    add_deprecated(p, "--keep-classes", "--classes", "classes")
    p.add_argument("--stats", "--statistics", dest="stats", metavar="FILE",
                   help="write per-class voxel counts, volumes (mm^3, ml) and intensity statistics of the input "
                        "(mean, std, median, min, max, percentiles 5/25/75/95) of this run's cases to this .json file "
                        "(TotalSegmentator's 'volume' and 'intensity' keys included) or .csv/.tsv table (one row per "
                        "case and class); with --num-parts, one file per part: --stats vol_$SLURM_ARRAY_TASK_ID.json")
    p.add_argument("--split-classes", action="store_true",
                   help="also write one binary mask per class, <label map without .nii.gz>/<class name>.nii.gz "
                        "(as TotalSegmentator's output folder), with the label map's geometry")
    p.add_argument("--preview",
                   help="write a PNG with three orthogonal slices and the labels (a folder when predicting a folder)")
    add_parts(p, "folder's cases")
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
                              f"{PROG} evaluate segs/ labelsTs/ -o scores.json --dataset-json dataset.json"])
    e.add_argument("pred_dir", help="folder of predicted label maps (<case>.nii.gz)")
    e.add_argument("ref_dir", help="folder of reference label maps with the same case names")
    add_common(e, output="report of per case/class metrics and means (.csv, .tsv or .json)", device=False,
               precision=False, old_spellings=False)
    add_deprecated(e, "--csv", "-o/--output", "output")
    e.add_argument("--tolerance", type=TOLERANCE_MM, default=2.0, help="NSD tolerance in mm")
    e.add_argument("--dataset-json", help="dataset.json with class names (default: <ref_dir>/../dataset.json if "
                                          "present)")
    add_deprecated(e, "--labels", "--dataset-json", "dataset_json")

    i = add_command(sub, "import-stunet",
                    help="convert an official STU-Net .model (+ .model.pkl plans) to a model file",
                    examples=[f"{PROG} import-stunet base_ep4k.model -o stunet_b.pt",
                              f"{PROG} import-stunet large_ep4k.model -o stunet_l.pt --dataset-json dataset.json"])
    i.add_argument("checkpoint", help="nnU-Net v1 .model file (plans read from <file>.pkl)")
    add_common(i, output="model file to write (.pt)", output_required=True, device=False, precision=False,
               old_spellings=False)
    i.add_argument("--plans", help="plans pickle (default: <checkpoint>.pkl)")
    i.add_argument("--dataset-json", help="dataset.json giving the class names")
    add_deprecated(i, "--labels", "--dataset-json", "dataset_json")

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
    s.add_argument("--train", type=SYNTH_TRAIN, default=8, help="training cases (imagesTr/, labelsTr/)")
    s.add_argument("--test", type=SYNTH_TEST, default=2, help="test cases (imagesTs/, labelsTs/)")
    s.add_argument("--channels", type=SYNTH_CHANNELS, default=1, help="image channels per case")
    add_common(s, device=False, precision=False, seed=True)
    return ap


# --------------------------------------------------------------------------------------------------- predict
def _predict(args: argparse.Namespace) -> int:
    from shared_backbones.memory import return_freed_memory

    # before anything allocates (PyTorch reads the huge-page setting once): window after window, freed mid-sized
    # tensors go back to the system (a lower peak RSS) and large ones fault in 2 MiB pages (less system time)
    return_freed_memory()
    from .batch import predict_files

    def on_case(r) -> None:
        found = ", ".join(f"{k} {v['volume_ml']:.1f} ml" for k, v in r.stats["classes"].items() if v["voxels"])
        say(f"{r.name}: {r.outputs['labels']} ({found or 'nothing'})", args.quiet)

    if not args.model and not args.task:
        raise InputError("give a model: -m/--model (a model file or an nnU-Net v2 model folder) or --task (a task "
                         "file)")
    res = predict_files(
        args.inputs, args.model or [], output=args.output, device=args.device, precision=args.precision,
        folds=args.folds, checkpoint=args.checkpoint, tta=args.tta, overlap=args.overlap, batch_size=args.batch_size,
        save_probabilities=args.save_probabilities, largest_component=args.largest_component,
        keep_classes=args.classes, task=args.task, stats=args.stats, preview=args.preview, dicom_seg=args.dicom_seg,
        series=args.series, overwrite=args.overwrite, num_parts=args.num_parts, part_id=args.part_id,
        split_classes=args.split_classes,
        quiet=args.quiet, prog=PROG, on_notice=lambda line: say(line, False), on_case=on_case)
    m0 = res.models[0]
    tta = args.tta if args.tta is not None else m0.default_tta
    say(f"{len(res.cases)} case(s) in {res.seconds:.1f}s on {m0.device} ({m0.policy.name}, "
        f"{res.task.describe() if res.task else _describe(res.models)}{', TTA' if tta else ''})"
        f"{f', {res.skipped} skipped' if res.skipped else ''}: {res.timer.summary()}", args.quiet)
    return res.rc


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

    check_output(args.output, args.overwrite or args.resume is not None)
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
    if args.dataset_json is not None and not Path(args.dataset_json).is_file():
        raise InputError("file not found", args.dataset_json)
    if args.output:
        plan_outputs([], shared={"report": args.output}, writers={"report": REPORT},
                     other_inputs=[args.pred_dir, args.ref_dir, *([args.dataset_json] if args.dataset_json else [])],
                     overwrite=args.overwrite)
    bar = progress(desc="cases", unit="case", quiet=args.quiet)
    ev = evaluate_folders(
        args.pred_dir,
        args.ref_dir,
        tolerance_mm=args.tolerance,
        dataset_json=args.dataset_json,
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

    reads = [args.checkpoint, *[f for f in (args.plans, args.dataset_json) if f]]
    plan_outputs([], shared={"model": args.output}, other_inputs=reads, overwrite=args.overwrite)
    classes = None
    if args.dataset_json:
        if not Path(args.dataset_json).is_file():
            raise InputError("file not found", args.dataset_json)
        classes = class_names_from(args.dataset_json, 2)
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

    plan_outputs([], shared={"model": args.output}, other_inputs=[args.folder], overwrite=args.overwrite)
    mf = import_nnunet(args.folder, args.output, folds=args.folds, checkpoint=args.checkpoint,
                       overwrite=args.overwrite)
    pre, kw = mf.preprocessing, mf.arch_kwargs
    axes = pre.get("mirror_axes")
    mirror = (f"medseg predict mirrors it over axes {' '.join(map(str, axes))} by default, as nnU-Net does (--no-tta: "
              "off)" if axes else "its trainer allows no mirroring")
    say(f"{args.output}: nnU-Net {pre['configuration']} {kw['network_class_name'].rsplit('.', 1)[-1]}, "
        f"fold(s) {' '.join(mf.extra['folds'])} ({kw['in_channels']} -> {len(mf.classes)} classes"
        f"{', region-based' if pre.get('regions') else ''}), spacing {pre['spacing']} mm, patch {pre['patch_size']}, "
        f"normalisation {', '.join(n['scheme'] for n in pre['normalization'])}; {mirror}", args.quiet)
    return 0


def _synth(args: argparse.Namespace) -> int:
    from .synthetic import write_dataset

    out = Path(args.output)
    if out.exists() and not out.is_dir():
        raise InputError("output must be a folder", out)
    if out.exists() and any(out.iterdir()) and not args.overwrite:
        raise InputError("output folder exists and is not empty (use --overwrite)", out)
    plan_outputs([], folders=[out]).make_folders()
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
