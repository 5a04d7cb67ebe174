"""Lightning base: fit, resume, export/reload, weights-only checkpoints, k-fold, CLI."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import torch

from pipelines.cli import main as pipelines_main
from pipelines.example import ExampleDataModule, ExampleModule
from pipelines.export import export_checkpoint
from pipelines.trainer import build_trainer, fit
from shared_backbones.checkpoint import load_model_file

CONFIG = Path(__file__).resolve().parents[2] / "pipelines" / "configs" / "example.yaml"


def _val_losses(out: Path) -> list[float]:
    rows = list(csv.DictReader(open(next(out.glob("logs/version_*/metrics.csv")))))
    return [float(r["val_loss"]) for r in rows if r.get("val_loss")]


def test_fit_resume_export_reload(tmp_path):
    torch.manual_seed(0)
    out = tmp_path / "run"
    module = ExampleModule(arch_kwargs={"channels": 8, "depth": 2})
    dm = ExampleDataModule(n_train=128, n_val=64, batch_size=32)
    trainer = build_trainer(out, max_epochs=4, quiet=True, seed=0, accelerator="cpu")
    res = fit(module, dm, trainer, export_to=tmp_path / "model.pt")
    losses = _val_losses(out)
    assert len(losses) == 4 and losses[-1] < losses[0]
    assert res.best_checkpoint.exists() and res.best_score == pytest.approx(min(losses), rel=1e-5)
    # Lightning checkpoints hold plain data only
    ckpt = torch.load(res.best_checkpoint, weights_only=True)
    assert ckpt["convsuite"]["task"] == "example" and ckpt["convsuite"]["arch"] == "example-revnet1d"
    # the exported model file rebuilds the same network
    mf = load_model_file(res.model_file, task="example")
    assert mf.classes == ["sine", "square", "noise"] and "best_val_loss" in mf.metrics
    best = ExampleModule(arch_kwargs={"channels": 8, "depth": 2})
    best.load_state_dict(ckpt["state_dict"])
    x = torch.randn(5, 1, 64)
    with torch.no_grad():
        assert torch.equal(mf.build()(x), best.model.eval()(x))
    # resume from last.ckpt continues the step count
    last = out / "checkpoints" / "last.ckpt"
    steps_before = torch.load(last, weights_only=True)["global_step"]
    trainer2 = build_trainer(out, max_epochs=6, quiet=True, accelerator="cpu")
    fit(ExampleModule(arch_kwargs={"channels": 8, "depth": 2}), dm, trainer2, ckpt_path=last)
    assert trainer2.global_step == steps_before + 2 * 4


def test_last_checkpoint_follows_training_when_best_stays(tmp_path):
    """last.ckpt is rewritten every epoch even when the monitored best does not change (here: the highest
    validation loss, reached in the first epoch)."""
    dm = ExampleDataModule(n_train=64, n_val=32, batch_size=32)
    trainer = build_trainer(tmp_path / "run", max_epochs=3, quiet=True, seed=0, accelerator="cpu", mode="max")
    res = fit(ExampleModule(arch_kwargs={"channels": 8, "depth": 2}), dm, trainer)
    assert "epoch=0" in res.best_checkpoint.name
    last = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", weights_only=True)
    assert last["global_step"] == trainer.global_step == 3 * 2


def test_export_errors(tmp_path):
    from shared_backbones.errors import ModelFileError

    foreign = tmp_path / "f.ckpt"
    torch.save({"state_dict": {"w": torch.ones(1)}, "hyper_parameters": {"lr": 1.0}}, foreign)
    with pytest.raises(ModelFileError, match="not written by a convsuite SuiteModule"):
        export_checkpoint(foreign, tmp_path / "o.pt")
    existing = tmp_path / "o2.pt"
    existing.write_bytes(b"x")
    with pytest.raises(Exception, match="overwrite"):
        export_checkpoint(foreign, existing)
    assert existing.read_bytes() == b"x"


def test_cli_fit_with_example_config_and_export(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    rc = pipelines_main(
        ["fit", "-c", str(CONFIG), "--trainer.max_epochs", "1", "--trainer.enable_progress_bar", "false"]
    )
    assert rc == 0
    ckpts = list(tmp_path.glob("runs/example/**/*.ckpt"))
    assert len(ckpts) == 1
    # resume through the CLI: the class is rebuilt from the checkpoint and training continues from its step
    assert (
        pipelines_main(
            [
                "fit",
                "-c",
                str(CONFIG),
                "--trainer.max_epochs",
                "2",
                "--trainer.enable_progress_bar",
                "false",
                "--ckpt_path",
                str(ckpts[0]),
            ]
        )
        == 0
    )
    assert [p.name for p in tmp_path.glob("runs/example/**/epoch=1-step=8.ckpt")] == ["epoch=1-step=8.ckpt"]
    assert pipelines_main(["export", str(ckpts[0]), "-o", "model.pt"]) == 0
    assert load_model_file(tmp_path / "model.pt").arch == "example-revnet1d"
    capsys.readouterr()
    assert pipelines_main(["export", str(ckpts[0]), "-o", "model.pt"]) == 2
    assert "output exists" in capsys.readouterr().err


def test_cli_errors_are_one_line(tmp_path, capsys):
    assert pipelines_main(["fit", "-c", str(tmp_path / "missing.yaml")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "config file not found" in err
    assert pipelines_main(["export", str(tmp_path / "none.ckpt"), "-o", str(tmp_path / "o.pt")]) == 2
    assert "not found" in capsys.readouterr().err
    with pytest.raises(SystemExit) as info:  # a usage error, as every command of the suite
        pipelines_main(["frobnicate"])
    assert info.value.code == 2 and "invalid choice" in capsys.readouterr().err
