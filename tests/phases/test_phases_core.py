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
