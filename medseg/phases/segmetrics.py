"""Segmental Edit and F1@k as torchmetrics ``Metric`` objects, so that training validation is synced across ranks.

Same definitions as :mod:`medseg.phases.metrics` (MS-TCN's ``eval.py``: Farha & Gall, CVPR 2019,
https://github.com/yabufarha/ms-tcn). The states are sums (``dist_reduce_fx="sum"``): Edit keeps the sum of the
per-video scores and the number of videos, F1@k the TP / FP / FN segment counts, so the value over several processes
equals the value one process computes on all the videos.
"""

from __future__ import annotations

from collections.abc import Collection

import torch
from torchmetrics import Metric

from .metrics import edit_score, f1_counts, f1_from_counts


def _videos(preds: torch.Tensor, target: torch.Tensor, ignore_index: int):
    """Per video (row), the predicted and reference labels of the frames whose reference is not ``ignore_index``."""
    if preds.shape != target.shape:
        raise ValueError(f"preds {tuple(preds.shape)} and target {tuple(target.shape)} differ")
    preds, target = preds.reshape(-1, preds.shape[-1]), target.reshape(-1, target.shape[-1])
    for p, r in zip(preds.detach().cpu().numpy(), target.detach().cpu().numpy()):
        keep = r != ignore_index
        yield p[keep], r[keep]


class SegmentalEdit(Metric):
    """Mean over videos of MS-TCN's segmental edit score (%). ``update(preds [N, T], target [N, T])`` with one video
    per row; frames whose target is ``ignore_index`` (unlabeled, padding) are removed first."""

    full_state_update = False
    higher_is_better = True

    def __init__(self, ignore_index: int = -100, background: Collection[int] = (), **kwargs) -> None:
        super().__init__(**kwargs)
        self.ignore_index, self.background = ignore_index, tuple(background)
        self.add_state("score_sum", torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("videos", torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, preds: torch.Tensor, target: torch.Tensor) -> None:
        for p, r in _videos(preds, target, self.ignore_index):
            self.score_sum += edit_score(p, r, self.background)
            self.videos += 1

    def compute(self) -> torch.Tensor:
        return self.score_sum / self.videos.clamp_min(1)


class SegmentalF1(Metric):
    """MS-TCN's F1@k (%) at IoU threshold ``overlap``: TP / FP / FN segment counts summed over videos."""

    full_state_update = False
    higher_is_better = True

    def __init__(self, overlap: float, ignore_index: int = -100, background: Collection[int] = (), **kwargs) -> None:
        super().__init__(**kwargs)
        self.overlap, self.ignore_index, self.background = overlap, ignore_index, tuple(background)
        for name in ("tp", "fp", "fn"):
            self.add_state(name, torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, preds: torch.Tensor, target: torch.Tensor) -> None:
        for p, r in _videos(preds, target, self.ignore_index):
            tp, fp, fn = f1_counts(p, r, self.overlap, self.background)
            self.tp += tp
            self.fp += fp
            self.fn += fn

    def compute(self) -> torch.Tensor:
        return torch.tensor(f1_from_counts(int(self.tp), int(self.fp), int(self.fn)), dtype=torch.float64)
