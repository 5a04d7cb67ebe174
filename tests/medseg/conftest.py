"""Fixtures for the medseg volume tests (helpers live in medseg_testutil)."""

from __future__ import annotations

from pathlib import Path

import pytest
from medseg_testutil import make_model_file, write_volume


@pytest.fixture
def model_file(tmp_path: Path) -> Path:
    return make_model_file(tmp_path / "tiny.pt")


@pytest.fixture
def volume(tmp_path: Path) -> Path:
    return write_volume(tmp_path / "case.nii.gz")
