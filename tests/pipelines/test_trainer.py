"""The shared trainer: time budget including validation, seeds, resume errors, precision, option tables."""

from __future__ import annotations

import pytest
import torch

from pipelines.example import ExampleDataModule, ExampleModule
from pipelines.trainer import build_trainer, ddp_strategy, fit, parse_duration, resolve_resume
from shared_backbones.errors import InputError


def test_parse_duration_spellings():
    assert parse_duration("00:00:08:00") == 480 and parse_duration("01:30:00") == 5400
    assert parse_duration("8 min") == 480 and parse_duration("1.5h") == 5400 and parse_duration("2 days") == 172800
    assert parse_duration(90) == 90 and parse_duration({"minutes": 2}) == 120 and parse_duration(None) is None
    for bad in ("soon", "8 parsecs", "0", "1:2:3:4:5"):
        with pytest.raises(InputError, match="max-time"):
            parse_duration(bad)


class Clock:
    """A fake monotonic clock: a training step takes 1 s, a validation batch 3 s (2 batches: 6 s a validation)."""

    def __init__(self) -> None:
        self.now = 0.0

    def monotonic(self) -> float:
        return self.now


class TimedModule(ExampleModule):
    clock = Clock()  # set per test (not a constructor argument: checkpoints hold plain data only)

    def training_step(self, batch, batch_idx):
        self.clock.now += 1.0
        return super().training_step(batch, batch_idx)

    def validation_step(self, batch, batch_idx):
        self.clock.now += 3.0
        return super().validation_step(batch, batch_idx)


@pytest.mark.parametrize("budget, epochs, batches", [(20.0, 1, 4), (14.0, 1, 1), (40.0, 3, 12)])
def test_time_budget_includes_validation(tmp_path, monkeypatch, budget, epochs, batches):
    """The run, validation included, ends within the budget (Lightning's max_time, checked between training
    batches only, would start another epoch at 16 s of 20 and end at 26 s). The sanity check (6 s) is measured to
    estimate the first validation; a stop in the middle of an epoch still validates and checkpoints it."""
    import types

    import pipelines.trainer as trainer_mod
    from pipelines.trainer import TimeBudget

    clock = Clock()
    monkeypatch.setattr(TimedModule, "clock", clock)
    monkeypatch.setattr(trainer_mod, "time", types.SimpleNamespace(monotonic=clock.monotonic))
    dm = ExampleDataModule(n_train=64, n_val=32, batch_size=16)  # 4 training batches, 2 validation batches
    trainer = build_trainer(tmp_path / "run", max_epochs=1000, max_time=budget, quiet=True, seed=0,
                            accelerator="cpu")
    fit(TimedModule(arch_kwargs={"channels": 8, "depth": 1}), dm, trainer)
    assert clock.now <= budget
    assert next(c for c in trainer.callbacks if isinstance(c, TimeBudget)).stopped
    assert trainer.current_epoch == epochs and trainer.global_step == batches
    last = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", weights_only=True)
    assert last["global_step"] == batches  # the last (partial) epoch was validated and checkpointed


def test_resume_errors_and_last(tmp_path):
    assert resolve_resume(None, tmp_path) is None
    with pytest.raises(InputError, match="no last.ckpt in the work folder"):
        resolve_resume("last", tmp_path)
    with pytest.raises(InputError, match="not found"):
        resolve_resume(tmp_path / "x.ckpt", tmp_path)
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / "last.ckpt").write_bytes(b"")
    assert resolve_resume("last", tmp_path) == tmp_path / "checkpoints" / "last.ckpt"


def test_ddp_strategy_is_chosen_for_several_processes():
    from lightning.pytorch.strategies import DDPStrategy

    s = ddp_strategy("auto", 2)
    assert isinstance(s, DDPStrategy) and s._ddp_kwargs.get("find_unused_parameters") is False
    assert isinstance(ddp_strategy("auto", "0,1"), DDPStrategy) and isinstance(ddp_strategy("auto", 1, 2), DDPStrategy)
    assert ddp_strategy("auto", 1) == "auto" and ddp_strategy("fsdp", 4) == "fsdp"


def test_train_commands_take_bf16_on_cpu(tmp_path, capsys):
    from ddp_helpers import write_table

    from remote.cli import main as remote_main
    from shared_backbones.checkpoint import load_model_file

    table = write_table(tmp_path / "t.csv", n=30)
    assert remote_main(["train", "--table", str(table), "-o", str(tmp_path / "t.pt"), "--epochs", "1", "--folds", "2",
                        "--channels", "4", "--depth", "1", "--device", "cpu", "--precision", "bf16", "--quiet"]) == 0
    assert "overall accuracy" in capsys.readouterr().out
    m = load_model_file(tmp_path / "t.pt").metrics
    assert m["n_test"] + m["n_train"] == 30 and 0 <= m["test_overall_accuracy"] <= 1


def test_bf16_on_cpu_trains(tmp_path):
    dm = ExampleDataModule(n_train=32, n_val=16, batch_size=16)
    trainer = build_trainer(tmp_path / "run", max_epochs=1, precision="bf16", quiet=True, seed=0, device="cpu")
    assert trainer.precision == "bf16-mixed"
    res = fit(ExampleModule(arch_kwargs={"channels": 8, "depth": 1}), dm, trainer, export_to=tmp_path / "m.pt")
    assert res.model_file.is_file() and torch.isfinite(torch.tensor(res.metrics["val_loss"]))


def test_medseg_runs_with_the_same_seed_are_identical(tmp_path):
    """Seeded before the network and the patch sampler (MONAI augmentations included) are built."""
    from medseg.synthetic import write_dataset
    from pipelines.medseg import train_medseg
    from shared_backbones.checkpoint import load_model_file

    data = write_dataset(tmp_path / "data", 3, 0, shape=(24, 24, 10), seed=1)
    weights = []
    for run in ("a", "b", "c"):
        train_medseg(data, tmp_path / f"{run}.pt", epochs=1, steps_per_epoch=2, batch_size=1, folds=3,
                     patch_size=[8, 16, 16], base_channels=4, optimizer="adamw", device="cpu", quiet=True,
                     seed=7 if run != "c" else 8, work_dir=tmp_path / f"{run}.train")
        weights.append(load_model_file(tmp_path / f"{run}.pt").state_dict)
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])
    assert not all(torch.equal(weights[0][k], weights[2][k]) for k in weights[0])
