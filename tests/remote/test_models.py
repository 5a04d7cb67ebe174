"""Fourier blocks against an explicit DFT-matrix reference (values and gradients), capsules, margin loss, model
sizes, and tiled prediction equal to whole-raster prediction (FFDNN; U-Net with a halo)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import rasterio
import torch
from remote_testutil import unet_model_file

from remote.discovery import open_series
from remote.models import (
    FFDNN,
    CNN1d,
    DynamicRouting,
    PhotochemicalFilter,
    class_probabilities,
    date_attribution,
    frequency_attribution,
    margin_loss,
    squash,
)
from remote.predict import PredictOutputs, RemoteModel, predict_series
from shared_backbones.blocks import FourierBlock1d, SpectralConv1d
from shared_backbones.registry import create_model, list_models


def dft_spectral(x: torch.Tensor, weight: torch.Tensor, modes: int, mixing: str) -> torch.Tensor:
    """Spectral convolution written with explicit DFT matrices (orthonormal rfft / irfft)."""
    t = x.shape[-1]
    k = torch.arange(t, dtype=torch.float64)
    f = torch.arange(t // 2 + 1, dtype=torch.float64)
    fwd = torch.exp(-2j * math.pi * f[:, None] * k[None] / t) / math.sqrt(t)
    xf = torch.einsum("bct,ft->bcf", x.to(torch.complex128), fwd)
    w = torch.complex(weight[..., 0], weight[..., 1])
    yf = torch.zeros(x.shape[0], x.shape[1] if mixing == "depthwise" else w.shape[1], t // 2 + 1,
                     dtype=torch.complex128)
    m = min(modes, t // 2 + 1)
    if mixing == "full":
        yf[..., :m] = torch.einsum("bif,iof->bof", xf[..., :m], w[:, :, :m])
    else:
        yf[..., :m] = xf[..., :m] * w[:, :m]
    coef = torch.full((t // 2 + 1,), 2.0, dtype=torch.float64)
    coef[0] = 1
    if t % 2 == 0:
        coef[-1] = 1
    inv = torch.exp(2j * math.pi * f[:, None] * k[None] / t) / math.sqrt(t)
    return torch.einsum("bof,ft->bot", yf * coef, inv).real


@pytest.mark.parametrize("mixing,t", [("full", 12), ("depthwise", 12), ("depthwise", 9)])
def test_fourier_block_values_and_gradients_match_dft_reference(mixing, t):
    torch.manual_seed(0)
    blk = FourierBlock1d(4, n_modes=3, kernel_size=3, mixing=mixing).double()
    x = torch.randn(2, 4, t, dtype=torch.float64, requires_grad=True)
    x_ref = x.detach().clone().requires_grad_(True)
    w_ref = blk.spectral.weight.detach().clone().requires_grad_(True)

    def reference(inp):
        spec = dft_spectral(inp, w_ref, 3, mixing)
        return inp + blk.act(blk.norm(spec + blk.local(inp)))

    out, ref = blk(x), reference(x_ref)
    assert torch.allclose(out, ref, atol=1e-12)
    g = torch.randn_like(out)
    out.backward(g)
    ref.backward(g)
    assert torch.allclose(x.grad, x_ref.grad, atol=1e-12)
    assert torch.allclose(blk.spectral.weight.grad, w_ref.grad, atol=1e-12)
    assert torch.autograd.gradcheck(blk, (x.detach().clone().requires_grad_(True),), fast_mode=True)


def test_spectral_conv_keeps_length_and_zeroes_high_modes():
    torch.manual_seed(0)
    conv = SpectralConv1d(2, n_modes=2, mixing="depthwise").double()
    x = torch.cos(2 * math.pi * 5 * torch.arange(20, dtype=torch.float64) / 20).expand(1, 2, 20)
    assert conv(x).shape == (1, 2, 20) and conv(x).abs().max() < 1e-12    # mode 5 is above n_modes: filtered out
    with pytest.raises(ValueError):
        SpectralConv1d(2, 3, mixing="depthwise")


def test_capsules_routing_and_margin_loss():
    s = torch.randn(5, 7, 8)
    v = squash(s)
    n = s.norm(dim=-1)
    assert torch.allclose(v.norm(dim=-1), n ** 2 / (1 + n ** 2), atol=1e-5)
    assert torch.allclose(torch.nn.functional.cosine_similarity(v, s, dim=-1), torch.ones(5, 7), atol=1e-5)
    r = DynamicRouting(6, 4, 3, 8, iterations=3)
    out, c = r(torch.randn(2, 6, 4))
    assert out.shape == (2, 3, 8) and torch.allclose(c.sum(-1), torch.ones(2, 6)) and (out.norm(dim=-1) < 1).all()
    lengths = torch.tensor([[0.95, 0.05, 0.5]])
    # target 0: max(0, .9 - .95)^2 = 0; others: 0.5 * (0^2 + (0.5 - 0.1)^2) = 0.08
    assert margin_loss(lengths, torch.tensor([0])).item() == pytest.approx(0.08)
    assert margin_loss(lengths, torch.tensor([2])).item() == pytest.approx(0.4 ** 2 + 0.5 * 0.85 ** 2)
    p = class_probabilities(torch.tensor([[0.2, 0.6, 0.2]]), "capsule")
    assert torch.allclose(p, torch.tensor([[0.2, 0.6, 0.2]]))


def reference_routing(weight: torch.Tensor, u: torch.Tensor, iterations: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Textbook routing by agreement (Sabour et al. 2017): explicit predictions u_hat, softmax couplings."""
    u_hat = torch.einsum("ijed,nid->nije", weight, u)                 # [N, n_in, n_out, d_out]
    b = torch.zeros(u_hat.shape[:3], dtype=u.dtype)
    for r in range(iterations):
        c = torch.softmax(b, dim=2)
        s = (c[..., None] * u_hat).sum(1)
        n2 = (s * s).sum(-1, keepdim=True)
        v = n2 / (1 + n2) * s / torch.sqrt(n2 + 1e-8)
        if r < iterations - 1:
            b = b + (u_hat * v[:, None]).sum(-1)
    return v, c


