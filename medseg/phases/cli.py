"""``medseg phases``: temporal segmentation of colonoscopy procedures from per-frame features.

medseg phases predict video.npy [more.npy | folder] -m model.pt [-o DIR] [--reference labels.txt]
medseg phases video.npy -m model.pt            (same as predict)
medseg phases evaluate DATA_DIR -m model.pt [--csv metrics.csv]
medseg phases train DATA_DIR -o model.pt [--arch colontcn|mstcn] [--folds 4 --groups groups.csv] [--all-folds]
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from shared_backbones.cliutil import add_run_options, progress, run_cli, say
from shared_backbones.errors import InputError

COMMANDS = ("predict", "evaluate", "train", "extract")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="medseg phases", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = p.add_subparsers(dest="command", required=True)
    pr = sub.add_parser("predict", help="per-frame phases, segments, withdrawal time, timeline PNG")
    pr.add_argument("inputs", nargs="+", help=".npy feature files ([T, D] or [D, T]) or folders of them")
    pr.add_argument("-m", "--model", required=True)
    pr.add_argument("-o", "--out-dir", help="output folder (default: next to each input)")
    pr.add_argument("--layout", choices=("auto", "tc", "ct"), default="auto")
    pr.add_argument("--fps", type=float, help="frame rate of the features (default: the model's, usually 5)")
    pr.add_argument("--reference", help="labels of the (single) input to draw and score against")
    pr.add_argument("--no-png", action="store_true", help="skip the timeline figure")
    add_run_options(pr)
    ev = sub.add_parser("evaluate", help="Acc / Edit / F1@{10,25,50} / per class on a labelled data folder")
    ev.add_argument("data", help="folder with features/ and labels/ (or groundTruth/)")
    ev.add_argument("-m", "--model", required=True)
    ev.add_argument("--csv", help="write per-video and mean metrics to this CSV")
    ev.add_argument("--layout", choices=("auto", "tc", "ct"), default="auto")
    add_run_options(ev)
    tr = sub.add_parser("train", help="train ColonTCN / MS-TCN through the Lightning pipeline (k-fold)")
    tr.add_argument("data", help="folder with features/ and labels/ (or groundTruth/ + mapping.txt)")
    tr.add_argument("-o", "--output", required=True, help="model file (with --all-folds: one per fold, _fold<k>)")
    tr.add_argument("--arch", choices=("colontcn", "mstcn"), default="colontcn")
    tr.add_argument("--blocks", type=int, help="ColonTCN blocks N (12 for 4-fold, 13 for 5-fold)")
    tr.add_argument("--causal", action="store_true", help="online model: only past frames")
    tr.add_argument("--reversible", action="store_true", help="reversible ColonTCN (memory flat in depth)")
    tr.add_argument("--folds", type=int, default=4, help="k (0 with --groups: leave-one-group-out)")
    tr.add_argument("--fold", type=int, default=0)
    tr.add_argument("--all-folds", action="store_true", help="train every fold and print the per-fold and mean table")
    tr.add_argument("--groups", help="CSV video,group (centre/study): folds never split a group")
    tr.add_argument("--split-dir", help="fixed splits: MS-TCN train.split<k>.bundle / test.split<k>.bundle files")
    tr.add_argument("--epochs", type=int, default=50)
    tr.add_argument("--batch-size", type=int, default=2)
    tr.add_argument("--lr", type=float, default=5e-4)
    tr.add_argument("--fps", type=float, default=5.0)
    tr.add_argument("--accelerator", default="auto")
    tr.add_argument("--csv", help="write the per-fold table to this CSV")
    add_run_options(tr, device=False)
    ex = sub.add_parser("extract", help="per-frame ResNet-50 features from a folder of frames -> .npy [T, 2048]")
    ex.add_argument("frames", help="folder of frames (PNG/JPG, name order)")
    ex.add_argument("-o", "--output", required=True, help=".npy file to write")
    ex.add_argument("--encoder", help="ResNet-50 weights (state_dict); without it the encoder is random (testing only)")
    ex.add_argument("--source-fps", type=float, default=25.0, help="frame rate of the frames (default 25)")
    ex.add_argument("--fps", type=float, default=5.0, help="feature rate (default 5, as ColonTCN)")
    ex.add_argument("--batch-size", type=int, default=32)
    add_run_options(ex, precision=False)
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
    if a.command == "extract":
        from shared_backbones.cliutil import check_output
        from shared_backbones.precision import resolve_device

        from .extract import extract_features, frame_encoder, list_frames

        check_output(a.output, a.overwrite)
        list_frames(a.frames)
        if a.encoder is None:
            say("warning: no --encoder weights given: features come from a randomly initialised ResNet-50", a.quiet)
        out = extract_features(
            a.frames,
            a.output,
            frame_encoder(a.encoder),
            a.source_fps,
            a.fps,
            a.batch_size,
            resolve_device(a.device),
            a.overwrite,
            a.quiet,
        )
        say(f"wrote {out}", a.quiet)
        return 0
    if a.command == "train":
        return _train(a)
    from .io import load_features, load_labels
    from .predict import PhaseModel, predict_video

    pm = PhaseModel.from_file(a.model, a.device, a.precision)
    if a.command == "predict":
        files = _expand(a.inputs)
        if a.reference and len(files) != 1:
            raise InputError("--reference needs exactly one input", a.reference)
        start = time.perf_counter()
        for f in progress(files, desc="videos", unit="video", quiet=a.quiet or len(files) == 1):
            feats = load_features(f, a.layout, pm.in_features)
            ref = load_labels(a.reference, pm.classes) if a.reference else None
            s = predict_video(
                pm, feats, f, Path(a.out_dir) if a.out_dir else None, a.fps, ref, not a.no_png, a.overwrite
            )
            extra = f", acc {s['metrics']['accuracy']:.1f}%" if "metrics" in s else ""
            say(
                f"{f}: {s['frames']} frames, {s['segments']} segments, withdrawal {s['withdrawal_s'] / 60:.1f} min"
                f"{extra} -> {s['outputs']['frames']}",
                a.quiet,
            )
        say(f"{len(files)} video(s) in {time.perf_counter() - start:.1f}s", a.quiet)
    elif a.command == "evaluate":
        from .evaluate import evaluate_dataset, format_table, write_csv

        rows, total = evaluate_dataset(pm, a.data, a.layout, quiet=a.quiet)
        print(format_table(rows, total))
        if a.csv:
            write_csv(rows, total, a.csv, a.overwrite)
    return 0


def _train(a: argparse.Namespace) -> int:
    import csv

    from shared_backbones.cliutil import atomic_output, check_output

    check_output(a.output, a.overwrite)
    from pipelines.phases import train_phases  # the train command is the one place medseg uses pipelines

    kw = {
        k: v
        for k, v in (("num_blocks", a.blocks), ("causal", a.causal or None), ("reversible", a.reversible or None))
        if v is not None
    }
    if a.arch == "mstcn":
        kw.pop("num_blocks", None)
        kw.pop("reversible", None)
    res = train_phases(
        a.data,
        a.output,
        arch=a.arch,
        arch_kwargs=kw,
        folds=a.folds,
        fold=None if a.all_folds else a.fold,
        groups=a.groups,
        split_dir=a.split_dir,
        epochs=a.epochs,
        batch_size=a.batch_size,
        lr=a.lr,
        fps=a.fps,
        precision=a.precision,
        accelerator=a.accelerator,
        quiet=a.quiet,
        overwrite=a.overwrite,
    )
    cols = list(res[0].metrics)
    rows = [{"fold": str(r.fold), **r.metrics} for r in res]
    rows.append({"fold": "mean", **{c: sum(r.metrics[c] for r in res) / len(res) for c in cols}})
    print(f"{'fold':<6}" + "".join(f"{c:>20}" for c in cols))
    for r in rows:
        print(f"{r['fold']:<6}" + "".join(f"{r[c]:>20.2f}" for c in cols))
    if a.csv:
        with atomic_output(a.csv, a.overwrite) as tmp, open(tmp, "w", newline="") as fh:
            w = csv.DictWriter(fh, fieldnames=["fold", *cols])
            w.writeheader()
            w.writerows(rows)
    say(f"model file(s): {', '.join(str(r.model_file) for r in res)}", a.quiet)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    return run_cli(_main, list(sys.argv[1:] if argv is None else argv), prog="medseg phases")


if __name__ == "__main__":
    sys.exit(main())
