"""Streaming separation from a file, a pipe or a microphone, block by block, with a causal Conv-TasNet.

Where the blocks come from (:func:`open_input`):

- an audio file (anything libsndfile reads), read as fast as possible or paced in real time (``realtime``: block k
  is handed over when its last sample would have been captured);
- standard input (``-``): a WAV stream, recognised by its ``RIFF``/``RF64`` header (PCM 8/16/24/32-bit, IEEE float
  32/64, WAVE_FORMAT_EXTENSIBLE; a header whose data size is 0 or 0xFFFFFFFF, as tools write on pipes, means "until
  the end"), else raw interleaved PCM described by ``rate``, ``channels`` and ``fmt`` (``s16le`` or ``f32le``);
- a live microphone (``mic`` or ``mic:DEVICE``) through the optional ``sounddevice`` package
  (``pip install 'convsuite[live]'``).

Several channels are mixed down to mono (their mean, as ``audiosep separate`` does without ``--per-channel``) with a
notice. Each block goes through :class:`audiosep.streaming.StreamingSeparator` (one encoder window of algorithmic
latency, equal to the offline causal forward), and the separated blocks go to (:class:`FileSink`,
:class:`PipeSink`):

- one WAV file per source, named as ``audiosep separate`` names them (``<stem>_s1.wav`` ...; standard input's stem
  is ``stdin``, a microphone's ``mic``), in the input's sample format, written to temporary files and renamed at the
  end with ``audiosep separate``'s level rule (a source whose peak would clip is scaled down as a whole), so a
  streamed file equals the offline separation of the same file;
- standard output as raw interleaved PCM (``fmt``): the sources as channels, or one of them (``source``); samples
  beyond full scale are clipped for ``s16le`` and counted in a warning.

Output that is not finite (NaN/inf) is never written: the stream stops with a one-line error. The loop
(:func:`stream`) times every block and returns a :class:`StreamSummary` (latency, blocks, median and worst block
compute time, real-time factor); :func:`stream_file` plans the outputs (``shared_backbones.planning``) before any
work and runs it all, as ``audiosep stream`` does.
"""

from __future__ import annotations

import array
import contextlib
import math
import os
import signal
import statistics
import struct
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

import numpy as np
import soundfile as sf
import torch

from shared_backbones.checkpoint import ModelFile, load_model_file
from shared_backbones.cliutil import atomic_output, progress
from shared_backbones.errors import InputError, UserError
from shared_backbones.options import require
from shared_backbones.planning import Job, Plan, Writer, plan_outputs

from .preview import Preview, Spectrogram, write_preview
from .separate import PEAK, WAV_SUBTYPES, NonFinite, Separator, _info, num_sources_of, output_paths

STDIN = "-"
#: raw PCM on pipes: numpy dtype, scale to [-1, 1), the WAV subtype files get
RAW_FORMATS = {"s16le": ("<i2", 32768.0, "PCM_16"), "f32le": ("<f4", 1.0, "FLOAT")}
DEFAULT_FORMAT = "s16le"
#: block lengths (ms) accepted: down to one sample at 8 kHz, up to 10 s
MIN_BLOCK_MS, MAX_BLOCK_MS = 0.1, 10000.0
LIVE_HINT = "pip install 'convsuite[live]'"


def _warn(message: str) -> None:
    print(f"audiosep: warning: {message}", file=sys.stderr)


def is_mic(spec: str | Path) -> bool:
    """``mic`` or ``mic:DEVICE`` (a device index or a part of its name); a file of that name: ``./mic``."""
    s = str(spec)
    return s == "mic" or s.startswith("mic:")


# ------------------------------------------------------------------------------------------------ sources
class BlockSource:
    """Where blocks come from: ``read(n)`` -> float32 [k, channels] with k <= n (k == 0 at the end)."""

    name: str = ""  # shown in messages
    stem: str = ""  # output names: <stem>_s1.wav ...
    rate: int = 0
    channels: int = 1
    subtype: str = "FLOAT"  # what the output files are written as
    frames: int | None = None  # length when known
    live: bool = False  # Ctrl-C ends the stream normally (the outputs are kept)
    path: Path | None = None  # an input file

    def read(self, n: int) -> np.ndarray:
        raise NotImplementedError

    def close(self) -> None:
        """Release the file or device."""

    def notices(self) -> list[str]:
        """Warnings gathered while reading (shown at the end)."""
        return []