def reference_ffdnn(m: FFDNN, x: torch.Tensor) -> torch.Tensor:
    """FFDNN written out step by step from its modules' parameters: DFT-matrix spectral convolution, plain convs,
    adaptive average pooling, textbook routing (no fused or flattened matrices)."""
    f = m.filter
    traits = f.traits(x)
    bn = f.norm
    h = (traits - bn.running_mean[:, None]) / torch.sqrt(bn.running_var[:, None] + bn.eps) * bn.weight[:, None] \
        + bn.bias[:, None]
    h = torch.nn.functional.conv1d(h, m.stem.weight, m.stem.bias)
    for blk in m.blocks:
        modes = blk.spectral.max_modes
        z = dft_spectral(h.double(), blk.spectral.weight.double(), modes, blk.spectral.mixing).float()
        z = z + torch.nn.functional.conv1d(h, blk.local.weight, blk.local.bias, padding=blk.local.padding)
        z = torch.nn.functional.group_norm(z, 1, blk.norm.weight, blk.norm.bias, blk.norm.eps)
        h = h + torch.nn.functional.gelu(z)
    p = torch.nn.functional.conv1d(h, m.primary.weight, m.primary.bias, padding=1)
    p = torch.nn.functional.adaptive_avg_pool1d(p, m.primary_positions)            # [N, types * dim, positions]
    n = p.shape[0]
    u = p.view(n, m.primary_types, m.primary_dim, -1).permute(0, 1, 3, 2).reshape(n, -1, m.primary_dim)
    n2 = (u * u).sum(-1, keepdim=True)
    u = n2 / (1 + n2) * u / torch.sqrt(n2 + 1e-8)
    v, _ = reference_routing(m.routing.weight, u, m.routing.iterations)
    return v.norm(dim=-1)


