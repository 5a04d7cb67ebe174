"""The streaming sliding-window engine (medseg.engine): equal to blending the whole volume at once, for any lead
axis, mirror passes and batch size; the slab-wise way back equal to one trilinear resampling; the memory plan."""

from __future__ import annotations

import itertools
from unittest import mock

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from medseg.engine import SlabResampler, Windows, plan_memory, stream_windows
from medseg.nnunet import gaussian_importance, nnunet_steps


def _net(k: int = 5) -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Conv3d(2, k, 3, padding=1)


def _whole(net, image: torch.Tensor, w: Windows) -> torch.Tensor:
    """Reference: every window's weighted (mirror-averaged) scores summed into one whole-volume buffer, divided by
    the summed weights (what nnU-Net's predictor does, without streaming)."""
    spatial = image.shape[1:]
    out = torch.zeros((net.out_channels, *spatial))
    norm = torch.zeros(spatial)
    for st in itertools.product(*w.starts):
        sl = tuple(slice(s, s + p) for s, p in zip(st, w.patch))
        win = image[(slice(None), *sl)][None]
        p = sum(net(win.flip(a) if a else win).flip(a) if a else net(win) for a in w.flips) / len(w.flips)
        out[(slice(None), *sl)] += p[0] * w.weight
        norm[sl] += w.weight
    return out / norm


@pytest.mark.parametrize("lead,flips,batch", [(0, ((),), 1), (1, ((), (2,), (4,), (2, 4)), 3), (2, ((),), 2)])
def test_stream_equals_whole_volume_blending(lead, flips, batch):
    net = _net()
    image = torch.randn(2, 21, 18, 25)
    patch = (8, 10, 12)
    w = Windows(patch, tuple(tuple(nnunet_steps(s, p, 0.5)) for s, p in zip(image.shape[1:], patch)),
                gaussian_importance(patch), flips)
    got: list[tuple[int, torch.Tensor]] = []
    calls = []
    with torch.inference_mode():
        stream_windows(net, image, w, num_outputs=5, lead=lead, batch_size=batch,
                       emit=lambda a, rows: got.append((a, rows.clone())), on_window=calls.append)
        ref = _whole(net, image, w)
    assert sum(calls) == w.count == int(np.prod([len(s) for s in w.starts]))
    firsts = [a for a, _ in got]
    assert firsts == sorted(firsts) and firsts[0] == 0     # in order, every row exactly once
    stream = torch.cat([r for _, r in got], 1).movedim(1, 1 + lead)
    assert stream.shape == ref.shape
    assert (stream - ref).abs().max() < 1e-5
    assert len(got) > 1                                     # it really streamed


def test_float16_accumulators_keep_the_labels():
    net = _net(12)
    image = torch.randn(2, 30, 20, 20)
    patch = (10, 10, 10)
    w = Windows(patch, tuple(tuple(nnunet_steps(s, p, 0.5)) for s, p in zip(image.shape[1:], patch)),
                gaussian_importance(patch))
    outs = {}
    for dt in (torch.float32, torch.float16):
        rows: list[torch.Tensor] = []
        with torch.inference_mode():
            stream_windows(net, image, w, num_outputs=12, acc_dtype=dt, emit=lambda a, r, rows=rows: rows.append(r))
        outs[dt] = torch.cat(rows, 1)
    assert (outs[torch.float32] - outs[torch.float16]).abs().max() < 0.05
    agree = (outs[torch.float32].argmax(0) == outs[torch.float16].argmax(0)).float().mean()
    assert agree > 0.99


@pytest.mark.parametrize("n_in,n_out,plane_in,plane_out", [(13, 29, (7, 9), (11, 5)), (20, 9, (6, 6), (6, 6)),
                                                            (10, 10, (4, 5), (8, 10))])