class FileSource(BlockSource):
    """An audio file read with libsndfile, in order."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        info = _info(self.path)  # one-line refusals: not found, unreadable, empty
        self.name, self.stem = str(self.path), self.path.stem
        self.rate, self.channels, self.frames = info.samplerate, info.channels, info.frames
        self.subtype = info.subtype if info.subtype in WAV_SUBTYPES else "PCM_16"
        try:
            self._f = sf.SoundFile(str(self.path))
        except (RuntimeError, sf.LibsndfileError) as exc:
            raise InputError(f"not a readable audio file ({str(exc).split(':')[-1].strip()})", self.path) from None

    def read(self, n: int) -> np.ndarray:
        try:
            return self._f.read(n, dtype="float32", always_2d=True)
        except (RuntimeError, sf.LibsndfileError) as exc:
            raise InputError(f"cannot read samples at {self._f.tell()} ({exc})", self.path) from None

    def close(self) -> None:
        self._f.close()


@dataclass(frozen=True)
class Codec:
    """Interleaved PCM bytes -> float32 samples."""

    subtype: str
    width: int  # bytes per sample

    def decode(self, data: bytes, channels: int) -> np.ndarray:
        if self.subtype == "PCM_24":
            b = np.frombuffer(data, np.uint8).reshape(-1, 3).astype(np.int32)
            v = (b[:, 0] | (b[:, 1] << 8) | (b[:, 2] << 16)) << 8 >> 8  # sign-extend the 24-bit value
            a = v.astype(np.float32) / float(1 << 23)
        else:
            dtype, scale, offset = _CODECS[self.subtype]
            a = ((np.frombuffer(data, dtype).astype(np.float64) - offset) / scale).astype(np.float32)
        return a.reshape(-1, channels)


_CODECS = {"PCM_U8": ("u1", 128.0, 128.0), "PCM_16": ("<i2", 32768.0, 0.0), "PCM_32": ("<i4", 2.0**31, 0.0),
           "FLOAT": ("<f4", 1.0, 0.0), "DOUBLE": ("<f8", 1.0, 0.0)}


class PipeSource(BlockSource):
    """Interleaved PCM from a byte stream (standard input): raw, or the data chunk of a WAV stream."""

    live = True

    def __init__(self, stream: BinaryIO, rate: int, channels: int, codec: Codec, *, prefix: bytes = b"",
                 limit: int | None = None, raw: bool = True, name: str = "standard input", stem: str = "stdin"
                 ) -> None:
        self._stream, self._buf, self._limit = stream, prefix, limit
        self.rate, self.channels, self.codec = int(rate), int(channels), codec
        self.subtype = codec.subtype if codec.subtype in WAV_SUBTYPES else "PCM_16"
        self.name, self.stem = name, stem
        self.raw = raw
        self.trailing = 0
        self._ended = False

    def read(self, n: int) -> np.ndarray:
        frame = self.channels * self.codec.width
        want = n * frame if self._limit is None else min(n * frame, self._limit)
        while len(self._buf) < want and not self._ended:
            more = self._stream.read(want - len(self._buf))  # a pipe: blocks until data or its end
            if not more:
                self._ended = True
            self._buf += more or b""
        take = min(len(self._buf), want) // frame * frame
        data, self._buf = self._buf[:take], self._buf[take:]
        if self._limit is not None:
            self._limit -= take
        if take == 0:
            self.trailing = len(self._buf)
        return self.codec.decode(data, self.channels)

    def notices(self) -> list[str]:
        return [f"{self.name}: ignored {self.trailing} trailing byte(s) (not a whole sample frame)"] \
            if self.trailing else []


def read_wav_header(stream: BinaryIO, magic: bytes, name: str = "standard input") -> tuple[int, int, Codec,
                                                                                           int | None]:
    """Parse a WAV stream's header up to its ``data`` chunk from a stream that cannot seek (``magic``: its first 4
    bytes, already read). Returns (rate, channels, codec, data bytes or None for "until the end")."""

    def need(n: int) -> bytes:
        b = stream.read(n)
        if len(b) < n:
            raise InputError("the WAV stream ends inside its header", name)
        return b

    _, wave = struct.unpack("<I4s", need(8))  # the RIFF size of a stream is often a placeholder
    if wave != b"WAVE":
        raise InputError("a RIFF stream that is not WAVE audio", name)
    fmt: tuple[int, int, int, int] | None = None
    ds64_data: int | None = None
    while True:
        cid, size = struct.unpack("<4sI", need(8))
        if cid == b"data":
            if fmt is None:
                raise InputError("the WAV stream has no 'fmt ' chunk before its data", name)
            tag, channels, rate, bits = fmt
            codec = _wav_codec(tag, bits, name)
            if channels < 1 or rate < 1:
                raise InputError(f"the WAV stream declares {channels} channel(s) at {rate} Hz", name)
            if magic == b"RF64":
                size = ds64_data if ds64_data not in (None, 0, 0xFFFFFFFFFFFFFFFF) else 0xFFFFFFFF
            return rate, channels, codec, None if size in (0, 0xFFFFFFFF) else size
        body = need(size + (size & 1))
        if cid == b"fmt ":
            if size < 16:
                raise InputError("the WAV stream's 'fmt ' chunk is too short", name)
            tag, channels, rate, _, _, bits = struct.unpack("<HHIIHH", body[:16])
            if tag == 0xFFFE and size >= 40:  # WAVE_FORMAT_EXTENSIBLE: the sub-format GUID starts with the tag
                tag = struct.unpack("<H", body[24:26])[0]
            fmt = (tag, channels, rate, bits)
        elif cid == b"ds64" and size >= 16:
            ds64_data = struct.unpack("<Q", body[8:16])[0]


def _wav_codec(tag: int, bits: int, name: str) -> Codec:
    pcm = {8: "PCM_U8", 16: "PCM_16", 24: "PCM_24", 32: "PCM_32"}
    flt = {32: "FLOAT", 64: "DOUBLE"}
    table = pcm if tag == 1 else flt if tag == 3 else {}
    if bits not in table:
        kind = {1: "PCM", 3: "IEEE float"}.get(tag, f"format tag 0x{tag:04x}")
        raise InputError(f"the WAV stream's samples ({kind}, {bits} bits) are not supported (PCM 8/16/24/32-bit "
                         "or float 32/64-bit)", name)
    return Codec(table[bits], bits // 8)


class MicSource(BlockSource):
    """A live microphone through ``sounddevice`` (PortAudio); overflows (blocks lost because the separation fell
    behind) are counted."""

    live = True

    def __init__(self, spec: str, rate: int, channels: int) -> None:
        try:
            import sounddevice as sd
        except (ImportError, OSError) as exc:  # OSError: the package is there but PortAudio is not
            raise InputError(f"microphone input needs the optional 'sounddevice' package and PortAudio ({LIVE_HINT});"
                             f" {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else 'not found'}",
                             spec) from None
        device: int | str | None = spec.partition(":")[2] or None
        if isinstance(device, str) and device.isdigit():
            device = int(device)
        self.name, self.stem = spec, "mic"
        self.rate, self.channels, self.subtype = int(rate), int(channels), "FLOAT"
        self.overflows = 0
        try:
            self._s = sd.InputStream(samplerate=self.rate, channels=self.channels, dtype="float32", device=device)
            self._s.start()
        except Exception as exc:  # PortAudioError, ValueError for a device that does not exist
            raise InputError(f"cannot open the microphone ({str(exc).splitlines()[0]})", spec) from None

    def read(self, n: int) -> np.ndarray:
        data, overflowed = self._s.read(n)
        self.overflows += bool(overflowed)
        return np.asarray(data, np.float32).reshape(-1, self.channels)

    def close(self) -> None:
        self._s.stop()
        self._s.close()

    def notices(self) -> list[str]:
        return [f"{self.name}: {self.overflows} input overflow(s): audio was lost while the separation fell "
                "behind (use a larger --block-ms)"] if self.overflows else []


def open_input(spec: str | Path, *, rate: int | None = None, channels: int | None = None, fmt: str | None = None,
               model_rate: int = 8000, stdin: BinaryIO | None = None) -> BlockSource:
    """The source for ``spec``: a file path, ``-`` (standard input, or ``stdin``: a WAV stream or raw PCM in
    ``fmt`` at ``rate`` with ``channels``), or ``mic[:DEVICE]`` (at ``rate``, default ``model_rate``)."""
    s = str(spec)
    if s == STDIN:
        stream = stdin if stdin is not None else sys.stdin.buffer
        magic = stream.read(4)
        if magic in (b"RIFF", b"RF64"):
            wav_rate, wav_channels, codec, limit = read_wav_header(stream, magic)
            for option, given, actual in (("--rate", rate, wav_rate), ("--channels", channels, wav_channels)):
                require(given is None or given == actual, f"standard input is a WAV stream with {option} "
                        f"{actual} in its header; drop {option} {given}")
            return PipeSource(stream, wav_rate, wav_channels, codec, limit=limit, raw=False)
        require(rate is not None, "raw PCM on standard input needs --rate (and --channels, --format when not 1 and "
                                  "s16le), or send a WAV stream")
        dtype, _, subtype = RAW_FORMATS[fmt or DEFAULT_FORMAT]
        return PipeSource(stream, int(rate), channels or 1, Codec(subtype, np.dtype(dtype).itemsize), prefix=magic)
    if is_mic(s):
        return MicSource(s, rate or model_rate, channels or 1)
    for option, given in (("--rate", rate), ("--channels", channels)):
        require(given is None, f"{option} describes raw PCM on standard input or the microphone; {s} is a file and "
                               "carries its own")
    return FileSource(s)


# ------------------------------------------------------------------------------------------------ sinks
class FileSink:
    """One WAV file per chosen source: float blocks go to temporary files beside the outputs; :meth:`commit`
    writes the outputs in ``subtype`` with ``audiosep separate``'s level rule and renames them into place."""

    def __init__(self, outputs: dict[int, Path], rate: int, subtype: str, overwrite: bool = False) -> None:
        self.outputs, self.rate, self.subtype, self.overwrite = outputs, rate, subtype, overwrite
        self._stack = contextlib.ExitStack()
        folder = next(iter(outputs.values())).parent
        self._tmpdir = Path(self._stack.enter_context(tempfile.TemporaryDirectory(prefix=".audiosep-", dir=folder)))
        self._files = {k: self._stack.enter_context(sf.SoundFile(str(self._tmpdir / f"s{k}.wav"), "w", rate, 1,
                                                                 "FLOAT")) for k in outputs}
        self.peaks = dict.fromkeys(outputs, 0.0)
        self.gains: dict[int, float] = {}

    def write(self, y: np.ndarray) -> None:
        """``y`` [sources, m] float32."""
        for k, f in self._files.items():
            f.write(y[k])
            self.peaks[k] = max(self.peaks[k], float(np.abs(y[k]).max(initial=0.0)))

    def commit(self) -> list[Path]:
        """Write and rename the outputs; returns their paths."""
        for f in self._files.values():
            f.close()
        for k, out in self.outputs.items():
            peak = self.peaks[k]
            gain = self.gains[k] = min(1.0, PEAK / peak) if peak > 0 else 1.0
            with (atomic_output(out, self.overwrite) as tmp, sf.SoundFile(str(self._tmpdir / f"s{k}.wav")) as r,
                  sf.SoundFile(str(tmp), "w", self.rate, 1, self.subtype, format="WAV") as w):
                for block in r.blocks(blocksize=1 << 16, dtype="float32", always_2d=True):
                    w.write(np.clip(block * gain, -1.0, 1.0))
        self.close()
        return list(self.outputs.values())

    def close(self) -> None:
        """Remove the temporary files (after :meth:`commit`, or instead of it when the stream failed)."""
        self._stack.close()


