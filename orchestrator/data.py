"""Datasets and data loaders (no Ray import).

Datasets, by ``data.dataset``:

* ``digits``: scikit-learn's bundled 8x8 digits (offline), a fixed stratified 75/25
  train/held-out split (seed 0, whatever the experiment seed, so every experiment is judged
  on the same held-out images).
* ``mnist``, ``fashion_mnist``: the idx files (``train-images-idx3-ubyte[.gz]`` ...), found in
  ``data.root``, ``data.root/<MNIST|FashionMNIST>/raw`` (torchvision's layout), the default
  data directories, or Debian's ``dataset-fashion-mnist`` package
  (``/usr/share/datasets/fashion-mnist``); downloaded with torchvision when
  ``data.download: true`` and not found.
* ``cifar10``, ``cifar100``: the python pickle batches (``cifar-10-batches-py``,
  ``cifar-100-python``), found or downloaded likewise.
* ``imagefolder``: ``data.root/train/<class>/*`` and ``data.root/val/<class>/*`` (or
  ``test/``), read by ``torchvision.datasets.ImageFolder``.

Default data directories: ``$PRUNEFRONT_DATA``, ``~/.cache/prunefront/data``, ``./data``.
Downloads go to ``data.root`` or ``~/.cache/prunefront/data``. In a search, call
:func:`prepare` once in the driver before the trials start, so DDP workers never race to
download the same files.
"""

from __future__ import annotations

import gzip
import os
import pickle
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler, Subset

from orchestrator.config import ConfigError, DataConfig

__all__ = [
    "DATASET_INFO",
    "DatasetInfo",
    "Datasets",
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
]

#: Fixed seed of the digits train/held-out split (independent of the experiment seed).
DIGITS_SPLIT_SEED = 0
DIGITS_HELD_OUT = 0.25


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

_IDX_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "eval": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
# dataset -> (torchvision class name = its folder under root, Debian package directory)
_IDX_DATASETS = {
    "mnist": ("MNIST", None),
    "fashion_mnist": ("FashionMNIST", "/usr/share/datasets/fashion-mnist"),
}
_CIFAR = {
    # dataset -> (folder, train files, eval files, label key, torchvision class name)
    "cifar10": ("cifar-10-batches-py", [f"data_batch_{i}" for i in range(1, 6)], ["test_batch"], "labels", "CIFAR10"),
    "cifar100": ("cifar-100-python", ["train"], ["test"], "fine_labels", "CIFAR100"),
}


def default_roots() -> list[Path]:
    """Directories searched when ``data.root`` is null, in order."""
    roots = []
    if os.environ.get("PRUNEFRONT_DATA"):
        roots.append(Path(os.environ["PRUNEFRONT_DATA"]).expanduser())
    roots += [Path("~/.cache/prunefront/data").expanduser(), Path("data").absolute()]
    return roots


def _download_root(cfg: DataConfig) -> Path:
    return Path(cfg.root) if cfg.root else Path("~/.cache/prunefront/data").expanduser()


# --------------------------------------------------------------------------------------
# Finding files
# --------------------------------------------------------------------------------------


def _idx_file(directory: Path, stem: str) -> Path | None:
    for name in (stem, stem + ".gz"):
        if (directory / name).is_file():
            return directory / name
    return None


def _idx_candidates(cfg: DataConfig) -> list[Path]:
    folder, debian = _IDX_DATASETS[cfg.dataset]
    roots = [Path(cfg.root)] if cfg.root else default_roots()
    dirs = []
    for r in roots:
        dirs += [r, r / folder / "raw", r / cfg.dataset]
    if debian and not cfg.root:
        dirs.append(Path(debian))
    return dirs


def _cifar_candidates(cfg: DataConfig) -> list[Path]:
    folder = _CIFAR[cfg.dataset][0]
    roots = [Path(cfg.root)] if cfg.root else default_roots()
    dirs = []
    for r in roots:
        dirs += [r / folder, r]
    return dirs


