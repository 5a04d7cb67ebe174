"""Batch prediction of volumes: files in -> label maps (and probabilities, DICOM SEG, previews, statistics) written.

:func:`plan_predict` turns the inputs into one job per case (a NIfTI file, the channel files of one case, or one
DICOM series) with its outputs by role (``labels``, ``probabilities``, ``dicom_seg``, ``preview``) and the run's
``stats`` file, and checks the whole plan with :func:`shared_backbones.planning.plan_outputs` before any model is
loaded: two inputs that would write one output (``a.nii`` and ``a.nii.gz``), an output that is an input or one of a
series' files, two outputs with one path, an output of a kind its writer cannot write (``-o seg.dcm``), a series the
DICOM SEG writer could not reference. A folder's own outputs (``a_seg.nii.gz`` beside ``a.nii.gz``, ``S/S.nii.gz``
after ``medseg predict S/ -o S/``) are skipped with a notice, not taken as new cases.

:func:`predict_files` plans, loads the models, and runs the cases (a bad case is reported and the batch goes on);
``medseg predict`` only parses its options, calls it and prints. A notebook gets the same checks.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from shared_backbones.errors import InputError
from shared_backbones.planning import Job, Plan, Writer, drop_own_outputs, plan_outputs, suffix_of

__all__ = ["BatchResult", "CaseResult", "PredictPlan", "plan_predict", "predict_files", "probabilities_path"]

LABEL_SUFFIXES = (".nii.gz", ".nii")
_DICOM_HINT = "use --dicom-seg for DICOM SEG"
#: what each output role's writer can write
WRITERS = {
    "labels": Writer(LABEL_SUFFIXES, option="-o/--output", hints={".dcm": _DICOM_HINT, ".dicom": _DICOM_HINT,
                                                                   ".ima": _DICOM_HINT}),
    "probabilities": Writer((".nii.gz",), option="--save-probabilities"),
    "preview": Writer((".png",), option="--preview"),
    "stats": Writer((".json", ".csv", ".tsv"), option="--stats"),
}
#: the writer of every ``--split-classes`` mask (role ``class:<name>``)
CLASS_MASK = Writer((".nii.gz",), option="--split-classes")
#: endings that name a file, not a folder (an output folder for a folder of cases must not end so)
_FILE_SUFFIXES = (*LABEL_SUFFIXES, ".dcm", ".json", ".png", ".zip", ".gz", ".txt", ".csv")


def probabilities_path(out: Path) -> Path:
    """``<case>_probabilities.nii.gz`` beside the label map ``<case>.nii.gz``."""
    return out.with_name(out.name.removesuffix(".gz").removesuffix(".nii") + "_probabilities.nii.gz")


@dataclass
class CaseSpec:
    """What a job reads: the case name, its files (channel files, or one DICOM folder / zip), DICOM or not."""

    name: str
    files: list[Path]
    dicom: bool = False


@dataclass
class PredictPlan:
    """A checked plan (:class:`~shared_backbones.planning.Plan`), whether the input was a folder of cases, and the
    notices to show (skipped own outputs, skipped finished cases)."""

    plan: Plan
    folder_mode: bool
    notices: list[str] = field(default_factory=list)


def _is_folder_name(output: str | Path) -> bool:
    text = str(output)
    return text.endswith(("/", "\\")) or Path(text).is_dir()


def _single_output(output: str | Path | None, default: Path, name: str) -> Path:
    if output is None:
        return default
    return Path(output) / f"{name}.nii.gz" if _is_folder_name(output) else Path(output)


def _series_files(src: Path, own: Sequence[Path], dicom_seg: str | Path | None) -> list[Path]:
    """The files a DICOM source consists of (a zip: itself), for the planner's "output among the inputs" check;
    the folder's own NIfTI outputs and an earlier DICOM SEG at the ``--dicom-seg`` path are not among them."""
    if not src.is_dir():
        return [src]
    skip = set(own)
    if dicom_seg is not None and Path(dicom_seg).is_file():
        import pydicom

        try:
            ds = pydicom.dcmread(str(dicom_seg), stop_before_pixels=True)
            if str(ds.get("Modality", "")).upper() == "SEG":
                skip.add(Path(dicom_seg))
        except Exception:  # not DICOM: stays an input file, never overwritten
            pass
    skip_keys = {p.resolve() for p in skip}
    return [p for p in sorted(src.rglob("*")) if p.is_file() and p.resolve() not in skip_keys] or [src]


