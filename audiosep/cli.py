"""``audiosep``: speech separation with Conv-TasNet — separate, evaluate, import, train."""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence

from shared_backbones.cliutil import add_run_options, run_cli, say
from shared_backbones.errors import UserError


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="audiosep", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)
    s = sub.add_parser("separate", help="separate speakers in audio files (any length, rate, channels)")
    s.add_argument("inputs", nargs="+", help="audio files or folders (WAV/FLAC/OGG/...)")
    s.add_argument("-m", "--model", help="suite model file (from audiosep train or audiosep import); required")
    s.add_argument("-o", "--out-dir", help="output folder (default: next to each input)")
    s.add_argument("--chunk-seconds", type=float, default=10.0, help="chunk length (default 10)")
    s.add_argument("--overlap-seconds", type=float, default=1.0, help="cross-faded overlap between chunks (default 1)")
    s.add_argument("--per-channel", action="store_true", help="separate each channel instead of the downmix")
    add_run_options(s)
    e = sub.add_parser("evaluate", help="SI-SNRi / SDRi of separated files against a LibriMix-style folder")
    e.add_argument("estimates", help="folder with <stem>_s1.wav ... (audiosep separate -o)")
    e.add_argument("data", help="folder with mix/, s1/, s2/ ...")
    e.add_argument("--csv", help="write per-file scores and the mean to this CSV")
    add_run_options(e, device=False, precision=False, quiet=False)
    i = sub.add_parser("import", help="torchaudio / Asteroid Conv-TasNet weights -> suite model file")
    i.add_argument("weights")
    i.add_argument("-o", "--output", required=True)
    i.add_argument("--format", choices=("torchaudio", "asteroid"), default="torchaudio")
    i.add_argument("--sample-rate", type=int, default=8000)
    i.add_argument("--layers", type=int, default=8, help="blocks per repeat <X> (not visible in the weights)")
    i.add_argument("--mask", choices=("relu", "sigmoid"), default="relu")
    add_run_options(i, device=False, precision=False, quiet=False)
    t = sub.add_parser("train", help="train Conv-TasNet (SI-SNR + PIT) through the Lightning pipeline")
    t.add_argument(
        "data", help="LibriMix-style folder (mix/, s1/, s2/...) or, with --dynamic-mixing, single-speaker files"
    )
    t.add_argument("-o", "--output", required=True, help="model file to write (best checkpoint)")
    t.add_argument("--val-dir", help="LibriMix-style validation folder (default: a k-fold split of DATA)")
    t.add_argument("--dynamic-mixing", action="store_true")
    t.add_argument(
        "--arch", default="convtasnet-small", help="convtasnet-small | convtasnet-base | convtasnet-causal | convtasnet"
    )
    t.add_argument("--reversible", action="store_true", help="reversible TCN stack (training memory flat in depth)")
    t.add_argument("--sources", type=int, default=2)
    t.add_argument("--sample-rate", type=int, default=8000)
    t.add_argument("--segment", type=float, default=4.0, help="training crop in seconds (paper: 4)")
    t.add_argument("--batch-size", type=int, default=4)
    t.add_argument("--epochs", type=int, default=100)
    t.add_argument("--max-time", help="stop after DD:HH:MM:SS")
    t.add_argument("--lr", type=float, default=1e-3)
    t.add_argument("--fold", type=int, default=0)
    t.add_argument("--folds", type=int, default=5)
    t.add_argument("--accelerator", default="auto")
    t.add_argument("--devices", default="auto")
    t.add_argument("--resume", help="Lightning checkpoint to resume from")
    add_run_options(t, device=False)
    return p


def _main(argv: Sequence[str] | None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "separate":
        from .separate import Separator, collect_inputs, separate_file

        if not args.model:
            raise UserError(
                "no model given: pass --model MODEL.pt (a file written by `audiosep train` or "
                "`audiosep import`; no weights are bundled)"
            )
        files = collect_inputs(args.inputs)
        sep = Separator.from_file(args.model, args.device, args.precision)
        start = time.perf_counter()
        for f in files:
            outs = separate_file(
                f,
                sep,
                args.out_dir,
                chunk_seconds=args.chunk_seconds,
                overlap_seconds=args.overlap_seconds,
                per_channel=args.per_channel,
                overwrite=args.overwrite,
                quiet=args.quiet,
            )
            say(f"{f} -> {', '.join(str(o) for o in outs)}", args.quiet)
        say(
            f"separated {len(files)} file(s) in {time.perf_counter() - start:.1f}s "
            f"({sep.num_sources} sources, model rate {sep.sample_rate} Hz, {sep.device}, {sep.policy.name})",
            args.quiet,
        )
    elif args.command == "evaluate":
        from .evaluate import evaluate_folder, format_table, write_csv

        rows = evaluate_folder(args.estimates, args.data)
        print(format_table(rows))
        if args.csv:
            write_csv(rows, args.csv, args.overwrite)
    elif args.command == "train":
        from shared_backbones.cliutil import check_output

        check_output(args.output, args.overwrite)
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
            max_time=args.max_time,
            lr=args.lr,
            precision=args.precision,
            accelerator=args.accelerator,
            devices=args.devices,
            fold=args.fold,
            folds=args.folds,
            resume=args.resume,
            quiet=args.quiet,
            overwrite=args.overwrite,
        )
        say(f"best val SI-SNR loss {res.best_score:.2f} dB; model file {res.model_file}", args.quiet)
    elif args.command == "import":
        from .importers import import_convtasnet

        out = import_convtasnet(
            args.weights, args.output, args.format, args.sample_rate, args.mask, args.layers, args.overwrite
        )
        say(f"wrote {out}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    return run_cli(_main, argv, prog="audiosep")


if __name__ == "__main__":
    sys.exit(main())
