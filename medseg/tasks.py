"""Several nnU-Net v2 model folders with different label sets run as one task, merged into one label map.

TotalSegmentator (Wasserthal et al., Radiology: AI 2023) splits its 117 "total" classes over five nnU-Net v2
3d_fullres folders and merges their label maps into one. :class:`Task` is such a recipe, read from a task file
(:func:`read_task`, YAML or JSON) or made from model folders given on the command line (:func:`task_from_folders`,
when their ``dataset.json`` label sets differ):

- ``folders``: the model folders, by a key (paths in a task file are relative to the task file);
- a class table: output label value -> (folder, the folder's class, output name). Without one, every class of every
  folder in folder order, in each folder's label order, numbered 1, 2, ... (a name two folders share is one class,
  with the value of its first occurrence);
- ``overlap``: who gets a voxel two folders claim (a folder claims a voxel it labels with one of the task's classes):
  ``probability`` (default: the higher probability of the claimed class wins; on a tie the earlier folder keeps it),
  ``first`` (the folder listed first keeps it) or ``last`` (the folder listed last takes it: TotalSegmentator's
  rule, each part's labels written over the previous ones). Background only where no folder claims the voxel.

Memory: the folders run one after another; each is reduced on the input grid to its labels and the probability of
each voxel's label (:func:`medseg.nnunet.predict_nnunet` with ``winner``) and folded into the running merge (labels
and the owner's probability), so no array holds more than one value per voxel and folder at a time; class
probabilities are never kept for all classes, or for two folders at once.

:meth:`Task.select` restricts a task to some classes (``--classes``): only the folders holding them run, and only
those classes compete for voxels and are written (with their task values).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from shared_backbones.errors import InputError, ModelFileError

__all__ = ["OVERLAP_RULES", "Task", "TaskClass", "folders_task", "merge_into", "predict_task", "read_task",
           "task_from_folders"]

#: who gets a voxel that several folders claim (see the module docstring)
OVERLAP_RULES = ("probability", "first", "last")
TASK_SUFFIXES = (".yaml", ".yml", ".json")
_TOP_KEYS = ("name", "overlap", "folders", "classes")
_CLASS_KEYS = ("folder", "class", "name")
MAX_LABEL = 65535


@dataclass(frozen=True)
class TaskClass:
    """One output class: its label ``value`` and ``name``, the ``folder`` key it comes from and that folder's label
    value ``source``."""

    value: int
    name: str
    folder: str
    source: int


@dataclass
class Task:
    """A multi-folder task: ``folders`` (key -> model folder, in run order), the output class table ``classes``, the
    ``overlap`` rule, and where it came from (``path``: the task file, or None for folders given directly)."""

    folders: dict[str, Path]
    classes: list[TaskClass]
    overlap: str = "probability"
    name: str = ""
    path: Path | None = None
    #: every folder's own class names (index = its label value), read from its dataset.json
    folder_classes: dict[str, list[str]] = field(default_factory=dict)

    @property
    def values(self) -> list[int]:
        """The output label values of the table, ascending (a class several folders predict counts once)."""
        return sorted({c.value for c in self.classes})

    def class_list(self) -> list[str]:
        """Class names indexed by output label value (``"background"`` at 0); a value the table skips (a task file's
        gap, or a class left out by ``--classes``) is named ``label_<value>`` and never occurs in the labels:
        :attr:`values` says which entries are the task's."""
        top = max((c.value for c in self.classes), default=0)
        out = ["background"] + [f"label_{v}" for v in range(1, top + 1)]
        for c in self.classes:
            out[c.value] = c.name
        return out

    def lut(self, key: str) -> np.ndarray:
        """Folder ``key``'s label value -> output value (0 for its background and classes not in the table)."""
        n = len(self.folder_classes.get(key, [])) or 1 + max((c.source for c in self.classes if c.folder == key),
                                                             default=0)
        top = max((c.value for c in self.classes), default=0)
        lut = np.zeros(n, dtype=np.uint8 if top <= 255 else np.uint16)
        for c in self.classes:
            if c.folder == key:
                lut[c.source] = c.value
        return lut

    def describe(self) -> str:
        """``task NAME: N folders, K classes, overlap RULE`` for the run's summary."""
        what = f"task {self.name}" if self.name else "task"
        return f"{what}: {len(self.folders)} folder(s), {len(self.values)} class(es), overlap by {self.overlap}"

    def select(self, wanted: Sequence[str] | None) -> Task:
        """The task restricted to ``wanted`` classes (names or output label values, comma lists allowed): folders
        without any of them are dropped. An unknown class is one line listing the known ones."""
        if not wanted:
            return self
        by_name = {c.name: c for c in self.classes}
        by_value = {c.value: c for c in self.classes}
        keep: dict[int, TaskClass] = {}
        for item in wanted:
            for tok in str(item).split(","):
                tok = tok.strip()
                if not tok:
                    continue
                c = by_name.get(tok) or (by_value.get(int(tok)) if tok.isdigit() else None)
                if c is None:
                    known = ", ".join(c.name for c in self.classes)
                    raise InputError(f"--classes: unknown class {tok!r} (task classes: {known})", self.path)
                keep[c.value] = c
        chosen = [c for c in self.classes if c.value in keep]
        used = {c.folder for c in chosen}
        return replace(self, classes=chosen, folders={k: p for k, p in self.folders.items() if k in used})


