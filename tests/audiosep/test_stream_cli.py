"""``audiosep stream`` and ``--preview`` (issue 22): a file streamed in blocks equals ``audiosep separate`` of the same
file with the same causal model; a pipe (raw PCM, a WAV stream) gives the same samples; standard output carries the
sources as channels (or one); non-causal models and non-finite output are refused in one line; previews hold one
panel per signal; ``--realtime`` paces the blocks as a recording would."""

from __future__ import annotations

import io
import math
import struct
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from audiosep.cli import main
from shared_backbones.checkpoint import ModelFile, save_model_file
from shared_backbones.registry import create_model

RATE = 8000
SMALL = dict(enc_num_feats=16, msk_num_feats=8, msk_num_hidden_feats=12, msk_num_layers=3, msk_num_stacks=2)
CAUSAL = dict(SMALL, norm="cln", causal=True)
N = 1700  # 0.2125 s: not a multiple of the blocks used below


def _model(path: Path, kwargs: dict, nan: bool = False) -> Path:
    torch.manual_seed(0)
    m = create_model("convtasnet-small", **kwargs)
    if nan:
        with torch.no_grad():
            m.mask_generator.output_conv.weight[0, 0] = float("nan")
    mf = ModelFile.from_model(m, task="audiosep", arch="convtasnet-small", arch_kwargs={"num_sources": 2, **kwargs},
                              preprocessing={"sample_rate": RATE})
    return save_model_file(path, mf)


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("models")
    return {"causal": _model(d / "causal.pt", CAUSAL), "offline": _model(d / "offline.pt", SMALL),
            "nan": _model(d / "nan.pt", CAUSAL, nan=True)}


def _signal(n: int = N, channels: int = 1) -> np.ndarray:
    t = np.arange(n) / RATE
    a = 0.3 * np.sin(2 * np.pi * 220 * t) * (1 + np.sin(2 * np.pi * 3 * t)) / 2
    b = 0.2 * np.sign(np.sin(2 * np.pi * 7 * t)) * np.sin(2 * np.pi * 1300 * t)
    x = np.stack([a + b, a - 0.5 * b], 1)[:, :channels]
    return x.astype(np.float32)


def _wav(path: Path, subtype: str = "FLOAT", channels: int = 1, n: int = N) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(str(path), _signal(n, channels), RATE, subtype=subtype)
    return path


def _read(path: Path) -> np.ndarray:
    return sf.read(str(path), dtype="float32")[0]


def _one_error_line(err: str) -> str:
    lines = [ln for ln in err.strip().splitlines() if ln.strip()]
    assert "Traceback" not in err and lines and lines[-1].startswith("audiosep: error: "), err
    assert sum("error:" in ln for ln in lines) == 1, err
    return lines[-1]


def _wav_files(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.rglob("*.wav")) if folder.exists() else []


# ------------------------------------------------------------------------------------------------ equality
@pytest.mark.parametrize("subtype,channels,block_ms", [("FLOAT", 1, "4"), ("FLOAT", 1, "1.375"),
                                                       ("PCM_16", 2, "0.125")])
def test_a_streamed_file_equals_separate(tmp_path, models, capsys, subtype, channels, block_ms):
    """Blocks of 32, 11 and 1 sample(s): the files equal `audiosep separate`'s of the same causal model (1e-5),
    in the input's sample format; a stereo file is mixed down as separate does, with a notice."""
    f = _wav(tmp_path / "talk.wav", subtype, channels)
    assert main(["stream", str(f), "-m", str(models["causal"]), "-o", str(tmp_path / "st"), "--block-ms",
                 block_ms]) == 0
    err = capsys.readouterr().err
    assert main(["separate", str(f), "-m", str(models["causal"]), "-o", str(tmp_path / "sep"), "-q"]) == 0
    assert _wav_files(tmp_path / "st") == _wav_files(tmp_path / "sep") == ["talk_s1.wav", "talk_s2.wav"]
    for name in ("talk_s1.wav", "talk_s2.wav"):
        a, b = _read(tmp_path / "st" / name), _read(tmp_path / "sep" / name)
        assert a.shape == b.shape == (N,)
        assert np.abs(b).max() > 1e-3  # a real signal, not silence on both sides
        tol = 1e-5 if subtype == "FLOAT" else 1 / 32768 + 1e-7  # PCM_16: the float results within 1e-5 may round
        assert np.abs(a - b).max() <= tol, (name, np.abs(a - b).max())  # to neighbouring steps
        assert sf.info(str(tmp_path / "st" / name)).subtype == subtype
    block = max(1, round(float(block_ms) * RATE / 1000))
    summary = err.strip().splitlines()[-1]
    assert f"in {math.ceil(N / block)} block(s)" in summary and "algorithmic latency 2 ms (16 samples)" in summary
    assert "worst" in summary and "real-time factor" in summary, summary
    assert ("2 channels mixed down to mono" in err) == (channels == 2), err


