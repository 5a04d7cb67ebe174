"""The one training path every train command takes (pipelines.trainer.train_run): options from one table each,
one duration syntax, seed before the model, validation set vs processes, failed ranks, Ctrl-C, the work folder,
devices this machine cannot run."""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import inspect
import os
import signal
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from pipelines.example import ExampleModule, train_example
from pipelines.options import (
    AudiosepTrainOptions,
    MedsegTrainOptions,
    PhasesTrainOptions,
    RemoteTrainOptions,
    add_options,
    option,
    options_from,
)
from pipelines.trainer import child_ranks, resolve_resume, work_folder
from shared_backbones.errors import InputError, RankFailedError
from shared_backbones.options import Number

TABLES = [(MedsegTrainOptions, "pipelines.medseg:train_medseg"), (RemoteTrainOptions, "pipelines.remote:train_remote"),
          (AudiosepTrainOptions, "pipelines.audiosep:train_audiosep"),
          (PhasesTrainOptions, "pipelines.phases:train_phases")]
TRAIN_PARSERS = {"medseg": ("medseg.volume_cli", ["train", "d", "-o", "m.pt"]),
                 "medseg phases": ("medseg.phases.cli", ["train", "d", "-o", "m.pt"]),
                 "audiosep": ("audiosep.cli", ["train", "d", "-o", "m.pt"]),
                 "remote": ("remote.cli", ["train", "--table", "t.csv", "-o", "m.pt"])}


# ------------------------------------------------------------------------------------------ one declaration
@pytest.mark.parametrize("table, fn", TABLES, ids=[t.__name__ for t, _ in TABLES])
def test_every_train_table_feeds_its_train_function_with_typed_numbers(table, fn):
    mod, name = fn.split(":")
    params = inspect.signature(getattr(importlib.import_module(mod), name)).parameters
    assert set(options_from(table, {})) <= set(params), set(options_from(table, {})) - set(params)
    p = argparse.ArgumentParser()
    add_options(p, table)
    for action in p._actions[1:]:
        assert action.help, action.dest
        numeric = isinstance(action.default, (int, float)) and not isinstance(action.default, bool)
        assert not numeric or isinstance(action.type, Number) or action.dest == "threads", action.dest
        assert action.type not in (int, float), action.dest
    got = options_from(table, p.parse_args(["--epochs", "7", "--max-time", "2h", "--num-nodes", "2"]), seed=3)
    assert got["epochs"] == 7 and got["max_time"] == 7200.0 and got["num_nodes"] == 2 and got["seed"] == 3
    for bad in ("nan", "inf", "0", "-1", "1e30"):
        with pytest.raises(SystemExit):
            p.parse_args(["--epochs", bad])


def test_a_numeric_field_without_a_number_type_is_refused():
    @dataclasses.dataclass
    class Bad:
        epochs: int = option(3, "epochs")

    with pytest.raises(TypeError, match="Number type"):
        add_options(argparse.ArgumentParser(), Bad)


@pytest.mark.parametrize("cli", sorted(TRAIN_PARSERS))
def test_max_time_2h_is_read_by_every_train_command(cli):
    """One duration syntax: `audiosep train --max-time 2h` was a traceback, `medseg phases train` refused it."""
    module, argv = TRAIN_PARSERS[cli]
    args = importlib.import_module(module)._parser().parse_args([*argv, "--max-time", "2h"])
    assert args.max_time == 7200.0
    args = importlib.import_module(module)._parser().parse_args([*argv, "--max-time", "00:01:30:00"])
    assert args.max_time == 5400.0


@pytest.mark.parametrize("cli", sorted(TRAIN_PARSERS))
@pytest.mark.parametrize("device", ["mps", "cuda"])
def test_a_device_this_machine_lacks_is_one_line_before_any_work(cli, device, tmp_path, capsys, monkeypatch):
    if device == "cuda" and torch.cuda.is_available():
        pytest.skip("this machine has a CUDA GPU")
    if device == "mps" and torch.backends.mps.is_available():
        pytest.skip("this machine has MPS")
    monkeypatch.chdir(tmp_path)
    Path("t.csv").write_text("label,B04_2024-05-01\nhealthy,0.1\n")
    module, argv = TRAIN_PARSERS[cli]
    rc = importlib.import_module(module).main([*argv, "--device", device, "-q"])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and f"--device {device}" in err, err
    assert not list(tmp_path.glob("*_run")) and not (tmp_path / "m.pt").exists()


