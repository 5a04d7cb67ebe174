"""Procedural speech-like sources for tests and the demo (no data sets can be downloaded).

Each "speaker" has its own pitch range and vocal-tract size. An utterance is a string of syllables: a voiced
harmonic source with a moving pitch contour, shaped by three moving formant resonators, with syllabic amplitude
envelopes, unvoiced noise bursts (fricatives) and pauses.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import soundfile as sf
from scipy.signal import lfilter


def _resonator(x: np.ndarray, freq: np.ndarray, bw: float, rate: int, block: int = 160) -> np.ndarray:
    """Time-varying two-pole resonator applied block-wise (formant)."""
    out = np.zeros_like(x)
    zi = np.zeros(2)
    r = np.exp(-np.pi * bw / rate)
    for s in range(0, len(x), block):
        f = float(freq[min(s, len(freq) - 1)])
        a = [1.0, -2 * r * np.cos(2 * np.pi * f / rate), r * r]
        out[s : s + block], zi = lfilter([1 - r], a, x[s : s + block], zi=zi)
    return out


def speech_like(
    seconds: float, rate: int, rng: np.random.Generator, f0_range: tuple[float, float] = (90, 220), tract: float = 1.0
) -> np.ndarray:
    """One speech-like utterance of ``seconds`` at ``rate`` (float32, peak-normalised to 0.5)."""
    n = int(seconds * rate)
    t = np.arange(n) / rate
    # pitch contour: slow random walk inside the speaker's range
    knots = rng.uniform(*f0_range, size=max(2, int(seconds * 3)))
    f0 = np.interp(t, np.linspace(0, seconds, len(knots)), knots)
    phase = 2 * np.pi * np.cumsum(f0) / rate
    voiced = sum(np.sin(k * phase) / k for k in range(1, 25) if np.all(k * f0 < rate / 2))
    # syllables: 3-6 per second, some unvoiced, some pauses
    env = np.zeros(n)
    noise_env = np.zeros(n)
    pos = int(rng.uniform(0, 0.2) * rate)
    while pos < n:
        dur = int(rng.uniform(0.12, 0.3) * rate)
        kind = rng.random()
        w = np.hanning(dur)[: max(0, min(dur, n - pos))]
        if kind < 0.7:
            env[pos : pos + len(w)] += w
        elif kind < 0.85:
            noise_env[pos : pos + len(w)] += 0.5 * w
        pos += (
            dur + int(rng.exponential(0.08) * rate) + (int(rng.uniform(0.2, 0.5) * rate) if rng.random() < 0.1 else 0)
        )
    src = voiced * env + rng.standard_normal(n) * noise_env
    # three moving formants scaled by the speaker's tract length
    y = np.zeros(n)
    for lo, hi, bw in ((300, 800, 80), (900, 2200, 120), (2300, 3000, 160)):
        k = rng.uniform(lo, hi, size=max(2, int(seconds * 4))) / tract
        y += _resonator(src, np.interp(t, np.linspace(0, seconds, len(k)), np.minimum(k, 0.45 * rate)), bw, rate)
    y = y / (np.abs(y).max() + 1e-9) * 0.5
    return y.astype(np.float32)


def make_speaker(rng: np.random.Generator) -> dict:
    """A random speaker: pitch range and vocal-tract scale."""
    low = rng.uniform(80, 200)
    return {"f0_range": (low, low * rng.uniform(1.4, 1.9)), "tract": rng.uniform(0.85, 1.2)}


def make_mixture(
    seconds: float, rate: int, rng: np.random.Generator, num_sources: int = 2, snr_db: float = 5.0
) -> tuple[np.ndarray, np.ndarray]:
    """(mixture [T], sources [S, T]) with the sources' relative levels drawn within +-``snr_db`` dB."""
    srcs = np.stack([speech_like(seconds, rate, rng, **make_speaker(rng)) for _ in range(num_sources)])
    gains = 10 ** (rng.uniform(-snr_db, snr_db, size=num_sources) / 20)
    srcs = srcs / (np.sqrt((srcs**2).mean(1, keepdims=True)) + 1e-9) * 0.05 * gains[:, None]
    return srcs.sum(0).astype(np.float32), srcs.astype(np.float32)


def write_librimix(
    out_dir: str | Path, n: int, seconds: float = 4.0, rate: int = 8000, num_sources: int = 2, seed: int = 0
) -> Path:
    """Write ``n`` mixtures as a LibriMix-style folder: ``mix/``, ``s1/``, ``s2/`` ... (16-bit WAV)."""
    out = Path(out_dir)
    rng = np.random.default_rng(seed)
    for d in ["mix"] + [f"s{k + 1}" for k in range(num_sources)]:
        (out / d).mkdir(parents=True, exist_ok=True)
    for i in range(n):
        mix, srcs = make_mixture(seconds, rate, rng, num_sources)
        name = f"utt{i:04d}.wav"
        sf.write(out / "mix" / name, mix, rate, subtype="FLOAT")
        for k in range(num_sources):
            sf.write(out / f"s{k + 1}" / name, srcs[k], rate, subtype="FLOAT")
    return out