def _find(cfg: DataConfig) -> Path | None:
    if cfg.dataset in _IDX_DATASETS:
        stems = [s for pair in _IDX_FILES.values() for s in pair]
        for d in _idx_candidates(cfg):
            if all(_idx_file(d, s) for s in stems):
                return d
        return None
    if cfg.dataset in _CIFAR:
        _, train, test, _, _ = _CIFAR[cfg.dataset]
        for d in _cifar_candidates(cfg):
            if all((d / f).is_file() for f in train + test):
                return d
        return None
    raise AssertionError(cfg.dataset)  # pragma: no cover - only called for file datasets


def _imagefolder_split(root: Path, split: str) -> Path | None:
    names = ("train",) if split == "train" else ("val", "test")
    for n in names:
        if (root / n).is_dir():
            return root / n
    return None


def locate(cfg: DataConfig) -> Path | None:
    """Where the dataset's files are (None for ``digits``, which ships with scikit-learn).

    With ``download: true`` a dataset that is not found yet is fine (returns None).

    Raises:
        ConfigError: the dataset is missing; the message lists every place searched.
    """
    if cfg.dataset == "digits":
        return None
    if cfg.dataset == "imagefolder":
        root = Path(cfg.root or "")
        if not root.is_dir():
            raise ConfigError(
                f"data.root: imagefolder directory {str(root)!r} does not exist; it must hold train/ and "
                "val/ (or test/) with one sub-directory of images per class"
            )
        missing = [s for s in ("train", "eval") if _imagefolder_split(root, s) is None]
        if missing:
            what = "train/" if "train" in missing else "val/ (or test/)"
            raise ConfigError(
                f"data.root: {str(root)!r} has no {what}; imagefolder needs train/ and val/ (or test/), "
                "one sub-directory of images per class"
            )
        return root
    found = _find(cfg)
    if found is not None or cfg.download:
        return found
    looked = _idx_candidates(cfg) if cfg.dataset in _IDX_DATASETS else _cifar_candidates(cfg)
    hint = "; install Debian's dataset-fashion-mnist, " if cfg.dataset == "fashion_mnist" else "; "
    raise ConfigError(
        f"data.dataset: {cfg.dataset} not found; looked in {', '.join(str(p) for p in looked)}"
        f"{hint}set data.root to where it is, or data.download: true"
    )


def _download(cfg: DataConfig) -> Path:
    """Download with torchvision's downloader (checksums verified) into the download root."""
    import torchvision.datasets as tvd
    from torchvision.datasets.utils import download_and_extract_archive

    target = _download_root(cfg)
    target.mkdir(parents=True, exist_ok=True)
    if cfg.dataset in _IDX_DATASETS:
        cls = getattr(tvd, _IDX_DATASETS[cfg.dataset][0])
        # The dataset class downloads (trying each mirror), checks MD5s and unpacks into
        # <target>/<Class>/raw; we read the files ourselves afterwards.
        cls(str(target), train=True, download=True)
        return target / cls.__name__ / "raw"
    folder, _, _, _, clsname = _CIFAR[cfg.dataset]
    cls = getattr(tvd, clsname)
    download_and_extract_archive(cls.url, str(target), filename=cls.filename, md5=cls.tgz_md5)
    return target / folder


def prepare(cfg: DataConfig) -> Path | None:
    """Locate the dataset, downloading it first when allowed and missing.

    Downloads hold an exclusive lock on ``<download root>/.prunefront-download.lock``, so DDP
    workers of one node that all call this wait for one download instead of writing the
    same files at once; still, calling it once in the driver before the trials is cheaper.
    """
    found = locate(cfg)
    if found is None and cfg.download and cfg.dataset not in ("digits", "imagefolder"):
        try:
            import fcntl

            target = _download_root(cfg)
            target.mkdir(parents=True, exist_ok=True)
            with open(target / ".prunefront-download.lock", "w") as lock:
                fcntl.flock(lock, fcntl.LOCK_EX)
                try:
                    return _find(cfg) or _download(cfg)  # another process may have finished it
                finally:
                    fcntl.flock(lock, fcntl.LOCK_UN)
        except Exception as e:  # noqa: BLE001 - network/checksum errors become one line
            raise ConfigError(
                f"data.download: downloading {cfg.dataset} into {_download_root(cfg)} failed "
                f"({e.__class__.__name__}: {' '.join(str(e).split())[:200]}); place the files there "
                "or set data.root"
            ) from None
    return found


