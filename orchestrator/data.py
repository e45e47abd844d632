"""Train, validation and test splits of a dataset, and their loaders (no Ray import).

Every dataset comes as three splits (docs/evaluation.md):

* **train**: what trials fine-tune on;
* **val**: carved from the training data (stratified, ``data.val_size`` of it, a fixed seed
  independent of the experiment seed, so every experiment validates on the same images),
  or the dataset's own validation split where it has one (imagefolder with ``val/`` *and*
  ``test/``). Every decision of the search uses it: rungs, the kept epoch, fronts, knee;
* **test**: the dataset's held-out test split, evaluated for the dense model and each kept
  model only, and reported beside the validation figures; never used to choose anything.

The datasets themselves (``data.dataset``: where their files are, how they are downloaded
and read) are the modules of ``orchestrator.datasets``, one per format; this module only
splits what they read, takes subsets and builds loaders.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler, Subset

from orchestrator import datasets
from orchestrator.config import DataConfig
from orchestrator.datasets import stratified_split
from orchestrator.errors import ConfigError

__all__ = ["Datasets", "ShardSampler", "VAL_SPLIT_SEED", "build_loader", "carve_validation", "load_datasets",
           "val_count"]

#: Fixed seed of every train/validation split (independent of the experiment seed).
VAL_SPLIT_SEED = 0


@dataclass
class Datasets:
    """Train, validation and test splits plus what a model needs to know about them."""

    name: str
    train: Dataset
    val: Dataset
    test: Dataset
    input_shape: tuple[int, int, int]
    num_classes: int

    def example_inputs(self, batch_size: int = 1) -> torch.Tensor:
        """The first ``batch_size`` validation images as one batch (for tracing and FLOPs)."""
        xs = [self.val[i][0] for i in range(min(batch_size, len(self.val)))]
        return torch.stack(xs)


def val_count(n: int, val_size: float | int) -> int:
    """Training examples ``val_size`` (a fraction, or a count) sets aside for validation.

    Raises:
        ConfigError: nothing, or everything, would be left to train on.
    """
    k = int(val_size) if isinstance(val_size, int) else int(round(float(val_size) * n))
    if not 1 <= k < n:
        raise ConfigError(
            f"data.val_size: {val_size!r} of {n} training examples leaves {n - k} to train on and {k} to "
            "validate; give a fraction in (0, 1) or a count between 1 and the training set's size"
        )
    return k


def carve_validation(
    make: Callable[[Callable[[torch.Tensor], torch.Tensor] | None], Dataset],
    labels: np.ndarray,
    val_size: float | int,
    train_transform: Any,
    eval_transform: Any,
) -> tuple[Dataset, Dataset]:
    """(train, val) from one training set: a stratified, fixed-seed split of its indices.

    ``make(transform)`` builds the training set with a transform: the validation part gets
    the evaluation transform (no augmentation), the training part the training one.
    """
    n = len(labels)
    tr, va = stratified_split(labels, val_count(n, val_size) / n, VAL_SPLIT_SEED)
    return Subset(make(train_transform), tr.tolist()), Subset(make(eval_transform), va.tolist())


def _subset(ds: Dataset, n: int | None, seed: int) -> Dataset:
    if n is None or n >= len(ds):
        return ds
    g = torch.Generator().manual_seed(seed)
    return Subset(ds, torch.randperm(len(ds), generator=g)[:n].tolist())


def load_datasets(cfg: DataConfig, *, seed: int = 0) -> Datasets:
    """Load the train, validation and test splits (downloading first if allowed and missing).

    ``train_subset`` keeps a random subset of the training split (after the validation split
    is carved out), ``eval_subset`` of the validation and test splits, drawn with ``seed``;
    give every trial the experiment's seed so all trials see the same images.

    Raises:
        ConfigError: the dataset is missing (says where it looked) or malformed on disk.
    """
    read = datasets.load(cfg)
    if read.val is None:
        train, val = carve_validation(read.train, read.labels, cfg.val_size, read.train_transform,
                                      read.eval_transform)
    else:
        train, val = read.train(read.train_transform), read.val
    test, classes = read.test, read.num_classes
    train = _subset(train, cfg.train_subset, seed)
    val = _subset(val, cfg.eval_subset, seed + 1)
    test = _subset(test, cfg.eval_subset, seed + 2)
    x0 = val[0][0]
    return Datasets(cfg.dataset, train, val, test, tuple(int(s) for s in x0.shape), classes)


# --------------------------------------------------------------------------------------
# Loaders
# --------------------------------------------------------------------------------------


class ShardSampler(Sampler[int]):
    """Every ``world_size``-th index starting at ``rank``, in order, without padding.

    For evaluation under DDP: unlike ``DistributedSampler`` it never repeats samples to even
    out the shards, so metrics summed over ranks count every held-out example exactly once.
    """

    def __init__(self, n: int, rank: int, world_size: int) -> None:
        self.indices = list(range(rank, n, world_size))

    def __iter__(self):
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)


def build_loader(
    dataset: Dataset,
    batch_size: int,
    *,
    shuffle: bool,
    rank: int = 0,
    world_size: int = 1,
    seed: int = 0,
    num_workers: int = 0,
    drop_last: bool = False,
) -> DataLoader:
    """A DataLoader for one DDP rank (``world_size`` 1: an ordinary loader).

    Training (``shuffle=True``) uses ``DistributedSampler`` with ``seed`` (one replica when not
    under DDP): call ``loader.sampler.set_epoch(epoch)`` each epoch to reshuffle; the order of an
    epoch depends on ``(seed, epoch)`` only. Evaluation (``shuffle=False``) under DDP uses
    :class:`ShardSampler`, which never duplicates examples. ``batch_size`` is per rank.
    """
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"need 0 <= rank < world_size, got rank={rank}, world_size={world_size}")
    sampler: Sampler[int] | None = None
    if shuffle:
        # A seeded permutation per epoch (set_epoch), in one process too: epoch e's order is a
        # function of (seed, e) alone, so a trial resumed at an epoch sees what it would have.
        sampler = DistributedSampler(dataset, num_replicas=world_size, rank=rank, shuffle=True, seed=seed,
                                     drop_last=drop_last)
    elif world_size > 1:
        sampler = ShardSampler(len(dataset), rank, world_size)
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=False,
        sampler=sampler,
        num_workers=num_workers,
        drop_last=drop_last,
        persistent_workers=num_workers > 0,
    )
