"""ColonTCN / MS-TCN sizes, causality, reversible equality, loss, and the metrics on hand-computed cases."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from medseg.phases.metrics import edit_score, evaluate_videos, f1_counts, levenshtein, segments, withdrawal_seconds
from medseg.phases.models import COLON_CLASSES, MSTCN, ColonTCN, mstcn_loss


@pytest.mark.parametrize("blocks,count", [(12, 822_921), (13, 880_521)])
def test_colontcn_parameter_counts(blocks, count):
    assert sum(p.numel() for p in ColonTCN(2048, 9, num_blocks=blocks).parameters()) == count


@pytest.mark.parametrize(
    "model", [lambda: ColonTCN(8, 4, 16, 4, causal=True), lambda: MSTCN(8, 4, 2, 5, 16, causal=True)]
)
def test_causal_models_never_look_ahead(model):
    torch.manual_seed(0)
    m = model().eval()
    x = torch.randn(1, 8, 120)
    x2 = x.clone()
    x2[..., 70] += 3
    with torch.no_grad():
        a, b = m(x), m(x2)
    assert torch.equal(a[..., :70], b[..., :70])
    assert not torch.allclose(a[..., 70:], b[..., 70:])


def test_reversible_colontcn_gradients_equal_plain():
    torch.manual_seed(0)
    m = ColonTCN(6, 3, 8, 3, dropout=0.5, reversible=True).double().train()
    x = torch.randn(2, 6, 60, dtype=torch.float64)
    grads = []
    for rev in (True, False):
        m.blocks.reversible = rev
        m.zero_grad()
        torch.manual_seed(1)
        m(x).square().mean().backward()
        grads.append([p.grad.clone() for p in m.parameters()])
    for a, b in zip(*grads):
        assert torch.allclose(a, b, rtol=1e-9, atol=1e-12)


def test_mstcn_loss_equals_direct_formula():
    torch.manual_seed(0)
    out = torch.randn(3, 2, 4, 30)
    target = torch.randint(0, 4, (2, 30))
    expect = 0
    for p in out:
        expect += F.cross_entropy(p, target)
        lsm = F.log_softmax(p, 1)
        expect += 0.15 * torch.clamp((lsm[:, :, 1:] - lsm[:, :, :-1]) ** 2, max=16).mean()
    assert torch.allclose(mstcn_loss(out, target), expect, atol=1e-6)
    # unlabeled frames are ignored
    t2 = target.clone()
    t2[:, :5] = -100
    assert not torch.allclose(mstcn_loss(out, t2), expect)


def test_segments_and_edit_on_hand_cases():
    assert segments(np.array([0, 0, 1, 1, 1, 0])) == [(0, 0, 2), (1, 2, 5), (0, 5, 6)]
    assert levenshtein([0, 1, 2], [0, 2]) == 1
    assert edit_score(np.array([0, 0, 1, 1, 2]), np.array([0, 1, 1, 2, 2])) == 100.0
    # pred segments A B A C vs ref A C: distance 2, max len 4 -> 50
    assert edit_score(np.array([0, 1, 0, 2]), np.array([0, 0, 2, 2])) == pytest.approx(50.0)


def test_f1_on_hand_case():
    ref = np.array([0] * 10 + [1] * 10)
    pred = np.array([0] * 6 + [1] * 14)  # IoU(0) = 6/10, IoU(1) = 10/14
    assert f1_counts(pred, ref, 0.5) == (2, 0, 0)
    assert f1_counts(pred, ref, 0.65) == (1, 1, 1)  # class 1 matches (0.714), class 0 does not (0.6)
    # two predicted segments of one reference: the second is a false positive
    assert f1_counts(np.array([0, 0, 1, 0, 0]), np.array([0] * 5), 0.1) == (1, 2, 0)


def test_evaluate_videos_with_unlabeled_frames_and_withdrawal():
    names = COLON_CLASSES
    cecum, rectum, ins = names.index("cecum"), names.index("rectum"), names.index("insertion")
    ref = np.array([ins] * 10 + [cecum] * 5 + [-1] * 3 + [rectum] * 5)
    pred = np.array([ins] * 8 + [cecum] * 7 + [rectum] * 8)
    m = evaluate_videos([pred], [ref], 9, names, fps=5.0)
    assert m["accuracy"] == pytest.approx(18 / 20 * 100)
    assert m["edit"] == 100.0
    assert m["withdrawal_error_s"] == pytest.approx(abs(12 - 10) / 5)
    assert m["per_class"]["cecum"]["recall"] == pytest.approx(100.0)
    assert m["per_class"]["cecum"]["precision"] == pytest.approx(5 / 7 * 100)
    assert np.array(m["confusion"]).sum() == 20
    assert withdrawal_seconds(ref, names, 5.0) == 2.0


# Hand-made example against MS-TCN's eval.py (github.com/yabufarha/ms-tcn, read, not copied): classes
# 0 = background, 1 = A, 2 = B (12 frames).
#   ref  = bg bg A  A  A  A  bg B  B  B  B  bg  -> foreground segments A[2,6) B[7,11)
#   pred = bg A  A  A  bg A  A  B  B  bg B  B   -> foreground segments A[1,4) A[5,7) B[7,9) B[10,12)
# With bg_class=[background]: Edit: AABB vs AB, distance 2, max 4 -> 50.
#   IoU: A[1,4)-A[2,6) = 2/5, A[5,7)-A[2,6) = 1/5, B[7,9)-B[7,11) = 2/4, B[10,12)-B[7,11) = 1/5.
#   F1@10 and F1@25: TP 2 (first A, first B), FP 2 (their targets already hit), FN 0 -> P .5 R 1 -> 66.67;
#   F1@50: TP 1 (B[7,9) at exactly .5), FP 3, FN 1 -> P .25 R .5 -> 33.33.
# Without a background class the bg runs are segments too (7 vs 5 segments): Edit (1 - 2/7) * 100 = 71.43;
#   F1@10: TP 3 (bg[0,1) IoU .5, A, B), FP 4, FN 2 -> 50.0; F1@50: TP 2, FP 5, FN 3 -> 33.33.
# Accuracy counts every frame either way: 7 of 12.
MSTCN_REF = np.array([0, 0, 1, 1, 1, 1, 0, 2, 2, 2, 2, 0])
MSTCN_PRED = np.array([0, 1, 1, 1, 0, 1, 1, 2, 2, 0, 2, 2])


@pytest.mark.parametrize("background,edit,counts", [
    ([0], 50.0, {0.10: (2, 2, 0), 0.25: (2, 2, 0), 0.50: (1, 3, 1)}),
    ([], 100 * (1 - 2 / 7), {0.10: (3, 4, 2), 0.25: (3, 4, 2), 0.50: (2, 5, 3)}),
])
def test_background_classes_as_mstcn_eval(background, edit, counts):
    assert edit_score(MSTCN_PRED, MSTCN_REF, background) == pytest.approx(edit)
    for k, c in counts.items():
        assert f1_counts(MSTCN_PRED, MSTCN_REF, k, background) == c
    m = evaluate_videos([MSTCN_PRED], [MSTCN_REF], 3, ["background", "A", "B"], background=background)
    assert m["accuracy"] == pytest.approx(7 / 12 * 100)
    f1 = {0.10: 200 / 3, 0.25: 200 / 3, 0.50: 100 / 3} if background else {0.10: 50.0, 0.25: 50.0, 0.50: 100 / 3}
    for k, v in f1.items():
        assert m[f"f1@{int(k * 100)}"] == pytest.approx(v)


def test_background_counts_sum_over_videos():
    # a second, perfect video A A B B: Edit 100, 2 TP. With background: Edit (50 + 100) / 2 = 75;
    # F1@50: TP 3 FP 3 FN 1 -> P .5 R .75 -> 60; F1@10: TP 4 FP 2 FN 0 -> 80; accuracy (7 + 4) / 16.
    v2 = np.array([1, 1, 2, 2])
    m = evaluate_videos([MSTCN_PRED, v2], [MSTCN_REF, v2], 3, background=[0])
    assert (m["edit"], m["f1@10"], m["f1@50"], m["accuracy"]) == pytest.approx((75.0, 80.0, 60.0, 68.75))


def test_torchmetrics_segment_metrics_equal_numpy_metrics():
    from medseg.phases.segmetrics import SegmentalEdit, SegmentalF1

    rng = np.random.default_rng(0)
    refs = [np.repeat(rng.integers(0, 4, 8), rng.integers(3, 12, 8)) for _ in range(3)]
    preds = [np.where(rng.random(len(r)) < 0.15, rng.integers(0, 4, len(r)), r) for r in refs]
    refs[1][:5] = -1  # unlabeled frames are removed first
    expect = evaluate_videos(preds, refs, 4, background=[3])
    edit, f1 = SegmentalEdit(ignore_index=-1, background=[3]), SegmentalF1(0.25, ignore_index=-1, background=[3])
    t = max(map(len, refs))
    for p, r in zip(preds, refs):  # padded batches of one video, the padding ignored
        pp, rr = torch.zeros(1, t, dtype=torch.long), torch.full((1, t), -1)
        pp[0, : len(p)], rr[0, : len(r)] = torch.from_numpy(p), torch.from_numpy(r)
        edit.update(pp, rr)
        f1.update(pp, rr)
    assert float(edit.compute()) == pytest.approx(expect["edit"])
    assert float(f1.compute()) == pytest.approx(expect["f1@25"])
    assert int(edit.videos) == 3
