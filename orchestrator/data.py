"""Datasets and data loaders (no Ray import).

Every dataset comes as three splits (docs/evaluation.md):

* **train**: what trials fine-tune on;
* **val**: carved from the training data (stratified, ``data.val_size`` of it, a fixed seed
  independent of the experiment seed, so every experiment validates on the same images),
  or the dataset's own validation split where it has one (imagefolder with ``val/`` *and*
  ``test/``). Every decision of the search uses it: rungs, the kept epoch, fronts, knee;
* **test**: the dataset's held-out test split, evaluated for the dense model and each kept
  model only, and reported beside the validation figures; never used to choose anything.

Datasets, by ``data.dataset``:

* ``digits``: scikit-learn's bundled 8x8 digits (offline), a fixed stratified 75/25
  train/test split (seed 0, whatever the experiment seed).
* ``mnist``, ``fashion_mnist``: the idx files (``train-images-idx3-ubyte[.gz]`` ...), found in
  ``data.root``, ``data.root/<MNIST|FashionMNIST>/raw`` (torchvision's layout), the default
  data directories, or Debian's ``dataset-fashion-mnist`` package
  (``/usr/share/datasets/fashion-mnist``); downloaded with torchvision when
  ``data.download: true`` and not found.
* ``cifar10``, ``cifar100``: the python pickle batches (``cifar-10-batches-py``,
  ``cifar-100-python``), found or downloaded likewise.
* ``imagefolder``: ``data.root/train/<class>/*`` plus ``val/`` and/or ``test/``, read by
  ``torchvision.datasets.ImageFolder``: with both, ``val/`` validates and ``test/`` tests;
  with one of them (ImageNet's ``val/`` is its test set in practice), that one is the test
  split and the validation split is carved from ``train/``.

Default data directories: ``$PRUNEFRONT_DATA``, ``~/.cache/prunefront/data``, ``./data``.
Downloads go to ``data.root`` or ``~/.cache/prunefront/data``. In a search, call
:func:`prepare` once in the driver before the trials start, so DDP workers never race to
download the same files.
"""

from __future__ import annotations

import pickle
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler, Subset

from orchestrator.config import DataConfig
from orchestrator.datafiles import (  # noqa: F401  (re-exported: data.locate, data.read_idx, ...)
    _CIFAR,
    _IDX_DATASETS,
    _IDX_FILES,
    default_roots,
    download_root,
    idx_file,
    imagefolder_split,
    locate,
    prepare,
    read_cifar_batch,
    read_digits,
    read_idx,
)
from orchestrator.errors import ConfigError

__all__ = [
    "DATASET_INFO",
    "DatasetInfo",
    "Datasets",
    "carve_validation",
    "ShardSampler",
    "TensorImages",
    "build_loader",
    "default_roots",
    "load_datasets",
    "locate",
    "prepare",
    "read_cifar_batch",
    "read_digits",
    "read_idx",
    "stratified_split",
    "val_count",
]

#: Fixed seed of the digits train/test split (independent of the experiment seed).
DIGITS_SPLIT_SEED = 0
DIGITS_HELD_OUT = 0.25
#: Fixed seed of every train/validation split (independent of the experiment seed).
VAL_SPLIT_SEED = 0


@dataclass(frozen=True)
class DatasetInfo:
    """Static facts of a dataset (``imagefolder``'s class count is read from disk)."""

    name: str
    in_channels: int
    num_classes: int | None
    image_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]