class PipeSink:
    """Raw interleaved PCM (``fmt``) on a byte stream: the chosen sources as channels, flushed after every block."""

    def __init__(self, stream: BinaryIO, fmt: str, sources: Sequence[int]) -> None:
        self.stream, self.sources = stream, list(sources)
        self.dtype, self.scale, _ = RAW_FORMATS[fmt]
        self.clipped = 0
        self.gains = dict.fromkeys(self.sources, 1.0)
        self.closed_at: int | None = None  # samples sent when the reader closed the pipe
        self._sent = 0

    def write(self, y: np.ndarray) -> None:
        if self.closed_at is not None:
            return
        a = y[self.sources].T  # [m, channels]
        if self.dtype == "<i2":
            over = np.abs(a) > 1.0
            self.clipped += int(over.sum())
            a = np.round(np.clip(a, -1.0, 1.0) * 32767.0)
        try:
            self.stream.write(np.ascontiguousarray(a, dtype=self.dtype).tobytes())
            self.stream.flush()
        except BrokenPipeError:  # the reader ended (`| head`, a player closed): the stream ends like on Ctrl-C
            self.closed_at = self._sent
            if self.stream is getattr(sys.stdout, "buffer", None):  # no second error when Python flushes at exit
                with contextlib.suppress(OSError, ValueError):
                    os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            return
        self._sent += len(a)

    def commit(self) -> list[Path]:
        return []

    def close(self) -> None:
        """Nothing to remove: what was sent is sent."""


