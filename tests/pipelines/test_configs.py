"""Every task's LightningCLI config in pipelines/configs/ runs as is for one short epoch on tiny data the test
writes, and `pipelines export` turns its checkpoint into a file the task's predict command takes (example and
medseg: tests/pipelines/test_pipelines.py and tests/medseg/test_medseg_cli.py)."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest

from pipelines.cli import main as pipelines_main
from shared_backbones.checkpoint import load_model_file

CONFIGS = Path(__file__).resolve().parents[2] / "pipelines" / "configs"
QUICK = ["--trainer.max_epochs", "1", "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary",
         "false", "--trainer.accelerator", "cpu"]


def test_every_task_has_a_config():
    assert {p.stem for p in CONFIGS.glob("*.yaml")} >= {"example", "medseg", "remote", "audiosep", "phases"}


def test_remote_config_fits_exports_and_predicts(tmp_path, monkeypatch):
    from remote.cli import main as remote_main
    from remote.synthetic import make_season

    monkeypatch.chdir(tmp_path)
    make_season(tmp_path / "demo_s2", height=32, width=32, n_dates=6, step_days=12, start=dt.date(2024, 4, 1),
                field_size=8, seed=2)
    rc = pipelines_main(["fit", "-c", str(CONFIGS / "remote.yaml"), *QUICK, "--data.block_size", "8",
                         "--data.folds", "3", "--data.max_per_class", "200", "--model.arch_kwargs",
                         "{channels: 4, depth: 1}"])
    assert rc == 0
    ckpts = list((tmp_path / "runs" / "remote" / "checkpoints").glob("best-*.ckpt"))
    assert len(ckpts) == 1
    assert pipelines_main(["export", str(ckpts[0]), "-o", "ffdnn.pt"]) == 0
    mf = load_model_file("ffdnn.pt", task="remote")
    assert mf.arch == "ffdnn" and mf.arch_kwargs["channels"] == 4 and len(mf.preprocessing["dates"]) == 6
    assert mf.classes == ["healthy", "yellow_rust", "nitrogen_deficiency"] and mf.preprocessing["fold"] == 0
    assert remote_main(["predict", "demo_s2/images", "-m", "ffdnn.pt", "-o", "map.tif", "--quiet"]) == 0
    assert (tmp_path / "map.tif").is_file()


def test_audiosep_config_fits_and_exports(tmp_path, monkeypatch):
    sf = pytest.importorskip("soundfile")
    from audiosep.synthetic import write_librimix

    monkeypatch.chdir(tmp_path)
    write_librimix(tmp_path / "librimix" / "train", 5, seconds=0.5, rate=8000)
    rc = pipelines_main(["fit", "-c", str(CONFIGS / "audiosep.yaml"), *QUICK, "--data.segment", "0.25",
                         "--data.batch_size", "2", "--model.arch_kwargs",
                         "{enc_num_feats: 16, msk_num_feats: 8, msk_num_hidden_feats: 16, msk_num_layers: 2, "
                         "msk_num_stacks: 1}"])
    assert rc == 0
    ckpts = list((tmp_path / "runs" / "audiosep" / "checkpoints").glob("best-*.ckpt"))
    assert len(ckpts) == 1
    assert pipelines_main(["export", str(ckpts[0]), "-o", "tasnet.pt"]) == 0
    mf = load_model_file("tasnet.pt", task="audiosep")
    assert mf.arch == "convtasnet" and mf.arch_kwargs["enc_num_feats"] == 16
    from audiosep.cli import main as audiosep_main

    mix = tmp_path / "librimix" / "train" / "mix" / "utt0000.wav"
    assert audiosep_main(["separate", str(mix), "-m", "tasnet.pt", "-o", "sep", "--quiet"]) == 0
    outs = sorted(p.name for p in (tmp_path / "sep").glob("*.wav"))
    assert outs == ["utt0000_s1.wav", "utt0000_s2.wav"] and sf.info(tmp_path / "sep" / outs[0]).samplerate == 8000


def test_phases_config_fits_exports_and_predicts(tmp_path, monkeypatch):
    from medseg.phases.synthetic import write_dataset

    monkeypatch.chdir(tmp_path)
    write_dataset(tmp_path / "phases_data", n_videos=4, dim=16, centres=2, time_scale=0.2)
    rc = pipelines_main(["fit", "-c", str(CONFIGS / "phases.yaml"), *QUICK, "--data.folds", "2",
                         "--model.arch_kwargs", "{in_features: 16, num_blocks: 2, channels: 8}"])
    assert rc == 0
    ckpts = list((tmp_path / "runs" / "phases" / "checkpoints").glob("best-*.ckpt"))
    assert len(ckpts) == 1
    assert pipelines_main(["export", str(ckpts[0]), "-o", "tcn.pt"]) == 0
    mf = load_model_file("tcn.pt", task="phases")
    assert mf.arch == "colontcn" and mf.arch_kwargs["in_features"] == 16
    from medseg.cli import main as medseg_main

    video = next((tmp_path / "phases_data" / "features").glob("*.npy"))
    rc = medseg_main(["phases", "predict", str(video), "-m", "tcn.pt", "--out-dir", "pred", "--no-png", "--quiet"])
    assert rc == 0
    assert any((tmp_path / "pred").iterdir())