# Per-channel statistics of the training sets (commonly published values); digits are
# standardised with statistics computed on its training split instead.
DATASET_INFO: dict[str, DatasetInfo] = {
    "digits": DatasetInfo("digits", 1, 10, 8, (0.0,), (1.0,)),
    "mnist": DatasetInfo("mnist", 1, 10, 28, (0.1307,), (0.3081,)),
    "fashion_mnist": DatasetInfo("fashion_mnist", 1, 10, 28, (0.2860,), (0.3530,)),
    "cifar10": DatasetInfo("cifar10", 3, 10, 32, (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": DatasetInfo("cifar100", 3, 100, 32, (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
    "imagefolder": DatasetInfo("imagefolder", 3, None, 224, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
}

# --------------------------------------------------------------------------------------
# Datasets
# --------------------------------------------------------------------------------------


class TensorImages(Dataset):
    """Images held in memory as a ``[N, C, H, W]`` tensor, normalised per item.

    uint8 images are scaled to [0, 1] first; ``transform`` (augmentation / resizing) runs on
    the normalised float tensor. Keeping uint8 in memory costs 4x less than floats.
    """

    def __init__(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        mean: Sequence[float],
        std: Sequence[float],
        transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
    ) -> None:
        if images.dim() != 4 or len(images) != len(labels):
            raise ValueError(f"need images [N, C, H, W] and N labels, got {tuple(images.shape)} and {len(labels)}")
        self.images = images
        self.labels = labels.long()
        self.mean = torch.tensor(mean, dtype=torch.float32).view(-1, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(-1, 1, 1)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        x = self.images[i]
        x = x.float() / 255.0 if x.dtype == torch.uint8 else x.float()
        x = (x - self.mean) / self.std
        if self.transform is not None:
            x = self.transform(x)
        return x, int(self.labels[i])


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


def stratified_split(y: np.ndarray, held_out: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Sorted ``(train, held_out)`` indices with each class held out in proportion.

    ``ceil(held_out * n)`` indices are held out in all; each class gets the floor of its
    share, and the remaining places go to the classes with the largest fractional parts
    (ties to the smaller label). Which examples of a class are held out is a seeded
    permutation.
    """
    rng = np.random.default_rng(seed)
    classes, counts = np.unique(y, return_counts=True)
    total = int(np.ceil(held_out * len(y)))
    quota = counts * total / len(y)
    take = np.floor(quota).astype(int)
    extra = total - int(take.sum())
    order = np.lexsort((classes, -(quota - take)))  # largest fraction first, then label
    take[order[:extra]] += 1
    held: list[np.ndarray] = []
    for c, k in zip(classes, take):
        members = np.flatnonzero(y == c)
        held.append(rng.permutation(members)[:k])
    held_idx = np.sort(np.concatenate(held))
    train_idx = np.setdiff1d(np.arange(len(y)), held_idx)
    return train_idx, held_idx


Splits = tuple[Dataset, Dataset, Dataset, int]


def _digits(cfg: DataConfig) -> Splits:
    x, y = read_digits()
    tr, te = stratified_split(y, DIGITS_HELD_OUT, DIGITS_SPLIT_SEED)
    x_tr = torch.tensor(x[tr], dtype=torch.float32).view(-1, 1, 8, 8) / 16.0
    x_te = torch.tensor(x[te], dtype=torch.float32).view(-1, 1, 8, 8) / 16.0
    mean, std = float(x_tr.mean()), float(x_tr.std())
    t = _resize(cfg.image_size)
    train, val = carve_validation(lambda tf: TensorImages(x_tr, torch.tensor(y[tr]), (mean,), (std,), tf),
                                  y[tr], cfg.val_size, t, t)
    return train, val, TensorImages(x_te, torch.tensor(y[te]), (mean,), (std,), t), 10


def _resize(size: int | None) -> Callable[[torch.Tensor], torch.Tensor] | None:
    if size is None:
        return None
    from torchvision.transforms import v2

    return v2.Resize((size, size), antialias=True)


def _compose(*ts: Callable[[torch.Tensor], torch.Tensor] | None) -> Callable[[torch.Tensor], torch.Tensor] | None:
    ts = tuple(t for t in ts if t is not None)
    if not ts:
        return None
    from torchvision.transforms import v2

    return ts[0] if len(ts) == 1 else v2.Compose(list(ts))


def _idx_dataset(cfg: DataConfig, directory: Path) -> Splits:
    info = DATASET_INFO[cfg.dataset]
    arrays = {}
    for split in ("train", "eval"):
        img_stem, lbl_stem = _IDX_FILES[split]
        images = torch.from_numpy(read_idx(idx_file(directory, img_stem)).copy()).unsqueeze(1)
        labels = torch.from_numpy(read_idx(idx_file(directory, lbl_stem)).astype(np.int64))
        arrays[split] = (images, labels)
    t = _resize(cfg.image_size)
    images, labels = arrays["train"]
    train, val = carve_validation(lambda tf: TensorImages(images, labels, info.mean, info.std, tf),
                                  labels.numpy(), cfg.val_size, t, t)
    return train, val, TensorImages(*arrays["eval"], info.mean, info.std, t), 10


def _cifar_dataset(cfg: DataConfig, directory: Path) -> Splits:
    info = DATASET_INFO[cfg.dataset]
    _, train_files, test_files, key, _ = _CIFAR[cfg.dataset]
    arrays = {}
    for split, files in (("train", train_files), ("eval", test_files)):
        parts = [read_cifar_batch(directory / f, key) for f in files]
        images = torch.from_numpy(np.concatenate([p[0] for p in parts])).permute(0, 3, 1, 2).contiguous()
        arrays[split] = (images, torch.from_numpy(np.concatenate([p[1] for p in parts])))
    augment = None
    if cfg.augment:
        from torchvision.transforms import v2

        # The standard CIFAR augmentation (He et al. 2016): 4-pixel padded crops, flips.
        augment = v2.Compose([v2.RandomCrop(32, padding=4), v2.RandomHorizontalFlip()])
    plain = _resize(cfg.image_size)
    images, labels = arrays["train"]
    train, val = carve_validation(lambda tf: TensorImages(images, labels, info.mean, info.std, tf),
                                  labels.numpy(), cfg.val_size, _compose(augment, plain), plain)
    return train, val, TensorImages(*arrays["eval"], info.mean, info.std, plain), int(info.num_classes or 0)


def _imagefolder(cfg: DataConfig, root: Path) -> Splits:
    from torchvision import datasets
    from torchvision.transforms import v2

    info = DATASET_INFO["imagefolder"]
    size = cfg.image_size or info.image_size
    tail = [v2.ToImage(), v2.ToDtype(torch.float32, scale=True), v2.Normalize(info.mean, info.std)]
    eval_t = v2.Compose([v2.Resize(int(round(size * 256 / 224)), antialias=True), v2.CenterCrop(size), *tail])
    train_t = (
        v2.Compose([v2.RandomResizedCrop(size, antialias=True), v2.RandomHorizontalFlip(), *tail])
        if cfg.augment
        else eval_t
    )
    train_dir = str(imagefolder_split(root, "train"))
    own_val, test_dir = (root / "val", root / "test")
    if own_val.is_dir() and test_dir.is_dir():
        # The dataset's own validation split.
        train = datasets.ImageFolder(train_dir, transform=train_t)
        val = datasets.ImageFolder(str(own_val), transform=eval_t)
        test = datasets.ImageFolder(str(test_dir), transform=eval_t)
    else:
        base = datasets.ImageFolder(train_dir)
        train, val = carve_validation(lambda tf: datasets.ImageFolder(train_dir, transform=tf),
                                      np.asarray(base.targets), cfg.val_size, train_t, eval_t)
        test = datasets.ImageFolder(str(imagefolder_split(root, "eval")), transform=eval_t)
        if base.classes != test.classes:
            raise ConfigError(
                f"data.root: train/ and val/ of {str(root)!r} have different classes; both need the same class folders"
            )
        return train, val, test, len(base.classes)
    if not (train.classes == val.classes == test.classes):
        raise ConfigError(
            f"data.root: train/, val/ and test/ of {str(root)!r} have different classes; all need the same class folders"
        )
    return train, val, test, len(train.classes)


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
    if cfg.dataset == "digits":
        train, val, test, classes = _digits(cfg)
    elif cfg.dataset == "imagefolder":
        train, val, test, classes = _imagefolder(cfg, locate(cfg))
    else:
        directory = prepare(cfg)
        if directory is None:  # download allowed but the download produced nothing
            raise ConfigError(
                f"data.dataset: {cfg.dataset} not found after downloading into {download_root(cfg)}; "
                "place the files there or set data.root"
            )
        try:
            if cfg.dataset in _IDX_DATASETS:
                train, val, test, classes = _idx_dataset(cfg, directory)
            else:
                train, val, test, classes = _cifar_dataset(cfg, directory)
        except (OSError, ValueError, KeyError, pickle.UnpicklingError, EOFError) as e:
            raise ConfigError(
                f"data.root: {cfg.dataset} files in {str(directory)!r} are unreadable "
                f"({e.__class__.__name__}: {e}); replace them or set data.download: true"
            ) from None
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
