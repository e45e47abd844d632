"""Fixtures for the pruners tests."""

from __future__ import annotations

import os
import sys

import pytest
import torch

# Run from the repo root without installing the package.
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)


@pytest.fixture(autouse=True)
def _seeded():
    """Every test starts from the same RNG state and a single thread (2 shared cores)."""
    torch.manual_seed(0)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