def _random_ffdnn(**kw) -> FFDNN:
    torch.manual_seed(1)
    m = FFDNN(**kw)
    with torch.no_grad():
        for p in m.parameters():
            p.add_(0.3 * torch.randn_like(p))
        m.filter.norm.running_mean.uniform_(-0.5, 0.5)
        m.filter.norm.running_var.uniform_(0.3, 2.0)
    return m.eval()


@pytest.mark.parametrize("t,n,kw", [(6, 300, {}), (6, 1103, {}), (12, 300, {"mixing": "full", "kernel_size": 3}),
                                   (24, 300, {})])
def test_ffdnn_fast_forward_equals_reference_computation(t, n, kw):
    """The fused path (n 1103: two full chunks and an odd remainder) equals the step-by-step reference; so does the
    plain path of long series (t 24: dates x channels above FLAT_MAX_WIDTH)."""
    m = _random_ffdnn(**kw)
    x = torch.rand(n, t, 10) * 0.5
    x[:5, 2] = float("nan")                                        # NaN inputs are zeroed by the filter in both
    ref = reference_ffdnn(m, x)
    with torch.inference_mode():
        fast = m(x)
    assert fast.shape == (n, 3)
    assert torch.allclose(fast, ref, atol=2e-5, rtol=1e-4), (fast - ref).abs().max()
    assert (fast.argmax(1) == ref.argmax(1)).float().mean() > 0.99
    if t * m.stem.out_channels <= m.FLAT_MAX_WIDTH:                # the flattened path ran (and was cached)
        assert m._flat_cache
    # with gradients on (explanations) the matrices are rebuilt from the weights, values and gradients agree
    xg = x[:20].clone().requires_grad_(True)
    xr = x[:20].clone().requires_grad_(True)
    out, ref2 = m(xg), reference_ffdnn(m, xr)
    assert torch.allclose(out, ref2, atol=2e-5, rtol=1e-4)
    out[:, 1].sum().backward()
    ref2[:, 1].sum().backward()
    assert torch.allclose(xg.grad, xr.grad, atol=1e-4, rtol=1e-3)
    # a changed weight invalidates the cached matrices
    with torch.no_grad():
        m.blocks[0].local.weight.mul_(2.0)
        assert torch.allclose(m(x), reference_ffdnn(m, x), atol=2e-5, rtol=1e-4)


def test_routing_equals_textbook_routing():
    torch.manual_seed(0)
    r = DynamicRouting(32, 4, 3, 8, iterations=3)
    u = squash(torch.randn(50, 32, 4))
    v, c = r(u)
    v_ref, c_ref = reference_routing(r.weight, u, 3)
    assert torch.allclose(v, v_ref, atol=1e-6) and torch.allclose(c, c_ref, atol=1e-6)
    g = torch.randn_like(v)
    (gw,) = torch.autograd.grad((v * g).sum(), r.weight)
    (gw_ref,) = torch.autograd.grad((v_ref * g).sum(), r.weight)
    assert torch.allclose(gw, gw_ref, atol=1e-5)


def test_models_registered_shapes_and_sizes():
    assert {"ffdnn", "cnn1d", "unet2d"} <= set(list_models("remote"))
    x = torch.rand(4, 15, 10)
    f, c = create_model("ffdnn").eval(), create_model("cnn1d").eval()
    sf, sc = f(x), c(x)
    assert sf.shape == sc.shape == (4, 3) and ((sf >= 0) & (sf < 1)).all()
    pf = sum(p.numel() for p in f.parameters())
    pc = sum(p.numel() for p in c.parameters())
    assert pf < pc                            # FFDNN: fewer parameters than the same-depth 1-D CNN
    assert isinstance(f, FFDNN) and isinstance(c, CNN1d) and f.output_kind == "capsule"
    assert f(torch.rand(2, 31, 10)).shape == (2, 3)                 # any series length
    with pytest.raises(ValueError, match="expected input"):
        f(torch.rand(2, 15, 4))
    filt = PhotochemicalFilter(["B04", "B08"], ["NDVI"], include_bands=True)
    assert filt.traits(torch.tensor([[[0.1, 0.3]]])).flatten().tolist() == pytest.approx([0.5, 0.1, 0.3])
    attr = date_attribution(f, x)
    assert attr.shape == (4, 15) and torch.isfinite(attr).all()


