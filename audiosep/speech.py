"""A small multi-voice speech corpus synthesised at run time with eSpeak NG (no data set can be downloaded).

eSpeak NG (formant synthesis) comes from the ``espeakng-loader`` wheel, which ships the shared library and its voice
data; it is called through ``ctypes`` (``espeak_Initialize`` / ``espeak_SetSynthCallback`` / ``espeak_Synth`` in
synchronous mode). A *speaker* is a language voice (English accents) with a voice variant (``+m3``, ``+f2``,
``+klatt`` ...), a base pitch, a pitch range and a speaking rate; sentences are drawn from word lists, so every
utterance is a new sentence. Speakers and sentences can be split so that test mixtures use voices and sentences never
seen in training. Mixtures follow LibriMix: ``mix/``, ``s1/``, ``s2/`` with files of the same name, the second voice
at -5..5 dB relative to the first.
"""

from __future__ import annotations

import ctypes
import json
import re
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import soundfile as sf
from scipy.signal import resample_poly

from shared_backbones.errors import InputError

AUDIO_OUTPUT_SYNCHRONOUS = 2
ESPEAK_RATE, ESPEAK_PITCH, ESPEAK_RANGE = 1, 3, 4
ESPEAK_CHARS_UTF8, POS_CHARACTER = 1, 1

ACCENTS = ("en-us", "en", "en-gb-scotland", "en-gb-x-rp", "en-029", "en-gb-x-gbclan")
MALE = ("m1", "m2", "m3", "m4", "m5", "m6", "m7", "m8", "Andy", "boris", "david", "ed", "edward", "iven", "john",
        "max", "norbert", "Mike", "Marco", "Lee", "klatt", "klatt3", "grandpa", "Alex")
FEMALE = ("f1", "f2", "f3", "f4", "f5", "Annie", "aunty", "belinda", "linda", "Andrea", "anika", "grandma", "Alicia",
          "klatt4", "steph", "steph2")

_SUBJECTS = ("the farmer", "my neighbour", "a tired doctor", "the young pilot", "our teacher", "the old sailor",
             "a quiet student", "the baker", "her brother", "the mayor", "a small child", "the engineer",
             "his sister", "the nurse", "a clever fox", "the captain", "my cousin", "the painter", "a stranger",
             "the driver", "the musician", "our guide", "the lawyer", "a busy waiter", "the gardener")
_VERBS = ("carried", "painted", "found", "opened", "counted", "followed", "described", "repaired", "borrowed",
          "watched", "cleaned", "ordered", "forgot", "delivered", "measured", "collected", "dropped", "visited",
          "pushed", "remembered", "answered", "lifted", "covered", "tested", "wrapped")
_ADJECTIVES = ("green", "heavy", "broken", "shiny", "wooden", "ancient", "narrow", "yellow", "empty", "strange",
               "frozen", "gentle", "enormous", "tiny", "purple", "silent", "dusty", "golden", "crooked", "fragile")
_OBJECTS = ("bicycle", "letter", "basket", "window", "lantern", "bridge", "piano", "kettle", "ladder", "garden",
            "umbrella", "engine", "blanket", "compass", "mirror", "carpet", "bottle", "wagon", "statue", "harbour",
            "envelope", "helmet", "violin", "tractor", "candle")
_PLACES = ("near the river", "before sunrise", "in the kitchen", "behind the station", "after the storm",
           "at the market", "under the bridge", "on a cold morning", "during the concert", "beside the lake",
           "in the village", "last winter", "at midnight", "on the hill", "inside the museum", "every Sunday",
           "by the harbour", "in the library", "along the road", "on the roof")
_CODAS = ("", "", "and then went home", "without a word", "for the third time", "while it was raining",
          "because nobody else would", "and smiled", "as quickly as possible", "with great care")


@dataclass(frozen=True)
class Speaker:
    """An eSpeak NG voice: accent, variant, base pitch (0-99), pitch range (0-99), rate (words per minute)."""

    accent: str
    variant: str
    pitch: int
    pitch_range: int
    rate: int

    @property
    def name(self) -> str:
        return f"{self.accent}+{self.variant}-p{self.pitch}-r{self.rate}"


