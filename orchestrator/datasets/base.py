"""What every dataset module shares: the registry, the base class, finding and downloading.

A dataset is a :class:`DatasetSource` subclass registered under its config name with
``@DATASETS.register(name)``. It holds its static facts (:class:`DatasetInfo`), where its files
may be (:meth:`~DatasetSource.candidates`, :meth:`~DatasetSource.complete`), how to download
them (:meth:`~DatasetSource.download`) and how to read them (:meth:`~DatasetSource.read`,
which returns :class:`Splits`). What is the same for every dataset lives here: the default
data directories, the download lock, the one-line errors. The validation split, subsets and
loaders are ``orchestrator.data``'s (no Ray import here, and no import of the config: a
dataset reads only the ``data:`` fields named in :class:`DataOptions`).
"""

from __future__ import annotations

import os
import pickle
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, Protocol

import numpy as np
import torch
from torch.utils.data import Dataset

from orchestrator.errors import ConfigError
from pruners.registry import Registry

__all__ = ["DATASETS", "DataOptions", "DatasetInfo", "DatasetSource", "Splits", "TensorImages", "Transform",
           "compose", "default_roots", "download_root", "load", "locate", "prepare", "resize", "source",
           "stratified_split", "tensor_splits"]

Transform = Callable[[torch.Tensor], torch.Tensor]


class DataOptions(Protocol):
    """The ``data:`` fields a dataset reads (``orchestrator.config.DataConfig`` has them)."""

    dataset: str
    root: str | None
    download: bool
    image_size: int | None
    augment: bool


@dataclass(frozen=True)
class DatasetInfo:
    """Static facts of a dataset (``num_classes`` None: read from disk, as imagefolder's)."""

    in_channels: int
    num_classes: int | None
    image_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]


@dataclass
class Splits:
    """What a dataset reads: its training set (built with a given transform) and its test set.

    ``val`` is the dataset's own validation split; when None, ``orchestrator.data`` carves
    one from the training set, stratified by ``labels``.
    """

    train: Callable[[Transform | None], Dataset]
    labels: np.ndarray | None
    test: Dataset
    num_classes: int
    train_transform: Transform | None = None
    eval_transform: Transform | None = None
    val: Dataset | None = None


class DatasetSource:
    """One dataset: its facts, where its files are, how to download and read them.

    The finding methods here serve datasets of files in a directory: a subclass names the
    candidate directories and when a directory is complete. Datasets without files
    (scikit-learn's digits) or with their own layout rules (imagefolder) override
    :meth:`locate`.

    Args:
        cfg: The ``data:`` section.
    """

    info: ClassVar[DatasetInfo]
    #: Whether :meth:`download` can fetch the files (``data.download: true``).
    downloadable: ClassVar[bool] = False
    #: Said after "not found; looked in ..." before the generic advice.
    hint: ClassVar[str] = ""

    def __init__(self, cfg: DataOptions) -> None:
        self.cfg = cfg

    @property
    def name(self) -> str:
        return self.cfg.dataset

    def check(self) -> None:
        """Rules between ``data:`` fields this dataset needs, checked with the config."""

    def roots(self) -> list[Path]:
        """``data.root`` when set, else the default data directories."""
        return [Path(self.cfg.root)] if self.cfg.root else default_roots()

    def candidates(self) -> list[Path]:
        """Directories that may hold the files, in the order they are searched."""
        return []

    def complete(self, directory: Path) -> bool:
        """Whether ``directory`` holds every file the dataset reads."""
        return False

    def find(self) -> Path | None:
        return next((d for d in self.candidates() if self.complete(d)), None)

    def locate(self) -> Path | None:
        """Where the files are; None when not found yet but ``data.download`` allows fetching.

        Raises:
            ConfigError: the dataset is missing; the message lists every place searched.
        """
        found = self.find()
        if found is not None or (self.cfg.download and self.downloadable):
            return found
        looked = ", ".join(str(p) for p in self.candidates())
        raise ConfigError(
            f"data.dataset: {self.name} not found; looked in {looked}; {self.hint}"
            "set data.root to where it is, or data.download: true"
        )

    def download(self, target: Path) -> Path:
        """Fetch the files into ``target``; returns the directory that holds them."""
        raise NotImplementedError(f"{self.name} cannot be downloaded")

    def read(self, directory: Path | None) -> Splits:
        """Read the files found in ``directory`` (None for a dataset without files)."""
        raise NotImplementedError


