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
    prepare_outputs,
    run_cli,
    say,
)
from shared_backbones.options import Number, add_parts

PROG = "audiosep"
#: --chunk-seconds bounds: audiosep.separate.MIN_CHUNK_SECONDS / MAX_CHUNK_SECONDS (not imported: that pulls in torch)
MIN_CHUNK_SECONDS, MAX_CHUNK_SECONDS = 0.1, 3600.0
#: LibriMix / WHAM! mixture types (audiosep.mixtures.MIX_TYPES; not imported: keeps the parser light)
MIX_TYPES = ("clean", "both", "single")


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
        "--chunk-seconds",
        type=Number(float, min=MIN_CHUNK_SECONDS, max=MAX_CHUNK_SECONDS),
        default=30.0,
        help="chunk length streamed through the model (more: more context)",
    )
    s.add_argument(
        "--overlap-seconds",
        type=Number(float, min=0, max=MAX_CHUNK_SECONDS / 2, max_open=True),
        default=1.0,
        help="cross-faded overlap between chunks (less than half a chunk)",
    )
    s.add_argument("--per-channel", action="store_true", help="separate each channel instead of the downmix")
    s.add_argument("--preview", metavar="DIR",
                   help="also write DIR/<stem>.png per input: spectrograms of the mixture and of each source")
    add_parts(s, "input files")

    st = add_command(
        sub,
        "stream",
        help="separate block by block with a causal model, from a file, a pipe or a microphone (low latency)",
        examples=[
            "audiosep stream meeting.wav -m causal.pt -o separated/ --realtime",
            "audiosep stream - -m causal.pt --rate 8000 --format s16le -o out/ < raw.pcm",
            "audiosep stream mic -m causal.pt --stdout --source 1 | aplay -t raw -f S16_LE -r 8000",
        ],
    )
    st.add_argument("input", help="audio file; - for standard input (a WAV stream, or raw PCM: --rate, --channels, "
                    "--format); mic or mic:DEVICE for a microphone (optional extra convsuite[live])")
    add_common(
        st,
        model="one",
        model_help="causal suite model file (cLN or channel-wise LN, causal padding; others are refused)",
        output="output folder for <stem>_s1.wav ... (default: next to the input file; standard input: stdin_s1.wav "
        "..., a microphone: mic_s1.wav ...)",
        precision=False,
    )
    st.set_defaults(device="cpu")
    st._option_string_actions["--device"].help = "cpu (or auto): the streaming separator computes on the CPU"
    st.add_argument("--stdout", action="store_true",
                    help="write raw PCM (--format) to standard output instead of files: the sources as channels")
    st.add_argument("--source", type=Number(int, min=1, max=64), metavar="K",
                    help="only source K (1-based): one channel on --stdout, one file otherwise")
    st.add_argument("--block-ms", type=Number(float, min=0.1, max=10000.0), default=4.0,
                    help="block length in milliseconds (the separator accepts any size; smaller: less delay)")
    st.add_argument("--realtime", action="store_true",
                    help="pace a file as if it were being recorded (takes its duration)")
    st.add_argument("--rate", type=Number(int, min=1000, max=384000),
                    help="sample rate of raw PCM on standard input, or of the microphone (default: the model's)")
    st.add_argument("--channels", type=Number(int, min=1, max=64),
                    help="channels of raw PCM on standard input or of the microphone, mixed down to mono (default 1)")
    st.add_argument("--format", choices=("s16le", "f32le"),
                    help="raw PCM samples on standard input and on --stdout (default s16le)")
    st.add_argument("--max-seconds", type=Number(float, min=0, min_open=True, max=366 * 86400.0),
                    help="stop after this much audio (a microphone otherwise runs until Ctrl-C)")
    st.add_argument("--preview", metavar="DIR",
                    help="also write DIR/<stem>.png: spectrograms of the input and of each source")

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
    e.add_argument("data", help="references: LibriMix's or WHAM!'s subset folder (mix_clean/, mix_both/, mix_single/, "
                   "s1/, s2/ ...) or the suite's mix/, s1/, s2/ ...")
    e.add_argument("--mix-type", choices=MIX_TYPES, default="clean",
                   help="LibriMix / WHAM! mixture: clean (the speakers), both (speakers + noise), single (speaker 1 + "
                   "noise; the one reference is s1/)")
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
        type=Number(int, min=1000, max=384000),
        help="model rate in Hz, for files that do not store it (torchaudio state_dicts, older Asteroid files; "
        "default and torchaudio's Libri2Mix bundle: 8000); an Asteroid file's own rate cannot be overridden",
    )
    i.add_argument(
        "--layers",
        type=Number(int, min=1, max=128),
        default=8,
        help="torchaudio: blocks per repeat <X> (not in the weights)",
    )
    i.add_argument("--mask", choices=("relu", "sigmoid"),
                   help="torchaudio: mask non-linearity, not stored in the weights (default relu, as torchaudio's "
                   "conv_tasnet_base; sigmoid is torchaudio.models.ConvTasNet's own default)")

    t = add_command(
        sub,
        "train",
        help="train Conv-TasNet (SI-SNR + PIT) through the Lightning pipeline",
        examples=[
            "audiosep train Libri2Mix/wav8k/min/train-100 --val-dir Libri2Mix/wav8k/min/dev -o convtasnet.pt "
            "--arch convtasnet-base",
            "audiosep train speakers/ --dynamic-mixing --val-dir data/val -o convtasnet.pt --devices 2 --device cuda",
            "audiosep train data/train -o convtasnet.pt --resume --max-time 12h",
        ],
    )
    t.add_argument(
        "data", help="LibriMix's or WHAM!'s subset folder (mix_clean/, mix_both/, mix_single/, s1/, s2/ ...; "
        "--mix-type), the suite's mix/, s1/, s2/ ..., or, with --dynamic-mixing, single-speaker files"
    )
    add_common(
        t,
        output="model file to write (the best validation checkpoint)",
        output_required=True,
        devices=True,
        seed=True,
        resume=True,
    )
    from pipelines.options import AudiosepTrainOptions, add_options  # a light module: no torch, no Lightning

    add_options(t, AudiosepTrainOptions)
    return p