def test_the_library_summary(tmp_path, models):
    from audiosep.stream_io import stream_file

    f = _wav(tmp_path / "a.wav")
    s = stream_file(f, models["causal"], tmp_path / "out", block_ms=4)
    assert (s.samples, s.blocks, s.block_samples, s.latency_samples) == (N, math.ceil(N / 32), 32, 16)
    assert s.latency_seconds == pytest.approx(16 / RATE)
    assert 0 < s.median_block_seconds <= s.worst_block_seconds and s.compute_seconds > 0
    assert s.realtime_factor == pytest.approx(s.compute_seconds / (N / RATE))
    assert s.outputs == [tmp_path / "out" / "a_s1.wav", tmp_path / "out" / "a_s2.wav"]
    assert not s.interrupted and s.preview is None


# ------------------------------------------------------------------------------------------------ pipes
def _streamed_wav(data: bytes, unknown_size: bool) -> bytes:
    """A WAV file's bytes as a tool writes them on a pipe: the sizes it cannot know set to 0xFFFFFFFF."""
    if not unknown_size:
        return data
    b = bytearray(data)
    b[4:8] = struct.pack("<I", 0xFFFFFFFF)
    i = b.index(b"data")
    b[i + 4:i + 8] = struct.pack("<I", 0xFFFFFFFF)
    return bytes(b)


def test_a_pipe_gives_the_same_samples_as_the_file(tmp_path, models, monkeypatch, capsys):
    f = _wav(tmp_path / "in" / "talk.wav", "PCM_16")
    assert main(["stream", str(f), "-m", str(models["causal"]), "-o", str(tmp_path / "file"), "-q"]) == 0
    pcm = sf.read(str(f), dtype="int16")[0].astype("<i2").tobytes()
    # raw s16le through a real pipe into a real process
    proc = subprocess.run([sys.executable, "-m", "audiosep.cli", "stream", "-", "-m", str(models["causal"]),
                           "--rate", str(RATE), "--format", "s16le", "-o", str(tmp_path / "raw")],
                          input=pcm, capture_output=True, timeout=120)
    assert proc.returncode == 0, proc.stderr.decode()
    assert proc.stdout == b"" and b"real-time factor" in proc.stderr
    assert _wav_files(tmp_path / "raw") == ["stdin_s1.wav", "stdin_s2.wav"]
    # WAV streams (the header's sizes known, or 0xFFFFFFFF as on a pipe): the header gives rate, channels, format
    for unknown in (False, True):
        buf = io.BytesIO()
        sf.write(buf, sf.read(str(f), dtype="int16")[0], RATE, subtype="PCM_16", format="WAV")
        monkeypatch.setattr(sys, "stdin", type("Stdin", (), {"buffer": io.BytesIO(_streamed_wav(buf.getvalue(),
                                                                                                unknown))})())
        out = tmp_path / f"wav{int(unknown)}"
        assert main(["stream", "-", "-m", str(models["causal"]), "-o", str(out), "-q"]) == 0
        capsys.readouterr()
        for k in (1, 2):
            ref = _read(tmp_path / "file" / f"talk_s{k}.wav")
            assert np.array_equal(_read(out / f"stdin_s{k}.wav"), ref)
            assert np.array_equal(_read(tmp_path / "raw" / f"stdin_s{k}.wav"), ref)
            assert sf.info(str(out / f"stdin_s{k}.wav")).subtype == "PCM_16"


