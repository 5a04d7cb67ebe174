"""Fixtures for remote tests: a tiny synthetic season and an untrained model file shared by a session."""

from __future__ import annotations

import datetime as dt

import pytest


@pytest.fixture(scope="session")
def scene(tmp_path_factory):
    """A 64 x 64 synthetic season with 10 dates (10 m + 20 m files per date, labels, fields)."""
    from remote.synthetic import make_season

    root = tmp_path_factory.mktemp("scene")
    return make_season(root, height=64, width=64, n_dates=10, step_days=12, start=dt.date(2024, 3, 20),
                       field_size=16, seed=1)


@pytest.fixture(scope="session")
def ffdnn_file(tmp_path_factory, scene):
    """An untrained (random, fixed-seed) FFDNN model file for the scene's grid."""
    import torch

    from remote.models import CLASSES, FFDNN
    from remote.timeseries import regular_grid
    from shared_backbones.checkpoint import ModelFile, save_model_file

    torch.manual_seed(0)
    kw = {"channels": 8, "depth": 1, "n_modes": 4}
    m = FFDNN(**kw).eval()
    grid = regular_grid(scene.dates[0], scene.dates[-1], 12)
    pre = {"bands": list(m.bands), "dates": [d.isoformat() for d in grid], "scl_invalid": [0, 1, 3, 8, 9, 10]}
    return save_model_file(tmp_path_factory.mktemp("m") / "ffdnn.pt", ModelFile.from_model(
        m, task="remote", arch="ffdnn", arch_kwargs=kw, classes=list(CLASSES), preprocessing=pre))


@pytest.fixture(autouse=True, scope="session")
def _one_torch_thread():
    """One intra-op thread: on a shared 2-core machine, OpenMP threads waiting for descheduled peers make every
    small op cost a scheduler time slice; the tests' figures do not depend on the thread count."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
