"""Fixtures for the reports tests: experiment directories written by hand."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from reports_fixtures import DENSE, ExperimentWriter, write_fixture_experiment  # noqa: E402


@pytest.fixture
def experiment_dir(tmp_path: Path) -> Path:
    root = tmp_path / "digits-mlp"
    write_fixture_experiment(root)
    return root


@pytest.fixture
def make_experiment(tmp_path: Path):
    def make(name: str = "exp", dense: dict | None = DENSE, **sections) -> ExperimentWriter:
        return ExperimentWriter(tmp_path / name, name=name, dense=dense, **sections)

    return make