def test_wav_stream_header_reader_matches_libsndfile(tmp_path):
    """24-bit, stereo, WAVE_FORMAT_EXTENSIBLE, data size unknown: the pipe reader decodes what soundfile reads."""
    from audiosep.stream_io import PipeSource, read_wav_header

    for subtype in ("PCM_24", "PCM_U8", "PCM_32", "DOUBLE"):
        buf = io.BytesIO()
        x = _signal(333, 2)
        sf.write(buf, x, 11025, subtype=subtype, format="WAV")
        ref = sf.read(io.BytesIO(buf.getvalue()), dtype="float32")[0]
        stream = io.BytesIO(_streamed_wav(buf.getvalue(), True))
        magic = stream.read(4)
        rate, channels, codec, limit = read_wav_header(stream, magic)
        assert (rate, channels, codec.subtype, limit) == (11025, 2, subtype, None)
        src = PipeSource(stream, rate, channels, codec, raw=False)
        got = np.concatenate([src.read(50) for _ in range(8)])
        assert got.shape == ref.shape and np.abs(got - ref).max() <= 1e-7, subtype


def test_stdout_carries_the_sources_as_channels_or_one(tmp_path, models, capsysbinary):
    f = _wav(tmp_path / "talk.wav")
    assert main(["stream", str(f), "-m", str(models["causal"]), "-o", str(tmp_path / "files"), "-q"]) == 0
    ref = np.stack([_read(tmp_path / "files" / f"talk_s{k}.wav") for k in (1, 2)], 1)  # [N, 2]
    capsysbinary.readouterr()
    assert main(["stream", str(f), "-m", str(models["causal"]), "--stdout", "--format", "f32le"]) == 0
    out, err = capsysbinary.readouterr()
    assert len(out) == N * 2 * 4  # nothing but the samples on standard output
    assert np.abs(np.frombuffer(out, "<f4").reshape(N, 2) - ref).max() <= 1e-6
    assert b"real-time factor" in err
    assert main(["stream", str(f), "-m", str(models["causal"]), "--stdout", "--source", "2"]) == 0  # s16le
    out, _ = capsysbinary.readouterr()
    assert len(out) == N * 2
    assert np.abs(np.frombuffer(out, "<i2") - np.round(ref[:, 1] * 32767)).max() <= 1
    assert not (tmp_path / "talk_s1.wav").exists()  # --stdout writes no files
    # --source with files: that source's file only
    assert main(["stream", str(f), "-m", str(models["causal"]), "-o", str(tmp_path / "one"), "--source", "2",
                 "-q"]) == 0
    assert _wav_files(tmp_path / "one") == ["talk_s2.wav"]
    assert np.abs(_read(tmp_path / "one" / "talk_s2.wav") - ref[:, 1]).max() <= 1e-6


