"""medseg library: sliding window vs MONAI, preprocessing, STU-Net layout and import, reversible U-Net."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from medseg.importers import import_stunet, read_plans
from medseg.models import count_parameters
from medseg.preprocess import ct_statistics, normalise, resample_slabs
from medseg.sliding_window import gaussian_importance_map, sliding_window, window_starts
from shared_backbones.errors import ModelFileError
from shared_backbones.registry import create_model


def _net(k: int = 3, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return create_model("unet3d", in_channels=1, num_classes=k, base_channels=2, strides=[[2, 2, 2]]).eval()


# ------------------------------------------------------------------------------------------------ sliding window
@pytest.mark.parametrize(
    "shape,window,overlap,batch",
    [
        ((1, 1, 20, 24, 18), (8, 16, 16), 0.5, 1),
        ((2, 1, 13, 9, 30), (8, 8, 8), 0.25, 3),
        ((1, 1, 6, 5, 4), (8, 8, 8), 0.5, 2),  # smaller than the window: padded
        ((1, 1, 17, 16, 33), (16, 16, 16), 0.6, 4),
    ],
)
def test_gaussian_blending_matches_monai(shape, window, overlap, batch):
    from monai.inferers import sliding_window_inference

    net = _net()
    x = torch.randn(shape)
    with torch.inference_mode():
        ours = sliding_window(net, x, window, overlap=overlap, batch_size=batch)
        ref = sliding_window_inference(
            x,
            window,
            batch,
            net,
            overlap=overlap,
            mode="gaussian",
            sigma_scale=0.125,
            padding_mode="constant",
            cval=0.0,
        )
    assert ours.shape == ref.shape == (shape[0], 3, *shape[2:])
    assert (ours - ref).abs().max().item() < 1e-5


def test_window_covering_the_volume_equals_one_forward_pass():
    net = _net()
    x = torch.randn(1, 1, 16, 16, 8)
    with torch.inference_mode():
        assert torch.allclose(sliding_window(net, x, (16, 16, 8)), net(x), atol=1e-6)
        const = sliding_window(net, x, (8, 8, 8), overlap=0.5, mode="constant")
    assert const.shape == (1, 3, 16, 16, 8)


def test_tta_averages_the_eight_mirrored_passes_and_cpu_stitching():
    net = _net()
    x = torch.randn(1, 1, 12, 10, 8)
    with torch.inference_mode():
        tta = sliding_window(net, x, (16, 16, 8), tta=True, stitch_device="cpu", batch_size=2)
        manual = []
        for axes in [(), (2,), (3,), (4,), (2, 3), (2, 4), (3, 4), (2, 3, 4)]:
            xi = x.flip(axes) if axes else x
            y = sliding_window(net, xi, (16, 16, 8))
            manual.append(y.flip(axes) if axes else y)
    assert torch.allclose(tta, torch.stack(manual).mean(0), atol=1e-5)


def test_window_starts_and_importance_map():
    assert window_starts(10, 10, 0.5) == [0]
    assert window_starts(20, 8, 0.5) == [0, 4, 8, 12]
    assert window_starts(21, 8, 0.5) == [0, 4, 8, 12, 13]
    g = gaussian_importance_map((9, 9, 9))
    assert g.shape == (9, 9, 9) and g.max() == pytest.approx(1.0) and g[4, 4, 4] == g.max()
    assert g.min() > 0 and torch.equal(g, g.flip(0))


# --------------------------------------------------------------------------------------------------- preprocess
def test_normalisation_schemes():
    img = torch.tensor([[[[0.0, 10.0], [20.0, 1000.0]]]])  # [1, 1, 2, 2]
    z = normalise(img, [{"scheme": "zscore"}])
    assert z.mean().item() == pytest.approx(0, abs=1e-6) and z.std(unbiased=False).item() == pytest.approx(1, abs=1e-5)
    ct = normalise(img, [{"scheme": "ct", "lower": 5, "upper": 100, "mean": 50, "std": 10}])
    assert ct.flatten().tolist() == pytest.approx([-4.5, -4.0, -3.0, 5.0])
    s = ct_statistics(np.arange(1001, dtype=float))
    assert (s["lower"], s["upper"]) == pytest.approx((5.0, 995.0)) and s["mean"] == pytest.approx(500.0)


@pytest.mark.parametrize("src,dst", [((5, 7, 6), (11, 9, 13)), ((9, 8, 8), (4, 8, 8)), ((6, 6, 6), (6, 10, 3))])
def test_slab_resampling_equals_trilinear(src, dst):
    scores = torch.randn(3, *src)
    ref = F.interpolate(scores[None], size=dst, mode="trilinear", align_corners=False)[0]
    slabs = torch.cat(resample_slabs(scores, dst, lambda p: p, slab=4), 1)
    assert slabs.shape == ref.shape and torch.allclose(slabs, ref, atol=1e-5)
    labels = torch.cat(resample_slabs(scores, dst, lambda p: p.argmax(0), slab=3), 0)
    assert (labels == ref.argmax(0)).float().mean() > 0.999


# ------------------------------------------------------------------------------------------------------ STU-Net
@pytest.mark.parametrize(
    "name,millions", [("stunet-s", 14.60), ("stunet-b", 58.26), ("stunet-l", 440.30), ("stunet-h", 1457.33)]
)
def test_stunet_parameter_counts(name, millions):
    with torch.device("meta"):
        net = create_model(name, in_channels=1, num_classes=105)
    assert round(count_parameters(net) / 1e6, 2) == millions


def test_stunet_key_names_shapes_and_output():
    with torch.device("meta"):
        sd = create_model("stunet-b", in_channels=1, num_classes=105).state_dict()
    assert tuple(sd["conv_blocks_context.0.0.conv1.weight"].shape) == (32, 1, 3, 3, 3)
    assert tuple(sd["conv_blocks_context.0.0.conv3.weight"].shape) == (32, 1, 1, 1, 1)
    assert tuple(sd["conv_blocks_context.5.0.conv1.weight"].shape) == (512, 512, 3, 3, 3)
    assert tuple(sd["upsample_layers.0.conv.weight"].shape) == (512, 512, 1, 1, 1)
    assert tuple(sd["conv_blocks_localization.0.0.conv1.weight"].shape) == (512, 1024, 3, 3, 3)
    assert tuple(sd["conv_blocks_localization.4.0.norm2.weight"].shape) == (32,)
    assert tuple(sd["seg_outputs.4.weight"].shape) == (105, 32, 1, 1, 1)
    prefixes = {k.split(".")[0] for k in sd}
    assert prefixes == {"conv_blocks_context", "upsample_layers", "conv_blocks_localization", "seg_outputs"}
    net = create_model("stunet-s", in_channels=2, num_classes=3, dims=[4, 8, 8, 8, 8, 8])
    x = torch.randn(1, 2, 32, 32, 64)
    net.train()
    outs = net(x)
    assert [tuple(o.shape[2:]) for o in outs] == [(32, 32, 64), (16, 16, 32), (8, 8, 16), (4, 4, 8), (2, 2, 4)]
    net.eval()
    assert net(x).shape == (1, 3, 32, 32, 64)


def _official_files(tmp_path, sd, plans):
    """An nnU-Net v1 style pair: <name>.model (dict with state_dict, DataParallel prefix) + <name>.model.pkl."""
    model = tmp_path / "base_ep4k.model"
    torch.save(
        {
            "epoch": 4000,
            "state_dict": {f"module.{k}": v for k, v in sd.items()},
            "optimizer_state_dict": None,
            "amp_grad_scaler": None,
        },
        model,
    )
    with open(str(model) + ".pkl", "wb") as fh:
        pickle.dump(plans, fh)
    return model


def _plans(in_ch=1):
    return {
        "plans_per_stage": {
            0: {
                "current_spacing": np.array([1.5, 1.5, 1.5]),
                "patch_size": np.array([16, 16, 32]),
                "pool_op_kernel_sizes": [[2, 2, 2]] * 4 + [[1, 1, 2]],
            }
        },
        "normalization_schemes": {c: "nonCT" for c in range(in_ch)},
        "transpose_forward": [0, 1, 2],
        "dataset_properties": {"intensityproperties": None},
        "num_classes": 2,
    }


class _OfficialResBlock(torch.nn.Module):
    """STU-Net's BasicResBlock as REFERENCE.md describes it (written here, independent of medseg.models)."""

    def __init__(self, cin: int, cout: int, stride=1, use_1x1conv: bool = False) -> None:
        super().__init__()
        self.conv1 = torch.nn.Conv3d(cin, cout, 3, stride=stride, padding=1)
        self.norm1 = torch.nn.InstanceNorm3d(cout, affine=True)
        self.act1 = torch.nn.LeakyReLU(0.01)
        self.conv2 = torch.nn.Conv3d(cout, cout, 3, padding=1)
        self.norm2 = torch.nn.InstanceNorm3d(cout, affine=True)
        self.act2 = torch.nn.LeakyReLU(0.01)
        self.conv3 = torch.nn.Conv3d(cin, cout, 1, stride=stride) if use_1x1conv else None

    def forward(self, x):
        y = self.norm2(self.conv2(self.act1(self.norm1(self.conv1(x)))))
        return self.act2(y + (x if self.conv3 is None else self.conv3(x)))


