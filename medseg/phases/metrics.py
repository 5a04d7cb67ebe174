"""Temporal segmentation metrics (MS-TCN definitions) and the clinical withdrawal time.

Frames whose reference label is ``ignore`` (unlabeled) are removed from both sequences before any metric.
- accuracy: % of frames whose predicted label equals the reference.
- edit: (1 - Levenshtein(segment labels of prediction, of reference) / max(#segments)) * 100, per video.
- F1@k: each predicted segment is matched to the reference segment of the same label with the highest IoU that is
  not matched yet; TP if that IoU >= k, else FP; unmatched reference segments are FN. Counts are summed over videos.
- withdrawal time: frames in the withdrawal classes (cecum .. rectum, ileum included) divided by the frame rate.
"""

from __future__ import annotations

from collections.abc import Sequence

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


def edit_score(pred: np.ndarray, ref: np.ndarray) -> float:
    """MS-TCN segmental edit score in [0, 100]."""
    p, r = [s[0] for s in segments(pred)], [s[0] for s in segments(ref)]
    if not p and not r:
        return 100.0
    return (1 - levenshtein(p, r) / max(len(p), len(r))) * 100


def f1_counts(pred: np.ndarray, ref: np.ndarray, overlap: float) -> tuple[int, int, int]:
    """(TP, FP, FN) of segments at IoU threshold ``overlap`` (0..1)."""
    ps, rs = segments(pred), segments(ref)
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


def _f1(tp: int, fp: int, fn: int) -> float:
    prec = tp / (tp + fp) if tp + fp else 0.0
    rec = tp / (tp + fn) if tp + fn else 0.0
    return float(2 * prec * rec / (prec + rec) * 100) if prec + rec else 0.0


def evaluate_videos(preds: Sequence[np.ndarray], refs: Sequence[np.ndarray], num_classes: int,
                    class_names: Sequence[str] | None = None, fps: float = 5.0, ignore: int = -1,
                    overlaps: Sequence[float] = (0.10, 0.25, 0.50)) -> dict:
    """All metrics over a set of videos: accuracy, edit (mean over videos), F1@k (counts summed), per-class
    precision/recall/F1/Jaccard (frame-wise), confusion matrix [ref, pred], mean absolute withdrawal-time error (s)."""
    names = list(class_names or [str(i) for i in range(num_classes)])
    conf = np.zeros((num_classes, num_classes), dtype=np.int64)
    edits, counts = [], {k: np.zeros(3, dtype=np.int64) for k in overlaps}
    wd_err = []
    wd_idx = [names.index(n) for n in WITHDRAWAL if n in names]
    for p, r in zip(preds, refs):
        p, r = np.asarray(p), np.asarray(r)
        if p.shape != r.shape:
            raise ValueError(f"prediction has {p.size} frames, reference {r.size}")
        keep = r != ignore
        p, r = p[keep], r[keep]
        np.add.at(conf, (r, p), 1)
        edits.append(edit_score(p, r))
        for k in overlaps:
            counts[k] += f1_counts(p, r, k)
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
        out[f"f1@{int(round(k * 100))}"] = _f1(*counts[k])
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
