"""``audiosep``: speech separation with Conv-TasNet — separate, evaluate, import, train."""

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
    parse_threads,
    prepare_outputs,
    run_batch,
    run_cli,
    say,
)

PROG = "audiosep"


def _parser() -> argparse.ArgumentParser:
    p = make_parser(
        PROG,
        __doc__ or "",
        [
            "audiosep separate meeting.flac -m convtasnet.pt -o separated/",
            "audiosep evaluate separated/ Libri2Mix/wav8k/min/test -o scores.csv",
            "audiosep train Libri2Mix/wav8k/min/train-100 --val-dir Libri2Mix/wav8k/min/dev -o convtasnet.pt",
        ],
    )
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    s = add_command(
        sub,
        "separate",
        help="separate speakers in audio files (any length, rate, channels, soundfile format)",
        examples=[
            "audiosep separate interview.wav -m convtasnet.pt -o separated/",
            "audiosep separate recordings/ -m convtasnet.pt -o out/ --per-channel",
            "audiosep separate long_meeting.mp3 -m convtasnet.pt --device cuda --chunk-seconds 30",
        ],
    )
    s.add_argument("inputs", nargs="+", help="audio files or folders (WAV/FLAC/OGG/MP3/... as libsndfile reads)")
    add_common(
        s,
        model="one",
        model_help="suite model file (from `audiosep train` or `audiosep import`; no weights are bundled)",
        output="output folder for <stem>_s1.wav ... (created if needed; default: next to each input)",
    )
    s.add_argument(
        "--chunk-seconds", type=float, default=30.0, help="chunk length streamed through the model (more: more context)"
    )
    s.add_argument("--overlap-seconds", type=float, default=1.0, help="cross-faded overlap between chunks")
    s.add_argument("--per-channel", action="store_true", help="separate each channel instead of the downmix")

    e = add_command(
        sub,
        "evaluate",
        help="SI-SNR, SI-SNRi, SDR, SDRi of separated files against a LibriMix-style folder",
        examples=[
            "audiosep evaluate separated/ data/test",
            "audiosep evaluate separated/ Libri2Mix/wav8k/min/test -o scores.csv",
            "audiosep evaluate separated/ data/test -o scores.json --overwrite -q",
        ],
    )
    e.add_argument("estimates", help="folder with <stem>_s1.wav ... (as `audiosep separate -o` writes them)")
    e.add_argument("data", help="LibriMix-style folder with mix/, s1/, s2/ ...")
    e.add_argument("-o", "--output", help="report with per-file scores and the mean: .csv, .tsv or .json")
    add_deprecated(e, "--csv", "-o/--output", "output")
    add_common(e, device=False, precision=False)

    i = add_command(
        sub,
        "import",
        help="torchaudio / Asteroid Conv-TasNet weights -> suite model file",
        examples=[
            "audiosep import conv_tasnet_base_libri2mix.pt -o convtasnet.pt",
            "audiosep import ConvTasNet_Libri2Mix_sepclean_8k/pytorch_model.bin -o convtasnet.pt",
            "audiosep import my_state_dict.pt -o model.pt --format torchaudio --sample-rate 16000 --layers 8",
        ],
    )
    i.add_argument("weights", help="torchaudio state_dict, or Asteroid `model.serialize()` file / pytorch_model.bin")
    add_common(i, output="suite model file to write", output_required=True, device=False, precision=False)
    i.add_argument(
        "--format",
        choices=("auto", "torchaudio", "asteroid"),
        default="auto",
        help="source layout; auto tells them apart by their keys",
    )
    i.add_argument(
        "--sample-rate",
        type=int,
        help="model rate for torchaudio files (Asteroid files carry theirs; torchaudio's Libri2Mix bundle: 8000; "
        "else 8000)",
    )
    i.add_argument("--layers", type=int, default=8, help="torchaudio: blocks per repeat <X> (not in the weights)")
    i.add_argument("--mask", choices=("relu", "sigmoid"), default="relu", help="torchaudio: mask non-linearity")

    t = add_command(
        sub,
        "train",
        help="train Conv-TasNet (SI-SNR + PIT) through the Lightning pipeline",
        examples=[
            "audiosep train Libri2Mix/wav8k/min/train-100 --val-dir Libri2Mix/wav8k/min/dev -o convtasnet.pt "
            "--arch convtasnet-base",
            "audiosep train speakers/ --dynamic-mixing --val-dir data/val -o convtasnet.pt --devices 2 --device cuda",
            "audiosep train data/train -o convtasnet.pt --resume --max-time 00:12:00:00",
        ],
    )
    t.add_argument(
        "data", help="LibriMix-style folder (mix/, s1/, s2/...) or, with --dynamic-mixing, single-speaker files"
    )
    add_common(
        t,
        output="model file to write (the best validation checkpoint)",
        output_required=True,
        devices=True,
        seed=True,
        resume=True,
    )
    t.add_argument("--val-dir", help="LibriMix-style validation folder (default: a k-fold split of DATA)")
    t.add_argument("--dynamic-mixing", action="store_true", help="draw training mixtures on the fly from DATA")
    t.add_argument(
        "--arch",
        default="convtasnet-small",
        choices=("convtasnet-small", "convtasnet-base", "convtasnet-causal", "convtasnet"),
        help="architecture preset",
    )
    t.add_argument("--reversible", action="store_true", help="reversible TCN stack (training memory flat in depth)")
    t.add_argument("--sources", type=int, default=2, help="number of speakers per mixture")
    t.add_argument("--sample-rate", type=int, default=8000, help="rate of the data and of the model")
    t.add_argument("--segment", type=float, default=4.0, help="training crop in seconds (paper: 4)")
    t.add_argument("--batch-size", type=int, default=4, help="mixtures per step and device")
    t.add_argument("--epochs", type=int, default=100, help="maximum number of epochs")
    t.add_argument("--max-steps", type=int, default=-1, help="stop after this many optimiser steps (-1: no limit)")
    t.add_argument("--max-time", help="stop after DD:HH:MM:SS of wall time, validation included")
    t.add_argument("--lr", type=float, default=1e-3, help="Adam learning rate")
    t.add_argument(
        "--scheduler",
        choices=("plateau", "cosine", "time-cosine"),
        default="plateau",
        help="plateau: halve after 3 epochs without improvement (paper); cosine: decay to 0 over --epochs; "
        "time-cosine: warm-up, then cosine decay over the --max-time budget",
    )
    t.add_argument("--epoch-size", type=int, default=1000, help="mixtures per epoch with --dynamic-mixing")
    t.add_argument(
        "--speed-perturb",
        type=float,
        default=0.0,
        help="with --dynamic-mixing, play each source at a random speed within 1 +- this (0.15: new voices)",
    )
    t.add_argument("--fold", type=int, default=0, help="validation fold of DATA when no --val-dir is given")
    t.add_argument("--folds", type=int, default=5, help="number of folds for that split")
    t.add_argument("--workers", type=int, default=0, help="data-loading worker processes")
    t.add_argument(
        "--threads",
        type=parse_threads,
        default=None,
        metavar="N|auto",
        help="torch threads on CPU [torch's default]; auto: time a few training steps at 1 and at torch's count and "
        "keep more only if >10%% faster (1 is often much faster on a small machine shared with other jobs)",
    )
    return p


