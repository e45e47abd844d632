"""MNIST and Fashion-MNIST: LeCun's idx files (``train-images-idx3-ubyte[.gz]`` ...).

Found in ``data.root``, ``data.root/<MNIST|FashionMNIST>/raw`` (torchvision's layout),
``data.root/<name>``, the default data directories, or (Fashion-MNIST) Debian's
``dataset-fashion-mnist`` package in ``/usr/share/datasets/fashion-mnist``; downloaded with
torchvision's dataset class (every mirror tried, MD5-checked) when ``data.download: true``.
"""

from __future__ import annotations

import gzip
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch

from orchestrator.datasets.base import DATASETS, DatasetInfo, DatasetSource, Splits, resize, tensor_splits

__all__ = ["FILES", "FashionMNIST", "MNIST", "idx_file", "read_idx"]

#: split -> (images, labels) file stems; each may also be gzipped (``.gz``).
FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


def idx_file(directory: Path, stem: str) -> Path | None:
    """``directory/stem`` or ``directory/stem.gz``, whichever exists."""
    for name in (stem, stem + ".gz"):
        if (directory / name).is_file():
            return directory / name
    return None


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


@DATASETS.register("mnist")
class MNIST(DatasetSource):
    """LeCun et al. 1998's handwritten digits: 60000 training, 10000 test images, 28x28."""

    info = DatasetInfo(1, 10, 28, (0.1307,), (0.3081,))
    downloadable = True
    #: torchvision's class: the downloader, and the folder (``<root>/<class>/raw``) it fills.
    torchvision_class: ClassVar[str] = "MNIST"
    #: Where a system package installs the files (searched when ``data.root`` is null).
    system_dir: ClassVar[Path | None] = None

    def candidates(self) -> list[Path]:
        dirs = []
        for r in self.roots():
            dirs += [r, r / self.torchvision_class / "raw", r / self.name]
        if self.system_dir is not None and not self.cfg.root:
            dirs.append(Path(self.system_dir))
        return dirs

    def complete(self, directory: Path) -> bool:
        return all(idx_file(directory, stem) for pair in FILES.values() for stem in pair)

    def download(self, target: Path) -> Path:
        import torchvision.datasets as tvd

        cls = getattr(tvd, self.torchvision_class)
        # The dataset class downloads (trying each mirror), checks MD5s and unpacks into
        # <target>/<Class>/raw; we read the files ourselves afterwards.
        cls(str(target), train=True, download=True)
        return target / cls.__name__ / "raw"

    def read(self, directory: Path | None) -> Splits:
        assert directory is not None
        arrays = {}
        for split, (img_stem, lbl_stem) in FILES.items():
            images = torch.from_numpy(read_idx(idx_file(directory, img_stem)).copy()).unsqueeze(1)
            labels = torch.from_numpy(read_idx(idx_file(directory, lbl_stem)).astype(np.int64))
            arrays[split] = (images, labels)
        t = resize(self.cfg.image_size)
        return tensor_splits(arrays["train"], arrays["test"], self.info.mean, self.info.std,
                             int(self.info.num_classes or 0), t, t)


@DATASETS.register("fashion_mnist")
class FashionMNIST(MNIST):
    """Xiao et al. 2017's Zalando clothing images, MNIST's layout and sizes."""

    info = DatasetInfo(1, 10, 28, (0.2860,), (0.3530,))
    torchvision_class = "FashionMNIST"
    system_dir = Path("/usr/share/datasets/fashion-mnist")
    hint = "install Debian's dataset-fashion-mnist, "