DATASETS: Registry[type[DatasetSource]] = Registry("dataset")


def source(cfg: DataOptions) -> DatasetSource:
    """The registered dataset ``cfg.dataset`` (raises ``ValueError`` naming the choices)."""
    return DATASETS.get(cfg.dataset)(cfg)


def default_roots() -> list[Path]:
    """Directories searched when ``data.root`` is null, in order."""
    roots = []
    if os.environ.get("PRUNEFRONT_DATA"):
        roots.append(Path(os.environ["PRUNEFRONT_DATA"]).expanduser())
    roots += [Path("~/.cache/prunefront/data").expanduser(), Path("data").absolute()]
    return roots


def download_root(cfg: DataOptions) -> Path:
    return Path(cfg.root) if cfg.root else Path("~/.cache/prunefront/data").expanduser()


def locate(cfg: DataOptions) -> Path | None:
    """Where the dataset's files are (None: it has none, or may still be downloaded).

    Raises:
        ConfigError: the dataset is missing; the message lists every place searched.
    """
    return source(cfg).locate()


def prepare(cfg: DataOptions) -> Path | None:
    """Locate the dataset, downloading it first when allowed and missing.

    Downloads hold an exclusive lock on ``<download root>/.prunefront-download.lock``, so DDP
    workers of one node that all call this wait for one download instead of writing the
    same files at once.
    """
    return _fetch(source(cfg))


def _fetch(src: DatasetSource) -> Path | None:
    cfg = src.cfg
    found = src.locate()
    if found is not None or not (cfg.download and src.downloadable):
        return found
    target = download_root(cfg)
    try:
        import fcntl

        target.mkdir(parents=True, exist_ok=True)
        with open(target / ".prunefront-download.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                return src.find() or src.download(target)  # another process may have finished it
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)
    except Exception as e:  # noqa: BLE001 - network/checksum errors become one line
        raise ConfigError(
            f"data.download: downloading {cfg.dataset} into {target} failed "
            f"({e.__class__.__name__}: {' '.join(str(e).split())[:200]}); place the files there "
            "or set data.root"
        ) from None


def load(cfg: DataOptions) -> Splits:
    """Find (downloading if allowed) and read the dataset.

    Raises:
        ConfigError: the dataset is missing (says where it looked) or malformed on disk.
    """
    src = source(cfg)
    directory = _fetch(src)
    if directory is None:  # a dataset without files (digits)
        return src.read(None)
    try:
        return src.read(directory)
    except ConfigError:
        raise
    except (OSError, ValueError, KeyError, pickle.UnpicklingError, EOFError) as e:
        raise ConfigError(
            f"data.root: {cfg.dataset} files in {str(directory)!r} are unreadable "
            f"({e.__class__.__name__}: {e}); replace them or set data.download: true"
        ) from None


# --------------------------------------------------------------------------------------
# What the readers build with
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
        transform: Transform | None = None,
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


def tensor_splits(train: tuple[torch.Tensor, torch.Tensor], test: tuple[torch.Tensor, torch.Tensor],
                  mean: Sequence[float], std: Sequence[float], num_classes: int,
                  train_transform: Transform | None, eval_transform: Transform | None) -> Splits:
    """:class:`Splits` of in-memory ``(images, labels)`` training and test sets."""
    images, labels = train
    return Splits(lambda tf: TensorImages(images, labels, mean, std, tf), labels.numpy(),
                  TensorImages(*test, mean, std, eval_transform), num_classes, train_transform, eval_transform)


def resize(size: int | None) -> Transform | None:
    if size is None:
        return None
    from torchvision.transforms import v2

    return v2.Resize((size, size), antialias=True)


def compose(*ts: Transform | None) -> Transform | None:
    ts = tuple(t for t in ts if t is not None)
    if not ts:
        return None
    from torchvision.transforms import v2

    return ts[0] if len(ts) == 1 else v2.Compose(list(ts))


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
