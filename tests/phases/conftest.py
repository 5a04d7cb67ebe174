"""Fixtures for the phases tests: a tiny random-weight ColonTCN model file."""

from __future__ import annotations

import pytest
import torch

from medseg.phases.models import COLON_CLASSES, ColonTCN
from shared_backbones.checkpoint import ModelFile, save_model_file


@pytest.fixture()
def model_file(tmp_path):
    """A 16-feature, 3-block ColonTCN (seed 0) saved as a suite model file."""
    torch.manual_seed(0)
    m = ColonTCN(in_features=16, num_blocks=3)
    return save_model_file(tmp_path / "m.pt", ModelFile.from_model(
        m, task="phases", arch="colontcn", arch_kwargs={"in_features": 16, "num_blocks": 3}, classes=COLON_CLASSES,
        preprocessing={"fps": 5.0}))
