"""Reversible sequence: exact gradients vs the plain run, dropout, autocast, caller tensors, memory, DDP, compile."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn as nn

from shared_backbones.blocks import DilatedResidualLayer, MBConv, TCNResidualBody, reversible_mbconv_sequence
from shared_backbones.memory import activation_bytes
from shared_backbones.reversible import ReversibleBlock, ReversibleSequence


def _grads(seq: nn.Module, x: torch.Tensor, seed: int = 0):
    x = x.detach().clone().requires_grad_(True)
    torch.manual_seed(seed)
    y = seq(x)
    (y * torch.linspace(-1, 1, y.numel(), dtype=y.dtype).view_as(y)).sum().backward()
    out = (y.detach(), x.grad.detach(), [p.grad.detach().clone() for p in seq.parameters()])
    seq.zero_grad(set_to_none=True)
    return out


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).abs().max() / b.abs().max().clamp_min(1e-300)).item()


def _assert_equal_runs(seq: ReversibleSequence, x: torch.Tensor, tol: float = 1e-10, seed: int = 0) -> None:
    seq.reversible = True
    y_r, gx_r, gp_r = _grads(seq, x, seed)
    seq.reversible = False
    y_p, gx_p, gp_p = _grads(seq, x, seed)
    assert torch.equal(y_r, y_p)
    assert _rel(gx_r, gx_p) < tol
    assert len(gp_r) == len(gp_p) > 0
    for a, b in zip(gp_r, gp_p):
        assert _rel(a, b) < tol


@pytest.mark.parametrize("dims", [1, 2, 3])
def test_mbconv_sequence_fp64_gradients_equal_plain(dims):
    torch.manual_seed(0)
    seq = reversible_mbconv_sequence(dims, 8, depth=3, expand_ratio=2).double()
    _assert_equal_runs(seq, torch.randn(2, 8, *([5] * dims), dtype=torch.float64))


@pytest.mark.parametrize("causal", [False, True])
def test_tcn_sequence_fp64_gradients_equal_plain(causal):
    torch.manual_seed(0)
    norm = "cln" if causal else "gln"
    blocks = [
        ReversibleBlock(TCNResidualBody(4, 8, 3, 2**i, norm, causal), TCNResidualBody(4, 8, 3, 2**i, norm, causal))
        for i in range(3)
    ]
    seq = ReversibleSequence(blocks).double()
    _assert_equal_runs(seq, torch.randn(2, 8, 40, dtype=torch.float64))


def test_dilated_residual_layers_with_dropout_are_exact():
    torch.manual_seed(0)
    def body(i):
        return DilatedResidualLayer(
            4, 7, 2**i, dropout=0.5, weight_norm=True, n_convs=2, pointwise=False, residual=False
        )
    seq = ReversibleSequence([ReversibleBlock(body(i), body(i)) for i in range(3)]).double().train()
    _assert_equal_runs(seq, torch.randn(2, 8, 30, dtype=torch.float64), seed=123)


def test_mbconv_dropout_exact_and_rng_left_as_forward_left_it():
    torch.manual_seed(0)
    seq = reversible_mbconv_sequence(2, 8, depth=2, dropout=0.3).double().train()
    _assert_equal_runs(seq, torch.randn(2, 8, 6, 6, dtype=torch.float64), seed=7)
    # backward must not disturb the global RNG stream
    x = torch.randn(2, 8, 6, 6, dtype=torch.float64, requires_grad=True)
    torch.manual_seed(5)
    seq.reversible = True
    y = seq(x)
    state = torch.get_rng_state()
    y.sum().backward()
    assert torch.equal(state, torch.get_rng_state())


def test_bf16_autocast_matches_plain_autocast_and_streams_stay_fp32():
    torch.manual_seed(0)
    seq = reversible_mbconv_sequence(3, 8, depth=2, expand_ratio=2)
    x = torch.randn(1, 8, 6, 6, 6)
    res = []
    for rev in (True, False):
        seq.reversible = rev
        xi = x.clone().requires_grad_(True)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            y = seq(xi)
        assert y.dtype == torch.float32
        y.float().pow(2).mean().backward()
        res.append((y.detach(), xi.grad.clone(), [p.grad.clone() for p in seq.parameters()]))
        seq.zero_grad(set_to_none=True)
    (yr, gr, pr), (yp, gp, pp) = res
    assert torch.allclose(yr, yp, atol=0, rtol=0)
    assert _rel(gr, gp) < 5e-2
    for a, b in zip(pr, pp):
        assert _rel(a, b) < 5e-2


class _Recorder(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Conv1d(2, 2, 1)
        self.seen: list[bool] = []

    def forward(self, x):
        self.seen.append(torch.is_autocast_enabled("cpu"))
        return self.lin(x)


def test_recompute_reenters_forward_autocast_state():
    f, g = _Recorder(), _Recorder()
    seq = ReversibleSequence([ReversibleBlock(f, g)])
    x = torch.randn(1, 4, 5, requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = seq(x)
    y.sum().backward()  # outside autocast: the recompute must still run under it
    assert f.seen == [True, True] and g.seen == [True, True]


def test_caller_tensors_untouched_and_leaf_grad_not_doubled():
    torch.manual_seed(0)
    seq = reversible_mbconv_sequence(2, 8, depth=3).double()
    x = torch.randn(2, 8, 6, 6, dtype=torch.float64, requires_grad=True)
    before, ptr = x.detach().clone(), x.data_ptr()
    y = seq(x)
    skip = x * 2  # a U-Net skip reads the input after the sequence ran
    (y.sum() + skip.sum()).backward()
    assert torch.equal(x.detach(), before) and x.data_ptr() == ptr
    g_rev = x.grad.clone()
    x.grad = None
    seq.reversible = False
    (seq(x).sum() + (x * 2).sum()).backward()
    assert _rel(g_rev, x.grad) < 1e-10


def test_inverse_rebuilds_input():
    torch.manual_seed(0)
    seq = reversible_mbconv_sequence(1, 6, depth=4).double().eval()
    x = torch.randn(3, 6, 11, dtype=torch.float64)
    with torch.no_grad():
        assert torch.allclose(seq.inverse(seq(x)), x, atol=1e-12)


def test_saved_activation_bytes_flat_in_depth():
    x = torch.randn(1, 8, 8, 8, 8, requires_grad=True)
    rev, plain = {}, {}
    for depth in (2, 16):
        seq = reversible_mbconv_sequence(3, 8, depth=depth, expand_ratio=2)
        rev[depth] = activation_bytes(seq, x)
        seq.reversible = False
        plain[depth] = activation_bytes(seq, x)
    assert abs(rev[16] - rev[2]) <= 0.1 * rev[2]
    assert plain[16] > 6 * plain[2]
    assert plain[2] > rev[2]


def test_odd_channel_count_is_refused():
    seq = reversible_mbconv_sequence(1, 4, depth=1)
    with pytest.raises(ValueError, match="even"):
        seq(torch.randn(1, 5, 8))


def test_ddp_single_process_gloo_gradients_equal_plain(tmp_path):
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel as DDP

    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        torch.manual_seed(0)
        seq = reversible_mbconv_sequence(1, 8, depth=2).double()
        plain = copy.deepcopy(seq)
        plain.reversible = False
        model = DDP(seq, find_unused_parameters=False)
        x = torch.randn(2, 8, 10, dtype=torch.float64)
        model(x).pow(2).sum().backward()
        plain(x).pow(2).sum().backward()
        for a, b in zip(seq.parameters(), plain.parameters()):
            assert a.grad is not None and _rel(a.grad, b.grad) < 1e-10
    finally:
        dist.destroy_process_group()


def test_torch_compile_runs_and_matches():
    torch.manual_seed(0)
    seq = reversible_mbconv_sequence(1, 8, depth=2)
    compiled = torch.compile(seq, backend="aot_eager")
    x = torch.randn(2, 8, 12, requires_grad=True)
    y = compiled(x)
    y.sum().backward()
    g = x.grad.clone()
    x.grad = None
    seq.reversible = False
    seq(x).sum().backward()
    assert torch.allclose(g, x.grad, atol=1e-5)


def test_mbconv_shapes_and_residual_rule():
    m = MBConv(3, 8, 16, stride=2)
    assert m(torch.randn(1, 8, 8, 8, 8)).shape == (1, 16, 4, 4, 4) and not m.use_residual
    assert MBConv(2, 8, 8).use_residual and not MBConv(2, 8, 8, residual=False).use_residual


class _DropPath(nn.Module):
    """Stochastic depth written with torch.rand (not an nn.Dropout): its randomness must be replayed too."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv1d(channels, channels, 3, padding=1)

    def forward(self, x):
        keep = (torch.rand(x.shape[0], 1, 1, dtype=x.dtype) > 0.5).to(x.dtype)
        return torch.tanh(self.conv(x)) * keep * torch.rand_like(x)


