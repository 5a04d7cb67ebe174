"""nnU-Net v2 model folders: agreement with nnU-Net itself, key-compatible networks, safe loading, the CLI."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from medseg.io import read_case
from medseg.nnunet import label_info, read_checkpoint
from medseg.nnunet_arch import NNUNetV2Net
from medseg.predict import load_models, predict_case
from medseg.volume_cli import main

PEER = Path(__file__).with_name("nnunet_peer.py")
TINY = {"n_stages": 3, "features_per_stage": [4, 8, 8], "kernel_sizes": [[1, 3, 3], [3, 3, 3], [3, 3, 3]],
        "strides": [[1, 1, 1], [1, 2, 2], [2, 2, 2]], "n_conv_per_stage_decoder": [1, 1], "conv_bias": True,
        "norm_op": "torch.nn.modules.instancenorm.InstanceNorm3d", "norm_op_kwargs": {"eps": 1e-5, "affine": True},
        "dropout_op": None, "dropout_op_kwargs": None, "nonlin": "torch.nn.LeakyReLU",
        "nonlin_kwargs": {"inplace": True}, "conv_op": "torch.nn.modules.conv.Conv3d"}


@pytest.fixture(scope="module")
def peer(tmp_path_factory):
    """Model folders made by nnU-Net's own planning + trainer (CT-like and MR-like, 3d_fullres and 2d, two folds)
    and nnUNetPredictor's outputs on a test image of each, all from one nnU-Net process."""
    pytest.importorskip("nnunetv2")
    work = tmp_path_factory.mktemp("nnunet")
    proc = subprocess.run([sys.executable, str(PEER), "make", str(work), "--kinds", "ct", "mr", "--folds", "0", "1",
                           "--configs", "3d_fullres", "2d", "--predict"], capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _ours(folder, image, tta):
    models = load_models([folder], "cpu", "fp32")
    case = read_case(image)
    return predict_case(case, models, tta=tta, probabilities=True)


@pytest.mark.parametrize("kind", ["ct", "mr"])
@pytest.mark.parametrize("conf", ["3d_fullres", "2d"])
@pytest.mark.parametrize("variant", ["mirror", "no_mirror", "mirror_fp16"])
def test_equals_nnunet_predictor(peer, kind, conf, variant):
    """Probabilities within 1e-4 of nnUNetPredictor's and >= 99.9% equal labels (two folds ensembled, mirroring on
    and off), nnU-Net run with float32 sliding-window sums. Against nnU-Net as shipped ('mirror_fp16': float16 sums)
    the labels agree as well; its probabilities carry its own float16 rounding."""
    res = peer[kind]
    ref = res["predictions"][conf][variant]
    pred = _ours(res["folders"][conf], res["test_image"], tta=variant != "no_mirror")
    ref_labels = np.asanyarray(nib.load(ref["labels"]).dataobj)
    ref_probs = np.load(ref["probabilities"])["probabilities"]            # (K, z, y, x): SimpleITK's axes
    ours = pred.probabilities.transpose(3, 2, 1, 0)
    assert ours.shape == ref_probs.shape and pred.labels.shape == ref_labels.shape
    diff = float(np.abs(ours - ref_probs).max())
    if variant != "mirror_fp16":  # nnU-Net's float16 sums round logits of ~50 by ~0.1: only labels compare there
        assert diff < 1e-4, diff
    assert (pred.labels == ref_labels).mean() >= 0.999
    assert ref_probs.std() > 1e-2  # the scores vary: the comparison is not between two constants


@pytest.mark.parametrize("kind,conf", [("ct", "3d_fullres"), ("mr", "2d")])
def test_probabilities_streamed_to_the_file_equal_nnunet(peer, kind, conf, tmp_path):
    """``--save-probabilities`` slab by slab (each finished slab put in its place in the file, crop box, transposed
    axes and reorientation undone): the file equals the whole-array result exactly and nnUNetPredictor's export
    within 1e-4."""
    from medseg.predict import probability_writer

    res = peer[kind]
    ref = res["predictions"][conf]["no_mirror"]
    models = load_models([res["folders"][conf]], "cpu", "fp32")
    case = read_case(res["test_image"])
    whole = predict_case(case, models, tta=False, probabilities=True)
    with probability_writer(tmp_path / "p.nii.gz", case, models[0]) as writer:
        streamed = predict_case(case, models, tta=False, probabilities=writer)
    assert streamed.probabilities is None and np.array_equal(streamed.labels, whole.labels)
    data = np.asanyarray(nib.load(tmp_path / "p.nii.gz").dataobj)
    assert np.array_equal(data, whole.probabilities)
    ref_probs = np.load(ref["probabilities"])["probabilities"]
    assert float(np.abs(data.transpose(3, 2, 1, 0) - ref_probs).max()) < 1e-4


def test_model_folder_facts(peer):
    """What the suite reads from nnU-Net's plans: normalisation, transposes, mirroring axes, folds, classes."""
    ct = load_models([peer["ct"]["folders"]["3d_fullres"]], "cpu", "fp32")[0]
    mr = load_models([peer["mr"]["folders"]["3d_fullres"]], "cpu", "fp32")[0]
    assert ct.is_nnunet and ct.classes == ["background", "organ", "lesion"]
    assert ct.pre["normalization"][0]["scheme"] == "CTNormalization" and ct.pre["mirror_axes"] == [0, 1, 2]
    assert mr.pre["normalization"][0] == {"scheme": "ZScoreNormalization", "use_mask": True}
    assert ct.file.arch_kwargs["n_folds"] == 2 and ct.file.extra["folds"] == ["0", "1"]
    two_d = load_models([peer["ct"]["folders"]["2d"]], "cpu", "fp32", folds=[1])[0]
    assert two_d.net.spatial_dims == 2 and len(two_d.pre["patch_size"]) == 2 and two_d.file.extra["folds"] == ["1"]


def test_cli_predict_import_and_errors(peer, tmp_path, capsys):
    folder = peer["ct"]["folders"]["3d_fullres"]
    image = peer["ct"]["test_image"]
    out = tmp_path / "seg.nii.gz"
    assert main(["predict", image, "-m", folder, "-o", str(out), "-f", "0", "1", "--device", "cpu", "--precision",
                 "fp32", "--quiet"]) == 0
    ref = np.asanyarray(nib.load(peer["ct"]["predictions"]["3d_fullres"]["mirror"]["labels"]).dataobj)
    labels = np.asanyarray(nib.load(str(out)).dataobj)
    assert (labels == ref).mean() >= 0.999
    assert np.array_equal(nib.load(str(out)).affine, nib.load(image).affine)
    # one suite file holding both folds predicts the same labels
    model = tmp_path / "ct.pt"
    assert main(["import-nnunet", folder, "-o", str(model)]) == 0
    assert "fold(s) 0 1" in capsys.readouterr().err
    out2 = tmp_path / "seg2.nii.gz"
    assert main(["predict", image, "-m", str(model), "-o", str(out2), "--device", "cpu", "--precision", "fp32",
                 "--quiet"]) == 0
    assert np.array_equal(np.asanyarray(nib.load(str(out2)).dataobj), labels)
    # one-line errors: a missing checkpoint, a missing fold, a folder that is no model folder
    for argv, text in (
        (["--checkpoint", "checkpoint_best.pth"], "no fold_<k>/checkpoint_best.pth"),
        (["-f", "3"], "fold 3 has no checkpoint_final.pth"),
    ):
        assert main(["predict", image, "-m", folder, "-o", str(tmp_path / "x.nii.gz"), "--quiet", *argv]) == 2
        err = capsys.readouterr().err
        assert text in err and len(err.strip().splitlines()) == 1, err
    assert main(["predict", image, "-m", str(tmp_path), "-o", str(tmp_path / "x.nii.gz"), "--quiet"]) == 2
    assert "not an nnU-Net v2 model folder" in capsys.readouterr().err


class _Evil:
    def __reduce__(self):
        return (print, ("pwned",))


def test_tampered_checkpoint_is_refused(peer, tmp_path, capsys):
    src = Path(peer["mr"]["folders"]["3d_fullres"])
    folder = tmp_path / src.name
    shutil.copytree(src, folder)
    ckpt = folder / "fold_0" / "checkpoint_final.pth"
    good = torch.load(ckpt, map_location="cpu", weights_only=False)
    torch.save({**good, "init_args": {**good["init_args"], "hook": _Evil()}}, ckpt)
    with pytest.raises(Exception, match="refused"):
        read_checkpoint(ckpt)
    assert main(["predict", peer["mr"]["test_image"], "-m", str(folder), "-f", "0", "-o",
                 str(tmp_path / "s.nii.gz"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "refused" in err and "pwned" not in err and len(err.strip().splitlines()) == 1
    ckpt.write_bytes(ckpt.read_bytes()[:1000])  # truncated
    assert main(["import-nnunet", str(folder), "-f", "0", "-o", str(tmp_path / "m.pt")]) == 2
    assert "checkpoint" in (err := capsys.readouterr().err) and ("corrupt" in err or "not a PyTorch" in err), err


@pytest.mark.parametrize("cls", ["PlainConvUNet", "ResidualEncoderUNet", "PlainConvUNet2d"])
def test_networks_are_key_compatible_with_dynamic_network_architectures(cls):
    """The suite's rebuild has nnU-Net's exact state_dict keys (duplicates included) and the same outputs."""
    dna = pytest.importorskip("dynamic_network_architectures.architectures.unet")
    kw = dict(TINY)
    dims = 3
    if cls == "PlainConvUNet2d":
        dims, cls = 2, "PlainConvUNet"
        kw.update(conv_op="torch.nn.modules.conv.Conv2d", norm_op="torch.nn.modules.instancenorm.InstanceNorm2d",
                  kernel_sizes=[[3, 3]] * 3, strides=[[1, 1], [2, 2], [2, 2]])
    if cls == "PlainConvUNet":
        kw["n_conv_per_stage"] = [2, 2, 2]
    else:
        kw["n_blocks_per_stage"] = [1, 2, 2]  # the ResEnc presets' shape (M: 1, 3, 4, 6, 6, 6), shortened
    conv = {2: torch.nn.Conv2d, 3: torch.nn.Conv3d}[dims]
    norm = {2: torch.nn.InstanceNorm2d, 3: torch.nn.InstanceNorm3d}[dims]
    torch.manual_seed(0)
    ref = getattr(dna, cls)(2, num_classes=3, deep_supervision=False,
                            **{**kw, "conv_op": conv, "norm_op": norm, "nonlin": torch.nn.LeakyReLU}).eval()
    with torch.no_grad():
        for p in ref.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    ours = NNUNetV2Net(f"dynamic_network_architectures.architectures.unet.{cls}", kw, 2, 3).eval()
    assert list(ours.state_dict()) == list(ref.state_dict())
    ours.load_state_dict(ref.state_dict(), strict=True)
    x = torch.randn(1, 2, *([8, 16, 16] if dims == 3 else [16, 16]))
    with torch.no_grad():                     # the lean inference path: in-place norms, no decoder concatenation
        lean, expected = ours(x), ref(x)
    plain = ours(x)                           # with autograd: the modules as nnU-Net runs them
    assert torch.allclose(lean, expected, atol=1e-5) and torch.allclose(plain.detach(), expected, atol=1e-5)


def test_region_labels_and_refused_operators():
    """Region-based dataset.json: one sigmoid head per region, labels painted in regions_class_order."""
    info = label_info({"labels": {"background": 0, "whole tumor": [1, 2, 3], "tumor core": [2, 3],
                                  "enhancing tumor": 3}, "regions_class_order": [1, 2, 3]})
    assert info["num_outputs"] == 3 and info["regions"] == [[1, 2, 3], [2, 3], [3]]
    assert info["classes"] == ["background", "whole tumor", "tumor core", "enhancing tumor"]
    from medseg.nnunet import _nonlin_and_labels

    # three voxels: inside the whole tumour only; whole + core; all three regions (region scores per row)
    logits = torch.tensor([[5.0, 5.0, 5.0], [-5.0, 5.0, 5.0], [-5.0, -5.0, 5.0]]).view(3, 3, 1, 1)
    probs, labels = _nonlin_and_labels(logits, True, [1, 2, 3], torch.uint8)
    assert labels.flatten().tolist() == [1, 2, 3]
    assert torch.allclose(probs, torch.sigmoid(logits))  # sigmoid per region, not a softmax
    from shared_backbones.errors import ModelFileError

    with pytest.raises(ModelFileError, match="unsupported nonlin"):
        NNUNetV2Net("PlainConvUNet", {**TINY, "n_conv_per_stage": 1, "nonlin": "os.system"}, 1, 2)