# ------------------------------------------------------------------------------------------------ seeds
def _noise_librimix(root: Path, n: int, seconds: float = 0.5, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    for d in ("mix", "s1", "s2"):
        (root / d).mkdir(parents=True)
    for i in range(n):
        s1, s2 = (0.1 * rng.standard_normal(int(8000 * seconds))).astype("float32"), \
            (0.1 * np.sin(np.arange(int(8000 * seconds)) * (0.05 + 0.01 * i))).astype("float32")
        sf.write(root / "s1" / f"m{i}.wav", s1, 8000)
        sf.write(root / "s2" / f"m{i}.wav", s2, 8000)
        sf.write(root / "mix" / f"m{i}.wav", s1 + s2, 8000)
    return root


def test_audiosep_train_with_one_seed_twice_gives_identical_runs(tmp_path, capsys):
    """`audiosep train --seed 0` twice: the same weights and validation SI-SNR (the module was built before the
    seed was set, and the crops drew from an unseeded generator); --max-time 2h is read, not a traceback."""
    from audiosep.cli import main
    from shared_backbones.checkpoint import load_model_file

    data = _noise_librimix(tmp_path / "data", 6)
    runs = []
    for name in ("a", "b"):
        argv = ["train", str(data), "-o", str(tmp_path / f"{name}.pt"), "--segment", "0.25", "--batch-size", "2",
                "--epochs", "1", "--folds", "3", "--device", "cpu", "--seed", "0", "--max-time", "2h", "-q"]
        assert main(argv) == 0, capsys.readouterr().err
        runs.append(load_model_file(tmp_path / f"{name}.pt"))
    a, b = runs
    assert a.metrics["val_si_snr"] == b.metrics["val_si_snr"]
    assert all(torch.equal(a.state_dict[k], b.state_dict[k]) for k in a.state_dict)
    assert (tmp_path / "a_run" / "checkpoints" / "last.ckpt").is_file()


# -------------------------------------------------------------------------- validation set vs processes
def test_medseg_validation_smaller_than_the_processes_is_one_line(tmp_path, capsys):
    """`medseg train --fold 1 --devices 2` with one validation case: one line, exit 2, nothing launched (before:
    ~120 lines, an AssertionError in UnrepeatedDistributedSampler, then "Connection closed by peer")."""
    from medseg.cli import main
    from medseg.synthetic import write_dataset

    data = write_dataset(tmp_path / "data", 3, 0, shape=(24, 24, 10), seed=1)
    rc = main(["train", str(data), "-o", str(tmp_path / "m.pt"), "--fold", "1", "--folds", "3", "--devices", "2",
               "--device", "cpu", "--epochs", "1", "--steps-per-epoch", "1", "--batch-size", "1", "--base-channels",
               "4", "--patch", "8", "16", "16", "-q"])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1, err
    assert "1 validation case(s), fewer than the 2 training processes" in err
    assert not (tmp_path / "m.pt").exists()


def test_audiosep_one_validation_mixture_on_two_processes_is_one_line(tmp_path, capsys):
    from audiosep.cli import main

    data, val = _noise_librimix(tmp_path / "data", 4), _noise_librimix(tmp_path / "val", 1, seed=1)
    rc = main(["train", str(data), "--val-dir", str(val), "-o", str(tmp_path / "m.pt"), "--devices", "2",
               "--device", "cpu", "--epochs", "1", "--segment", "0.25", "-q"])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and "1 validation mixture(s), fewer than the 2" in err, err


def test_the_shared_validation_sampler_refuses_a_set_smaller_than_the_processes():
    from pipelines.base import eval_sampler

    with pytest.raises(InputError, match="1 item"):
        eval_sampler(list(range(1)), 2, 1)
    shards = [list(eval_sampler(list(range(5)), 2, r)) for r in (0, 1)]
    assert sorted(shards[0] + shards[1]) == [0, 1, 2, 3, 4]  # every item once: exact metrics
    assert eval_sampler(list(range(1)), 1, 0) is None


# ----------------------------------------------------------------------------------------- failed ranks
class _Proc:
    """A stand-in for a rank's process (subprocess.Popen) that ended with ``rc``."""

    def __init__(self, rc: int | None) -> None:
        self.rc = rc

    def poll(self):
        return self.rc

    def wait(self, timeout=None):
        return self.rc

    def kill(self):
        self.rc = -9


@pytest.mark.parametrize("rc, shown", [(3, 3), (-9, 137)])
def test_child_ranks_report_a_failed_rank_in_the_documented_words(rc, shown, monkeypatch):
    import pipelines.trainer as tr

    monkeypatch.setattr(tr, "_CHILDREN", [_Proc(0), _Proc(rc)])
    with pytest.raises(RankFailedError) as info:
        with child_ranks():
            pass
    assert str(info.value) == f"training process of rank 2 failed (exit code {shown})"
    assert tr._CHILDREN == []


def test_every_train_command_turns_a_failed_rank_into_one_line_and_exit_1(tmp_path, capsys, monkeypatch):
    import audiosep.cli
    import medseg.phases.cli
    import medseg.volume_cli
    import pipelines.audiosep
    import pipelines.medseg
    import pipelines.phases
    import pipelines.remote
    import remote.cli

    def fail(*args, **kwargs):
        raise RankFailedError(1, 137)

    for mod in (pipelines.audiosep, pipelines.medseg, pipelines.phases, pipelines.remote):
        for name in ("train_audiosep", "train_medseg", "train_phases", "train_remote"):
            if hasattr(mod, name):
                monkeypatch.setattr(mod, name, fail)
    monkeypatch.chdir(tmp_path)
    Path("t.csv").write_text("label\n")
    for prog, cli in (("medseg", medseg.volume_cli), ("medseg phases", medseg.phases.cli), ("audiosep", audiosep.cli),
                      ("remote", remote.cli)):
        module, argv = TRAIN_PARSERS[prog]
        assert cli.main([*argv, "-q"]) == 1, prog
        assert capsys.readouterr().err == f"{prog}: error: training process of rank 1 failed (exit code 137)\n"


# ------------------------------------------------------------------------------------------------ Ctrl-C
class _CtrlCAtStep2(ExampleModule):
    def training_step(self, batch, batch_idx):
        if self.global_step == 2:
            raise KeyboardInterrupt
        return super().training_step(batch, batch_idx)


class _SwallowedCtrlC(ExampleModule):
    def training_step(self, batch, batch_idx):
        if self.global_step == 2:
            try:  # a SIGINT delivered where someone swallows KeyboardInterrupt (a finaliser, a library)
                os.kill(os.getpid(), signal.SIGINT)
            except KeyboardInterrupt:
                pass
        return super().training_step(batch, batch_idx)


def test_ctrl_c_closes_the_progress_bar_before_the_interrupted_line(tmp_path, capsys):
    """The "interrupted" line stands on a line of its own: the bar ends with a newline and is not drawn again
    afterwards (before: the line was glued to the bar, then the bar redrew itself)."""
    import gc

    with pytest.raises(KeyboardInterrupt):
        train_example(tmp_path / "m.pt", epochs=5, n_train=128, n_val=32, arch_kwargs={"channels": 4, "depth": 1},
                      device="cpu", module_class=_CtrlCAtStep2)
    bar = capsys.readouterr().out  # Lightning draws its bars on stdout, the CLI's line goes to stderr
    assert "Epoch 0" in bar and bar.endswith("\n"), repr(bar[-300:])
    gc.collect()
    assert capsys.readouterr().out == ""  # no redraw of a bar after the CLI's line
    assert not (tmp_path / "m.pt").exists()


def test_a_swallowed_ctrl_c_still_ends_the_fit(tmp_path):
    with pytest.raises(KeyboardInterrupt):
        train_example(tmp_path / "m.pt", epochs=50, n_train=64, n_val=16, arch_kwargs={"channels": 4, "depth": 1},
                      device="cpu", quiet=True, module_class=_SwallowedCtrlC)
    assert not (tmp_path / "m.pt").exists()
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


# ------------------------------------------------------------------------------------------- work folder
def test_one_work_folder_rule_and_the_old_medseg_folder_found_by_resume(tmp_path):
    out = tmp_path / "unet.pt"
    assert work_folder(out) == tmp_path / "unet_run"
    assert work_folder(tmp_path / "t_fold2.pt") == tmp_path / "t_fold2_run"
    assert work_folder(out, tmp_path / "w") == tmp_path / "w" and work_folder(out, "w", fold=2) == Path("w/fold2")
    old = tmp_path / "unet.pt.train" / "checkpoints"
    old.mkdir(parents=True)
    (old / "last.ckpt").write_bytes(b"")
    said = []
    assert resolve_resume("last", work_folder(out), [tmp_path / "unet.pt.train"], said.append) == old / "last.ckpt"
    assert len(said) == 1 and "unet_run" in said[0] and "notice" in said[0]
    with pytest.raises(InputError, match="no checkpoint to resume from"):
        resolve_resume("last", work_folder(out))


def test_the_example_trains_through_the_one_path_and_resumes(tmp_path):
    kw = dict(n_train=64, n_val=16, batch_size=16, arch_kwargs={"channels": 4, "depth": 1}, device="cpu",
              quiet=True, seed=1)
    a = train_example(tmp_path / "a.pt", epochs=1, **kw)
    b = train_example(tmp_path / "b.pt", epochs=1, **kw)
    assert a.metrics["val_loss"] == b.metrics["val_loss"] and a.global_step == 4
    c = train_example(tmp_path / "a.pt", epochs=2, resume="last", **kw)
    assert c.global_step == 8 and (tmp_path / "a_run" / "checkpoints" / "last.ckpt").is_file()


def test_pipelines_kfold_shim_is_gone():
    assert importlib.util.find_spec("pipelines.kfold") is None
    assert "pipelines.kfold" not in sys.modules
