"""``medseg phases``: temporal segmentation of colonoscopy procedures from per-frame features (ColonTCN, MS-TCN).

Commands: predict (the default: ``medseg phases video.npy -m model.pt``), evaluate, train, extract.
See docs/phases.md for the data layouts, the metrics and the k-fold protocols.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from shared_backbones.cliutil import (
    add_command,
    add_common,
    add_deprecated,
    make_parser,
    prepare_outputs,
    progress,
    run_cli,
    say,
)
from shared_backbones.options import Number, add_parts

PROG = "medseg phases"
DESCRIPTION = """Temporal segmentation of colonoscopy procedures from per-frame features (ColonTCN, MS-TCN).

Commands: predict (the default: medseg phases video.npy -m model.pt), evaluate, train, extract.
The guide docs/phases.md describes the data layouts, the metrics and the k-fold protocols."""
COMMANDS = ("predict", "evaluate", "train", "extract")
_LAYOUT_HELP = ("feature array layout: tc = [frames, dims], ct = [dims, frames] (MS-TCN's), auto = the axis equal to "
                "the feature width is the dims axis")
#: a frame rate in frames per second (features are 5 fps in ColonTCN; videos up to a few hundred)
FPS = Number(float, min=0, min_open=True, max=1000)
_BACKGROUND_HELP = ("classes whose segments Edit and F1 leave out, as MS-TCN's bg_class (e.g. --background "
                    "background); accuracy still counts their frames. Without it every class counts")


def _parser() -> argparse.ArgumentParser:
    p = make_parser(PROG, DESCRIPTION, [
        "medseg phases proc01.npy -m colontcn.pt -o results/",
        "medseg phases train data/ -o colontcn.pt --groups data/groups.csv --folds 0 --fold all",
        "medseg phases evaluate data/ -m colontcn.pt -o metrics.csv",
    ])
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    pr = add_command(sub, "predict", help="per-frame phases, segments, withdrawal time and timeline PNG per video",
                     examples=["medseg phases predict proc01.npy -m colontcn.pt -o results/",
                               "medseg phases predict features/ -m colontcn.pt -o results/ --no-png --quiet "
                               "--num-parts 4 --part-id 0",
                               "medseg phases predict proc01.npy -m colontcn.pt --reference labels/proc01.txt"])
    pr.add_argument("inputs", nargs="+", help=".npy feature files ([frames, dims] or [dims, frames]) or folders")
    add_common(pr, model="one", output="output folder (created if needed; default: next to each input); in a batch "
                                       "(several files or a folder) videos whose outputs exist are skipped unless "
                                       "--overwrite")
    add_parts(pr, "videos")
    pr.add_argument("--layout", choices=("auto", "tc", "ct"), default="auto", help=_LAYOUT_HELP)
    pr.add_argument("--fps", type=FPS, help="frame rate of the features (default: the model's, usually 5)")
    pr.add_argument("--reference", help="per-frame labels of the (single) input: drawn under the prediction and "
                                        "scored (one frame of length difference tolerated)")
    pr.add_argument("--background", nargs="+", metavar="CLASS", help=_BACKGROUND_HELP)
    pr.add_argument("--no-png", action="store_true", help="skip the timeline figure")

    ev = add_command(sub, "evaluate", help="Acc / Edit / F1@{10,25,50} / per-class metrics on a labelled data folder",
                     examples=["medseg phases evaluate data/ -m colontcn.pt -o metrics.csv",
                               "medseg phases evaluate gtea/ -m mstcn.pt --split gtea/splits/test.split1.bundle "
                               "--background background",
                               "medseg phases evaluate data/ -m colontcn.pt -o metrics.json --quiet"])
    ev.add_argument("data", help="folder with features/ and labels/ (or the MS-TCN layout: groundTruth/)")
    add_common(ev, model="one", output="write per-video and overall metrics to this report (.csv, .tsv or .json)")
    ev.add_argument("--split", help="evaluate only the videos of this MS-TCN split bundle (test.split1.bundle)")
    ev.add_argument("--layout", choices=("auto", "tc", "ct"), default="auto", help=_LAYOUT_HELP)
    ev.add_argument("--background", nargs="+", metavar="CLASS", help=_BACKGROUND_HELP)
    add_deprecated(ev, "--csv", "-o/--output", "output")

    tr = add_command(sub, "train", help="train ColonTCN / MS-TCN through the Lightning pipeline (k-fold, DDP)",
                     examples=["medseg phases train data/ -o colontcn.pt --groups data/groups.csv --folds 0 "
                               "--fold all --report folds.csv",
                               "medseg phases train gtea/ -o mstcn.pt --arch mstcn --split-dir gtea/splits --fold all "
                               "--background background",
                               "medseg phases train data/ -o colontcn.pt --devices 2 --seed 1 --max-time 8h"])
    tr.add_argument("data", help="folder with features/ and labels/ (or groundTruth/ + mapping.txt)")
    tr.add_argument("-o", "--output", required=True,
                    help="model file to write (with --fold all: one per fold, <name>_fold<k>.pt); checkpoints and "
                         "logs go to <name>_run/ (<name>_fold<k>_run/) next to it, or --work-dir")
    add_common(tr, devices=True, seed=True, resume=True, fold=True)
    from pipelines.options import PhasesTrainOptions, add_options  # a light module: no torch, no Lightning

    add_options(tr, PhasesTrainOptions)
    tr.add_argument("--report", help="write the per-fold table to this report (.csv, .tsv or .json)")
    add_deprecated(tr, "--csv", "--report", "report")

    ex = add_command(sub, "extract", help="per-frame ResNet-50 features from a folder of frames -> .npy [T, 2048]",
                     examples=["medseg phases extract frames/ -o proc01.npy --encoder resnet50.pth",
                               "medseg phases extract frames/ -o proc01.npy --encoder resnet50.pth --source-fps 30 "
                               "--fps 5 --device cuda"])
    ex.add_argument("frames", help="folder of frames (PNG/JPG/BMP, name order)")
    ex.add_argument("-o", "--output", required=True, help=".npy feature file to write")
    ex.add_argument("--encoder", help="ResNet-50 weights (state_dict); without it the encoder is random (testing only)")
    ex.add_argument("--source-fps", type=FPS, default=25.0, help="frame rate of the frames")
    ex.add_argument("--fps", type=FPS, default=5.0, help="feature rate (5 as ColonTCN; at most --source-fps)")
    ex.add_argument("--batch-size", type=Number(int, min=1, max=4096), default=32, help="frames per forward pass")
    add_common(ex, precision=False)
    return p


def _main(argv: Sequence[str] | None) -> int:
    args = list(argv or [])
    if args and args[0] not in COMMANDS and not args[0].startswith("-"):
        args = ["predict", *args]
    a = _parser().parse_args(args)
    return {"predict": _predict, "evaluate": _evaluate, "train": _train, "extract": _extract}[a.command](a)


def _predict(a: argparse.Namespace) -> int:
    from .predict import PhaseModel, plan_predict, predict_files

    plan = plan_predict(a.inputs, a.output, png=not a.no_png, model=a.model, reference=a.reference,
                        overwrite=a.overwrite, num_parts=a.num_parts, part_id=a.part_id)
    pm = PhaseModel.from_file(a.model, a.device, a.precision) if plan.jobs else None
    bg = pm.class_indices(a.background or []) if pm is not None else []
    start = time.perf_counter()
    bar = progress(total=len(plan.jobs), desc="videos", unit="video", quiet=a.quiet or len(plan.jobs) <= 1)

    def report(job, s: dict) -> None:
        bar.update(1)
        extra = f", acc {s['metrics']['accuracy']:.1f}%, edit {s['metrics']['edit']:.1f}" if "metrics" in s else ""
        if not a.quiet:
            bar.write(f"{job.name}: {s['frames']} frames, {s['segments']} segments, withdrawal "
                      f"{s['withdrawal_s'] / 60:.1f} min{extra} -> {s['outputs']['frames']}", file=sys.stderr)

    with bar:
        rc = predict_files(plan, pm, layout=a.layout, fps=a.fps, reference=a.reference, png=not a.no_png,
                           overwrite=a.overwrite, background=bg, quiet=a.quiet, notice=lambda n: say(n, a.quiet),
                           report=report, prog=PROG)
    if plan.jobs:
        say(f"{len(plan.jobs)} video(s) in {time.perf_counter() - start:.1f}s", a.quiet)
    return rc


def _evaluate(a: argparse.Namespace) -> int:
    from shared_backbones.planning import Job, plan_outputs
    from shared_backbones.report import REPORT

    from .evaluate import evaluate_dataset, format_table, write_csv
    from .predict import PhaseModel

    if a.output:
        plan_outputs([Job(str(a.data), [Path(a.data)], {"report": Path(a.output)})], other_inputs=[a.model],
                     writers={"report": REPORT}, overwrite=a.overwrite)
    pm = PhaseModel.from_file(a.model, a.device, a.precision)
    bg = pm.class_indices(a.background or [])
    rows, total = evaluate_dataset(pm, a.data, a.layout, quiet=a.quiet, background=bg, split=a.split,
                                   notice=lambda n: say(n, a.quiet))
    print(format_table(rows, total))
    say(f"background (left out of Edit/F1): {', '.join(a.background) if a.background else 'none'}", a.quiet)
    if a.output:
        write_csv(rows, total, a.output, a.overwrite)
        say(f"wrote {a.output}", a.quiet)
    return 0


def _train(a: argparse.Namespace) -> int:
    from shared_backbones.report import format_table, mean_row, write_report

    out = Path(a.output)
    outs = [out] if a.fold != "all" else []  # per-fold names depend on the number of folds: train_phases checks them
    prepare_outputs([*outs, *([a.report] if a.report else [])], [a.data],
                    overwrite=a.overwrite or a.resume is not None)
    # the one place medseg uses pipelines
    from pipelines.options import PhasesTrainOptions, options_from
    from pipelines.phases import train_phases
    from pipelines.trainer import is_global_zero

    worker = not is_global_zero()
    res = train_phases(a.data, out, **options_from(PhasesTrainOptions, a, quiet=a.quiet or worker),
                       notice=lambda n: say(n, a.quiet or worker))
    if not res:  # a rank other than 0: rank 0 exports, scores and reports
        return 0
    rows = [{"fold": str(r.fold), **r.metrics} for r in res]
    rows.append(mean_row(rows, "fold"))
    print(format_table(rows, digits=2))
    if a.report:
        write_report(a.report, rows, overwrite=a.overwrite or a.resume is not None)
    say(f"model file(s): {', '.join(str(r.model_file) for r in res)}", a.quiet)
    return 0


def _extract(a: argparse.Namespace) -> int:
    from shared_backbones.options import require
    from shared_backbones.planning import Job, Writer, plan_outputs
    from shared_backbones.precision import resolve_device

    from .extract import extract_features, frame_encoder, list_frames

    require(a.fps <= a.source_fps, f"--fps ({a.fps:g}) must be at most --source-fps ({a.source_fps:g}): frames are "
                                   "subsampled, never repeated")
    frames = list_frames(a.frames)
    plan_outputs([Job(str(a.frames), [Path(a.frames), *frames], {"features": Path(a.output)})],
                 other_inputs=[a.encoder] if a.encoder else [], writers={"features": Writer((".npy",))},
                 overwrite=a.overwrite)
    if a.encoder is None:
        say("warning: no --encoder weights given: features come from a randomly initialised ResNet-50", a.quiet)
    out = extract_features(a.frames, a.output, frame_encoder(a.encoder), a.source_fps, a.fps, a.batch_size,
                           resolve_device(a.device), a.overwrite, a.quiet)
    say(f"wrote {out}", a.quiet)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    return run_cli(_main, list(sys.argv[1:] if argv is None else argv), prog=PROG)


if __name__ == "__main__":
    sys.exit(main())
