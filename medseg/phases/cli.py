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
    lightning_device,
    make_parser,
    prepare_outputs,
    progress,
    run_batch,
    run_cli,
    say,
)
from shared_backbones.errors import InputError

PROG = "medseg phases"
DESCRIPTION = """Temporal segmentation of colonoscopy procedures from per-frame features (ColonTCN, MS-TCN).

Commands: predict (the default: medseg phases video.npy -m model.pt), evaluate, train, extract.
The guide docs/phases.md describes the data layouts, the metrics and the k-fold protocols."""
COMMANDS = ("predict", "evaluate", "train", "extract")
_LAYOUT_HELP = ("feature array layout: tc = [frames, dims], ct = [dims, frames] (MS-TCN's), auto = the axis equal to "
                "the feature width is the dims axis")
_BACKGROUND_HELP = ("classes whose segments Edit and F1 leave out, as MS-TCN's bg_class (e.g. --background "
                    "background); accuracy still counts their frames. Without it every class counts")


def _max_time(text: str) -> str:
    parts = text.split(":")
    if len(parts) != 4 or not all(p.isdigit() for p in parts):
        raise argparse.ArgumentTypeError(f"expected DD:HH:MM:SS (e.g. 00:12:00:00), got {text!r}")
    return text


def _parser() -> argparse.ArgumentParser:
    p = make_parser(PROG, DESCRIPTION, [
        "medseg phases proc01.npy -m colontcn.pt -o results/",
        "medseg phases train data/ -o colontcn.pt --groups data/groups.csv --folds 0 --fold all",
        "medseg phases evaluate data/ -m colontcn.pt --csv metrics.csv",
    ])
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    pr = add_command(sub, "predict", help="per-frame phases, segments, withdrawal time and timeline PNG per video",
                     examples=["medseg phases predict proc01.npy -m colontcn.pt -o results/",
                               "medseg phases predict features/ -m colontcn.pt -o results/ --no-png --quiet",
                               "medseg phases predict proc01.npy -m colontcn.pt --reference labels/proc01.txt"])
    pr.add_argument("inputs", nargs="+", help=".npy feature files ([frames, dims] or [dims, frames]) or folders")
    add_common(pr, model="one", output="output folder (created if needed; default: next to each input)")
    pr.add_argument("--layout", choices=("auto", "tc", "ct"), default="auto", help=_LAYOUT_HELP)
    pr.add_argument("--fps", type=float, help="frame rate of the features (default: the model's, usually 5)")
    pr.add_argument("--reference", help="per-frame labels of the (single) input: drawn under the prediction and "
                                        "scored (one frame of length difference tolerated)")
    pr.add_argument("--background", nargs="+", metavar="CLASS", help=_BACKGROUND_HELP)
    pr.add_argument("--no-png", action="store_true", help="skip the timeline figure")

    ev = add_command(sub, "evaluate", help="Acc / Edit / F1@{10,25,50} / per-class metrics on a labelled data folder",
                     examples=["medseg phases evaluate data/ -m colontcn.pt --csv metrics.csv",
                               "medseg phases evaluate gtea/ -m mstcn.pt --split gtea/splits/test.split1.bundle "
                               "--background background",
                               "medseg phases evaluate data/ -m colontcn.pt --csv metrics.json --quiet"])
    ev.add_argument("data", help="folder with features/ and labels/ (or the MS-TCN layout: groundTruth/)")
    add_common(ev, model="one")
    ev.add_argument("--split", help="evaluate only the videos of this MS-TCN split bundle (test.split1.bundle)")
    ev.add_argument("--layout", choices=("auto", "tc", "ct"), default="auto", help=_LAYOUT_HELP)
    ev.add_argument("--background", nargs="+", metavar="CLASS", help=_BACKGROUND_HELP)
    ev.add_argument("--csv", help="write per-video and overall metrics to this report (.csv, .tsv or .json)")

    tr = add_command(sub, "train", help="train ColonTCN / MS-TCN through the Lightning pipeline (k-fold, DDP)",
                     examples=["medseg phases train data/ -o colontcn.pt --groups data/groups.csv --folds 0 "
                               "--fold all --csv folds.csv",
                               "medseg phases train gtea/ -o mstcn.pt --arch mstcn --split-dir gtea/splits --fold all "
                               "--background background",
                               "medseg phases train data/ -o colontcn.pt --devices 2 --seed 1 --max-time 00:08:00:00"])
    tr.add_argument("data", help="folder with features/ and labels/ (or groundTruth/ + mapping.txt)")
    tr.add_argument("-o", "--output", required=True,
                    help="model file to write (with --fold all: one per fold, <name>_fold<k>.pt); checkpoints and "
                         "logs go to <name>_run/ next to it")
    add_common(tr, devices=True, seed=True, resume=True, fold=True)
    tr.add_argument("--arch", choices=("colontcn", "mstcn"), default="colontcn", help="model architecture")
    tr.add_argument("--blocks", type=int,
                    help="ColonTCN blocks N: the paper's 12 (4-fold) when not given, 13 for its 5-fold setting")
    tr.add_argument("--stages", type=int, help="MS-TCN stages: the paper's 4 when not given")
    tr.add_argument("--causal", action="store_true", help="online model: only past frames")
    tr.add_argument("--reversible", action="store_true", help="reversible ColonTCN (memory flat in depth)")
    tr.add_argument("--folds", type=int, default=4, help="k (0 with --groups: leave-one-group-out)")
    tr.add_argument("--groups", help="CSV video,group (centre/study): folds never split a group")
    tr.add_argument("--split-dir", help="fixed splits: MS-TCN train.split<k>.bundle / test.split<k>.bundle files "
                                        "(--fold 0 is split 1)")
    tr.add_argument("--layout", choices=("auto", "tc", "ct"), default="auto",
                    help="feature array layout: tc = [frames, dims], ct = [dims, frames] (MS-TCN's), auto = the "
                         "width every video shares is the dims axis")
    tr.add_argument("--epochs", type=int, default=50, help="maximum number of epochs")
    tr.add_argument("--max-time", type=_max_time, metavar="DD:HH:MM:SS",
                    help="stop after this wall time (per fold); the best checkpoint so far is exported")
    tr.add_argument("--batch-size", type=int, default=2, help="videos per batch (per process)")
    tr.add_argument("--lr", type=float, default=5e-4, help="AdamW learning rate")
    tr.add_argument("--fps", type=float, default=5.0, help="frame rate of the features (stored in the model file)")
    tr.add_argument("--background", nargs="+", metavar="CLASS",
                    help="classes left out of the validation Edit / F1 and the fold table (as MS-TCN's "
                         "bg_class); without it every class counts")
    tr.add_argument("--csv", help="write the per-fold table to this report (.csv, .tsv or .json)")

    ex = add_command(sub, "extract", help="per-frame ResNet-50 features from a folder of frames -> .npy [T, 2048]",
                     examples=["medseg phases extract frames/ -o proc01.npy --encoder resnet50.pth",
                               "medseg phases extract frames/ -o proc01.npy --encoder resnet50.pth --source-fps 30 "
                               "--fps 5 --device cuda"])
    ex.add_argument("frames", help="folder of frames (PNG/JPG/BMP, name order)")
    ex.add_argument("-o", "--output", required=True, help=".npy feature file to write")
    ex.add_argument("--encoder", help="ResNet-50 weights (state_dict); without it the encoder is random (testing only)")
    ex.add_argument("--source-fps", type=float, default=25.0, help="frame rate of the frames")
    ex.add_argument("--fps", type=float, default=5.0, help="feature rate (5 as ColonTCN)")
    ex.add_argument("--batch-size", type=int, default=32, help="frames per forward pass")
    add_common(ex, precision=False)
    return p


