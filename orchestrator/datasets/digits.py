"""scikit-learn's bundled 8x8 handwritten digits (offline; Alpaydin & Kaynak 1998).

A fixed stratified 75/25 train/test split (seed 0, whatever the experiment seed), inputs
standardised with the statistics of the training part. Read from scikit-learn's data file
without importing scikit-learn.
"""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import torch

from orchestrator.datasets.base import (
    DATASETS,
    DatasetInfo,
    DatasetSource,
    Splits,
    resize,
    stratified_split,
    tensor_splits,
)
from orchestrator.errors import ConfigError

__all__ = ["HELD_OUT", "SPLIT_SEED", "Digits", "read_digits"]

#: Fixed seed of the digits train/test split (independent of the experiment seed).
SPLIT_SEED = 0
HELD_OUT = 0.25


def _digits_file() -> Path | None:
    """scikit-learn's ``datasets/data/digits.csv.gz``, found without importing scikit-learn
    (whose import, with SciPy, costs every Train worker about 2 s)."""
    import importlib.util

    try:
        spec = importlib.util.find_spec("sklearn")
    except (ImportError, ValueError):
        return None
    for root in (spec.submodule_search_locations or []) if spec is not None else []:
        path = Path(root, "datasets", "data", "digits.csv.gz")
        if path.is_file():
            return path
    return None


def read_digits() -> tuple[np.ndarray, np.ndarray]:
    """The 1797 digits as ``(x (n, 64) float64 in 0..16, y (n,) int64)``, the same arrays as
    ``sklearn.datasets.load_digits(return_X_y=True)``.

    Raises:
        ConfigError: scikit-learn (which ships the file) is not installed.
    """
    path = _digits_file()
    if path is None:
        try:
            from sklearn.datasets import load_digits
        except ImportError:
            raise ConfigError(
                "data.dataset: digits ships with scikit-learn, which is not installed (pip install scikit-learn)"
            ) from None
        x, y = load_digits(return_X_y=True)
        return np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.int64)
    with gzip.open(path, "rt") as f:
        table = np.loadtxt(f, delimiter=",", dtype=np.float64)
    return table[:, :-1], table[:, -1].astype(np.int64)


@DATASETS.register("digits")
class Digits(DatasetSource):
    """1797 8x8 images of 10 digits; mean and std are computed on the training part."""

    info = DatasetInfo(1, 10, 8, (0.0,), (1.0,))

    def locate(self) -> Path | None:
        return None  # ships with scikit-learn

    def read(self, directory: Path | None) -> Splits:
        x, y = read_digits()
        tr, te = stratified_split(y, HELD_OUT, SPLIT_SEED)
        x_tr = torch.tensor(x[tr], dtype=torch.float32).view(-1, 1, 8, 8) / 16.0
        x_te = torch.tensor(x[te], dtype=torch.float32).view(-1, 1, 8, 8) / 16.0
        stats = (float(x_tr.mean()),), (float(x_tr.std()),)
        t = resize(self.cfg.image_size)
        return tensor_splits((x_tr, torch.tensor(y[tr])), (x_te, torch.tensor(y[te])), *stats,
                             int(self.info.num_classes or 0), t, t)
