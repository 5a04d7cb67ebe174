"""``audiosep``: speech separation with Conv-TasNet — separate, evaluate, import, train."""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from shared_backbones.cliutil import run_cli, say
from shared_backbones.precision import PRECISION_CHOICES


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="audiosep", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)
    s = sub.add_parser("separate", help="separate speakers in audio files (any length, rate, channels)")
    s.add_argument("inputs", nargs="+", help="audio files or folders (WAV/FLAC/OGG/...)")
    s.add_argument("-m", "--model", required=True, help="suite model file (audiosep train / audiosep import)")
    s.add_argument("-o", "--out-dir", help="output folder (default: next to each input)")
    s.add_argument("--chunk-seconds", type=float, default=10.0, help="chunk length (default 10)")
    s.add_argument("--overlap-seconds", type=float, default=1.0, help="cross-faded overlap between chunks (default 1)")
    s.add_argument("--per-channel", action="store_true", help="separate each channel instead of the downmix")
    s.add_argument("--device", default="auto")
    s.add_argument("--precision", default="auto", choices=PRECISION_CHOICES)
    s.add_argument("--overwrite", action="store_true")
    s.add_argument("--quiet", action="store_true")
    e = sub.add_parser("evaluate", help="SI-SNRi / SDRi of separated files against a LibriMix-style folder")
    e.add_argument("estimates", help="folder with <stem>_s1.wav ... (audiosep separate -o)")
    e.add_argument("data", help="folder with mix/, s1/, s2/ ...")
    e.add_argument("--csv", help="write per-file scores and the mean to this CSV")
    e.add_argument("--overwrite", action="store_true")
    i = sub.add_parser("import", help="torchaudio / Asteroid Conv-TasNet weights -> suite model file")
    i.add_argument("weights")
    i.add_argument("-o", "--output", required=True)
    i.add_argument("--format", choices=("torchaudio", "asteroid"), default="torchaudio")
    i.add_argument("--sample-rate", type=int, default=8000)
    i.add_argument("--layers", type=int, default=8, help="blocks per repeat <X> (not visible in the weights)")
    i.add_argument("--mask", choices=("relu", "sigmoid"), default="relu")
    i.add_argument("--overwrite", action="store_true")
    return p


def _main(argv: Sequence[str] | None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "separate":
        from .separate import Separator, collect_inputs, separate_file

        files = collect_inputs(args.inputs)
        sep = Separator.from_file(args.model, args.device, args.precision)
        start = time.perf_counter()
        for f in files:
            outs = separate_file(f, sep, args.out_dir, chunk_seconds=args.chunk_seconds,
                                 overlap_seconds=args.overlap_seconds, per_channel=args.per_channel,
                                 overwrite=args.overwrite, quiet=args.quiet)
            say(f"{f} -> {', '.join(str(o) for o in outs)}", args.quiet)
        say(f"separated {len(files)} file(s) in {time.perf_counter() - start:.1f}s "
            f"({sep.num_sources} sources, model rate {sep.sample_rate} Hz, {sep.device}, {sep.policy.name})", args.quiet)
    elif args.command == "evaluate":
        from .evaluate import evaluate_folder, format_table, write_csv

        rows = evaluate_folder(args.estimates, args.data)
        print(format_table(rows))
        if args.csv:
            write_csv(rows, args.csv, args.overwrite)
    elif args.command == "import":
        from .importers import import_convtasnet

        out = import_convtasnet(args.weights, args.output, args.format, args.sample_rate, args.mask, args.layers,
                                args.overwrite)
        say(f"wrote {out}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    return run_cli(_main, argv, prog="audiosep")


if __name__ == "__main__":
    sys.exit(main())
