"""Blocks against references: torchaudio's Conv-TasNet block, GroupNorm, an explicit DFT, STU-Net names."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from shared_backbones.blocks import (
    ConvNormAct,
    CumulativeLayerNorm,
    DilatedResidualLayer,
    FourierBlock1d,
    GlobalLayerNorm,
    SpectralConv1d,
    STUResidualBlock,
    TCNBlock,
    get_norm,
)


@pytest.mark.parametrize("no_residual", [False, True])
def test_tcn_block_matches_torchaudio_conv_block(no_residual):
    from torchaudio.models.conv_tasnet import ConvBlock

    torch.manual_seed(0)
    ref = ConvBlock(io_channels=6, hidden_channels=10, kernel_size=3, padding=4, dilation=4, no_residual=no_residual)
    ours = TCNBlock(6, 10, 3, dilation=4, norm="gln", no_residual=no_residual)
    assert list(ours.state_dict()) == list(ref.state_dict())
    ours.load_state_dict(ref.state_dict(), strict=True)
    x = torch.randn(2, 6, 50)
    (r_res, r_skip), (o_res, o_skip) = ref(x), ours(x)
    assert torch.allclose(o_skip, r_skip, atol=1e-6)
    assert (r_res is None) == (o_res is None) == no_residual
    if not no_residual:
        assert torch.allclose(o_res, r_res, atol=1e-6)


@pytest.mark.parametrize("causal", [False, True])
def test_tcn_block_cpu_fast_path_equals_modules_in_values_and_gradients(causal):
    """The CPU path (shifted multiply-adds for the depthwise conv, relu-form PReLU under autograd) against the
    block's own nn.Conv1d / nn.PReLU modules run as plain layers: outputs and every gradient."""
    torch.manual_seed(0)
    blk = TCNBlock(6, 10, 3, dilation=4, norm="cln" if causal else "gln", causal=causal)
    with torch.no_grad():
        blk.conv_layers[1].weight.fill_(0.3)
        blk.conv_layers[4].weight.fill_(-0.2)
    x = torch.randn(2, 6, 40, requires_grad=True)

    def reference(x):
        layers = blk.conv_layers
        h = layers[2](layers[1](layers[0](x)))
        h = layers[4](layers[3](F.pad(h, (blk.pad, 0)) if causal else h))
        h = layers[5](h)
        return blk.res_out(h), blk.skip_out(h)

    grads = []
    for fn in (blk, reference):
        blk.zero_grad()
        x.grad = None
        res, skip = fn(x)
        (res.square().sum() + (skip * torch.linspace(-1, 1, 40)).sum()).backward()
        pgrads = {n: p.grad.clone() for n, p in blk.named_parameters()}
        grads.append((res.detach(), skip.detach(), x.grad.clone(), pgrads))
    (r0, s0, gx0, gp0), (r1, s1, gx1, gp1) = grads
    assert r0.shape == (2, 6, 40) and s0.shape == (2, 6, 40)
    assert torch.allclose(r0, r1, atol=1e-5) and torch.allclose(s0, s1, atol=1e-5)
    assert torch.allclose(gx0, gx1, atol=1e-4)
    assert set(gp0) == set(gp1)
    for n in gp0:
        assert torch.allclose(gp0[n], gp1[n], rtol=1e-4, atol=1e-4), n
    assert gp0["conv_layers.1.weight"].abs() > 0 and gp0["conv_layers.3.weight"].abs().sum() > 0


def test_causal_tcn_block_never_looks_ahead():
    torch.manual_seed(0)
    blk = TCNBlock(4, 8, 3, dilation=2, norm="cln", causal=True).eval()
    x = torch.randn(1, 4, 30)
    x2 = x.clone()
    x2[..., 20:] += 5.0
    (r1, _s1), (r2, _s2) = blk(x), blk(x2)
    assert r1.shape == (1, 4, 30)
    assert torch.allclose(r1[..., :20], r2[..., :20], atol=1e-6)
    assert not torch.allclose(r1[..., 20:], r2[..., 20:])