def _folder_own_outputs(folder: Path, files: Sequence[Path]) -> tuple[list[Path], list[Path]]:
    """Split a folder's NIfTI files into (inputs, outputs medseg predict wrote there for other inputs)."""
    from .io import _CHANNEL_RE, case_name, is_own_output, own_output_names

    def outputs_of(p: Path) -> list[Path]:
        # a channel-named case also gets <case>.nii.gz, what "-o <this folder>" writes for it
        return [folder / n for n in own_output_names(case_name(p), bare=bool(_CHANNEL_RE.match(p.name)))]

    kept, skipped = drop_own_outputs(list(files), outputs_of)
    ours = [p for p in kept if is_own_output(p)]  # written by medseg predict under another name (its header)
    return [p for p in kept if p not in ours], skipped + ours


def _cases(inputs: Sequence[str | Path], output: str | Path | None, dicom_seg: str | Path | None
           ) -> tuple[list[tuple[CaseSpec, Path, list[Path]]], Path | None, list[str]]:
    """(case, labels output, files it reads) per case, the output folder (folder of cases), and notices."""
    from .dicom import own_outputs, source_name
    from .io import case_name, discover_cases, is_dicom_input

    paths = [Path(p) for p in inputs]
    if not paths:
        raise InputError("no input given")
    for p in paths:
        if not p.exists():
            raise InputError("file not found", p)
    notices: list[str] = []
    if is_dicom_input(paths):  # one DICOM series (folder or zip): one case named after it
        src = paths[0]
        name = source_name(src)
        own = own_outputs(src)
        if own:
            notices.append(f"{src}: skipping {', '.join(p.name for p in own)} (output of medseg predict, not an "
                           "input)")
        out = _single_output(output, src.with_name(f"{name}_seg.nii.gz"), name)
        return [(CaseSpec(name, [src], dicom=True), out, _series_files(src, own, dicom_seg))], None, notices
    if len(paths) == 1 and paths[0].is_dir():
        folder = paths[0]
        out_dir = Path(output) if output is not None else folder.with_name(folder.name + "_seg")
        if not out_dir.exists() and suffix_of(out_dir) in _FILE_SUFFIXES:
            raise InputError("-o/--output must be a folder when the input is a folder of cases (got a file name)",
                             out_dir)
        cases = discover_cases(folder)
        kept, skipped = _folder_own_outputs(folder, [f for _, files in cases for f in files])
        if skipped:
            notices.append(f"{folder}: skipping {len(skipped)} file(s) written by medseg predict for other cases "
                           f"({', '.join(p.name for p in skipped[:3])}{', ...' if len(skipped) > 3 else ''})")
        keep = set(kept)
        out = []
        for name, files in cases:
            files = [f for f in files if f in keep]
            if files:
                out.append((CaseSpec(name, files), out_dir / f"{name}.nii.gz", files))
        if not out:
            raise InputError("no cases left in folder (every NIfTI file is an output of medseg predict)", folder)
        return out, out_dir, notices
    if any(p.is_dir() for p in paths):
        raise InputError("give either one folder or NIfTI files (the channels of one case)",
                         next(p for p in paths if p.is_dir()))
    name = case_name(paths[0])
    out = _single_output(output, paths[0].with_name(f"{name}_seg.nii.gz"), name)
    return [(CaseSpec(name, paths), out, paths)], None, notices