class Espeak:
    """The eSpeak NG library from ``espeakng-loader`` (one per process), synthesising into numpy arrays."""

    _instance: Espeak | None = None

    def __init__(self) -> None:
        try:
            import espeakng_loader
        except ImportError:
            raise InputError("speech synthesis needs the espeakng-loader package (pip)") from None
        self.lib = ctypes.CDLL(espeakng_loader.get_library_path())
        data = Path(espeakng_loader.get_data_path())
        self.lib.espeak_Initialize.restype = ctypes.c_int
        self.rate = int(self.lib.espeak_Initialize(AUDIO_OUTPUT_SYNCHRONOUS, 0, str(data.parent).encode(), 0))
        if self.rate <= 0:
            raise InputError("eSpeak NG failed to initialise", data)
        self._chunks: list[np.ndarray] = []
        proto = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.c_void_p)

        def collect(wav, n, events):  # noqa: ANN001
            if wav and n > 0:
                self._chunks.append(np.ctypeslib.as_array(wav, shape=(n,)).copy())
            return 0

        self._callback = proto(collect)  # keep a reference: the library calls it
        self.lib.espeak_SetSynthCallback(self._callback)
        self.lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
        self.lib.espeak_Synth.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_uint, ctypes.c_int, ctypes.c_uint,
                                          ctypes.c_uint, ctypes.c_void_p, ctypes.c_void_p]

    @classmethod
    def get(cls) -> Espeak:
        if cls._instance is None:
            cls._instance = cls()
        return cls._instance

    def synth(self, text: str, speaker: Speaker) -> np.ndarray:
        """``text`` spoken by ``speaker``: float32 at :attr:`rate` (22050 Hz), silence trimmed."""
        if self.lib.espeak_SetVoiceByName(f"{speaker.accent}+{speaker.variant}".encode()) != 0:
            raise InputError(f"eSpeak NG has no voice {speaker.accent}+{speaker.variant}")
        self.lib.espeak_SetParameter(ESPEAK_RATE, speaker.rate, 0)
        self.lib.espeak_SetParameter(ESPEAK_PITCH, speaker.pitch, 0)
        self.lib.espeak_SetParameter(ESPEAK_RANGE, speaker.pitch_range, 0)
        self._chunks = []
        buf = ctypes.create_string_buffer(text.encode())
        self.lib.espeak_Synth(buf, len(buf), 0, POS_CHARACTER, 0, ESPEAK_CHARS_UTF8, None, None)
        audio = np.concatenate(self._chunks).astype(np.float32) / 32768 if self._chunks else np.zeros(0, np.float32)
        loud = np.flatnonzero(np.abs(audio) > 1e-3)
        return audio[loud[0] : loud[-1] + 1] if len(loud) else audio


def shipped_variants() -> dict[str, str]:
    """Every voice variant the ``espeakng-loader`` wheel ships (``espeak-ng-data/voices/!v``) with its gender from
    the variant file (``male``, ``female`` or ``""`` when it names none), our male/female lists included. Variants
    whose name has a space, and the unstable ``fast`` test variant, are left out."""
    out = {v: "male" for v in MALE} | {v: "female" for v in FEMALE}
    try:
        import espeakng_loader
    except ImportError:
        return out
    folder = Path(espeakng_loader.get_data_path()) / "voices" / "!v"
    for f in sorted(folder.iterdir()) if folder.is_dir() else ():
        if f.name in out or " " in f.name or f.name == "fast" or not f.is_file():
            continue
        words = [ln.split() for ln in f.read_text(errors="replace").lower().splitlines()]
        gender = next((w[1] for w in words if len(w) > 1 and w[0] == "gender"), "")
        out[f.name] = gender if gender in ("male", "female") else ""
    return out


def variant_family(variant: str) -> str:
    """The family a variant belongs to (``klatt3`` -> ``klatt``, ``Mike``/``mike2`` -> ``mike``; ``m3``/``f2`` stay
    themselves): near-copies of a voice never sit on both sides of a train/test split."""
    v = variant.lower()
    return v if re.fullmatch(r"[mf]\d", v) else v.rstrip("0123456789")


def make_speakers(n: int, rng: np.random.Generator, variants: tuple[str, ...] | None = None) -> list[Speaker]:
    """``n`` distinct speakers drawn from ``variants`` (default: our male and female lists); the base pitch follows
    the variant's gender (either range when the variant names none)."""
    pool = list(variants) if variants is not None else list(MALE + FEMALE)
    genders = shipped_variants()
    rng.shuffle(pool)
    out: list[Speaker] = []
    for i in range(n):
        v = pool[i % len(pool)]
        gender = genders.get(v) or str(rng.choice(("male", "female")))
        female = gender == "female"
        out.append(Speaker(
            accent=str(rng.choice(ACCENTS)),
            variant=v,
            pitch=int(rng.integers(45, 90) if female else rng.integers(15, 60)),
            pitch_range=int(rng.integers(20, 90)),
            rate=int(rng.integers(130, 210)),
        ))
    return out


def split_variants(rng: np.random.Generator, test_fraction: float = 0.25,
                   all_variants: bool = False) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """Voice variants split into (train, test), both sexes in each: the test variants are drawn from our male and
    female lists; with ``all_variants`` every other variant the wheel ships (:func:`shipped_variants`) trains, except
    those of a test variant's family (:func:`variant_family`), so no near-copy of a test voice is seen in training."""
    train, test = [], []
    for group in (MALE, FEMALE):
        g = list(group)
        rng.shuffle(g)
        k = max(1, round(len(g) * test_fraction))
        test += g[:k]
        train += g[k:]
    held = {variant_family(v) for v in test}
    train = [v for v in (shipped_variants() if all_variants else train) if variant_family(v) not in held]
    return tuple(train), tuple(test)