# ------------------------------------------------------------------------------------------------ the loop
@dataclass
class StreamSummary:
    """What a stream did: ``samples`` per channel in (and out, per source), ``blocks`` of ``block_samples``, the
    algorithmic latency, the compute time of every block (median, worst and where), the real-time factor (compute
    time / audio time: below 1 keeps up with a live input), the outputs and warnings."""

    name: str
    rate: int
    samples: int = 0
    blocks: int = 0
    block_samples: int = 0
    latency_samples: int = 0
    latency_seconds: float = 0.0
    compute_seconds: float = 0.0
    median_block_seconds: float = 0.0
    worst_block_seconds: float = 0.0
    worst_block_at_seconds: float = 0.0  # where in the audio the worst block starts
    wall_seconds: float = 0.0
    outputs: list[Path] = field(default_factory=list)
    preview: Preview | None = None
    interrupted: bool = False  # ended by Ctrl-C (live inputs) or max_seconds
    warnings: list[str] = field(default_factory=list)

    @property
    def audio_seconds(self) -> float:
        return self.samples / self.rate if self.rate else 0.0

    @property
    def realtime_factor(self) -> float:
        """Compute time over audio time (blocks and the final flush)."""
        return self.compute_seconds / self.audio_seconds if self.samples else float("nan")

    @property
    def worst_block_realtime_factor(self) -> float:
        """The worst block's compute time over its duration (above 1: that block was late)."""
        return self.worst_block_seconds * self.rate / self.block_samples if self.block_samples else float("nan")

    def line(self) -> str:
        """The summary a user reads: latency, blocks, median and worst block, real-time factor."""
        ms = 1000.0
        return (f"{self.name}: {self.audio_seconds:.2f} s of audio in {self.blocks} block(s) of "
                f"{self.block_samples / self.rate * ms:.3g} ms; algorithmic latency {self.latency_seconds * ms:.3g} ms"
                f" ({self.latency_samples} samples) plus one block; compute per block median "
                f"{self.median_block_seconds * ms:.3f} ms, worst {self.worst_block_seconds * ms:.3f} ms (at "
                f"{self.worst_block_at_seconds:.3f} s, {self.worst_block_realtime_factor:.2f}x its duration); "
                f"real-time factor {self.realtime_factor:.3f}" + (" (stopped early)" if self.interrupted else ""))


