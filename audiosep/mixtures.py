"""Mixture folders as the data sets write them: the suite's own corpora, LibriMix and WHAM!.

Three layouts are read, all with one file per utterance and the same file name in every subfolder:

- the suite's own corpora (``audiosep.synthetic``, the demo): ``mix/`` and ``s1/``, ``s2/``, ...;
- LibriMix (Cosentino et al. 2020, "LibriMix: An Open-Source Dataset for Generalizable Speech Separation"), as its
  generator ``create_librimix_from_metadata.py`` writes ``Libri2Mix/wav8k/min/train-100/``: ``mix_clean/``,
  ``mix_both/``, ``mix_single/``, ``s1/``, ``s2/`` (Libri3Mix: ``s3/``), ``noise/``; beside the subsets a
  ``metadata/`` folder with ``mixture_<subset>_mix_<type>.csv`` (columns ``mixture_ID``, ``mixture_path``,
  ``source_1_path``, ... , ``noise_path`` for the noisy types, ``length``);
- WHAM! (Wichern et al. 2019): ``wham_wav/wav8k/min/tr|cv|tt/`` with the same ``mix_*``, ``s1/``, ``s2/``,
  ``noise/`` subfolders (no metadata folder: file names).

``mix_type`` picks the mixture: ``clean`` (the speakers), ``both`` (speakers + noise; the targets are the
speakers) or ``single`` (speaker 1 + noise; the target is ``s1`` alone: one source, speech enhancement), as the
generator defines them. The metadata CSV, when present, gives the utterances and their files; else the file names
of the mixture folder do."""

from __future__ import annotations

import csv
import re
from dataclasses import dataclass
from pathlib import Path

from shared_backbones.errors import InputError

MIX_TYPES = ("clean", "both", "single")
MIX_SUFFIXES = (".wav", ".flac")
LAYOUTS = ("the suite's mix/ + s1/, s2/ ...; LibriMix's or WHAM!'s mix_clean/, mix_both/ or mix_single/ + s1/, "
           "s2/ ... (--mix-type clean|both|single)")


@dataclass
class Mixtures:
    """The utterances of a mixture folder: ``mixtures[i]`` and its reference sources ``sources[i]`` (in the order
    ``s1``, ``s2``, ...), the layout (``suite``, ``librimix`` or ``wham``) and the metadata CSV read (if any)."""

    root: Path
    layout: str
    mix_type: str
    mixtures: list[Path]
    sources: list[list[Path]]
    metadata: Path | None = None

    @property
    def num_sources(self) -> int:
        """Reference sources per mixture (1 for ``mix_single``)."""
        return len(self.sources[0]) if self.sources else 0

    def describe(self) -> str:
        """One line: how many mixtures of which kind, and from where."""
        where = f"metadata {self.metadata.name}" if self.metadata else "file names"
        kind = "mix/" if self.layout == "suite" else f"mix_{self.mix_type}/"
        return (f"{len(self.mixtures)} mixture(s) of {self.num_sources} source(s), {self.layout} layout {kind} "
                f"({where})")


def _source_dirs(root: Path) -> list[Path]:
    dirs = []
    while (root / f"s{len(dirs) + 1}").is_dir():
        dirs.append(root / f"s{len(dirs) + 1}")
    return dirs


def _listed(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in MIX_SUFFIXES and p.is_file())


def metadata_csv(root: Path, mix_type: str) -> Path | None:
    """LibriMix's ``<root>/../metadata/mixture_<subset>_mix_<type>.csv`` if it exists."""
    p = root.parent / "metadata" / f"mixture_{root.name}_mix_{mix_type}.csv"
    return p if p.is_file() else None


def _resolve(value: str, folder: Path, csv_path: Path, row: int) -> Path:
    """A path of the metadata: as written when it exists (the generator writes absolute paths), else the file of that
    name in ``folder`` (the data set was moved after it was generated)."""
    if not value:
        raise InputError(f"row {row}: empty path", csv_path)
    p = Path(value)
    if p.is_file():
        return p
    local = folder / Path(value.replace("\\", "/")).name
    if local.is_file():
        return local
    raise InputError(f"row {row}: {value} not found (nor {local})", csv_path)