class _OfficialUpsample(torch.nn.Module):
    def __init__(self, cin: int, cout: int, scale) -> None:
        super().__init__()
        self.conv = torch.nn.Conv3d(cin, cout, 1)
        self.scale = [float(s) for s in scale]

    def forward(self, x):
        return self.conv(F.interpolate(x, scale_factor=self.scale, mode="nearest"))


class _OfficialSTUNet(torch.nn.Module):
    """The official STU-Net layout (module names give the checkpoint's state_dict keys); returns the full-resolution
    output, as the official network does without deep supervision."""

    def __init__(self, cin: int, ncls: int, depth, dims, pool) -> None:
        super().__init__()
        block = _OfficialResBlock
        self.conv_blocks_context = torch.nn.ModuleList(
            [torch.nn.Sequential(block(cin, dims[0], use_1x1conv=True), *[block(dims[0], dims[0])
                                                                          for _ in range(depth[0] - 1)])]
            + [torch.nn.Sequential(block(dims[d - 1], dims[d], stride=pool[d - 1], use_1x1conv=True),
                                   *[block(dims[d], dims[d]) for _ in range(depth[d] - 1)]) for d in range(1, 6)])
        self.upsample_layers = torch.nn.ModuleList(_OfficialUpsample(dims[-1 - u], dims[-2 - u], pool[-1 - u])
                                                   for u in range(5))
        self.conv_blocks_localization = torch.nn.ModuleList(
            torch.nn.Sequential(block(2 * dims[-2 - u], dims[-2 - u], use_1x1conv=True),
                                *[block(dims[-2 - u], dims[-2 - u]) for _ in range(depth[-2 - u] - 1)])
            for u in range(5))
        self.seg_outputs = torch.nn.ModuleList(torch.nn.Conv3d(dims[-2 - u], ncls, 1) for u in range(5))

    def forward(self, x):
        skips = []
        for stage in self.conv_blocks_context[:-1]:
            x = stage(x)
            skips.append(x)
        x = self.conv_blocks_context[-1](x)
        outs = []
        for u in range(5):
            x = self.conv_blocks_localization[u](torch.cat((self.upsample_layers[u](x), skips[-(u + 1)]), dim=1))
            outs.append(self.seg_outputs[u](x))
        return outs[-1]