def test_custom_randomness_in_training_mode_is_replayed_exactly():
    torch.manual_seed(0)
    seq = ReversibleSequence([ReversibleBlock(_DropPath(3), _DropPath(3)) for _ in range(3)]).double().train()
    _assert_equal_runs(seq, torch.randn(4, 6, 9, dtype=torch.float64), seed=11)


def test_batchnorm_exact_gradients_and_running_stats_updated_once():
    torch.manual_seed(0)
    seq = reversible_mbconv_sequence(2, 8, depth=2, norm="batch", se_ratio=None).double().train()
    plain = copy.deepcopy(seq)
    plain.reversible = False
    x = torch.randn(3, 8, 5, 5, dtype=torch.float64)
    _assert_equal_runs(copy.deepcopy(seq), x)
    seq(x.requires_grad_(True)).sum().backward()
    plain(x).sum().backward()
    bufs = dict(seq.named_buffers())
    assert any(k.endswith("num_batches_tracked") for k in bufs)
    for k, b in plain.named_buffers():
        assert torch.equal(bufs[k], b), k


def test_empty_sequence_and_forward_pair():
    x = torch.randn(2, 4, 3, requires_grad=True)
    assert torch.equal(ReversibleSequence([])(x), x)
    torch.manual_seed(0)
    seq = reversible_mbconv_sequence(1, 4, depth=2).double()
    a, b = torch.randn(2, 2, 7, dtype=torch.float64).unbind(0)
    a, b = a[None].requires_grad_(True), b[None].requires_grad_(True)
    y1, y2 = seq.forward_pair(a, b)
    assert torch.equal(torch.cat([y1, y2], 1), seq(torch.cat([a, b], 1)))
    with pytest.raises(TypeError, match="ReversibleBlock"):
        ReversibleSequence([nn.Identity()])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_dropout_exact_and_bf16_autocast_recompute():
    torch.manual_seed(0)
    seq = reversible_mbconv_sequence(3, 8, depth=2, dropout=0.3).cuda().train()
    x = torch.randn(2, 8, 6, 6, 6, device="cuda")
    res = []
    for rev in (True, False):
        seq.reversible = rev
        xi = x.clone().requires_grad_(True)
        torch.manual_seed(3)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            y = seq(xi)
        assert y.dtype == torch.float32
        y.pow(2).mean().backward()  # outside autocast: the recompute re-enters it
        res.append((y.detach(), xi.grad.clone()))
        seq.zero_grad(set_to_none=True)
    assert torch.equal(res[0][0], res[1][0])
    assert _rel(res[0][1], res[1][1]) < 5e-2
