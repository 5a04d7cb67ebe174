"""medseg phases train: MS-TCN-layout data with videos shorter than the feature width, seeding, resume, and DDP in two
CPU processes (validation metrics synced across ranks equal one process's, one exported model)."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from medseg.cli import main
from medseg.phases.evaluate import evaluate_predictions
from medseg.phases.io import load_features, load_labels
from medseg.phases.predict import PhaseModel
from medseg.phases.synthetic import write_dataset
from shared_backbones.checkpoint import load_model_file

ROOT = Path(__file__).resolve().parents[2]


def _mstcn_dataset(root: Path, lengths: list[int], dim: int = 2048) -> Path:
    """The MS-TCN layout (GTEA-like): features/<v>.npy [D, T], groundTruth/<v>.txt names, mapping.txt, splits/."""
    names = ["background", "take", "open", "pour"]
    for d in ("features", "groundTruth", "splits"):
        (root / d).mkdir(parents=True, exist_ok=True)
    (root / "mapping.txt").write_text("".join(f"{i} {n}\n" for i, n in enumerate(names)))
    rng = np.random.default_rng(0)
    protos = rng.standard_normal((len(names), dim)).astype("float32")
    for i, t in enumerate(lengths):
        lab = np.repeat(np.arange(t) * 8 // t % len(names), 1)
        np.save(root / "features" / f"v{i}.npy", (protos[lab] + rng.standard_normal((t, dim))).T.astype("float32"))
        (root / "groundTruth" / f"v{i}.txt").write_text("".join(names[k] + "\n" for k in lab))
    vids = [f"v{i}.txt\n" for i in range(len(lengths))]
    (root / "splits" / "train.split1.bundle").write_text("".join(vids[:-1]))
    (root / "splits" / "test.split1.bundle").write_text(vids[-1])
    return root


def test_mstcn_layout_with_videos_shorter_than_the_feature_width(tmp_path, capsys):
    """GTEA-sized videos (300-900 frames of 2048-d features, stored [2048, T]) train as they are."""
    data = _mstcn_dataset(tmp_path / "gtea", [300, 512, 900, 421])
    out = tmp_path / "mstcn.pt"
    assert main(["phases", "train", str(data), "-o", str(out), "--arch", "mstcn", "--stages", "2",
                 "--split-dir", str(data / "splits"), "--epochs", "1", "--device", "cpu", "--quiet",
                 "--background", "background"]) == 0
    mf = load_model_file(out, task="phases")
    assert mf.arch_kwargs["in_features"] == 2048 and mf.classes == ["background", "take", "open", "pour"]
    capsys.readouterr()
    assert main(["phases", "evaluate", str(data), "-m", str(out), "--split", str(data / "splits/test.split1.bundle"),
                 "--background", "background", "--quiet"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[1].startswith("v3 ") and lines[2].startswith("ALL ")
    # a video of another width is blamed by name; equal shapes everywhere ask for --layout
    np.save(data / "features" / "v1.npy", np.zeros((512, 1024), dtype="float32"))
    assert main(["phases", "train", str(data), "-o", str(tmp_path / "x.pt"), "--quiet"]) == 2
    assert "v1.npy: features have shape (512, 1024), the other videos have 2048 dims per frame" in \
        capsys.readouterr().err
    same = _mstcn_dataset(tmp_path / "same", [40, 40, 40], dim=24)
    assert main(["phases", "train", str(same), "-o", str(tmp_path / "y.pt"), "--quiet"]) == 2
    assert "the videos all have shape (24, 40); give --layout tc" in capsys.readouterr().err
    assert main(["phases", "train", str(same), "-o", str(tmp_path / "y.pt"), "--layout", "ct", "--blocks", "2",
                 "--split-dir", str(same / "splits"), "--epochs", "1", "--device", "cpu", "--quiet"]) == 0
    assert load_model_file(tmp_path / "y.pt").arch_kwargs["in_features"] == 24


def _train(data: Path, out: Path, *extra: str) -> None:
    assert main(["phases", "train", str(data), "-o", str(out), "--blocks", "2", "--folds", "2", "--epochs", "1",
                 "--device", "cpu", "--quiet", *extra]) == 0


def test_seed_makes_runs_identical_and_resume_continues(tmp_path, capsys):
    data = write_dataset(tmp_path / "d", n_videos=4, dim=8, centres=2, seed=0, time_scale=0.1)
    _train(data, tmp_path / "a.pt", "--seed", "3")
    _train(data, tmp_path / "b.pt", "--seed", "3")
    _train(data, tmp_path / "c.pt", "--seed", "4")
    a, b, c = (load_model_file(tmp_path / f"{n}.pt").state_dict for n in "abc")
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)
    # --resume continues a's run from its last.ckpt (epoch 0 done) to epoch 1 and replaces its model file
    assert main(["phases", "train", str(data), "-o", str(tmp_path / "a.pt"), "--blocks", "2", "--folds", "2",
                 "--epochs", "2", "--device", "cpu", "--quiet", "--seed", "3", "--resume"]) == 0
    epochs = {r["epoch"] for r in csv.DictReader(open(tmp_path / "a_run/logs/version_1/metrics.csv"))}
    assert epochs == {"1"}
    assert torch.load(tmp_path / "a_run/checkpoints/last.ckpt", weights_only=True)["epoch"] == 1
    assert main(["phases", "train", str(data), "-o", str(tmp_path / "z.pt"), "--resume", "--quiet"]) == 2
    assert "z_run/checkpoints/last.ckpt: no checkpoint to resume from" in capsys.readouterr().err
    assert main(["phases", "train", str(data), "-o", str(tmp_path / "a.pt"), "--blocks", "3", "--folds", "2",
                 "--epochs", "3", "--device", "cpu", "--quiet", "--resume"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "last.ckpt: the checkpoint does not fit this model" in err


@pytest.mark.skipif(not torch.distributed.is_gloo_available(), reason="needs torch.distributed with gloo")
def test_ddp_two_cpu_processes(tmp_path):
    """`--devices 2 --device cpu`: Lightning relaunches the CLI for rank 1 (gloo). Exit 0, one model file, and the
    validation metrics logged during training (synced over the ranks, 3 videos split 2 + 1) equal what one process
    computes with the exported model on the same validation videos."""
    data = write_dataset(tmp_path / "d", n_videos=6, dim=16, centres=2, seed=0, time_scale=0.1)
    ids = sorted(p.stem for p in (data / "features").glob("*.npy"))
    (data / "splits").mkdir()
    (data / "splits" / "train.split1.bundle").write_text("".join(f"{v}.txt\n" for v in ids[:3]))
    (data / "splits" / "test.split1.bundle").write_text("".join(f"{v}.txt\n" for v in ids[3:]))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    env.pop("LOCAL_RANK", None)
    cmd = [sys.executable, "-m", "medseg.cli", "phases", "train", str(data), "-o", str(tmp_path / "out" / "m.pt"),
           "--blocks", "2", "--split-dir", str(data / "splits"), "--epochs", "1", "--devices", "2", "--device", "cpu",
           "--csv", str(tmp_path / "folds.csv"), "--quiet"]
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert sorted(p.name for p in (tmp_path / "out").glob("*.pt")) == ["m.pt"]
    logged = [r for r in csv.DictReader(open(tmp_path / "out/m_run/logs/version_0/metrics.csv")) if r["val_acc"]]
    assert len(logged) == 1
    pm = PhaseModel.from_file(tmp_path / "out" / "m.pt", "cpu", "fp32")
    feats = [load_features(data / "features" / f"{v}.npy", "auto", 16) for v in ids[3:]]
    refs = [load_labels(data / "labels" / f"{v}.txt", pm.classes) for v in ids[3:]]
    _, one = evaluate_predictions([pm.probabilities(f).argmax(1) for f in feats], refs, ids[3:], pm.classes, 5.0)
    for key in ("acc", "edit", "f1@10", "f1@25", "f1@50"):
        assert float(logged[0][f"val_{key}"]) == pytest.approx(one["accuracy" if key == "acc" else key], abs=1e-3)
    table = list(csv.DictReader(open(tmp_path / "folds.csv")))
    assert [r["fold"] for r in table] == ["0", "mean"]
    assert float(table[0]["edit"]) == pytest.approx(one["edit"], abs=1e-3)