def test_slab_resampler_equals_trilinear(n_in, n_out, plane_in, plane_out):
    torch.manual_seed(1)
    src = torch.randn(3, n_in, *plane_in)
    ref = F.interpolate(src[None], size=(n_out, *plane_out), mode="trilinear", align_corners=False)[0]
    out = torch.full_like(ref, float("nan"))

    def put(a: int, part: torch.Tensor) -> None:
        assert torch.isnan(out[:, a:a + part.shape[1]]).all()   # each output row once
        out[:, a:a + part.shape[1]] = part

    labels = torch.full(ref.shape[1:], -1, dtype=torch.int64)

    def put_labels(a: int, lab: torch.Tensor) -> None:
        assert (labels[a:a + lab.shape[0]] == -1).all()
        labels[a:a + lab.shape[0]] = lab

    back = SlabResampler(n_in, n_out, plane_out, put, slab=4)
    # labels only: the argmax made a few classes at a time (CLASS_CHUNK 2 here: 3 classes in two chunks)
    back_labels = SlabResampler(n_in, n_out, plane_out, put_labels, labels=True)
    rng = np.random.default_rng(0)
    a = 0
    with mock.patch("medseg.engine.CLASS_CHUNK", 2):
        while a < n_in:                                         # rows arrive in random-sized pieces
            b = min(n_in, a + int(rng.integers(1, 5)))
            back.push(a, src[:, a:b])
            back_labels.push(a, src[:, a:b])
            assert len(back.rows) <= 6                          # only the rows still needed are kept
            a = b
    assert back.done() and back_labels.done()
    assert (out - ref).abs().max() < 1e-5
    assert torch.equal(labels, out.argmax(0))


def test_memory_plan_picks_float16_then_refuses():
    common = dict(classes=8, network_shape=(533, 273, 273), patch=(128, 112, 112), lead=0, channels=1,
                  output_voxels=512 * 512 * 800, probabilities=False)
    roomy = plan_memory(**common, available=64 << 30)
    assert roomy.acc_dtype == torch.float32
    assert roomy.parts["open rows"] == 8 * 128 * 273 * 273 * 4
    tight = plan_memory(**common, available=roomy.peak_bytes - 1)
    assert tight.acc_dtype == torch.float16 and tight.peak_bytes < roomy.peak_bytes
    with pytest.raises(MemoryError, match=r"needs about .* GiB .* only 0\.5 GiB are available"):
        plan_memory(**common, available=1 << 29)
    # the open rows do not grow with the number of slices; probabilities (only when asked) do
    longer = plan_memory(**{**common, "network_shape": (1066, 273, 273), "output_voxels": 512 * 512 * 1600},
                         available=64 << 30)
    assert longer.parts["open rows"] == roomy.parts["open rows"]
    assert plan_memory(**{**common, "probabilities": True}, available=1 << 40).parts["probabilities"] > 0
    # TotalSegmentator-sized heads: float16 open rows by default (float32 would be 4.2 GiB), float32 on request
    many = {**common, "classes": 118}
    assert plan_memory(**many, available=64 << 30).acc_dtype == torch.float16
    assert plan_memory(**many, available=64 << 30, acc_dtype="float32").acc_dtype == torch.float32


def test_zoom_by_planes_equals_the_volume_zoom(monkeypatch):
    """nnU-Net's order-3 image resampling of a big CT runs as 2-D zooms plane by plane (no float64 copy of the
    volume): the same operator as scipy's 3-D zoom within float rounding, picked by size, clipped alike."""
    from scipy import ndimage

    import medseg.nnunet.preprocessing as pre

    rng = np.random.default_rng(0)
    img = (rng.normal(size=(31, 40, 47)).cumsum(0) * 10).astype(np.float32)
    for shape in [(20, 27, 30), (45, 60, 70), (31, 25, 33)]:
        ref = ndimage.zoom(img, [o / i for o, i in zip(shape, img.shape)], order=3, mode="nearest", grid_mode=True,
                           output=np.float32)
        got = pre._zoom_planes(img, shape, 3)
        assert got.shape == ref.shape and np.abs(got - ref).max() < 1e-6 * np.abs(ref).max()
    calls = []
    monkeypatch.setattr(pre, "ZOOM_PLANES_BYTES", 1000)
    monkeypatch.setattr(pre, "_zoom_planes", lambda *a: (calls.append(1), ndimage.zoom(
        a[0], [o / i for o, i in zip(a[1], a[0].shape)], order=3, mode="nearest", grid_mode=True,
        output=np.float32))[1])
    out = pre._zoom(img, (20, 27, 30), 3)
    assert calls and out.min() >= img.min() and out.max() <= img.max()