def plan_predict(inputs: Sequence[str | Path], *, output: str | Path | None = None, save_probabilities: bool = False,
                 stats: str | Path | None = None, preview: str | Path | None = None,
                 dicom_seg: str | Path | None = None, series: str | None = None,
                 model_paths: Sequence[str | Path] = (), overwrite: bool = False, num_parts: int = 1,
                 part_id: int = 0, split_classes: Sequence[str] | None = None,
                 keep: Sequence[int] | None = None) -> PredictPlan:
    """Every case's outputs, checked before any work (see the module docstring). Needs no model: a folder's cases
    are found by nnU-Net's channel naming (``<case>_0000.nii.gz`` ...), whatever the model's channel count.
    ``split_classes``: the model's class names (background first) for ``--split-classes``: one ``class:<name>``
    output per foreground class (only ``keep``'s label numbers when given), see :func:`medseg.outputs.split_outputs`.
    """
    cases, out_dir, notices = _cases(inputs, output, dicom_seg)
    folder_mode = out_dir is not None
    if num_parts > 1 and not folder_mode:
        raise InputError("--num-parts splits a folder of cases; give one input folder")
    if series is not None and not cases[0][0].dicom:
        raise InputError("--series applies to DICOM input (a series folder or zip), not to NIfTI files",
                         cases[0][0].files[0])
    if dicom_seg is not None and (len(cases) != 1 or not cases[0][0].dicom):
        raise InputError("--dicom-seg needs one DICOM input (a series folder or zip)", inputs[0])
    preview_dir = Path(preview) if preview is not None and folder_mode else None
    jobs = []
    for spec, labels, reads in cases:
        outputs = {"labels": labels}
        if save_probabilities:
            outputs["probabilities"] = probabilities_path(labels)
        if dicom_seg is not None:
            outputs["dicom_seg"] = Path(dicom_seg)
        if preview is not None:
            outputs["preview"] = preview_dir / f"{spec.name}.png" if preview_dir else Path(preview)
        if split_classes is not None:
            from .outputs import split_outputs

            outputs.update(split_outputs(labels, split_classes, keep))
        display = spec.files[0].name if folder_mode else str(spec.files[0])
        jobs.append(Job(display, reads, outputs, data=spec))

    precheck: Callable[[Job], None] | None = None
    if dicom_seg is not None:
        from .dicom import check_seg_source

        def precheck(job: Job) -> None:
            check_seg_source(job.data.files[0], series)

    writers = dict(WRITERS)
    if split_classes is not None:
        from .outputs import check_class_names

        check_class_names(split_classes)
        writers.update({role: CLASS_MASK for j in jobs for role in j.outputs if role.startswith("class:")})
    plan = plan_outputs(jobs, shared={"stats": stats} if stats is not None else None, writers=writers,
                        folders=[f for f in (out_dir, preview_dir) if f is not None], other_inputs=model_paths,
                        overwrite=overwrite, skip_done=folder_mode, num_parts=num_parts, part_id=part_id,
                        precheck=precheck)
    if plan.skipped:
        notices.append(plan.skipped_notice())
    return PredictPlan(plan, folder_mode, notices)


@dataclass
class CaseResult:
    """One predicted case: its name, the files written by role, and its per-class statistics."""

    name: str
    outputs: dict[str, Path]
    stats: dict[str, Any]


@dataclass
class BatchResult:
    """What :func:`predict_files` did: the cases written, how many were skipped (done) or failed, the exit code
    (0, or 2 when a case failed), the loaded models, timings per stage and the wall time."""

    cases: list[CaseResult]
    skipped: int
    failed: int
    rc: int
    models: list[Any]
    timer: Any
    seconds: float
    notices: list[str] = field(default_factory=list)
    #: the multi-folder task that ran (:class:`medseg.tasks.Task`), or None
    task: Any = None