# --------------------------------------------------------------------------------------
# Readers
# --------------------------------------------------------------------------------------


def read_idx(path: str | os.PathLike[str]) -> np.ndarray:
    """Read an idx file (LeCun's MNIST format), gzip-compressed or not."""
    path = Path(path)
    opener: Callable[..., Any] = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        raw = f.read()
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0:
        raise ValueError(f"{path} is not an idx file (bad magic number)")
    dtypes = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
    if raw[2] not in dtypes:
        raise ValueError(f"{path}: unknown idx data type 0x{raw[2]:02x}")
    ndim = raw[3]
    shape = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    data = np.frombuffer(raw, dtype=dtypes[raw[2]], offset=4 + 4 * ndim)
    if data.size != int(np.prod(shape)):
        raise ValueError(f"{path}: expected {int(np.prod(shape))} values for shape {shape}, found {data.size}")
    return data.reshape(shape)


def read_cifar_batch(path: str | os.PathLike[str], label_key: str = "labels") -> tuple[np.ndarray, np.ndarray]:
    """Read one CIFAR python batch: images ``[N, 32, 32, 3]`` uint8 and labels ``[N]``."""
    with open(path, "rb") as f:
        entry = pickle.load(f, encoding="latin1")
    images = np.asarray(entry["data"], dtype=np.uint8).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
    return images, np.asarray(entry[label_key], dtype=np.int64)


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
    """Train and held-out sets plus what a model needs to know about them."""

    name: str
    train: Dataset
    eval: Dataset
    input_shape: tuple[int, int, int]
    num_classes: int

    def example_inputs(self, batch_size: int = 1) -> torch.Tensor:
        """The first ``batch_size`` held-out images as one batch (for tracing and FLOPs)."""
        xs = [self.eval[i][0] for i in range(min(batch_size, len(self.eval)))]
        return torch.stack(xs)


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


def _digits(cfg: DataConfig) -> tuple[Dataset, Dataset, int]:
    x, y = read_digits()
    tr, ev = stratified_split(y, DIGITS_HELD_OUT, DIGITS_SPLIT_SEED)
    x_tr = torch.tensor(x[tr], dtype=torch.float32).view(-1, 1, 8, 8) / 16.0
    x_ev = torch.tensor(x[ev], dtype=torch.float32).view(-1, 1, 8, 8) / 16.0
    mean, std = float(x_tr.mean()), float(x_tr.std())
    t = _resize(cfg.image_size)
    return (
        TensorImages(x_tr, torch.tensor(y[tr]), (mean,), (std,), t),
        TensorImages(x_ev, torch.tensor(y[ev]), (mean,), (std,), t),
        10,
    )


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


def _idx_dataset(cfg: DataConfig, directory: Path) -> tuple[Dataset, Dataset, int]:
    info = DATASET_INFO[cfg.dataset]
    out = []
    for split in ("train", "eval"):
        img_stem, lbl_stem = _IDX_FILES[split]
        images = torch.from_numpy(read_idx(_idx_file(directory, img_stem)).copy()).unsqueeze(1)
        labels = torch.from_numpy(read_idx(_idx_file(directory, lbl_stem)).astype(np.int64))
        out.append(TensorImages(images, labels, info.mean, info.std, _resize(cfg.image_size)))
    return out[0], out[1], 10