def _separate(args: argparse.Namespace) -> int:
    from .separate import separate_files

    start = time.perf_counter()

    def done(f: Path, outs: list[Path]) -> None:
        say(f"{f} -> {', '.join(str(o) for o in outs)}", args.quiet)

    run = separate_files(
        args.inputs,
        args.model,
        args.output,
        chunk_seconds=args.chunk_seconds,
        overlap_seconds=args.overlap_seconds,
        per_channel=args.per_channel,
        preview=args.preview,
        overwrite=args.overwrite,
        num_parts=args.num_parts,
        part_id=args.part_id,
        device=args.device,
        precision=args.precision,
        quiet=args.quiet,
        log=lambda line: say(line, args.quiet),
        on_done=done,
        keep_going=True,
        prog=PROG,
    )
    skipped = len(run.planned.plan.skipped)
    say(
        f"separated {len(run.written)} of {run.total} file(s) in {time.perf_counter() - start:.1f}s"
        + (f" ({skipped} done before, skipped)" if skipped else ""),
        args.quiet,
    )
    return run.rc


def _stream(args: argparse.Namespace) -> int:
    from .stream_io import stream_file

    summary = stream_file(
        args.input,
        args.model,
        args.output,
        to_stdout=args.stdout,
        block_ms=args.block_ms,
        realtime=args.realtime,
        rate=args.rate,
        channels=args.channels,
        fmt=args.format,
        source=args.source,
        preview=args.preview,
        max_seconds=args.max_seconds,
        overwrite=args.overwrite,
        device=args.device,
        quiet=args.quiet,
        log=lambda line: say(line, args.quiet),
    )
    for out in summary.outputs:
        say(f"wrote {out}", args.quiet)
    if summary.preview is not None:
        say(f"wrote {summary.preview.path}", args.quiet)
    say(summary.line(), args.quiet)
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    from shared_backbones.report import format_table

    from .evaluate import METRICS, score_folder

    ev = score_folder(args.estimates, args.data, args.output, overwrite=args.overwrite, quiet=args.quiet,
                      keep_going=True, prog=PROG, mix_type=args.mix_type)
    if ev.data is not None:
        say(f"references: {ev.data.describe()}", args.quiet)
    if ev.rows:
        print(format_table(ev.table, ["file", *METRICS], digits=2))
    if ev.report is not None:
        say(f"wrote {ev.report}", args.quiet)
    if ev.rc and ev.rows:
        say(f"scored {len(ev.rows)} of {ev.total} mixture(s); the mean covers those only", args.quiet)
    return ev.rc


def _import(args: argparse.Namespace) -> int:
    from .importers import describe, import_convtasnet

    mf = import_convtasnet(
        args.weights, args.output, args.format, args.sample_rate, args.mask, args.layers, args.overwrite
    )
    assumed = mf.extra.get("assumed") or []
    say(f"{mf.extra['imported_from']}: {describe(mf)} -> {args.output}"
        + "".join(f"; {a}" for a in assumed), args.quiet)
    return 0


def _train(args: argparse.Namespace) -> int:
    prepare_outputs([args.output], [args.data], overwrite=args.overwrite or args.resume is not None)
    # the train command is the one place audiosep uses pipelines
    from pipelines.audiosep import train_audiosep
    from pipelines.options import AudiosepTrainOptions, options_from

    res = train_audiosep(args.data, args.output, **options_from(AudiosepTrainOptions, args))
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
    commands = {"separate": _separate, "stream": _stream, "evaluate": _evaluate, "import": _import, "train": _train}
    return commands[args.command](args)


def main(argv: Sequence[str] | None = None) -> int:
    return run_cli(_main, argv, prog=PROG)


if __name__ == "__main__":
    sys.exit(main())