def test_import_official_stunet_checkpoint(tmp_path, capsys):
    """A checkpoint in the official layout (built by the reference network above, not by our model code) imports
    as stunet-s with the plans' preprocessing, and the imported network computes what the official one does."""
    pool = [[2, 2, 2]] * 4 + [[1, 1, 2]]
    torch.manual_seed(0)
    official = _OfficialSTUNet(1, 3, [1] * 6, [16, 32, 64, 128, 256, 256], pool).eval()
    with torch.no_grad():  # norms away from their identity initialisation, so a mix-up of norm1/norm2 shows
        for name, p in official.named_parameters():
            if ".norm" in name:
                p.copy_(torch.rand_like(p) + 0.5 if name.endswith("weight") else torch.randn_like(p) * 0.1)
    sd = official.state_dict()
    assert not any("running" in k for k in sd) and "conv_blocks_context.1.0.conv3.weight" in sd
    assert "conv_blocks_context.0.0.conv3.weight" in sd and "upsample_layers.4.conv.weight" in sd
    model = _official_files(tmp_path, sd, _plans())
    from medseg.volume_cli import main

    out = tmp_path / "stunet_s.pt"
    assert main(["import-stunet", str(model), "-o", str(out)]) == 0
    assert "stunet-s" in capsys.readouterr().err
    from shared_backbones.checkpoint import load_model_file

    mf = load_model_file(out)
    assert mf.arch == "stunet-s" and mf.preprocessing["patch_size"] == [16, 16, 32]
    assert mf.arch_kwargs["num_classes"] == 3 and mf.arch_kwargs["pool_op_kernel_sizes"] == pool
    assert mf.preprocessing["spacing"] == [1.5, 1.5, 1.5] and mf.preprocessing["normalization"] == [
        {"scheme": "zscore"}
    ]
    assert mf.state_dict.keys() == sd.keys()
    net = create_model(mf.arch, **mf.arch_kwargs)
    net.load_state_dict(mf.state_dict, strict=True)
    x = torch.randn(1, 1, 32, 32, 64)
    with torch.inference_mode():
        ours, ref = net.eval()(x), official(x)
    assert ours.shape == ref.shape == (1, 3, 32, 32, 64)
    torch.testing.assert_close(ours, ref, rtol=1e-4, atol=1e-5)