def test_gln_equals_groupnorm_and_cln_final_step_equals_gln():
    x = torch.randn(3, 5, 17)
    gln = GlobalLayerNorm(5)
    gn = nn.GroupNorm(1, 5, eps=1e-8)
    assert list(gln.state_dict()) == ["weight", "bias"]
    assert torch.allclose(gln(x), gn(x), atol=1e-6)
    cln = CumulativeLayerNorm(5)
    assert torch.allclose(cln(x)[..., -1], gn(x)[..., -1], atol=1e-4)
    # step t uses only steps <= t
    assert torch.allclose(cln(x[..., :7]), cln(x)[..., :7], atol=1e-5)


def test_spectral_conv_equals_explicit_dft_and_gradcheck():
    torch.manual_seed(0)
    t, modes = 12, 4
    m = SpectralConv1d(3, 2, n_modes=modes).double()
    x = torch.randn(2, 3, t, dtype=torch.float64)
    k = torch.arange(t, dtype=torch.float64)
    f = torch.arange(t // 2 + 1, dtype=torch.float64)
    dft = torch.exp(-2j * torch.pi * f[:, None] * k[None] / t) / t ** 0.5      # rfft, ortho
    xf = torch.einsum("bct,ft->bcf", x.to(torch.complex128), dft)
    w = torch.view_as_complex(m.weight.detach().contiguous())[:, :, :modes]
    yf = torch.zeros(2, 2, t // 2 + 1, dtype=torch.complex128)
    yf[..., :modes] = torch.einsum("bif,iof->bof", xf[..., :modes], w)
    # inverse of a half spectrum: DC and Nyquist once, other bins twice (real part)
    coef = torch.full((t // 2 + 1,), 2.0, dtype=torch.float64)
    coef[0] = 1
    coef[-1] = 1
    idft = torch.exp(2j * torch.pi * f[:, None] * k[None] / t) / t ** 0.5
    ref = torch.einsum("bof,ft->bot", yf * coef, idft).real
    assert torch.allclose(m(x), ref, atol=1e-10)
    assert torch.autograd.gradcheck(m, (x.clone().requires_grad_(True),))


def test_fourier_block_shape():
    assert FourierBlock1d(6, n_modes=5)(torch.randn(2, 6, 20)).shape == (2, 6, 20)


def test_stu_residual_block_names_and_shapes():
    b = STUResidualBlock(4, 8, stride=(1, 2, 2), use_1x1conv=True)
    assert sorted(b.state_dict()) == sorted(f"{m}.{p}" for m in ("conv1", "norm1", "conv2", "norm2", "conv3")
                                            for p in ("weight", "bias"))
    assert b(torch.randn(1, 4, 6, 8, 8)).shape == (1, 8, 6, 4, 4)
    assert "conv3.weight" not in STUResidualBlock(4, 4).state_dict()


def test_dilated_residual_layer_causal_and_mask():
    layer = DilatedResidualLayer(4, 3, dilation=4, causal=True).eval()
    x = torch.randn(1, 4, 25)
    x2 = x.clone()
    x2[..., 15] = 9
    assert torch.allclose(layer(x)[..., :15], layer(x2)[..., :15])
    mask = torch.ones(1, 1, 25)
    mask[..., 20:] = 0
    assert torch.all(layer(x, mask)[..., 20:] == 0)


def test_conv_norm_act_and_errors():
    assert ConvNormAct(2, 3, 8, 3, stride=2)(torch.randn(1, 3, 9, 9)).shape == (1, 8, 5, 5)
    assert ConvNormAct(1, 3, 4, 5, causal=True, norm=None)(torch.randn(1, 3, 9)).shape == (1, 4, 9)
    with pytest.raises(ValueError, match="unknown norm"):
        get_norm("nope", 2, 4)
    with pytest.raises(ValueError):
        ConvNormAct(4, 3, 4)