def _separate(args: argparse.Namespace) -> int:
    from .separate import Separator, collect_inputs, output_paths, separate_file

    files = collect_inputs(args.inputs)
    prepare_outputs([], files, folders=[args.output] if args.output else [])
    sep = Separator.from_file(args.model, args.device, args.precision)
    prepare_outputs(
        [o for f in files for o in output_paths(f, sep.num_sources, args.output)], files, overwrite=args.overwrite
    )
    say(f"model: {sep.describe()}", args.quiet)
    start = time.perf_counter()
    done: list[Path] = []

    def work(f: Path) -> None:
        outs = separate_file(
            f,
            sep,
            args.output,
            chunk_seconds=args.chunk_seconds,
            overlap_seconds=args.overlap_seconds,
            per_channel=args.per_channel,
            overwrite=args.overwrite,
            quiet=args.quiet,
        )
        done.append(f)
        say(f"{f} -> {', '.join(str(o) for o in outs)}", args.quiet)

    rc = run_batch(files, work, prog=PROG, quiet=args.quiet)
    say(f"separated {len(done)} of {len(files)} file(s) in {time.perf_counter() - start:.1f}s", args.quiet)
    return rc


def _evaluate(args: argparse.Namespace) -> int:
    from shared_backbones.cliutil import progress
    from shared_backbones.report import format_table, mean_row, write_report

    from .evaluate import METRICS, list_mixtures, score_mixture

    if args.output:
        prepare_outputs([args.output], overwrite=args.overwrite)
    srcs, mixes = list_mixtures(args.estimates, args.data)
    bar = iter(progress(mixes, desc="scoring", unit="file", quiet=args.quiet))
    rows: list[dict] = []

    def work(mix: Path) -> None:
        next(bar, None)  # advance the progress bar
        rows.append(score_mixture(mix, srcs, args.estimates))

    rc = run_batch(mixes, work, prog=PROG, quiet=args.quiet)  # a bad pair is listed at the end, the rest scored
    next(bar, None)  # close the bar
    if not rows:
        return rc
    table = [*rows, mean_row(rows, "file")]
    print(format_table(table, ["file", *METRICS], digits=2))
    if args.output:
        write_report(args.output, table, ["file", *METRICS], overwrite=args.overwrite)
        say(f"wrote {args.output}", args.quiet)
    if rc:
        say(f"scored {len(rows)} of {len(mixes)} mixture(s); the mean covers those only", args.quiet)
    return rc