def _expand(inputs: Sequence[str]) -> list[Path]:
    files: list[Path] = []
    for p in map(Path, inputs):
        files += sorted(p.glob("*.npy")) if p.is_dir() else [p]
    if not files:
        raise InputError("no .npy feature files found", inputs[0])
    return files


def _main(argv: Sequence[str] | None) -> int:
    args = list(argv or [])
    if args and args[0] not in COMMANDS and not args[0].startswith("-"):
        args = ["predict", *args]
    a = _parser().parse_args(args)
    return {"predict": _predict, "evaluate": _evaluate, "train": _train, "extract": _extract}[a.command](a)


def _predict(a: argparse.Namespace) -> int:
    from .io import load_features, load_labels, match_length
    from .predict import PhaseModel, outputs_for, predict_video

    files = _expand(a.inputs)
    if a.reference and len(files) != 1:
        raise InputError("--reference needs exactly one input", a.reference)
    out_dir = Path(a.output) if a.output else None
    outs = [p for f in files for k, p in outputs_for(f, out_dir).items() if k != "timeline" or not a.no_png]
    prepare_outputs(outs, [*files, *([a.reference] if a.reference else [])], overwrite=a.overwrite,
                    folders=[out_dir] if out_dir else [])
    pm = PhaseModel.from_file(a.model, a.device, a.precision)
    bg = pm.class_indices(a.background or [])
    start = time.perf_counter()
    bar = progress(total=len(files), desc="videos", unit="video", quiet=a.quiet or len(files) == 1)

    def work(f: Path) -> None:
        feats = load_features(f, a.layout, pm.in_features)
        ref = None
        if a.reference:
            ref, note = match_length(load_labels(a.reference, pm.classes), len(feats), a.reference)
            if note:
                say(note, a.quiet)
        s = predict_video(pm, feats, f, out_dir, a.fps, ref, not a.no_png, a.overwrite, bg)
        bar.update(1)
        extra = f", acc {s['metrics']['accuracy']:.1f}%, edit {s['metrics']['edit']:.1f}" if "metrics" in s else ""
        if not a.quiet:
            bar.write(f"{f}: {s['frames']} frames, {s['segments']} segments, withdrawal "
                      f"{s['withdrawal_s'] / 60:.1f} min{extra} -> {s['outputs']['frames']}", file=sys.stderr)

    with bar:
        rc = run_batch(files, work, prog=PROG, quiet=a.quiet)
    say(f"{len(files)} video(s) in {time.perf_counter() - start:.1f}s", a.quiet)
    return rc


