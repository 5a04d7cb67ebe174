"""Spectrogram previews: one PNG per input with the mixture and each separated source on one time axis.

A user sees at a glance whether the voices came apart: each panel is a log-power spectrogram (Hann window of 32 ms,
hop 8 ms, dB), all panels share one colour scale (the loudest bin of any panel at the top, 80 dB below it at the
bottom), so a source that still holds the other voice shows its harmonics where the other source's are. The signal
may arrive in blocks (``audiosep stream``) or be read back from files (``audiosep separate --preview``): a
:class:`Spectrogram` keeps at most ``max_columns`` columns, pooling neighbouring frames (mean power) as the signal
grows, so memory stays bounded for hours of audio. Drawn with matplotlib's Agg canvas (no display, no pyplot state);
about 800 x 120 pixels per panel, well under a megabyte.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from shared_backbones.cliutil import atomic_output

#: dynamic range shown (dB below the loudest bin of all panels)
RANGE_DB = 80.0
#: image width in pixels and per-panel height; the time axis is pooled to at most MAX_COLUMNS frames
WIDTH_PX, PANEL_PX, DPI = 800, 120, 100
MAX_COLUMNS = 1200


class Spectrogram:
    """Power spectrogram of a signal that arrives in blocks (any sizes): frames of ``window_ms`` every ``hop_ms``;
    when more than ``max_columns`` frames exist, pairs are pooled (mean power) and each later column covers twice
    as many frames. Blocks of equal total length give spectrograms on one time axis."""

    def __init__(self, rate: int, *, window_ms: float = 32.0, hop_ms: float = 8.0,
                 max_columns: int = MAX_COLUMNS) -> None:
        self.rate = int(rate)
        self.n_fft = max(8, int(round(window_ms * rate / 1000)))
        self.hop = max(1, int(round(hop_ms * rate / 1000)))
        self.window = np.hanning(self.n_fft + 1)[:-1].astype(np.float32)  # periodic Hann
        self.max_columns = max_columns
        self.samples = 0  # pushed so far
        self._pending = np.zeros(0, np.float32)  # samples not yet in a frame (starts at a hop boundary)
        self._columns: list[np.ndarray] = []
        self._group = 1  # frames per column
        self._partial = np.zeros(self.n_fft // 2 + 1, np.float64)
        self._partial_n = 0

    def push(self, x: np.ndarray) -> None:
        """Append samples (1-D)."""
        x = np.asarray(x, np.float32).reshape(-1)
        self.samples += len(x)
        buf = np.concatenate([self._pending, x])
        n_frames = 0 if len(buf) < self.n_fft else 1 + (len(buf) - self.n_fft) // self.hop
        if n_frames:
            idx = np.arange(self.n_fft)[None, :] + self.hop * np.arange(n_frames)[:, None]
            power = np.abs(np.fft.rfft(buf[idx] * self.window, axis=1)) ** 2  # [frames, bins]
            for p in power:
                self._add(p)
        self._pending = buf[n_frames * self.hop:]

    def _add(self, p: np.ndarray) -> None:
        self._partial += p
        self._partial_n += 1
        if self._partial_n < self._group:
            return
        self._columns.append(self._partial / self._partial_n)
        self._partial = np.zeros_like(self._partial)
        self._partial_n = 0
        if len(self._columns) > self.max_columns:  # pool pairs: the column count halves, each column doubles
            cols = self._columns
            self._columns = [(cols[i] + cols[i + 1]) / 2 for i in range(0, len(cols) - 1, 2)]
            if len(cols) % 2:
                self._partial, self._partial_n = cols[-1] * self._group, self._group
            self._group *= 2

    def power(self) -> np.ndarray:
        """[bins, columns] mean power per column (the last, partly filled column included)."""
        cols = list(self._columns)
        if self._partial_n:
            cols.append(self._partial / self._partial_n)
        if not cols:  # shorter than one window: one column of the zero-padded signal
            frame = np.zeros(self.n_fft, np.float32)
            frame[: len(self._pending)] = self._pending
            cols = [np.abs(np.fft.rfft(frame * self.window)) ** 2]
        return np.stack(cols, axis=1)


@dataclass
class Preview:
    """A written preview: its path, the panel titles from top to bottom, and its size in pixels."""

    path: Path
    panels: list[str]
    size: tuple[int, int]


def write_preview(path: str | Path, mixture: Spectrogram, sources: Sequence[Spectrogram], *, title: str = "",
                  source_names: Sequence[str] | None = None, gains: Sequence[float] | None = None,
                  overwrite: bool = False) -> Preview:
    """Draw the mixture's and the sources' spectrograms stacked on one time axis with one colour scale and write
    the PNG atomically. ``gains``: linear factors the sources were written with (their panels show the written
    level). The panel titles are also stored in the PNG's ``Description`` text chunk (``panels: ...``)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    names = list(source_names or [f"source {k + 1}" for k in range(len(sources))])
    gains = list(gains or [1.0] * len(sources))
    panels = [f"mixture{': ' + title if title else ''}", *names]
    powers = [mixture.power(), *[s.power() * g * g for s, g in zip(sources, gains)]]
    width = min(p.shape[1] for p in powers)  # equal lengths give equal widths; a shorter one is never stretched
    db = [10 * np.log10(p[:, :width] + 1e-20) for p in powers]
    vmax = max(float(d.max()) for d in db)
    vmin = vmax - RANGE_DB
    seconds = mixture.samples / mixture.rate
    khz = mixture.rate / 2000
    n = len(panels)
    height_px = PANEL_PX * n + 60
    fig = Figure(figsize=(WIDTH_PX / DPI, height_px / DPI), dpi=DPI)
    FigureCanvasAgg(fig)
    axes = fig.subplots(n, 1, sharex=True, squeeze=False)[:, 0]
    image = None
    for ax, name, d in zip(axes, panels, db):
        image = ax.imshow(d, origin="lower", aspect="auto", cmap="magma", vmin=vmin, vmax=vmax,
                          extent=(0.0, max(seconds, 1e-9), 0.0, khz), interpolation="nearest")
        ax.set_title(name, fontsize=8, loc="left", pad=2)
        ax.set_ylabel("kHz", fontsize=7)
        ax.tick_params(labelsize=7)
    axes[-1].set_xlabel("time (s)", fontsize=7)
    fig.subplots_adjust(left=0.07, right=0.9, top=1 - 18 / height_px, bottom=36 / height_px, hspace=0.35)
    cax = fig.add_axes((0.92, 36 / height_px, 0.015, 1 - 54 / height_px))
    bar = fig.colorbar(image, cax=cax)
    bar.set_label("dB", fontsize=7)
    bar.ax.tick_params(labelsize=7)
    path = Path(path)
    with atomic_output(path, overwrite) as tmp:
        fig.savefig(tmp, format="png", dpi=DPI,
                    metadata={"Title": title or path.stem, "Description": "panels: " + "; ".join(panels),
                              "Software": "convsuite audiosep"})
    return Preview(path, panels, (WIDTH_PX, height_px))


def preview_files(path: str | Path, mixture_file: str | Path, source_files: Sequence[str | Path], *,
                  overwrite: bool = False, block: int = 1 << 16) -> Preview:
    """The preview of files already written (``audiosep separate --preview``): the mixture (channels averaged)
    and each source file read back in blocks (memory bounded by :data:`MAX_COLUMNS`)."""
    import soundfile as sf

    def spectrogram(f: str | Path) -> Spectrogram:
        with sf.SoundFile(str(f)) as r:
            s = Spectrogram(r.samplerate)
            for b in r.blocks(blocksize=block, dtype="float32", always_2d=True):
                s.push(np.nan_to_num(b.mean(1), nan=0.0, posinf=0.0, neginf=0.0))
        return s

    sources = [spectrogram(f) for f in source_files]
    return write_preview(path, spectrogram(mixture_file), sources, title=Path(mixture_file).name,
                         source_names=[Path(f).name for f in source_files], overwrite=overwrite)
