"""Temporal segmentation metrics (MS-TCN definitions) and the clinical withdrawal time.

Definitions follow MS-TCN's evaluation (Farha & Gall, "MS-TCN: Multi-Stage Temporal Convolutional Network for Action
Segmentation", CVPR 2019, https://github.com/yabufarha/ms-tcn, ``eval.py``):

Frames whose reference label is ``ignore`` (unlabeled) are removed from both sequences before any metric.
- accuracy: % of frames whose predicted label equals the reference (background frames count).
- segments: runs of equal labels; segments of a *background* class are then dropped (MS-TCN's ``bg_class``), so they
  take no part in Edit and F1 (a background run still separates two segments of the same class).
- edit: (1 - Levenshtein(segment labels of prediction, of reference) / max(#segments)) * 100, per video, averaged
  over videos (100 when both have no segment; MS-TCN's script gives NaN there).
- F1@k: each predicted segment takes the reference segment of the same label with the highest IoU (the first one on
  ties); TP if that IoU >= k and that segment is not matched yet, else FP; unmatched reference segments are FN.
  Counts are summed over videos, then F1 = 2PR / (P + R) * 100 (0 when P + R = 0).
- withdrawal time: frames in the withdrawal classes (cecum .. rectum, ileum included) divided by the frame rate.

The default background is none: every class counts. MS-TCN's script uses ``bg_class=["background"]``; pass the
same classes (``--background background``) to compare with numbers published with it.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence

import numpy as np

WITHDRAWAL = ("cecum", "ileum", "ascending", "transverse", "descending", "sigmoid", "rectum")


def segments(labels: np.ndarray) -> list[tuple[int, int, int]]:
    """Runs of equal labels as (label, start, end_exclusive)."""
    labels = np.asarray(labels)
    if labels.size == 0:
        return []
    cuts = np.flatnonzero(np.diff(labels)) + 1
    starts = np.concatenate([[0], cuts])
    ends = np.concatenate([cuts, [labels.size]])
    return [(int(labels[s]), int(s), int(e)) for s, e in zip(starts, ends)]


def levenshtein(a: Sequence[int], b: Sequence[int]) -> int:
    """Edit distance between two label sequences."""
    prev = list(range(len(b) + 1))
    for i, x in enumerate(a, 1):
        cur = [i]
        for j, y in enumerate(b, 1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (x != y)))
        prev = cur
    return prev[-1]


def foreground_segments(labels: np.ndarray, background: Collection[int] = ()) -> list[tuple[int, int, int]]:
    """:func:`segments` without those of the ``background`` classes (MS-TCN's ``bg_class``)."""
    return [s for s in segments(labels) if s[0] not in background]


def edit_score(pred: np.ndarray, ref: np.ndarray, background: Collection[int] = ()) -> float:
    """MS-TCN segmental edit score in [0, 100]; ``background`` classes' segments are left out."""
    p = [s[0] for s in foreground_segments(pred, background)]
    r = [s[0] for s in foreground_segments(ref, background)]
    if not p and not r:
        return 100.0
    return (1 - levenshtein(p, r) / max(len(p), len(r))) * 100


def f1_counts(pred: np.ndarray, ref: np.ndarray, overlap: float,
              background: Collection[int] = ()) -> tuple[int, int, int]:
    """(TP, FP, FN) of segments at IoU threshold ``overlap`` (0..1); ``background`` classes' segments are left out."""
    ps, rs = foreground_segments(pred, background), foreground_segments(ref, background)
    used = [False] * len(rs)
    tp = fp = 0
    for lab, s, e in ps:
        best, best_j = 0.0, -1
        for j, (rl, rs_, re_) in enumerate(rs):
            if rl != lab:
                continue
            inter = max(0, min(e, re_) - max(s, rs_))
            iou = inter / (max(e, re_) - min(s, rs_))
            if iou > best:
                best, best_j = iou, j
        if best >= overlap and not used[best_j]:
            tp += 1
            used[best_j] = True
        else:
            fp += 1
    return tp, fp, len(rs) - sum(used)


def f1_from_counts(tp: int, fp: int, fn: int) -> float:
    """F1 in % from summed segment counts (0 when there is no true positive)."""
    prec = tp / (tp + fp) if tp + fp else 0.0
    rec = tp / (tp + fn) if tp + fn else 0.0
    return float(2 * prec * rec / (prec + rec) * 100) if prec + rec else 0.0


def evaluate_videos(preds: Sequence[np.ndarray], refs: Sequence[np.ndarray], num_classes: int,
                    class_names: Sequence[str] | None = None, fps: float = 5.0, ignore: int = -1,
                    overlaps: Sequence[float] = (0.10, 0.25, 0.50), background: Collection[int] = ()) -> dict:
    """All metrics over a set of videos: accuracy, edit (mean over videos), F1@k (counts summed), per-class
    precision/recall/F1/Jaccard (frame-wise), confusion matrix [ref, pred], mean absolute withdrawal-time error (s).
    ``background``: class indices whose segments Edit and F1 leave out (accuracy and per-class counts keep them)."""
    names = list(class_names or [str(i) for i in range(num_classes)])
    conf = np.zeros((num_classes, num_classes), dtype=np.int64)
    edits, counts = [], {k: np.zeros(3, dtype=np.int64) for k in overlaps}
    wd_err = []
    wd_idx = [names.index(n) for n in WITHDRAWAL if n in names]
    for p, r in zip(preds, refs):
        p, r = np.asarray(p), np.asarray(r)
        if p.shape != r.shape:
            raise ValueError(f"prediction has {p.size} frames, reference {r.size} (align them with match_length)")
        keep = r != ignore
        p, r = p[keep], r[keep]
        np.add.at(conf, (r, p), 1)
        edits.append(edit_score(p, r, background))
        for k in overlaps:
            counts[k] += f1_counts(p, r, k, background)
        if wd_idx:
            wd_err.append(abs(np.isin(p, wd_idx).sum() - np.isin(r, wd_idx).sum()) / fps)
    tp = np.diag(conf).astype(float)
    prec = np.divide(tp, conf.sum(0), out=np.zeros_like(tp), where=conf.sum(0) > 0)
    rec = np.divide(tp, conf.sum(1), out=np.zeros_like(tp), where=conf.sum(1) > 0)
    f1 = np.divide(2 * prec * rec, prec + rec, out=np.zeros_like(tp), where=(prec + rec) > 0)
    union = conf.sum(0) + conf.sum(1) - tp
    jac = np.divide(tp, union, out=np.zeros_like(tp), where=union > 0)
    out = {"accuracy": float(tp.sum() / max(conf.sum(), 1) * 100), "edit": float(np.mean(edits)) if edits else 0.0}
    for k in overlaps:
        out[f"f1@{int(round(k * 100))}"] = f1_from_counts(*counts[k])
    if wd_err:
        out["withdrawal_error_s"] = float(np.mean(wd_err))
    out["per_class"] = {n: {"precision": prec[i] * 100, "recall": rec[i] * 100, "f1": f1[i] * 100,
                            "jaccard": jac[i] * 100, "frames": int(conf[i].sum())} for i, n in enumerate(names)}
    out["confusion"] = conf.tolist()
    return out


def withdrawal_seconds(labels: np.ndarray, class_names: Sequence[str], fps: float) -> float:
    """Withdrawal time of one video: frames in the withdrawal classes / fps."""
    idx = [list(class_names).index(n) for n in WITHDRAWAL if n in class_names]
    return float(np.isin(np.asarray(labels), idx).sum() / fps)