def _predict(scene, model_file, out, tile, halo=None):
    rm = RemoteModel.from_file(model_file, "cpu", "fp32")
    s = predict_series(open_series([scene.images]), rm, PredictOutputs.beside(out), tile=tile, halo=halo,
                       quiet=True, batch_size=500)
    with rasterio.open(out) as a, rasterio.open(PredictOutputs.beside(out).probabilities) as b:
        return a.read(1), b.read(), s


def test_tiled_prediction_equals_whole_raster_ffdnn(tmp_path, scene, ffdnn_file):
    c1, p1, s1 = _predict(scene, ffdnn_file, tmp_path / "tiled.tif", tile=16)
    c2, p2, s2 = _predict(scene, ffdnn_file, tmp_path / "whole.tif", tile=64)
    assert s1["tiles"] == 16 and s2["tiles"] == 1
    assert np.allclose(p1, p2, atol=1e-6, equal_nan=True) and (c1 == c2).mean() > 0.999


@pytest.fixture(scope="module")
def unet_file(tmp_path_factory, scene):
    return unet_model_file(tmp_path_factory.mktemp("u") / "unet.pt", [d.isoformat() for d in scene.dates], 10)


def test_tiled_prediction_equals_whole_raster_unet_with_halo(tmp_path, scene, unet_file):
    c1, p1, s1 = _predict(scene, unet_file, tmp_path / "tiled.tif", tile=32, halo=32)
    c2, p2, s2 = _predict(scene, unet_file, tmp_path / "whole.tif", tile=64)
    _, p3, _ = _predict(scene, unet_file, tmp_path / "nohalo.tif", tile=32, halo=0)
    assert s1["tiles"] == 4 and s1["halo"] == 32 and s2["tiles"] == 1
    assert np.abs(p1 - p2).max() < 1e-5 and (c1 == c2).all()
    assert np.abs(p3 - p2).max() > 1e-3          # without the halo the tile borders do differ