# ------------------------------------------------------------------------------------------------ refusals
def test_refusals_are_one_line_and_write_nothing(tmp_path, models, capsys, monkeypatch):
    f = _wav(tmp_path / "talk.wav")
    out = tmp_path / "out"
    cases = [
        (["-m", str(models["offline"]), "-o", str(out)], "causal"),  # gLN / centred padding cannot stream
        (["-m", str(models["causal"]), "-o", str(out), "--source", "3"], "--source 3"),
        (["-m", str(models["causal"]), "-o", str(out), "--stdout"], "not both"),
        (["-m", str(models["causal"]), "-o", str(out), "--rate", "16000"], "--rate"),
        (["-m", str(models["causal"]), "-o", str(out), "--format", "f32le"], "--format"),
        (["-m", str(models["causal"]), "-o", str(out), "--device", "cuda"], "on the CPU"),
    ]
    for extra, says in cases:
        assert main(["stream", str(f), *extra]) == 2, extra
        assert says in _one_error_line(capsys.readouterr().err), extra
        assert not out.exists()
    monkeypatch.setattr(sys, "stdin", type("Stdin", (), {"buffer": io.BytesIO(b"\0\0" * 100)})())
    assert main(["stream", "-", "-m", str(models["causal"]), "-o", str(out)]) == 2
    assert "needs --rate" in _one_error_line(capsys.readouterr().err)
    assert main(["stream", "-", "-m", str(models["causal"]), "--rate", "8000"]) == 2
    assert "-o DIR or --stdout" in _one_error_line(capsys.readouterr().err)
    monkeypatch.setattr(sys, "stdin", type("Stdin", (), {"buffer": io.BytesIO(b"")})())
    assert main(["stream", "-", "-m", str(models["causal"]), "--rate", "8000", "-o", str(out)]) == 2
    assert "empty" in _one_error_line(capsys.readouterr().err)
    assert _wav_files(out) == [] and not any(out.iterdir())
    out.rmdir()
    assert not out.exists()
    out.mkdir()
    _wav(out / "talk_s1.wav")
    assert main(["stream", str(f), "-m", str(models["causal"]), "-o", str(out)]) == 2
    assert "exists" in _one_error_line(capsys.readouterr().err)


@pytest.mark.filterwarnings("error::RuntimeWarning")  # one error line, no numpy overflow warnings before it
def test_non_finite_output_is_never_written(tmp_path, models, capsysbinary):
    """A NaN weight is refused before any work; a finite input whose output overflows (3e38) stops the stream in
    one line with nothing written (files) or nothing more sent (standard output)."""
    f = _wav(tmp_path / "talk.wav")
    out, prev = tmp_path / "out", tmp_path / "p"
    assert main(["stream", str(f), "-m", str(models["nan"]), "-o", str(out), "--preview", str(prev)]) == 2
    assert "NaN/inf" in _one_error_line(capsysbinary.readouterr().err.decode())
    assert _wav_files(out) == [] and not list(prev.glob("*.png"))
    huge = tmp_path / "huge.wav"
    sf.write(str(huge), np.full(N, 3e38, np.float32) * np.sign(_signal()[:, 0] + 1e-3), RATE, subtype="FLOAT")
    assert main(["stream", str(huge), "-m", str(models["causal"]), "-o", str(out), "--preview", str(prev)]) == 2
    line = _one_error_line(capsysbinary.readouterr().err.decode())
    assert "not finite" in line and "nothing written" in line and "huge.wav" in line, line
    assert [p.name for p in out.iterdir()] == [] and not list(prev.glob("*.png"))  # no temporary file left either
    for model in (models["nan"], models["causal"]):
        assert main(["stream", str(huge), "-m", str(model), "--stdout"]) == 2
        o, e = capsysbinary.readouterr()
        assert o == b"" and "NaN/inf" in _one_error_line(e.decode())


def test_microphone_without_sounddevice_is_one_line(tmp_path, models, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "sounddevice", None)  # as if not installed
    assert main(["stream", "mic", "-m", str(models["causal"]), "-o", str(tmp_path / "out")]) == 2
    line = _one_error_line(capsys.readouterr().err)
    assert "sounddevice" in line and "convsuite[live]" in line, line
    assert not (tmp_path / "out").exists()


def test_microphone_through_sounddevice(tmp_path, models, capsys, monkeypatch):
    """The microphone path with a stand-in for the sounddevice module (PortAudio is not needed): the device
    named after ``mic:``, the model's rate, ``--max-seconds``, overflows reported."""
    import types

    opened = {}

    class InputStream:
        def __init__(self, *, samplerate, channels, dtype, device):
            opened.update(rate=samplerate, channels=channels, dtype=dtype, device=device)
            self.pos = 0

        def start(self):
            opened["started"] = True

        def read(self, n):
            x = _signal(self.pos + n, 2)[self.pos:, :opened["channels"]]
            self.pos += n
            return x, self.pos == 320  # one overflow

        def stop(self):
            opened["stopped"] = True

        def close(self):
            opened["closed"] = True

    monkeypatch.setitem(sys.modules, "sounddevice", types.SimpleNamespace(InputStream=InputStream))
    assert main(["stream", "mic:1", "-m", str(models["causal"]), "-o", str(tmp_path / "out"), "--channels", "2",
                 "--max-seconds", "0.1"]) == 0
    err = capsys.readouterr().err
    assert opened == {"rate": RATE, "channels": 2, "dtype": "float32", "device": 1, "started": True,
                      "stopped": True, "closed": True}
    assert _wav_files(tmp_path / "out") == ["mic_s1.wav", "mic_s2.wav"]
    assert _read(tmp_path / "out" / "mic_s1.wav").shape == (800,)
    assert "1 input overflow(s)" in err and "2 channels mixed down" in err and "(stopped early)" in err, err