def test_import_refuses_code_in_plans_and_foreign_weights(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    sd = create_model("stunet-s", in_channels=1, num_classes=2).state_dict()
    model = _official_files(tmp_path, sd, {"plans_per_stage": {}, "x": Evil()})
    with pytest.raises(ModelFileError, match="refused: plans pickle references builtins.print"):
        read_plans(str(model) + ".pkl")
    plans_ok = _official_files(tmp_path, {"conv_blocks_context.0.0.conv1.weight": torch.zeros(1)}, _plans())
    with pytest.raises(ModelFileError, match="not an STU-Net checkpoint"):
        import_stunet(plans_ok)
    bad = dict(sd)
    bad["seg_outputs.0.weight"] = torch.zeros(2, 7, 1, 1, 1)
    with pytest.raises(ModelFileError, match="seg_outputs.0.weight has shape"):
        import_stunet(_official_files(tmp_path, bad, _plans()))


# ---------------------------------------------------------------------------------------------- reversible U-Net
def test_revunet_gradients_equal_plain_twin():
    torch.manual_seed(0)
    net = create_model("revunet3d", in_channels=1, num_classes=3, channels=[4, 8, 8], depth=2).train()
    x = torch.randn(2, 1, 8, 8, 8)
    y = torch.randint(0, 3, (2, 8, 8, 8))
    grads = []
    for rev in (True, False):
        net.reversible = rev
        net.zero_grad(set_to_none=True)
        outs = net(x)
        assert (
            isinstance(outs, list)
            and outs[0].shape == (2, 3, 8, 8, 8)
            and outs[1].shape == (2, 3, 4, 4, 4)
            and len(outs) == 2
        )
        F.cross_entropy(outs[0], y).backward()
        grads.append({n: p.grad.clone() for n, p in net.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys() and len(grads[0]) == len(list(net.parameters())) - 2  # coarse head unused
    for n in grads[0]:
        assert torch.allclose(grads[0][n], grads[1][n], rtol=1e-4, atol=1e-6), n
    plain = create_model("revunet3d-plain", in_channels=1, num_classes=3, channels=[4, 8, 8], depth=2)
    assert not plain.reversible and plain.state_dict().keys() == net.state_dict().keys()


def test_class_labels_equal_argmax_with_ties():
    from medseg.preprocess import class_labels

    for k in (2, 4, 7):
        p = torch.rand(k, 5, 6, 7)
        p[1] = p[0]  # ties resolve to the first maximum, like argmax
        assert torch.equal(class_labels(p).long(), p.argmax(0))
    assert class_labels(torch.rand(3, 4, 4), torch.uint8).dtype == torch.uint8