def make_streamer(separator: Separator, input_rate: int):
    """The :class:`audiosep.streaming.StreamingSeparator` of a loaded model for input at ``input_rate`` (a
    non-causal model is refused there, in one line)."""
    from .streaming import StreamingSeparator

    return StreamingSeparator(separator.net, input_rate=input_rate, model_rate=separator.sample_rate)


def stream(source: BlockSource, streamer, sink: FileSink | PipeSink, *, block_samples: int,
           realtime: bool = False, max_seconds: float | None = None, preview: str | Path | None = None,
           source_names: Sequence[str] | None = None, overwrite: bool = False, quiet: bool = True) -> StreamSummary:
    """Run ``source`` through ``streamer`` (a ``StreamingSeparator``) in blocks of ``block_samples`` into ``sink``.

    ``realtime``: wait for each block as if it were being captured (a file then takes its duration).
    ``max_seconds``: stop after that much audio. ``preview``: a PNG path for the mixture's and sources'
    spectrograms (:mod:`audiosep.preview`). A live source (a pipe, a microphone) ends normally on Ctrl-C (after the
    block at hand; a second Ctrl-C interrupts): the stream is flushed and the outputs kept. Non-finite model output
    stops the stream (:class:`InputError`); the sink's temporary files are then removed (file outputs are never
    partly written)."""
    summary = StreamSummary(source.name, source.rate, block_samples=block_samples,
                            latency_samples=int(streamer.latency_samples),
                            latency_seconds=float(streamer.latency_seconds))
    n_src = int(streamer.n_src)
    limit = None if max_seconds is None else max(1, round(max_seconds * source.rate))
    spectra = (Spectrogram(source.rate), [Spectrogram(source.rate) for _ in range(n_src)]) if preview else None
    repair = NonFinite(source.path or Path(source.name), 0, source.rate)
    times = array.array("d")  # compute seconds per block (8 bytes each: an hour of 4 ms blocks is 7 MB)
    worst, worst_at, busy = 0.0, 0, 0.0
    emitted = 0
    total_s = None if source.frames is None else source.frames / source.rate
    if limit is not None and total_s is not None:
        total_s = min(total_s, limit / source.rate)
    fmt = "{desc}: {n:.1f}/{total:.1f} s audio [{elapsed}<{remaining}{postfix}]" if total_s else \
        "{desc}: {n:.1f} s audio [{elapsed}{postfix}]"
    bar = progress(total=total_s, desc="streaming", unit="s", quiet=quiet, bar_format=fmt)

    where = "; the samples before it were already sent" if isinstance(sink, PipeSink) else "; nothing written"

    def emit(y: torch.Tensor) -> None:
        nonlocal emitted
        a = y.detach().cpu().numpy()
        if not np.isfinite(a).all():  # the streamer refuses this itself; a sink never sees NaN/inf either way
            at = (emitted + int(np.argmax(~np.isfinite(a).all(0)))) / source.rate
            raise InputError(f"the model's output is not finite (NaN/inf) at {at:.3f} s{where}", source.name)
        if a.shape[1]:
            sink.write(a)
            if spectra:
                for s, row in zip(spectra[1], a):
                    s.push(row)
        emitted += a.shape[1]

    start = time.perf_counter()
    last_shown = start
    stop = threading.Event()
    try:
        # numpy's overflow warnings off: a non-finite output is reported once, in one line
        with bar, np.errstate(all="ignore"), _ctrl_c_ends(stop, source.live), _one_blas_thread():
            while limit is None or summary.samples < limit:
                n = block_samples if limit is None else min(block_samples, limit - summary.samples)
                x = source.read(n)
                if len(x) == 0:
                    summary.interrupted = stop.is_set()
                    break
                if x.shape[1] > 1:  # the model separates one channel (stream_file says so before the work)
                    x = x.mean(1, keepdims=True)
                repair.total = summary.samples + len(x)  # what has been read so far
                x = repair.repair(summary.samples, x)
                mono = np.ascontiguousarray(x[:, 0], dtype=np.float32)
                if realtime:  # the block's last sample is captured at start + (samples so far + k) / rate
                    wait = start + (summary.samples + len(mono)) / source.rate - time.perf_counter()
                    if wait > 0:
                        time.sleep(wait)
                t0 = time.perf_counter()
                y = _process(streamer, torch.from_numpy(mono), source.name, where)
                dt = time.perf_counter() - t0
                if dt > worst:
                    worst, worst_at = dt, summary.samples
                times.append(dt)
                busy += dt
                if spectra:
                    spectra[0].push(mono)
                emit(y)
                summary.samples += len(mono)
                summary.blocks += 1
                bar.update(len(mono) / source.rate)
                now = time.perf_counter()
                if not quiet and now - last_shown > 0.25:
                    last_shown = now
                    rtf = busy * source.rate / summary.samples
                    bar.set_postfix_str(f"block {dt * 1000:.2f} ms, RTF {rtf:.3f}", refresh=False)
                if stop.is_set() or getattr(sink, "closed_at", None) is not None:  # Ctrl-C on a live source, or
                    summary.interrupted = True  # the reader of standard output went away: this block was the last
                    break
            if limit is not None and summary.samples >= limit and source.frames != summary.samples:
                summary.interrupted = True
            t0 = time.perf_counter()
            tail = _process(streamer, None, source.name, where)
            flush_s = time.perf_counter() - t0
            emit(tail)
        if summary.samples == 0:
            raise InputError("audio is empty (0 samples); nothing written", source.name)
        if emitted != summary.samples:  # the streaming contract: every input sample gives one output sample
            raise RuntimeError(f"streaming returned {emitted} samples for {summary.samples}")
        summary.outputs = sink.commit()
    finally:
        sink.close()
        source.close()
    summary.wall_seconds = time.perf_counter() - start
    summary.compute_seconds = busy + flush_s
    if times:
        summary.median_block_seconds = statistics.median(times)
        summary.worst_block_seconds = worst
        summary.worst_block_at_seconds = worst_at / source.rate
    summary.warnings += source.notices()
    if repair.count:
        summary.warnings.append(f"{source.name}: {repair.count} isolated non-finite (NaN/inf) sample(s) set to 0")
    if isinstance(sink, PipeSink) and sink.closed_at is not None:
        summary.warnings.append(f"standard output was closed by its reader after {sink.closed_at} sample(s); "
                                "stopped there")
    if isinstance(sink, PipeSink) and sink.clipped:
        summary.warnings.append(f"{sink.clipped} output sample(s) beyond full scale clipped on standard output "
                                "(use --format f32le to keep them)")
    if spectra and preview is not None:
        gains = [getattr(sink, "gains", {}).get(k, 1.0) for k in range(n_src)]
        title = source.path.name if source.path is not None else source.name
        summary.preview = write_preview(preview, spectra[0], spectra[1], title=title,
                                        source_names=source_names, gains=gains, overwrite=overwrite)
    return summary