# ------------------------------------------------------------------------------------------------ previews
def _panels_in_column(png: Path, x: int) -> list[int]:
    """Heights of the runs of non-white pixels taller than 40 px down column ``x`` (the spectrogram panels)."""
    from PIL import Image

    col = np.asarray(Image.open(png).convert("RGB"))[:, x, :].astype(int)
    ink = (255 - col).sum(1) > 30
    runs, n = [], 0
    for v in [*ink, False]:
        if v:
            n += 1
        else:
            if n > 40:
                runs.append(n)
            n = 0
    return runs


def test_preview_has_one_panel_per_signal(tmp_path, models, capsys):
    from PIL import Image

    a, b = _wav(tmp_path / "in" / "a.wav"), _wav(tmp_path / "in" / "b.wav", "PCM_16", 2)
    assert main(["separate", str(a), str(b), "-m", str(models["causal"]), "-o", str(tmp_path / "sep"), "--preview",
                 str(tmp_path / "prev"), "-q"]) == 0
    assert main(["stream", str(a), "-m", str(models["causal"]), "-o", str(tmp_path / "st"), "--preview",
                 str(tmp_path / "sprev"), "-q"]) == 0
    assert sorted(p.name for p in (tmp_path / "prev").iterdir()) == ["a.png", "b.png"]
    assert sorted(p.name for p in (tmp_path / "sprev").iterdir()) == ["a.png"]
    for png in (tmp_path / "prev" / "a.png", tmp_path / "prev" / "b.png", tmp_path / "sprev" / "a.png"):
        im = Image.open(png)
        assert im.format == "PNG" and im.size == (800, 60 + 3 * 120), im.size
        assert png.stat().st_size < 300_000  # small enough to mail
        panels = im.text["Description"].removeprefix("panels: ").split("; ")
        assert len(panels) == 3 and panels[0].startswith("mixture") and panels[1].endswith("_s1.wav"), panels
        runs = _panels_in_column(png, 400)
        assert len(runs) == 3 and min(runs) > 60, runs
        assert png.stat().st_mode & 0o777 == 0o644
    # the library returns what it drew
    from audiosep.preview import Spectrogram, write_preview

    m, s = Spectrogram(RATE), [Spectrogram(RATE) for _ in range(4)]
    for sp in (m, *s):
        sp.push(_signal(800)[:, 0])
    p = write_preview(tmp_path / "four.png", m, s)
    assert p.panels == ["mixture", "source 1", "source 2", "source 3", "source 4"] and p.size == (800, 660)
    assert Image.open(p.path).size == p.size and len(_panels_in_column(p.path, 400)) == 5


def test_spectrogram_is_the_same_for_any_block_split_and_bounded():
    from audiosep.preview import Spectrogram

    x = _signal(5000)[:, 0]
    whole, parts = Spectrogram(RATE), Spectrogram(RATE)
    whole.push(x)
    rng = np.random.default_rng(0)
    i = 0
    while i < len(x):
        n = int(rng.integers(1, 300))
        parts.push(x[i:i + n])
        i += n
    assert np.array_equal(whole.power(), parts.power())
    long = Spectrogram(RATE, max_columns=50)
    long.push(np.random.default_rng(1).standard_normal(RATE * 20).astype(np.float32))
    assert long.power().shape[1] <= 51  # 2500 frames pooled