# ----------------------------------------------------------------------------------------------- reading
def _dataset_classes(folder: Path, where: str, path: Path | None) -> list[str]:
    """A model folder's class names by label value (its dataset.json, as :func:`medseg.nnunet.label_info` reads
    it); a folder that is not an nnU-Net v2 model folder is one line naming ``where`` (the task file's key)."""
    from .nnunet import is_model_folder, label_info

    if not is_model_folder(folder):
        raise InputError(f"{where}: not an nnU-Net v2 model folder (no plans.json): {folder}", path)
    ds = folder / "dataset.json"
    try:
        dataset = json.loads(ds.read_text())
    except FileNotFoundError:
        raise InputError(f"{where}: {folder} has no dataset.json", path) from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ModelFileError(f"not valid JSON ({exc.__class__.__name__})", ds) from None
    if not isinstance(dataset, dict):
        raise ModelFileError("expected a JSON object", ds)
    return list(label_info(dataset, ds)["classes"])


def _default_classes(folder_classes: Mapping[str, list[str]]) -> list[TaskClass]:
    """Every foreground class of every folder, numbered 1.. in folder order; a shared name keeps its first value."""
    out: list[TaskClass] = []
    seen: dict[str, int] = {}
    for key, names in folder_classes.items():
        for src, name in enumerate(names):
            if src == 0:
                continue
            value = seen.setdefault(name, len(seen) + 1)
            out.append(TaskClass(value, name, key, src))
    return out


def task_from_folders(folders: Sequence[str | Path], *, overlap: str = "probability") -> Task:
    """A task of model folders given one by one (``-m A -m B``): keys ``1``, ``2``... in the given order, classes
    numbered as the module docstring says."""
    paths = {str(i + 1): Path(f) for i, f in enumerate(folders)}
    names = {k: _dataset_classes(p, f"-m {p}", None) for k, p in paths.items()}
    return Task(paths, _default_classes(names), overlap, "", None, names)


def folders_task(models: Sequence[str | Path]) -> Task | None:
    """The task that several ``-m`` nnU-Net model folders form when their label sets differ; None otherwise (one
    model, model files, or folders of one model: the ensemble rules of :func:`medseg.predict.load_models` apply)."""
    from .nnunet import is_model_folder

    paths = [Path(m) for m in models]
    if len(paths) < 2 or not all(is_model_folder(p) for p in paths):
        return None
    labels = [_dataset_classes(p, f"-m {p}", None) for p in paths]
    if all(lab == labels[0] for lab in labels[1:]):
        return None
    return task_from_folders(paths)


def _load_file(path: Path) -> Any:
    if not path.is_file():
        raise InputError("task file not found", path)
    suffix = path.suffix.lower()
    if suffix not in TASK_SUFFIXES:
        raise InputError(f"a task file is YAML (.yaml, .yml) or JSON (.json), got {suffix or 'no suffix'!r}", path)
    try:
        text = path.read_text()
    except UnicodeDecodeError:
        raise InputError("not a text file", path) from None
    if suffix == ".json":
        try:
            return json.loads(text)
        except json.JSONDecodeError as exc:
            raise InputError(f"not valid JSON (line {exc.lineno}: {exc.msg})", path) from None
    import yaml

    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}: " if mark is not None else ""
        raise InputError(f"not valid YAML ({where}{getattr(exc, 'problem', None) or type(exc).__name__})",
                         path) from None


