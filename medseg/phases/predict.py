"""Phase prediction for whole procedures: per-frame labels, segments, withdrawal time, timeline figure."""

from __future__ import annotations

import csv
import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from shared_backbones.cliutil import atomic_output, check_output
from shared_backbones.errors import InputError
from shared_backbones.loaded import LoadedModel

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