@pytest.mark.parametrize("arch", ["ffdnn", "cnn1d"])
def test_frequency_attribution_sums_to_the_time_domain_attribution(arch):
    torch.manual_seed(0)
    m = create_model(arch).eval()
    x = torch.rand(6, 13, 10) * 0.4
    fa = frequency_attribution(m, x)
    assert fa.shape == (6, 13 // 2 + 1)
    traits = m.filter(x).detach().requires_grad_(True)
    scores = m.scores_from_traits(traits)
    assert torch.allclose(scores, m(x), atol=1e-6)
    (g,) = torch.autograd.grad(scores.gather(1, scores.argmax(1, keepdim=True)).sum(), traits)
    assert torch.allclose(fa.sum(1), (g * traits).sum((1, 2)), atol=1e-5)    # completeness over the modes
    assert (fa[:, 1:].abs().sum(1) > 0).all()                                   # not only the mean carries weight
    # a target class other than the predicted one gives another attribution
    other = (scores.argmax(1) + 1) % 3
    assert not torch.allclose(frequency_attribution(m, x, other), fa)


def test_pipelined_prediction_threads_and_errors(tmp_path, scene, ffdnn_file, monkeypatch):
    """The reader/writer threads: same result as a plain run, torch threads restored, an error in either thread
    reaches the caller with nothing left behind, and the thread default honours the environment."""
    import threading

    import remote.predict as rp

    rm = RemoteModel.from_file(ffdnn_file, "cpu", "fp32")
    before_threads = torch.get_num_threads()
    out = PredictOutputs.beside(tmp_path / "a.tif")
    s = predict_series(open_series([scene.images]), rm, out, tile=16, quiet=True, threads=2)
    assert s["threads"] == 2 and s["tiles"] == 16
    assert torch.get_num_threads() == before_threads
    assert not [t.name for t in threading.enumerate() if t.name.startswith("remote-predict")]
    # the tiles arrive in order: a single whole-raster tile gives the same map
    c1, p1, _ = _predict(scene, ffdnn_file, tmp_path / "whole.tif", tile=64)
    with rasterio.open(out.class_map) as a, rasterio.open(out.probabilities) as b:
        assert (a.read(1) == c1).all() and np.allclose(b.read(), p1, atol=1e-6, equal_nan=True)

    real_fill = rp.filled_window
    calls = {"n": 0}

    def failing_fill(*a, **k):
        calls["n"] += 1
        if calls["n"] == 5:
            raise rp.InputError("unreadable raster (truncated)", "B05.tif")
        return real_fill(*a, **k)

    monkeypatch.setattr(rp, "filled_window", failing_fill)
    bad = PredictOutputs.beside(tmp_path / "bad.tif")
    with pytest.raises(rp.InputError, match="truncated"):
        predict_series(open_series([scene.images]), rm, bad, tile=16, quiet=True)
    monkeypatch.setattr(rp, "filled_window", real_fill)
    assert not any(p.exists() for p in bad.paths()) and list(tmp_path.glob("bad*")) == []

    def failing_write(self, *a):
        raise OSError("disk full")

    monkeypatch.setattr(rp._Outputs, "write_tile", failing_write)
    with pytest.raises(OSError, match="disk full"):
        predict_series(open_series([scene.images]), rm, bad, tile=16, quiet=True)
    assert list(tmp_path.glob("bad*")) == []
    assert not [t.name for t in threading.enumerate() if t.name.startswith("remote-predict")]

    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert rp.default_threads() == 3
    monkeypatch.delenv("OMP_NUM_THREADS")
    monkeypatch.delenv("CONVSUITE_THREADS", raising=False)
    monkeypatch.setattr(rp.os, "sched_getaffinity", lambda pid: {0, 1})
    assert rp.default_threads() == 1            # 2 CPUs: one for the network, one for the reader
    monkeypatch.setattr(rp.os, "sched_getaffinity", lambda pid: set(range(8)))
    assert rp.default_threads() == 5 and rp.default_readers() == 2     # 8 CPUs: 2 readers, the writer, 5 threads


@pytest.mark.parametrize("t,n,kw", [(6, 1, {}), (6, 1037, {}), (12, 513, {}), (7, 600, {"include_bands": False}),
                                    (12, 300, {"mixing": "full"}), (6, 300, {"kernel_size": 3}), (24, 50, {})])
def test_ffdnn_fast_paths_equal_plain_module_forward(t, n, kw):
    """Samples-last path (depthwise, pointwise local branch), time-major path (full mixing or k-tap local branch)
    and the plain path (dates x channels above FLAT_MAX_WIDTH) all equal the modules' own forward within 1e-5,
    for odd sample counts across several chunks."""
    m = _random_ffdnn(**kw)
    x = torch.rand(n, t, 10) * 0.5
    x[:1, 1, 3] = float("nan")
    with torch.inference_mode():
        plain = m._route(m.features(x))[0].norm(dim=-1)                  # filter, stem, blocks, conv, pooling
        fast = m(x)
        caps = m.capsules(x)
        from_traits = m.scores_from_traits(m.filter(x))
    assert fast.shape == (n, 3)
    assert torch.allclose(fast, plain, atol=1e-5, rtol=0), (fast - plain).abs().max()
    assert torch.allclose(caps.norm(dim=-1), plain, atol=1e-5, rtol=0)
    assert torch.allclose(from_traits, plain, atol=1e-5, rtol=0)
    sl = m._samples_last_ok() and m._flat_ok(t)
    assert sl == (t <= 16 and kw.get("mixing") is None and kw.get("kernel_size") is None)
    assert any(k[0] == "sl" for k in m._flat_cache) == sl
