"""Phase prediction for whole procedures: per-frame labels, segments, withdrawal time, timeline figure."""

from __future__ import annotations

import csv
import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from shared_backbones.cliutil import atomic_output, check_output, run_batch, say
from shared_backbones.errors import InputError
from shared_backbones.loaded import LoadedModel
from shared_backbones.planning import Job, Plan, drop_own_outputs, plan_outputs

from .metrics import evaluate_videos, segments, withdrawal_seconds
from .models import COLON_CLASSES, TASK, final_logits


class PhaseModel(LoadedModel):
    """A loaded phase model (ColonTCN / MS-TCN) with its class names, input width and frame rate."""

    TASK = TASK

    @property
    def classes(self) -> list[str]:
        return list(self.file.classes) or list(COLON_CLASSES)

    @property
    def in_features(self) -> int:
        """The feature width D the model takes per frame."""
        return int(self.file.arch_kwargs.get("in_features", 2048))

    @property
    def fps(self) -> float:
        """The frame rate of the features it was trained on."""
        return float(self.preprocessing.get("fps", 5.0))

    def class_indices(self, names: Sequence[str]) -> list[int]:
        """Indices of class ``names`` (case-insensitive); an unknown name is a one-line error."""
        index = {c.lower(): i for i, c in enumerate(self.classes)}
        unknown = [n for n in names if n.lower() not in index]
        if unknown:
            raise InputError(f"unknown class {unknown[0]!r} (classes: {', '.join(self.classes)})", self.path)
        return [index[n.lower()] for n in names]

    @torch.inference_mode()
    def probabilities(self, feats: np.ndarray) -> np.ndarray:
        """[T, D] features -> [T, C] class probabilities (one pass over the whole video)."""
        x = torch.from_numpy(feats.T.copy())[None].to(self.device)
        with self.policy.autocast():
            logits = final_logits(self.model(x))
        return torch.softmax(logits.float(), 1)[0].T.cpu().numpy()


def outputs_for(features: Path, out_dir: Path | None) -> dict[str, Path]:
    """Output files of one video: frames CSV, segments CSV, summary JSON, timeline PNG."""
    folder = out_dir or features.parent
    stem = features.stem
    return {"frames": folder / f"{stem}_phases.csv", "segments": folder / f"{stem}_segments.csv",
            "summary": folder / f"{stem}_summary.json", "timeline": folder / f"{stem}_timeline.png"}