# ------------------------------------------------------------------------------------------------ pacing
def test_realtime_pacing_takes_the_audio_duration(tmp_path, models):
    """With ``realtime`` block k is processed no earlier than its last sample would be captured; a 0.2 s file
    takes about 0.2 s."""
    from audiosep.separate import Separator
    from audiosep.stream_io import FileSink, FileSource, make_streamer, stream

    f = _wav(tmp_path / "a.wav", n=1600)  # 0.2 s
    sep = Separator.from_file(models["causal"], "cpu", "fp32")
    inner = make_streamer(sep, RATE)
    calls: list[float] = []

    class Timed:
        n_src, latency_samples, latency_seconds = inner.n_src, inner.latency_samples, inner.latency_seconds

        def process(self, block):
            calls.append(time.perf_counter())
            return inner.process(block)

        def flush(self):
            return inner.flush()

    (tmp_path / "out").mkdir()
    start = time.perf_counter()
    s = stream(FileSource(f), Timed(), FileSink({0: tmp_path / "out" / "s1.wav"}, RATE, "FLOAT"), block_samples=160,
               realtime=True)
    wall = time.perf_counter() - start
    assert s.blocks == len(calls) == 10
    for k, t in enumerate(calls):
        assert t - start >= (k + 1) * 0.02 - 1e-3, (k, t - start)
    assert 0.199 <= s.wall_seconds <= wall < 5.0


def test_ctrl_c_ends_a_live_stream_and_keeps_its_outputs(tmp_path, models):
    """A pipe or a microphone ends on Ctrl-C after the block at hand, flushed and written; a reader that closes
    standard output ends the stream too (no error); a file interrupted by Ctrl-C leaves nothing."""
    import os
    import signal

    from audiosep.separate import Separator
    from audiosep.stream_io import Codec, FileSink, FileSource, PipeSink, PipeSource, make_streamer, stream

    sep = Separator.from_file(models["causal"], "cpu", "fp32")
    pcm = np.round(_signal()[:, 0] * 32767).astype("<i2").tobytes()

    class Pressed(PipeSource):  # Ctrl-C pressed while the 5th block is read
        reads = 0

        def read(self, n):
            self.reads += 1
            if self.reads == 5:
                os.kill(os.getpid(), signal.SIGINT)
            return super().read(n)

    out = tmp_path / "out"
    out.mkdir()
    src = Pressed(io.BytesIO(pcm), RATE, 1, Codec("PCM_16", 2))
    s = stream(src, make_streamer(sep, RATE), FileSink({0: out / "a_s1.wav"}, RATE, "PCM_16"), block_samples=32)
    assert s.interrupted and s.samples == 5 * 32 and s.blocks == 5
    assert _read(out / "a_s1.wav").shape == (160,) and signal.getsignal(signal.SIGINT) is signal.default_int_handler

    class PressedFile(FileSource):
        def read(self, n):
            os.kill(os.getpid(), signal.SIGINT)
            return super().read(n)

    class Reader(io.BytesIO):  # a player that stops reading after two blocks
        def write(self, b):
            if self.tell() >= 2 * 64:
                raise BrokenPipeError
            return super().write(b)

    pipe = Reader()
    s = stream(FileSource(_wav(tmp_path / "c.wav")), make_streamer(sep, RATE), PipeSink(pipe, "s16le", [0]),
               block_samples=32)
    sent = len(pipe.getvalue()) // 2
    assert s.interrupted and 128 <= 2 * sent < 128 + 64 and s.samples == 32 * s.blocks < N
    assert f"standard output was closed by its reader after {sent} sample(s); stopped there" in s.warnings

    with pytest.raises(KeyboardInterrupt):
        stream(PressedFile(_wav(tmp_path / "b.wav")), make_streamer(sep, RATE),
               FileSink({0: out / "b_s1.wav"}, RATE, "FLOAT"), block_samples=32)
    assert sorted(p.name for p in out.iterdir()) == ["a_s1.wav"]  # nothing of b, no temporary files