def _label_value(key: Any, path: Path) -> int:
    text = str(key).strip()
    if isinstance(key, bool) or not text.isdigit() or not 1 <= int(text) <= MAX_LABEL:
        raise InputError(f"classes: key {key!r} is not a label value (a whole number 1 .. {MAX_LABEL})", path)
    return int(text)


def _class_entry(value: int, entry: Any, folder_classes: Mapping[str, list[str]], path: Path) -> TaskClass:
    where = f"classes: {value}"
    if isinstance(entry, str):  # "folder/class"
        if "/" not in entry:
            raise InputError(f"{where}: expected 'FOLDER/CLASS' or a mapping with folder, class (and name), got "
                             f"{entry!r}", path)
        folder, cls = entry.split("/", 1)
        entry = {"folder": folder, "class": cls}
    if not isinstance(entry, dict):
        raise InputError(f"{where}: expected 'FOLDER/CLASS' or a mapping with folder, class (and name)", path)
    unknown = [k for k in entry if k not in _CLASS_KEYS]
    if unknown:
        raise InputError(f"{where}: unknown key {unknown[0]!r} (keys: {', '.join(_CLASS_KEYS)})", path)
    folder = str(entry.get("folder", "")).strip()
    if folder not in folder_classes:
        raise InputError(f"{where}: folder {folder!r} is not one of folders ({', '.join(folder_classes)})", path)
    names = folder_classes[folder]
    cls = entry.get("class")
    text = "" if cls is None or isinstance(cls, bool) else str(cls).strip()
    if text in names[1:]:
        source = names.index(text)
    elif text.isdigit() and 0 < int(text) < len(names):
        source = int(text)
    else:
        raise InputError(f"{where}: class {cls!r} is not a class of folder {folder!r} (its classes: "
                         f"{', '.join(names[1:])})", path)
    name = entry.get("name", names[source])
    if not isinstance(name, (str, int)) or isinstance(name, bool) or not str(name).strip():
        raise InputError(f"{where}: name must be a non-empty text", path)
    return TaskClass(value, str(name).strip(), folder, source)


def read_task(path: str | Path) -> Task:
    """Read and check a task file (YAML or JSON; the format is in docs/medseg.md). Every problem is one line naming
    the file and the key: an unknown key, a folder that is not an nnU-Net v2 model folder, a class its folder does
    not have, a label value or a name used twice, an unknown overlap rule."""
    path = Path(path)
    doc = _load_file(path)
    if not isinstance(doc, dict):
        raise InputError("a task file holds a mapping with folders (and classes, overlap, name)", path)
    unknown = [k for k in doc if k not in _TOP_KEYS]
    if unknown:
        raise InputError(f"unknown key {unknown[0]!r} (keys: {', '.join(_TOP_KEYS)})", path)
    folders = doc.get("folders")
    if not isinstance(folders, dict) or not folders:
        raise InputError("folders: expected a mapping of keys to nnU-Net v2 model folders", path)
    paths: dict[str, Path] = {}
    for key, value in folders.items():
        if not isinstance(value, str) or not value.strip():
            raise InputError(f"folders: {key}: expected a folder path", path)
        p = Path(value).expanduser()
        paths[str(key)] = p if p.is_absolute() else path.parent / p
    names = {k: _dataset_classes(p, f"folders: {k}", path) for k, p in paths.items()}
    overlap = doc.get("overlap", "probability")
    if overlap not in OVERLAP_RULES:
        raise InputError(f"overlap: {overlap!r} is not one of {', '.join(OVERLAP_RULES)}", path)
    name = doc.get("name", path.stem)
    if not isinstance(name, (str, int)) or isinstance(name, bool):
        raise InputError("name: expected a text", path)
    table = doc.get("classes")
    if table is None:
        classes = _default_classes(names)
    else:
        if not isinstance(table, dict) or not table:
            raise InputError("classes: expected a mapping of label values to FOLDER/CLASS or {folder, class, name}",
                             path)
        classes, seen_names, seen_values = [], {}, set()
        for key, entry in table.items():
            value = _label_value(key, path)
            if value in seen_values:
                raise InputError(f"classes: label value {value} given twice", path)
            seen_values.add(value)
            c = _class_entry(value, entry, names, path)
            if c.name in seen_names:
                raise InputError(f"classes: {value}: name {c.name!r} already names label {seen_names[c.name]}", path)
            seen_names[c.name] = value
            classes.append(c)
        classes.sort(key=lambda c: c.value)
    return Task(paths, classes, str(overlap), str(name), path, names)