def _evaluate(a: argparse.Namespace) -> int:
    from .evaluate import evaluate_dataset, format_table, write_csv
    from .predict import PhaseModel

    if a.csv:
        prepare_outputs([a.csv], [a.data], overwrite=a.overwrite)
    pm = PhaseModel.from_file(a.model, a.device, a.precision)
    bg = pm.class_indices(a.background or [])
    rows, total = evaluate_dataset(pm, a.data, a.layout, quiet=a.quiet, background=bg, split=a.split,
                                   notice=lambda n: say(n, a.quiet))
    print(format_table(rows, total))
    say(f"background (left out of Edit/F1): {', '.join(a.background) if a.background else 'none'}", a.quiet)
    if a.csv:
        write_csv(rows, total, a.csv, a.overwrite)
        say(f"wrote {a.csv}", a.quiet)
    return 0


def _train(a: argparse.Namespace) -> int:
    from shared_backbones.report import format_table, mean_row, write_report

    out = Path(a.output)
    outs = [out] if a.fold != "all" else []  # per-fold names depend on the number of folds: train_phases checks them
    prepare_outputs([*outs, *([a.csv] if a.csv else [])], [a.data], overwrite=a.overwrite or a.resume is not None)
    from pipelines.phases import RankFailedError, is_worker_rank, train_phases  # the one place medseg uses pipelines

    kw = {k: v for k, v in (("causal", a.causal or None),) if v is not None}
    if a.arch == "colontcn":
        if a.stages:
            raise InputError("--stages applies to --arch mstcn")
        kw.update({k: v for k, v in (("num_blocks", a.blocks), ("reversible", a.reversible or None)) if v is not None})
    elif a.blocks or a.reversible:
        raise InputError("--blocks and --reversible apply to --arch colontcn")
    elif a.stages:
        kw["num_stages"] = a.stages
    worker = is_worker_rank()
    try:
        res = train_phases(
            a.data, out, arch=a.arch, arch_kwargs=kw, folds=a.folds, fold=None if a.fold == "all" else a.fold,
            groups=a.groups, split_dir=a.split_dir, epochs=a.epochs, batch_size=a.batch_size, lr=a.lr, fps=a.fps,
            layout=a.layout, background=a.background or [], precision=a.precision, max_time=a.max_time, resume=a.resume,
            quiet=a.quiet or worker, overwrite=a.overwrite, seed=a.seed, notice=lambda n: say(n, a.quiet or worker),
            **lightning_device(a.device, a.devices),
        )
    except RankFailedError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 1
    if not res:  # a rank other than 0: rank 0 exports, scores and reports
        return 0
    rows = [{"fold": str(r.fold), **r.metrics} for r in res]
    rows.append(mean_row(rows, "fold"))
    print(format_table(rows, digits=2))
    if a.csv:
        write_report(a.csv, rows, overwrite=a.overwrite or a.resume is not None)
    say(f"model file(s): {', '.join(str(r.model_file) for r in res)}", a.quiet)
    return 0


def _extract(a: argparse.Namespace) -> int:
    from shared_backbones.precision import resolve_device

    from .extract import extract_features, frame_encoder, list_frames

    list_frames(a.frames)
    prepare_outputs([a.output], [a.frames], overwrite=a.overwrite)
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