def _cifar_dataset(cfg: DataConfig, directory: Path) -> tuple[Dataset, Dataset, int]:
    info = DATASET_INFO[cfg.dataset]
    _, train, test, key, _ = _CIFAR[cfg.dataset]
    out = []
    for split, files in (("train", train), ("eval", test)):
        parts = [read_cifar_batch(directory / f, key) for f in files]
        images = torch.from_numpy(np.concatenate([p[0] for p in parts])).permute(0, 3, 1, 2).contiguous()
        labels = torch.from_numpy(np.concatenate([p[1] for p in parts]))
        augment = None
        if split == "train" and cfg.augment:
            from torchvision.transforms import v2

            # The standard CIFAR augmentation (He et al. 2016): 4-pixel padded crops, flips.
            augment = v2.Compose([v2.RandomCrop(32, padding=4), v2.RandomHorizontalFlip()])
        out.append(TensorImages(images, labels, info.mean, info.std, _compose(augment, _resize(cfg.image_size))))
    return out[0], out[1], int(info.num_classes or 0)


def _imagefolder(cfg: DataConfig, root: Path) -> tuple[Dataset, Dataset, int]:
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
    train = datasets.ImageFolder(str(_imagefolder_split(root, "train")), transform=train_t)
    held_out = datasets.ImageFolder(str(_imagefolder_split(root, "eval")), transform=eval_t)
    if train.classes != held_out.classes:
        raise ConfigError(
            f"data.root: train/ and val/ of {str(root)!r} have different classes; both need the same class folders"
        )
    return train, held_out, len(train.classes)


def _subset(ds: Dataset, n: int | None, seed: int) -> Dataset:
    if n is None or n >= len(ds):
        return ds
    g = torch.Generator().manual_seed(seed)
    return Subset(ds, torch.randperm(len(ds), generator=g)[:n].tolist())


def load_datasets(cfg: DataConfig, *, seed: int = 0) -> Datasets:
    """Load train and held-out sets (downloading first if allowed and missing).

    ``train_subset`` / ``eval_subset`` keep a random subset drawn with ``seed``; give every
    trial the experiment's seed so all trials see the same images.

    Raises:
        ConfigError: the dataset is missing (says where it looked) or malformed on disk.
    """
    if cfg.dataset == "digits":
        train, held_out, classes = _digits(cfg)
    elif cfg.dataset == "imagefolder":
        train, held_out, classes = _imagefolder(cfg, locate(cfg))
    else:
        directory = prepare(cfg)
        if directory is None:  # download allowed but the download produced nothing
            raise ConfigError(
                f"data.dataset: {cfg.dataset} not found after downloading into {_download_root(cfg)}; "
                "place the files there or set data.root"
            )
        try:
            if cfg.dataset in _IDX_DATASETS:
                train, held_out, classes = _idx_dataset(cfg, directory)
            else:
                train, held_out, classes = _cifar_dataset(cfg, directory)
        except (OSError, ValueError, KeyError, pickle.UnpicklingError, EOFError) as e:
            raise ConfigError(
                f"data.root: {cfg.dataset} files in {str(directory)!r} are unreadable "
                f"({e.__class__.__name__}: {e}); replace them or set data.download: true"
            ) from None
    train = _subset(train, cfg.train_subset, seed)
    held_out = _subset(held_out, cfg.eval_subset, seed + 1)
    x0 = held_out[0][0]
    return Datasets(cfg.dataset, train, held_out, tuple(int(s) for s in x0.shape), classes)


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

    Training (``shuffle=True``) under DDP uses ``DistributedSampler`` with ``seed``: call
    ``loader.sampler.set_epoch(epoch)`` each epoch so shards reshuffle. Evaluation
    (``shuffle=False``) uses :class:`ShardSampler`, which never duplicates examples.
    ``batch_size`` is per rank.
    """
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"need 0 <= rank < world_size, got rank={rank}, world_size={world_size}")
    sampler: Sampler[int] | None = None
    generator = None
    if world_size > 1:
        sampler = (
            DistributedSampler(dataset, num_replicas=world_size, rank=rank, shuffle=True, seed=seed, drop_last=drop_last)
            if shuffle
            else ShardSampler(len(dataset), rank, world_size)
        )
    elif shuffle:
        generator = torch.Generator().manual_seed(seed)
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=shuffle and sampler is None,
        sampler=sampler,
        generator=generator,
        num_workers=num_workers,
        drop_last=drop_last,
        persistent_workers=num_workers > 0,
    )
