"""CIFAR-10 and CIFAR-100 (Krizhevsky 2009): the python pickle batches.

Found in ``<root>/cifar-10-batches-py`` / ``<root>/cifar-100-python`` (or ``<root>`` itself)
for ``data.root`` or each default data directory; downloaded and unpacked with torchvision's
downloader (MD5-checked) when ``data.download: true``.
"""

from __future__ import annotations

import os
import pickle
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch

from orchestrator.datasets.base import DATASETS, DatasetInfo, DatasetSource, Splits, compose, resize, tensor_splits

__all__ = ["CIFAR10", "CIFAR100", "read_cifar_batch"]


def read_cifar_batch(path: str | os.PathLike[str], label_key: str = "labels") -> tuple[np.ndarray, np.ndarray]:
    """Read one CIFAR python batch: images ``[N, 32, 32, 3]`` uint8 and labels ``[N]``."""
    with open(path, "rb") as f:
        entry = pickle.load(f, encoding="latin1")
    images = np.asarray(entry["data"], dtype=np.uint8).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
    return images, np.asarray(entry[label_key], dtype=np.int64)


@DATASETS.register("cifar10")
class CIFAR10(DatasetSource):
    """60000 32x32 colour images of 10 classes: five training batches and one test batch."""

    info = DatasetInfo(3, 10, 32, (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616))
    downloadable = True
    #: The folder the archive unpacks to.
    folder: ClassVar[str] = "cifar-10-batches-py"
    train_files: ClassVar[tuple[str, ...]] = tuple(f"data_batch_{i}" for i in range(1, 6))
    test_files: ClassVar[tuple[str, ...]] = ("test_batch",)
    label_key: ClassVar[str] = "labels"
    #: torchvision's class, whose ``url``, ``filename`` and ``tgz_md5`` name the archive.
    torchvision_class: ClassVar[str] = "CIFAR10"

    def candidates(self) -> list[Path]:
        return [d for r in self.roots() for d in (r / self.folder, r)]

    def complete(self, directory: Path) -> bool:
        return all((directory / f).is_file() for f in self.train_files + self.test_files)

    def download(self, target: Path) -> Path:
        import torchvision.datasets as tvd
        from torchvision.datasets.utils import download_and_extract_archive

        cls = getattr(tvd, self.torchvision_class)
        download_and_extract_archive(cls.url, str(target), filename=cls.filename, md5=cls.tgz_md5)
        return target / self.folder

    def read(self, directory: Path | None) -> Splits:
        assert directory is not None
        arrays = {}
        for split, files in (("train", self.train_files), ("test", self.test_files)):
            parts = [read_cifar_batch(directory / f, self.label_key) for f in files]
            images = torch.from_numpy(np.concatenate([p[0] for p in parts])).permute(0, 3, 1, 2).contiguous()
            arrays[split] = (images, torch.from_numpy(np.concatenate([p[1] for p in parts])))
        augment = None
        if self.cfg.augment:
            from torchvision.transforms import v2

            # The standard CIFAR augmentation (He et al. 2016): 4-pixel padded crops, flips.
            augment = v2.Compose([v2.RandomCrop(32, padding=4), v2.RandomHorizontalFlip()])
        plain = resize(self.cfg.image_size)
        return tensor_splits(arrays["train"], arrays["test"], self.info.mean, self.info.std,
                             int(self.info.num_classes or 0), compose(augment, plain), plain)


@DATASETS.register("cifar100")
class CIFAR100(CIFAR10):
    """CIFAR-10's images in 100 fine classes (the 20 coarse superclasses are not used)."""

    info = DatasetInfo(3, 100, 32, (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762))
    folder = "cifar-100-python"
    train_files = ("train",)
    test_files = ("test",)
    label_key = "fine_labels"
    torchvision_class = "CIFAR100"
