"""audiosep.streaming: stateful block-by-block separation equals the offline causal forward for any split of the
input (presets and imported Asteroid causal models, run side by side with Asteroid), non-causal models and
non-finite weights / input are refused, reset starts an identical stream, and resampled input equals the offline
resample -> forward -> resample."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torchaudio.functional as AF
from hypothesis import given, settings
from hypothesis import strategies as st

from audiosep.models import ConvTasNet
from audiosep.streaming import StreamingResampler, StreamingSeparator
from shared_backbones.errors import InputError
from shared_backbones.registry import create_model

TOL = 1e-5
TINY = dict(enc_num_feats=16, msk_num_feats=8, msk_num_hidden_feats=12, msk_num_layers=3, msk_num_stacks=2)


def _perturbed(model: torch.nn.Module, seed: int = 0, scale: float = 0.1) -> torch.nn.Module:
    """Random offsets on every weight, so norms' affines, PReLU slopes and biases are not at their defaults."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * scale)
    return model.eval()


def _offline(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.inference_mode():
        return model(x[None, None])[0]


def _stream(sep: StreamingSeparator, x: torch.Tensor, sizes: list[int]) -> torch.Tensor:
    """Feed ``x`` in blocks of ``sizes`` (cycled), then flush; every output is float32 [n_src, m]."""
    outs, i, k = [], 0, 0
    while i < x.shape[0]:
        n = sizes[k % len(sizes)]
        y = sep.process(x[i : i + n])
        assert y.dtype == torch.float32 and y.shape[0] == sep.n_src
        outs.append(y)
        i, k = i + n, k + 1
    outs.append(sep.flush())
    return torch.cat(outs, 1)


@pytest.fixture(scope="module")
def presets() -> dict[str, torch.nn.Module]:
    torch.manual_seed(0)
    return {
        "convtasnet-small": _perturbed(create_model("convtasnet-small", norm="cln", causal=True), 1),
        "convtasnet-causal": _perturbed(create_model("convtasnet-causal"), 2, 0.02),
        "tiny-3src-sigmoid": _perturbed(ConvTasNet(num_sources=3, norm="cln", causal=True, msk_activate="sigmoid",
                                                   enc_kernel_size=6, **TINY), 3),
    }


@settings(max_examples=12, deadline=None)
@given(
    name=st.sampled_from(["convtasnet-small", "tiny-3src-sigmoid"]),
    length=st.integers(0, 700),
    sizes=st.lists(st.integers(0, 70), min_size=1, max_size=8).filter(any),
    max_frames=st.sampled_from([3, 64]),
    seed=st.integers(0, 2**16),
)
def test_random_splits_equal_offline_forward(presets, name, length, sizes, max_frames, seed):
    model = presets[name]
    x = torch.randn(length, generator=torch.Generator().manual_seed(seed)) * 0.3
    sep = StreamingSeparator(model, max_frames=max_frames)
    y = _stream(sep, x, sizes)
    ref = _offline(model, x)
    assert y.shape == ref.shape == (model.num_sources, length)
    assert (y - ref).abs().max().item() <= TOL if length else True


def test_paper_causal_preset_one_hop_and_smaller_blocks(presets):
    """The paper's causal configuration (N=512 L=16 B=128 H=512 P=3 X=8 R=3, cLN): blocks of one hop, of less than
    a hop and of several hops, and output returned as soon as the window that completes it has arrived."""
    model = presets["convtasnet-causal"]
    x = torch.randn(603, generator=torch.Generator().manual_seed(5)) * 0.3
    ref = _offline(model, x)
    sep = StreamingSeparator(model)
    assert (sep.hop, sep.latency_samples, sep.n_src) == (8, 16, 2)
    assert sep.latency_seconds == pytest.approx(0.002)
    # each dilated depthwise convolution keeps its own left context: the last (P-1)*d = 2 * 2^x frames
    assert [ly.ctx for ly in sep.layers] == [2 * 2**x for _ in range(3) for x in range(8)]
    for sizes in ([8], [3, 5, 1, 8, 0, 13, 40, 200]):
        y = _stream(sep, x, sizes)
        assert (y - ref).abs().max().item() <= TOL, sizes
    # torchaudio framing: after n samples, the output is complete up to floor(n / hop) * hop - hop
    got = sep.process(x[:100]).shape[1]
    assert got == 100 // 8 * 8 - 8
    sep.reset()


def _asteroid_file(tmp_path, norm_type: str, seed: int):
    from asteroid.models import ConvTasNet as AsteroidConvTasNet

    torch.manual_seed(seed)
    ast = AsteroidConvTasNet(n_src=2, n_blocks=3, n_repeats=2, bn_chan=8, hid_chan=12, skip_chan=8, n_filters=16,
                             norm_type=norm_type, causal=True, mask_act="relu", sample_rate=8000)
    _perturbed(ast, seed)
    path = tmp_path / f"ast_{norm_type}.bin"
    torch.save(ast.serialize(), path)
    return ast, path


@pytest.mark.parametrize("norm_type", ["cLN", "cgLN"])
def test_imported_asteroid_causal_models_stream_like_asteroid(tmp_path, norm_type):
    from audiosep.importers import import_convtasnet
    from shared_backbones.checkpoint import load_model_file

    ast, path = _asteroid_file(tmp_path, norm_type, seed=7)
    import_convtasnet(path, tmp_path / "ours.pt")
    mf = load_model_file(tmp_path / "ours.pt")
    ours = mf.build().eval()
    sep = StreamingSeparator(ours, model_rate=mf.preprocessing["sample_rate"])
    x = torch.randn(1001, generator=torch.Generator().manual_seed(8)) * 0.3
    with torch.inference_mode():
        ref_asteroid = ast(x[None])[0]
    rng = np.random.default_rng(9)
    y = _stream(sep, x, [int(v) for v in rng.integers(0, 30, 50)])
    assert y.shape == ref_asteroid.shape
    assert (y - _offline(ours, x)).abs().max().item() <= TOL
    assert (y - ref_asteroid).abs().max().item() <= TOL
    # a loaded Separator works as well (its net and its rate)
    from audiosep.separate import Separator

    assert StreamingSeparator(Separator.from_file(tmp_path / "ours.pt", "cpu", "fp32")).model_rate == 8000


@pytest.mark.parametrize(
    "kwargs, words",
    [
        (dict(), "gLN"),  # the default: gLN and centred padding
        (dict(norm="gln", causal=True), "gLN"),
        (dict(norm="cln", causal=False), "not causal"),
        (dict(norm="cln", causal=True, reversible=True), "reversible"),
    ],
)
def test_non_causal_models_are_refused_in_one_line(kwargs, words):
    with pytest.raises(InputError) as err:
        StreamingSeparator(ConvTasNet(**TINY, **kwargs))
    msg = str(err.value)
    assert words in msg and "cannot stream" in msg and "\n" not in msg


def test_reset_and_flush_start_identical_streams(presets):
    model = presets["convtasnet-small"]
    x1 = torch.randn(500, generator=torch.Generator().manual_seed(1))
    x2 = torch.randn(480, generator=torch.Generator().manual_seed(2))
    fresh = _stream(StreamingSeparator(model), x2, [17])
    sep = StreamingSeparator(model)
    sep.process(x1[:333])  # a stream abandoned half-way
    sep.reset()
    assert torch.equal(_stream(sep, x2, [17]), fresh)
    _stream(sep, x1, [5, 50])  # a whole stream, ended by flush
    assert torch.equal(_stream(sep, x2, [17]), fresh)
    assert sep.samples_in == sep.samples_out == 0  # flush resets


@pytest.mark.parametrize("orig, new", [(16000, 8000), (8000, 16000), (44100, 8000), (11025, 8000)])
def test_streaming_resampler_equals_torchaudio_resample(orig, new):
    x = torch.randn(2, 3001, generator=torch.Generator().manual_seed(3))
    ref = AF.resample(x, orig, new)
    rs = StreamingResampler(orig, new, channels=2)
    rng = np.random.default_rng(4)
    outs, i = [], 0
    while i < x.shape[1]:
        n = int(rng.integers(0, 400))
        outs.append(rs.process(x[:, i : i + n].numpy()))
        i += n
    outs.append(rs.flush())
    y = np.concatenate(outs, 1)
    assert y.shape == tuple(ref.shape)
    assert np.abs(y - ref.numpy()).max() <= 1e-6


def test_resampled_input_equals_offline_resample_forward_resample(presets):
    """16 kHz blocks into an 8 kHz model: the streamed output equals torchaudio's resample to 8 kHz, the offline
    forward, and torchaudio's resample back to 16 kHz, cut to the input length (time-aligned: the resamplers'
    delay is in the latency, not in the output)."""
    model = presets["convtasnet-small"]
    sep = StreamingSeparator(model, input_rate=16000)
    assert (sep.input_rate, sep.model_rate, sep.hop) == (16000, 8000, 16)
    # one window at 8 kHz (32 samples at 16 kHz) plus the two resamplers' delays (15 + 2 * 8 samples)
    assert sep.resampler_delay_samples == 31 and sep.latency_samples == 63
    x = torch.randn(3203, generator=torch.Generator().manual_seed(6)) * 0.3
    ref = AF.resample(_offline(model, AF.resample(x, 16000, 8000)), 8000, 16000)[:, : x.shape[0]]
    for sizes in ([16], [1, 7, 33, 0, 64]):
        y = _stream(sep, x, sizes)
        assert y.shape == ref.shape
        assert (y - ref).abs().max().item() <= TOL


@pytest.mark.filterwarnings("error::RuntimeWarning")  # refused in one line, without numpy warnings
def test_non_finite_weights_input_and_bad_blocks_are_refused(presets):
    model = ConvTasNet(norm="cln", causal=True, **TINY)
    with torch.no_grad():
        model.mask_generator.conv_layers[1].conv_layers[0].weight[0, 0, 0] = float("nan")
    with pytest.raises(InputError, match=r"mask_generator\.conv_layers\.1\.conv_layers\.0\.weight holds NaN"):
        StreamingSeparator(model)
    sep = StreamingSeparator(presets["convtasnet-small"])
    sep.process(np.zeros(40, np.float32))
    bad = np.ones(40, np.float32)
    bad[7] = np.inf
    with pytest.raises(InputError, match="input block at sample 40 holds NaN/inf"):
        sep.process(bad)
    with pytest.raises(InputError, match="stream stopped earlier"):  # never a silent result after a failure
        sep.process(np.zeros(40, np.float32))
    sep.reset()
    with pytest.raises(InputError, match="1-D mono"):
        sep.process(np.zeros((2, 40), np.float32))
    assert sep.process(np.zeros((1, 40), np.float64)).shape == (2, 32)  # [1, n] and float64 are accepted
    # output that turns non-finite (huge input overflowing the products) is refused, not returned
    with pytest.raises(InputError, match="output is not finite"):
        sep.process(np.full(400, 3e38, np.float32))
