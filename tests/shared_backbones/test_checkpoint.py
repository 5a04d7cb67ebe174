"""The suite's model file: round trip, validation, refusal of pickled objects, clear errors."""

from __future__ import annotations

import os

import pytest
import torch
import torch.nn as nn

from shared_backbones.checkpoint import ModelFile, load_model_file, save_model_file
from shared_backbones.errors import ModelFileError
from shared_backbones.registry import UnknownModelError, create_model, list_models, register_model


@register_model("ckpt-test-mlp", task="unit")
def _mlp(width: int = 4) -> nn.Module:
    return nn.Sequential(nn.Linear(3, width), nn.ReLU(), nn.Linear(width, 2))


def _file(tmp_path):
    torch.manual_seed(0)
    m = _mlp(5)
    mf = ModelFile.from_model(
        m,
        task="unit",
        arch="ckpt-test-mlp",
        arch_kwargs={"width": 5},
        classes=["a", "b"],
        preprocessing={"spacing": (1.5, 1.5, 1.5), "mean": torch.tensor(0.5).item()},
        metrics={"dice": 0.9},
    )
    return m, save_model_file(tmp_path / "m.pt", mf)


def test_round_trip_rebuilds_identical_model(tmp_path):
    m, path = _file(tmp_path)
    mf = load_model_file(path, task="unit")
    assert (mf.arch, mf.arch_kwargs, mf.classes, mf.metrics) == (
        "ckpt-test-mlp",
        {"width": 5},
        ["a", "b"],
        {"dice": 0.9},
    )
    assert mf.preprocessing["spacing"] == [1.5, 1.5, 1.5] and mf.created
    x = torch.randn(7, 3)
    assert torch.equal(mf.build()(x), m(x))
    # the file is plain data: loads with weights_only=True
    assert torch.load(path, weights_only=True)["format"] == "convsuite-model"


class _Evil:
    def __reduce__(self):
        return (os.makedirs, ("/tmp/convsuite-pwned-by-test",))


def test_pickled_object_refused_without_execution(tmp_path):
    marker = "/tmp/convsuite-pwned-by-test"
    if os.path.isdir(marker):
        os.rmdir(marker)
    bad = tmp_path / "evil.pt"
    torch.save({"format": "convsuite-model", "payload": _Evil()}, bad)
    with pytest.raises(ModelFileError, match="refused.*not executed"):
        load_model_file(bad)
    assert not os.path.exists(marker)


def test_truncated_missing_and_foreign_files(tmp_path):
    _, path = _file(tmp_path)
    trunc = tmp_path / "trunc.pt"
    trunc.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(ModelFileError, match="truncated"):
        load_model_file(trunc)
    with pytest.raises(ModelFileError, match="not found"):
        load_model_file(tmp_path / "none.pt")
    text = tmp_path / "notes.txt"
    text.write_text("hello")
    with pytest.raises(ModelFileError) as e:
        load_model_file(text)
    assert str(text) in str(e.value)
    light = tmp_path / "l.ckpt"
    torch.save({"state_dict": {}, "pytorch-lightning_version": "2.6"}, light)
    with pytest.raises(ModelFileError, match="pipelines export"):
        load_model_file(light)
    bare = tmp_path / "sd.pt"
    torch.save(_mlp().state_dict(), bare)
    with pytest.raises(ModelFileError, match="bare state_dict"):
        load_model_file(bare)
    nnunet = tmp_path / "x.model"
    torch.save({"epoch": 3, "state_dict": {}}, nnunet)
    with pytest.raises(ModelFileError, match="import"):
        load_model_file(nnunet)


def test_wrong_task_missing_fields_and_mismatched_weights(tmp_path):
    _, path = _file(tmp_path)
    with pytest.raises(ModelFileError, match="for task 'unit', not 'audiosep'"):
        load_model_file(path, task="audiosep")
    d = torch.load(path, weights_only=True)
    del d["arch"]
    torch.save(d, tmp_path / "noarch.pt")
    with pytest.raises(ModelFileError, match="lacks required field"):
        load_model_file(tmp_path / "noarch.pt")
    mf = load_model_file(path)
    mf.arch_kwargs = {"width": 6}
    with pytest.raises(ModelFileError, match="do not fit"):
        mf.build()


def test_registry_unknown_name_duplicate_and_presets():
    with pytest.raises(UnknownModelError, match="unknown architecture 'no-such-net'.*ckpt-test-mlp") as info:
        create_model("no-such-net")
    assert not isinstance(info.value, ModelFileError) and "model file" not in str(info.value)
    assert "ckpt-test-mlp" in list_models("unit") and "ckpt-test-mlp" not in list_models("audiosep")
    assert create_model("ckpt-test-mlp", width=7)[0].out_features == 7
    with pytest.raises(ValueError, match="registered twice"):
        register_model("ckpt-test-mlp", task="unit")(lambda: nn.Identity())