def write_timeline(path: Path, pred: np.ndarray, classes: list[str], fps: float, ref: np.ndarray | None = None) -> None:
    """Ethogram strip(s): prediction (and reference) coloured by class over time."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import ListedColormap
    from matplotlib.patches import Patch

    cmap = ListedColormap(plt.get_cmap("tab10").colors[: len(classes)] if len(classes) <= 10 else
                          plt.get_cmap("tab20").colors[: len(classes)])
    rows = [("prediction", pred)] + ([("reference", ref)] if ref is not None else [])
    fig, axes = plt.subplots(len(rows), 1, figsize=(12, 1.0 + 0.7 * len(rows)), squeeze=False)
    minutes = len(pred) / fps / 60
    for ax, (name, lab) in zip(axes[:, 0], rows):
        img = np.ma.masked_less(lab[None].astype(float), 0)
        ax.imshow(img, aspect="auto", cmap=cmap, vmin=-0.5, vmax=len(classes) - 0.5, interpolation="nearest",
                  extent=(0, minutes, 0, 1))
        ax.set_yticks([])
        ax.set_ylabel(name, rotation=0, ha="right", va="center")
    axes[-1, 0].set_xlabel("time (min)")
    fig.legend(handles=[Patch(color=cmap(i), label=c) for i, c in enumerate(classes)], loc="upper center",
               ncol=min(len(classes), 9), fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0, 1, 0.8))
    fig.savefig(path, dpi=100)
    plt.close(fig)


def predict_video(pm: PhaseModel, features: np.ndarray, stem_path: Path, out_dir: Path | None = None,
                  fps: float | None = None, reference: np.ndarray | None = None, png: bool = True,
                  overwrite: bool = False, background: Sequence[int] = ()) -> dict:
    """Predict one video and write its outputs; returns the summary dict. ``reference`` (labels, already of the
    features' length: see :func:`medseg.phases.io.match_length`) adds metrics; ``background`` class indices are left
    out of Edit and F1 as in MS-TCN's evaluation."""
    fps = fps or pm.fps
    outs = outputs_for(stem_path, out_dir)
    for key, p in outs.items():
        if key != "timeline" or png:
            check_output(p, overwrite)
    if reference is not None and len(reference) != len(features):  # checked before anything is written
        raise InputError(f"reference has {len(reference)} frames, features have {len(features)}")
    probs = pm.probabilities(features)
    pred = probs.argmax(1)
    with atomic_output(outs["frames"], overwrite) as tmp, open(tmp, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["frame", "time_s", "label", *[f"p_{c}" for c in pm.classes]])
        for t, (lab, p) in enumerate(zip(pred, probs)):
            w.writerow([t, f"{t / fps:.3f}", pm.classes[lab], *[f"{v:.4f}" for v in p]])
    segs = segments(pred)
    with atomic_output(outs["segments"], overwrite) as tmp, open(tmp, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["start_frame", "end_frame", "start_s", "end_s", "label", "duration_s"])
        for lab, s, e in segs:
            w.writerow([s, e - 1, f"{s / fps:.3f}", f"{e / fps:.3f}", pm.classes[lab], f"{(e - s) / fps:.3f}"])
    summary = {"video": stem_path.stem, "frames": int(len(pred)), "fps": fps, "duration_s": len(pred) / fps,
               "segments": len(segs), "withdrawal_s": withdrawal_seconds(pred, pm.classes, fps),
               "class_seconds": {c: float((pred == i).sum() / fps) for i, c in enumerate(pm.classes)}}
    if reference is not None:
        m = evaluate_videos([pred], [reference], len(pm.classes), pm.classes, fps, background=background)
        summary["metrics"] = {k: v for k, v in m.items() if k not in ("per_class", "confusion")}
        summary["background"] = [pm.classes[i] for i in background]
        summary["reference_withdrawal_s"] = withdrawal_seconds(reference, pm.classes, fps)
    with atomic_output(outs["summary"], overwrite) as tmp:
        tmp.write_text(json.dumps(summary, indent=2))
    if png:
        with atomic_output(outs["timeline"], overwrite) as tmp:
            write_timeline(tmp, pred, pm.classes, fps, reference)
    summary["outputs"] = {k: str(v) for k, v in outs.items() if k != "timeline" or png}
    return summary


# -- batches -------------------------------------------------------------------------------------------------------
def expand_inputs(inputs: Sequence[str | Path], out_dir: str | Path | None = None,
                  png: bool = True) -> tuple[list[Path], list[Path]]:
    """(feature files, skipped): files as given, folders expanded to their ``*.npy`` files (name order) without
    the files this command writes for other inputs of the folder (:func:`outputs_for`)."""
    out = Path(out_dir) if out_dir is not None else None
    files: list[Path] = []
    skipped: list[Path] = []
    for p in map(Path, inputs):
        if p.is_dir():
            found, own = drop_own_outputs(sorted(p.glob("*.npy")),
                                          lambda c: _roles(outputs_for(c, out), png).values())
            files += found
            skipped += own
        else:
            files.append(p)
    if not files:
        raise InputError("no .npy feature files found", inputs[0] if inputs else ".")
    return files, skipped


def _roles(outs: dict[str, Path], png: bool) -> dict[str, Path]:
    return {k: v for k, v in outs.items() if k != "timeline" or png}


def plan_predict(inputs: Sequence[str | Path], out_dir: str | Path | None = None, *, png: bool = True,
                 model: str | Path | None = None, reference: str | Path | None = None, overwrite: bool = False,
                 num_parts: int = 1, part_id: int = 0) -> Plan:
    """Plan ``medseg phases predict``: one job per feature file (folders expanded, see :func:`expand_inputs`) with
    outputs by role ``frames``, ``segments``, ``summary``, ``timeline`` (:func:`outputs_for`; beside each input
    without ``out_dir``). Two inputs mapping to one output, an output among the inputs (the model, the reference)
    are refused before any work. In a batch (several files or a folder) an input whose outputs
    all exist is skipped unless ``overwrite``, and ``num_parts``/``part_id`` split it between SLURM array tasks.
    The plan's ``skipped_inputs`` attribute lists folder files taken for this command's own outputs."""
    files, own = expand_inputs(inputs, out_dir, png)
    if reference is not None and len(files) != 1:
        raise InputError("--reference needs exactly one input", reference)
    out = Path(out_dir) if out_dir is not None else None
    jobs = [Job(str(f), [f], _roles(outputs_for(f, out), png)) for f in files]
    batch = len(files) > 1 or any(Path(p).is_dir() for p in inputs)
    plan = plan_outputs(jobs, folders=[out] if out is not None else [],
                        other_inputs=[p for p in (model, reference) if p is not None], overwrite=overwrite,
                        skip_done=batch, num_parts=num_parts, part_id=part_id)
    plan.skipped_inputs = own  # type: ignore[attr-defined]
    return plan


def predict_files(plan: Plan, pm: PhaseModel, *, layout: str = "auto", fps: float | None = None,
                  reference: str | Path | None = None, png: bool = True, overwrite: bool = False,
                  background: Sequence[int] = (), quiet: bool = False, notice: Callable[[str], None] | None = None,
                  report: Callable[[Job, dict[str, Any]], None] | None = None, prog: str = "medseg phases") -> int:
    """Predict every job of ``plan`` (:func:`plan_predict`) with :func:`predict_video`; a bad file is reported and
    the others go on. ``reference`` (one input only) adds metrics; ``notice`` gets the notes worth showing (skipped
    inputs, a reference one frame off), ``report`` each summary. Returns 0, or 2 when some input failed."""
    from .io import load_features, load_labels, match_length

    show = notice or (lambda text: say(text, quiet))
    if plan.skipped:
        show(f"{prog}: {plan.skipped_notice()}")
    own = getattr(plan, "skipped_inputs", [])
    if own:
        show(f"{prog}: note: left out {len(own)} file(s) that are this command's outputs for other inputs "
             f"({', '.join(p.name for p in own[:3])}{', ...' if len(own) > 3 else ''})")
    if not plan.jobs:
        return 0
    plan.make_folders()

    def work(job: Job) -> None:
        f = job.inputs[0]
        feats = load_features(f, layout, pm.in_features)
        ref = None
        if reference is not None:
            ref, note = match_length(load_labels(reference, pm.classes), len(feats), reference)
            if note:
                show(note)
        out_dir = job.outputs["frames"].parent
        s = predict_video(pm, feats, f, out_dir, fps, ref, png, overwrite, background)
        if report is not None:
            report(job, s)

    return run_batch(plan.jobs, work, prog=prog, quiet=quiet, name=lambda j: j.name)