# ----------------------------------------------------------------------------------------------- merging
def merge_into(out: np.ndarray, best: np.ndarray, labels: np.ndarray, probability: np.ndarray, lut: np.ndarray,
               rule: str) -> None:
    """Fold one folder's result into the running merge, in place: ``out`` (output labels, 0 = unclaimed) and
    ``best`` (probability of each voxel's current owner). ``labels`` are the folder's own values, mapped through
    ``lut`` (0 = not a task class: no claim); ``probability`` is the probability of each voxel's label (used by the
    ``probability`` rule: a claim wins over a strictly lower probability)."""
    mapped = lut[labels]
    claim = mapped != 0
    if rule == "probability":
        claim &= probability > best
    elif rule == "first":
        claim &= out == 0
    elif rule != "last":
        raise ValueError(f"unknown overlap rule {rule!r}")
    out[claim] = mapped[claim]
    best[claim] = probability[claim]


def predict_task(case: Any, task: Task, models: Sequence[Any], *, tta: bool | None = None, overlap: float = 0.5,
                 batch_size: int = 1, timer: Any = None,
                 on_window: Callable[[int], None] | None = None) -> Any:
    """Segment ``case`` with every folder of ``task`` (``models``: the folders loaded, in ``task.folders`` order)
    and merge: a :class:`medseg.predict.Prediction` whose ``classes`` is :meth:`Task.class_list`."""
    from shared_backbones.cliutil import StageTimer

    from .io import check_channels
    from .nnunet import predict_nnunet
    from .predict import Prediction

    timer = timer or StageTimer()
    if len(models) != len(task.folders):
        raise ValueError(f"{len(models)} model(s) for {len(task.folders)} task folder(s)")
    top = max((c.value for c in task.classes), default=0)
    out = np.zeros(case.spatial_shape, dtype=np.uint8 if top <= 255 else np.uint16)
    best = np.zeros(case.spatial_shape, dtype=np.float32)
    windows = 0
    for key, model in zip(task.folders, models):
        check_channels(case, model.in_channels)
        res = predict_nnunet(case, model, mirror=model.default_tta if tta is None else tta, step=1.0 - overlap,
                             batch_size=batch_size, timer=timer, on_window=on_window, winner=True)
        with timer("merge"):
            merge_into(out, best, res["labels"], res["probabilities"], task.lut(key), task.overlap)
        windows += int(res["windows"])
        del res
    if case.nonfinite is not None:  # NaN/Inf in the input (outside the field of view): background
        out[case.nonfinite] = 0
    return Prediction(case, out, task.class_list(), None, dict(timer.times), windows)


def resolve_task(models: Sequence[Any], task: str | Path | Task | None) -> Task | None:
    """The run's task: the task file (or :class:`Task`) given, or the one several ``-m`` folders with different
    label sets form (:func:`folders_task`); None for a plain model or ensemble."""
    if task is not None:
        if models:
            raise InputError("give either -m/--model or --task (a task file names its own model folders)")
        return task if isinstance(task, Task) else read_task(task)
    if models and all(isinstance(m, (str, Path)) for m in models):
        return folders_task(models)
    return None


def load_task_models(task: Task, device: str = "auto", precision: str = "auto",
                     folds: Sequence[int | str] | None = None, checkpoint: str = "checkpoint_final.pth") -> list[Any]:
    """Every folder of ``task`` loaded (:func:`medseg.predict.load_model`), in run order."""
    from .predict import load_model

    return [load_model(p, device, precision, folds, checkpoint) for p in task.folders.values()]