def predict_files(
    inputs: Sequence[str | Path],
    models: Sequence[str | Path] | Sequence[Any],
    *,
    output: str | Path | None = None,
    device: str = "auto",
    precision: str = "auto",
    folds: Sequence[int | str] | None = None,
    checkpoint: str = "checkpoint_final.pth",
    tta: bool | None = None,
    overlap: float = 0.5,
    batch_size: int | None = None,
    save_probabilities: bool = False,
    largest_component: bool = False,
    keep_classes: Sequence[str] | None = None,
    task: str | Path | Any | None = None,
    stats: str | Path | None = None,
    preview: str | Path | None = None,
    dicom_seg: str | Path | None = None,
    series: str | None = None,
    overwrite: bool = False,
    num_parts: int = 1,
    part_id: int = 0,
    split_classes: bool = False,
    quiet: bool = True,
    prog: str = "medseg",
    on_notice: Callable[[str], None] | None = None,
    on_case: Callable[[CaseResult], None] | None = None,
) -> BatchResult:
    """Segment ``inputs`` (NIfTI files of one case, a folder of cases, or one DICOM series) with ``models`` (model
    files / nnU-Net model folders, or models loaded with :func:`medseg.predict.load_models`) and write the outputs.

    The plan is checked before the models load (:func:`plan_predict`); class names in ``keep_classes`` are checked
    against the model before any case runs. A case that fails is reported on stderr and the batch goes on
    (``rc`` 2 at the end); with one case its error propagates. ``on_notice``/``on_case`` receive the notices and
    each finished case (for printing).

    ``task``: a task file or :class:`medseg.tasks.Task` (then no ``models``): several nnU-Net model folders merged
    into one label map (:mod:`medseg.tasks`); several ``models`` that are nnU-Net folders with different label sets
    form one too. ``keep_classes`` then picks the task's classes: only the folders holding them run.
    ``split_classes``: also one binary mask per class
    (:func:`medseg.outputs.write_class_masks`), planned once the model's class names are known, before any case."""
    from shared_backbones.cliutil import StageTimer, progress, run_batch

    from .io import OUTPUT_DESCRIP, check_channels, read_case, write_labels
    from .outputs import label_statistics, write_class_masks, write_preview, write_stats
    from .predict import VolumeModel, class_indices, count_windows, load_models, predict_case, probability_writer
    from .predict import keep_classes as keep_only
    from .predict import largest_component as largest_only

    start = time.perf_counter()
    from .tasks import load_task_models, predict_task, resolve_task

    the_task = resolve_task(models, task)
    if the_task is not None:
        if save_probabilities:
            raise InputError("--save-probabilities is not available for a task of several model folders (each "
                             "folder's class probabilities are reduced to its labels and their probability)")
        the_task = the_task.select(keep_classes)
        models = list(the_task.folders.values())
    loaded = list(models) if models and all(isinstance(m, VolumeModel) for m in models) else None
    model_paths = [] if loaded else [Path(m) for m in models]
    pp = plan_predict(inputs, output=output, save_probabilities=save_probabilities, stats=stats, preview=preview,
                      dicom_seg=dicom_seg, series=series,
                      model_paths=[*model_paths, *([the_task.path] if the_task and the_task.path else [])],
                      overwrite=overwrite, num_parts=num_parts, part_id=part_id)
    for note in pp.notices:
        if on_notice is not None:
            on_notice(note)
    timer = StageTimer()
    if loaded is None:
        with timer("load model"):
            loaded = (load_task_models(the_task, device, precision, folds, checkpoint) if the_task else
                      load_models(model_paths, device, precision, folds=folds, checkpoint=checkpoint))
    m0 = loaded[0]
    classes = m0.classes if the_task is None else the_task.class_list()
    keep = class_indices(keep_classes, classes) if the_task is None else the_task.values
    if split_classes:  # the class names are known now: plan the masks too (before any case runs)
        pp = plan_predict(inputs, output=output, save_probabilities=save_probabilities, stats=stats, preview=preview,
                          dicom_seg=dicom_seg, series=series,
                          model_paths=[*model_paths, *([the_task.path] if the_task and the_task.path else [])],
                          overwrite=overwrite, num_parts=num_parts, part_id=part_id, split_classes=classes, keep=keep)
    if dicom_seg is not None and len(classes) < 2:
        raise InputError("--dicom-seg needs a model with at least one foreground class", m0.path)
    batch = batch_size or (1 if m0.device.type == "cpu" else 2)
    plan = pp.plan
    plan.make_folders()
    results: list[CaseResult] = []
    said_precision: list[bool] = []
    bar_cases = progress(total=len(plan.jobs), desc="cases", unit="case", quiet=quiet or len(plan.jobs) <= 1)

    def one(job: Job) -> None:
        spec: CaseSpec = job.data
        with timer("read"):
            case = read_case(spec.files, name=spec.name, series=series, native=True)
            check_channels(case, m0.in_channels)
        if case.nonfinite_count and on_notice is not None:
            on_notice(f"{spec.name}: {case.nonfinite_count} NaN/Inf voxels treated as background (left out of the "
                      "normalisation, labelled 0)")
        bar = progress(total=count_windows(case, loaded, overlap), desc=f"{spec.name} windows", unit="win",
                       quiet=quiet)
        writer: Any = None
        try:
            if the_task is not None:  # several folders, merged (only the task's chosen classes occur)
                pred = predict_task(case, the_task, loaded, tta=tta, overlap=overlap, batch_size=batch, timer=timer,
                                    on_window=bar.update)
            else:
                if "probabilities" in job.outputs:  # written slab by slab as they are made
                    writer = probability_writer(job.outputs["probabilities"], case, m0, overwrite=overwrite,
                                                descrip=f"{OUTPUT_DESCRIP} probabilities")
                pred = predict_case(case, loaded, tta=tta, overlap=overlap, batch_size=batch,
                                    probabilities=writer if writer is not None else False, timer=timer,
                                    on_window=bar.update)
        except BaseException:
            if writer is not None:
                writer.abort()
            raise
        finally:
            bar.close()
        if not said_precision and precision == "auto" and m0.policy.reason and on_notice is not None and not quiet:
            said_precision.append(True)  # once, after the first case settled it: what auto chose here, and why
            on_notice(f"precision auto: {m0.policy.reason}")
        with timer("postprocess"):
            labels = keep_only(pred.labels, keep) if the_task is None else pred.labels
            if largest_component:
                labels = largest_only(labels)
        out = job.outputs
        with timer("write"):
            write_labels(out["labels"], labels, case, overwrite=overwrite)
            if "dicom_seg" in out:
                from .dicom import write_dicom_seg

                write_dicom_seg(out["dicom_seg"], labels, case, classes,
                                model_name=the_task.name if the_task else Path(m0.path or "").stem,
                                segments=keep if the_task else None, overwrite=overwrite)
            if writer is not None:
                writer.close()
            write_class_masks(out, labels, classes, case, overwrite=overwrite)
            case_stats = label_statistics(labels, classes, case.voxel_sizes,
                                          image=case.data[0] if "stats" in plan.shared else None)
            if the_task is not None:  # the task's classes only (not the label_<v> names of its gaps)
                case_stats["classes"] = {k: v for k, v in case_stats["classes"].items() if v["label"] in keep}
            if "preview" in out:
                write_preview(out["preview"], case, labels, classes, overwrite=overwrite)
        result = CaseResult(spec.name, dict(out), case_stats)
        results.append(result)
        if on_case is not None:
            on_case(result)
        bar_cases.update(1)

    try:
        rc = run_batch(plan.jobs, one, prog=prog, quiet=quiet, name=lambda j: j.name) if plan.jobs else 0
    finally:
        bar_cases.close()
    if "stats" in plan.shared and results:
        single = len(plan.jobs) == 1 and not pp.folder_mode
        write_stats(plan.shared["stats"], {r.name: r.stats for r in results}, single=single, overwrite=overwrite)
    return BatchResult(results, len(plan.skipped), len(plan.jobs) - len(results), rc, loaded, timer,
                       time.perf_counter() - start, pp.notices, the_task)