def _read_metadata(csv_path: Path, root: Path, mix_dir: Path, src_dirs: list[Path]) -> tuple[list[Path],
                                                                                            list[list[Path]]]:
    try:
        with open(csv_path, newline="") as f:
            reader = csv.DictReader(f)
            fields = reader.fieldnames or []
            rows = list(reader)
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise InputError(f"unreadable metadata CSV ({exc})", csv_path) from None
    cols = sorted((int(m.group(1)), c) for c in fields if (m := re.fullmatch(r"source_(\d+)_path", c)))
    if "mixture_path" not in fields or not cols or [k for k, _ in cols] != list(range(1, len(cols) + 1)):
        raise InputError("not a LibriMix mixture metadata CSV (needs mixture_path, source_1_path, ...)", csv_path)
    if len(cols) != len(src_dirs):
        raise InputError(f"lists {len(cols)} source(s) per mixture but {root} has {len(src_dirs)} "
                         f"({', '.join(d.name + '/' for d in src_dirs)})", csv_path)
    if not rows:
        raise InputError("no mixtures listed", csv_path)
    mixes, srcs = [], []
    for i, row in enumerate(rows, start=2):  # row 1 is the header
        mixes.append(_resolve(row.get("mixture_path") or "", mix_dir, csv_path, i))
        srcs.append([_resolve(row.get(c) or "", d, csv_path, i) for (_, c), d in zip(cols, src_dirs)])
    return mixes, srcs


def find_mixtures(root: str | Path, mix_type: str = "clean") -> Mixtures:
    """The mixtures and reference sources of ``root`` (see the module's docstring for the layouts). A folder with
    none of the layouts, or without the chosen ``mix_<type>/``, is refused in one line (:class:`InputError`) that
    says which layouts are accepted; so is a folder without mixtures or with a mixture lacking a source file."""
    root = Path(root)
    if mix_type not in MIX_TYPES:
        raise InputError(f"unknown mix type {mix_type!r} ({', '.join(MIX_TYPES)})")
    if not root.is_dir():
        raise InputError("mixture folder not found", root)
    all_srcs = _source_dirs(root)
    mix_dir = root / f"mix_{mix_type}"
    csv_path = None
    if mix_dir.is_dir():
        layout = "wham" if root.name in ("tr", "cv", "tt") else "librimix"
        src_dirs = all_srcs[:1] if mix_type == "single" else all_srcs  # mix_single = s1 + noise
        csv_path = metadata_csv(root, mix_type)
    elif (root / "mix").is_dir():
        others = sorted(p.name for p in root.glob("mix_*") if p.is_dir())
        if mix_type != "clean" and not others:
            raise InputError(f"--mix-type {mix_type}: this is the suite's mix/ layout (clean mixtures only; "
                             f"no mix_{mix_type}/)", root)
        layout, mix_dir, src_dirs = "suite", root / "mix", all_srcs
    else:
        have = sorted(p.name + "/" for p in root.glob("mix_*") if p.is_dir())
        hint = f"no mix_{mix_type}/ (it has {', '.join(have)}: choose with --mix-type)" if have else "no mixtures"
        raise InputError(f"{hint}; accepted layouts: {LAYOUTS}", root)
    if not src_dirs:
        raise InputError(f"no source folders s1/, s2/ ... beside {mix_dir.name}/; accepted layouts: {LAYOUTS}", root)
    if csv_path is not None:
        mixes, srcs = _read_metadata(csv_path, root, mix_dir, src_dirs)
    else:
        mixes = _listed(mix_dir)
        if not mixes:
            raise InputError(f"no mixtures (.wav/.flac) in {mix_dir.name}/", root)
        srcs = [[d / m.name for d in src_dirs] for m in mixes]
        for m, ss in zip(mixes, srcs):
            missing = [s for s in ss if not s.is_file()]
            if missing:
                raise InputError(f"mixture {m.name} has no {missing[0].parent.name}/{m.name}", root)
    return Mixtures(root, layout, mix_type, mixtures=mixes, sources=srcs, metadata=csv_path)