def sentences(n: int, rng: np.random.Generator, exclude: set[str] | None = None) -> list[str]:
    """``n`` different sentences from the word lists (none of ``exclude``)."""
    seen = set(exclude or ())
    out: list[str] = []
    while len(out) < n:
        s = (f"{rng.choice(_SUBJECTS)} {rng.choice(_VERBS)} the {rng.choice(_ADJECTIVES)} {rng.choice(_OBJECTS)} "
             f"{rng.choice(_PLACES)} {rng.choice(_CODAS)}").strip()
        s = s[0].upper() + s[1:] + "."
        if s not in seen:
            seen.add(s)
            out.append(s)
    return out


def utterance(text: str, speaker: Speaker, rate: int) -> np.ndarray:
    """One sentence by one speaker at ``rate`` Hz, RMS-normalised to -26 dBFS."""
    es = Espeak.get()
    a = es.synth(text, speaker)
    g = np.gcd(rate, es.rate)
    a = resample_poly(a, rate // g, es.rate // g).astype(np.float32)
    return a / (np.sqrt(np.mean(a**2)) + 1e-9) * 0.05


def write_speakers(out_dir: str | Path, speakers: list[Speaker], per_speaker: int, rng: np.random.Generator,
                   rate: int = 8000, exclude: set[str] | None = None) -> set[str]:
    """Single-speaker utterances, one folder per speaker (for dynamic mixing); returns the sentences used."""
    out = Path(out_dir)
    texts = sentences(len(speakers) * per_speaker, rng, exclude)
    for i, spk in enumerate(speakers):
        folder = out / spk.name
        folder.mkdir(parents=True, exist_ok=True)
        for j in range(per_speaker):
            sf.write(folder / f"u{j:03d}.wav", utterance(texts[i * per_speaker + j], spk, rate), rate, subtype="FLOAT")
    return set(texts)


def write_mixtures(out_dir: str | Path, speakers: list[Speaker], n: int, rng: np.random.Generator, rate: int = 8000,
                   exclude: set[str] | None = None, snr_db: float = 5.0) -> tuple[Path, set[str]]:
    """``n`` two-voice mixtures in the LibriMix layout (``mix/``, ``s1/``, ``s2/``; float WAV): two different speakers,
    two different sentences, the second at -``snr_db``..``snr_db`` dB relative to the first, the shorter utterance
    zero-padded (LibriMix ``max`` mode). Returns the folder and the sentences used."""
    out = Path(out_dir)
    for d in ("mix", "s1", "s2"):
        (out / d).mkdir(parents=True, exist_ok=True)
    texts = sentences(2 * n, rng, exclude)
    for i in range(n):
        a, b = rng.choice(len(speakers), 2, replace=False)
        s1, s2 = utterance(texts[2 * i], speakers[a], rate), utterance(texts[2 * i + 1], speakers[b], rate)
        s2 = s2 * 10 ** (rng.uniform(-snr_db, snr_db) / 20)
        length = max(len(s1), len(s2))
        s1, s2 = np.pad(s1, (0, length - len(s1))), np.pad(s2, (0, length - len(s2)))
        peak = max(np.abs(s1 + s2).max(), 1e-9)
        g = min(1.0, 0.9 / peak)
        name = f"mix{i:04d}.wav"
        for d, x in (("mix", s1 + s2), ("s1", s1), ("s2", s2)):
            sf.write(out / d / name, (x * g).astype(np.float32), rate, subtype="FLOAT")
    return out, set(texts)


def write_corpus(out_dir: str | Path, *, train_speakers: int = 24, per_speaker: int = 20, val_mixtures: int = 16,
                 test_mixtures: int = 24, rate: int = 8000, seed: int = 0,
                 all_variants: bool = True) -> dict[str, Path]:
    """The demo's corpus, cached in ``out_dir`` (reused when its ``corpus.json`` matches the arguments):

    ``train/<speaker>/u*.wav`` single-speaker utterances for dynamic mixing; ``val/`` mixtures of training voices
    with new sentences; ``test/`` mixtures of held-out voice variants (and their families) saying sentences seen
    nowhere else. ``all_variants`` trains on every variant the wheel ships but the held-out families (else on our
    male/female lists only); the test voices are the same either way."""
    out = Path(out_dir)
    params = {"train_speakers": train_speakers, "per_speaker": per_speaker, "val_mixtures": val_mixtures,
              "test_mixtures": test_mixtures, "rate": rate, "seed": seed, "all_variants": all_variants,
              "version": 2}
    paths = {k: out / k for k in ("train", "val", "test")}
    manifest = out / "corpus.json"
    if manifest.is_file() and json.loads(manifest.read_text()).get("params") == params:
        return paths
    rng = np.random.default_rng(seed)
    train_v, test_v = split_variants(rng, all_variants=all_variants)
    train_spk = make_speakers(train_speakers, rng, train_v)
    test_spk = make_speakers(max(4, len(test_v)), rng, test_v)
    used = write_speakers(paths["train"], train_spk, per_speaker, rng, rate)
    _, val_used = write_mixtures(paths["val"], train_spk, val_mixtures, rng, rate, exclude=used)
    write_mixtures(paths["test"], test_spk, test_mixtures, rng, rate, exclude=used | val_used)
    manifest.write_text(json.dumps({"params": params, "train_speakers": [asdict(s) for s in train_spk],
                                    "test_speakers": [asdict(s) for s in test_spk]}, indent=1))
    return paths
