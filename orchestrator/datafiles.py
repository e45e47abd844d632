"""Finding, downloading and reading dataset files (no Ray import, no torch datasets).

Where ``orchestrator.data`` gets its arrays: ``data.root``, the default data directories
(``$PRUNEFRONT_DATA``, ``~/.cache/prunefront/data``, ``./data``), Debian's
``dataset-fashion-mnist`` package, or a download with torchvision's downloader (MD5-checked)
when ``data.download: true``. Digits are read from scikit-learn's data file without importing
scikit-learn.
"""

from __future__ import annotations

import gzip
import os
import pickle
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from orchestrator.config import DataConfig
from orchestrator.errors import ConfigError

__all__ = ["default_roots", "download_root", "idx_file", "imagefolder_split", "locate", "prepare",
           "read_cifar_batch", "read_digits", "read_idx"]

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


def download_root(cfg: DataConfig) -> Path:
    return Path(cfg.root) if cfg.root else Path("~/.cache/prunefront/data").expanduser()


# --------------------------------------------------------------------------------------
# Finding files
# --------------------------------------------------------------------------------------


def idx_file(directory: Path, stem: str) -> Path | None:
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
            if all(idx_file(d, s) for s in stems):
                return d
        return None
    if cfg.dataset in _CIFAR:
        _, train, test, _, _ = _CIFAR[cfg.dataset]
        for d in _cifar_candidates(cfg):
            if all((d / f).is_file() for f in train + test):
                return d
        return None
    raise AssertionError(cfg.dataset)  # pragma: no cover - only called for file datasets


def imagefolder_split(root: Path, split: str) -> Path | None:
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
        missing = [s for s in ("train", "eval") if imagefolder_split(root, s) is None]
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

    target = download_root(cfg)
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

            target = download_root(cfg)
            target.mkdir(parents=True, exist_ok=True)
            with open(target / ".prunefront-download.lock", "w") as lock:
                fcntl.flock(lock, fcntl.LOCK_EX)
                try:
                    return _find(cfg) or _download(cfg)  # another process may have finished it
                finally:
                    fcntl.flock(lock, fcntl.LOCK_UN)
        except Exception as e:  # noqa: BLE001 - network/checksum errors become one line
            raise ConfigError(
                f"data.download: downloading {cfg.dataset} into {download_root(cfg)} failed "
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