@contextlib.contextmanager
def _one_blas_thread() -> Iterator[None]:
    """BLAS on one thread while streaming: per-block products are a few frames wide, and a thread pool's wake-ups
    cost more than they share (the paper's causal configuration at 4 ms blocks on the 2-core development machine
    under load: median 7-8 ms per block on one thread, 20-25 ms with OpenBLAS's default two). Uses threadpoolctl
    where installed (scikit-learn and others bring it); without it BLAS keeps its default."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        yield
        return
    with threadpool_limits(1, user_api="blas"):
        yield


@contextlib.contextmanager
def _ctrl_c_ends(stop: threading.Event, live: bool) -> Iterator[None]:
    """For a live source, the first Ctrl-C ends the stream after the current block (flushed, outputs kept); a
    second one interrupts at once. Elsewhere (a file, another thread) Ctrl-C interrupts as usual."""
    if not live or threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame) -> None:
        if stop.is_set():
            raise KeyboardInterrupt
        stop.set()

    old = signal.signal(signal.SIGINT, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, old)


def _process(streamer, block: torch.Tensor | None, name: str, where: str) -> torch.Tensor:
    """``streamer.process(block)`` (``flush()`` for None); a refusal of the streamer (non-finite output) is one
    line naming the input and saying what became of the output (``where``)."""
    try:
        return streamer.flush() if block is None else streamer.process(block)
    except UserError as exc:
        raise InputError(f"{exc}{where}", name) from None


# ------------------------------------------------------------------------------------------------ planned run
@dataclass
class StreamPlan:
    """The checked outputs of one stream: source index -> file (empty for standard output), the preview PNG."""

    plan: Plan
    files: dict[int, Path]
    preview: Path | None
    stem: str


def plan_stream(spec: str | Path, num_sources: int, output: str | Path | None = None, *, to_stdout: bool = False,
                source: int | None = None, preview: str | Path | None = None, overwrite: bool = False,
                model_path: str | Path | None = None) -> StreamPlan:
    """Plan a stream's outputs before any work (``shared_backbones.planning``): ``<stem>_sK.wav`` in ``output``
    (default: beside an input file; standard input and a microphone need ``output`` or ``to_stdout``), only
    source ``source`` (1-based) when given, and ``<preview>/<stem>.png``. Refused in one line: an output that is
    the input or the model file, an existing output without ``overwrite``, a folder that cannot be made."""
    s = str(spec)
    path = None if s == STDIN or is_mic(s) else Path(s)
    stem = path.stem if path is not None else "stdin" if s == STDIN else "mic"
    require(not (to_stdout and output is not None), "choose -o/--output (files) or --stdout, not both")
    require(source is None or 1 <= source <= num_sources,
            f"--source {source}: the model separates {num_sources} source(s) (choose 1..{num_sources})")
    chosen = [source - 1] if source is not None else list(range(num_sources))
    files: dict[int, Path] = {}
    if not to_stdout:
        require(output is not None or path is not None,
                f"{'standard input' if s == STDIN else 'a microphone'} has no folder to write beside; give -o DIR "
                "or --stdout")
        names = output_paths(path if path is not None else Path(stem), num_sources, output)
        files = {k: names[k] for k in chosen}
    outputs = {f"s{k + 1}": p for k, p in files.items()}
    shown = None if preview is None else Path(preview) / f"{stem}.png"
    if shown is not None:
        outputs["preview"] = shown
    job = Job(s, [path] if path is not None else [], outputs)
    plan = plan_outputs([job], writers={"preview": Writer((".png",), "--preview")},
                        folders=[Path(f) for f in (output, preview) if f is not None],
                        other_inputs=[model_path] if model_path is not None else [], overwrite=overwrite)
    return StreamPlan(plan, files, shown, stem)


def stream_file(
    spec: str | Path,
    model: str | Path | ModelFile | Separator,
    output: str | Path | None = None,
    *,
    to_stdout: bool = False,
    block_ms: float = 4.0,
    realtime: bool = False,
    rate: int | None = None,
    channels: int | None = None,
    fmt: str | None = None,
    source: int | None = None,
    preview: str | Path | None = None,
    max_seconds: float | None = None,
    overwrite: bool = False,
    device: str = "cpu",
    quiet: bool = True,
    log: Callable[[str], None] | None = None,
    stdin: BinaryIO | None = None,
    stdout: BinaryIO | None = None,
) -> StreamSummary:
    """Stream ``spec`` (a file, ``-`` for standard input, ``mic[:DEVICE]``) through a causal separation model in
    blocks of ``block_ms`` milliseconds, as ``audiosep stream`` does: the outputs are planned and checked first
    (:func:`plan_stream`), then the input is opened, the model built (a non-causal one is refused), and the
    separated sources written to ``<stem>_s1.wav`` ... (in ``output``, default beside the input file) or, with
    ``to_stdout``, to standard output as raw PCM in ``fmt`` (default ``s16le``; the sources as channels, or
    ``source`` alone). ``rate``/``channels``/``fmt`` describe raw PCM on standard input (a WAV stream carries its
    own). ``log`` receives notices (the model, mixdown, warnings). Returns the :class:`StreamSummary`."""
    say = log or (lambda _line: None)
    require(isinstance(block_ms, (int, float)) and math.isfinite(block_ms) and MIN_BLOCK_MS <= block_ms <= MAX_BLOCK_MS,
            f"--block-ms must be in [{MIN_BLOCK_MS:g}, {MAX_BLOCK_MS:g}], got {block_ms!r}")
    require(fmt is None or fmt in RAW_FORMATS, f"--format must be one of {', '.join(RAW_FORMATS)}, got {fmt!r}")
    require(fmt is None or to_stdout or str(spec) == STDIN,
            "--format describes raw PCM on standard input or standard output; this run uses neither")
    if isinstance(model, Separator):
        mf, model_path = model.file, model.path
    elif isinstance(model, ModelFile):
        mf, model_path = model, None
    else:
        model_path = Path(model)
        mf = load_model_file(model_path, task=Separator.TASK)
    n_src = num_sources_of(mf)
    planned = plan_stream(spec, n_src, output, to_stdout=to_stdout, source=source, preview=preview,
                          overwrite=overwrite, model_path=model_path)
    require(str(device) in ("cpu", "auto"), f"--device {device}: the streaming separator computes on the CPU "
            "(per-block work of microseconds to milliseconds; a GPU's launch and copy latency would dominate)")
    separator = model if isinstance(model, Separator) else Separator.from_model_file(mf, "cpu", "fp32",
                                                                                       path=model_path)
    src = open_input(spec, rate=rate, channels=channels, fmt=fmt, model_rate=separator.sample_rate, stdin=stdin)
    try:
        require(fmt is None or to_stdout or getattr(src, "raw", False),
                "standard input is a WAV stream (its header gives the format); --format is for raw PCM")
        streamer = make_streamer(separator, src.rate)
        planned.plan.make_folders()
        if to_stdout:
            chosen = [source - 1] if source is not None else list(range(n_src))
            sink: FileSink | PipeSink = PipeSink(stdout if stdout is not None else sys.stdout.buffer,
                                                 fmt or DEFAULT_FORMAT, chosen)
        else:
            sink = FileSink(planned.files, src.rate, src.subtype, overwrite)
    except BaseException:
        src.close()
        raise
    mixdown = f"{src.channels} channels mixed down to mono (their mean)" if src.channels > 1 else "mono"
    say(f"model: {separator.describe()}; input: {src.name}, {src.rate} Hz, {mixdown}")
    block = max(1, round(block_ms * src.rate / 1000))
    names = [planned.files[k].name if k in planned.files else f"source {k + 1}" for k in range(n_src)]
    summary = stream(src, streamer, sink, block_samples=block, realtime=realtime, max_seconds=max_seconds,
                     preview=planned.preview, source_names=names, overwrite=overwrite, quiet=quiet)
    for w in summary.warnings:
        _warn(w)
    return summary


__all__ = ["BlockSource", "FileSink", "PipeSink", "StreamSummary", "open_input", "plan_stream", "stream",
           "stream_file"]