def _import(args: argparse.Namespace) -> int:
    from .importers import describe, import_convtasnet

    prepare_outputs([args.output], [args.weights], overwrite=args.overwrite)
    mf = import_convtasnet(
        args.weights, args.output, args.format, args.sample_rate, args.mask, args.layers, args.overwrite
    )
    say(f"{mf.extra['imported_from']}: {describe(mf)} -> {args.output}", args.quiet)
    return 0


def _train(args: argparse.Namespace) -> int:
    from shared_backbones.cliutil import lightning_device

    prepare_outputs([args.output], [args.data], overwrite=args.overwrite)
    from pipelines.audiosep import train_audiosep  # the train command is the one place audiosep uses pipelines

    res = train_audiosep(
        args.data,
        args.output,
        arch=args.arch,
        arch_kwargs={"reversible": True} if args.reversible else None,
        val_dir=args.val_dir,
        dynamic_mixing=args.dynamic_mixing,
        sample_rate=args.sample_rate,
        num_sources=args.sources,
        segment=args.segment,
        batch_size=args.batch_size,
        epochs=args.epochs,
        max_steps=args.max_steps,
        max_time=args.max_time,
        lr=args.lr,
        scheduler=args.scheduler,
        epoch_size=args.epoch_size,
        speed_perturb=args.speed_perturb,
        threads=args.threads,
        precision=args.precision,
        **lightning_device(args.device, args.devices),
        fold=args.fold,
        folds=args.folds,
        workers=args.workers,
        resume=args.resume,
        quiet=args.quiet,
        overwrite=args.overwrite,
        seed=args.seed,
    )
    if res.model_file is not None:  # rank 0 only
        m = res.metrics
        say(
            f"best validation SI-SNR {m.get('val_si_snr', float('nan')):.2f} dB, "
            f"SI-SNRi {m.get('val_si_snri', float('nan')):.2f} dB; "
            f"model file {res.model_file}",
            args.quiet,
        )
    return 0


def _main(argv: Sequence[str] | None) -> int:
    args = _parser().parse_args(argv)
    return {"separate": _separate, "evaluate": _evaluate, "import": _import, "train": _train}[args.command](args)


def main(argv: Sequence[str] | None = None) -> int:
    return run_cli(_main, argv, prog=PROG)


if __name__ == "__main__":
    sys.exit(main())
