"""Any dataset laid out as ``data.root/<split>/<class>/<image>``, read by torchvision's
``ImageFolder``.

``train/`` plus ``val/`` and/or ``test/``: with both, ``val/`` validates and ``test/`` tests;
with one of them (ImageNet's ``val/`` is its test set in practice), that one is the test split
and the validation split is carved from ``train/``. ImageNet's statistics and 224-pixel
crops (resize to 256/224 of the size, centre crop; random resized crops and flips to train).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from orchestrator.datasets.base import DATASETS, DatasetInfo, DatasetSource, Splits
from orchestrator.errors import ConfigError

__all__ = ["ImageFolder", "split_dir"]


def split_dir(root: Path, split: str) -> Path | None:
    """``root/train`` for ``"train"``; ``root/val``, else ``root/test``, for ``"eval"``."""
    names = ("train",) if split == "train" else ("val", "test")
    for n in names:
        if (root / n).is_dir():
            return root / n
    return None


@DATASETS.register("imagefolder")
class ImageFolder(DatasetSource):
    """Images in one sub-directory per class; the class count is read from disk."""

    info = DatasetInfo(3, None, 224, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))

    def check(self) -> None:
        if self.cfg.root is None:
            raise ConfigError("data.root: imagefolder needs a root directory; it must hold train/ and val/ "
                              "with one sub-directory per class")

    def locate(self) -> Path | None:
        root = Path(self.cfg.root or "")
        if not root.is_dir():
            raise ConfigError(
                f"data.root: imagefolder directory {str(root)!r} does not exist; it must hold train/ and "
                "val/ (or test/) with one sub-directory of images per class"
            )
        missing = [s for s in ("train", "eval") if split_dir(root, s) is None]
        if missing:
            what = "train/" if "train" in missing else "val/ (or test/)"
            raise ConfigError(
                f"data.root: {str(root)!r} has no {what}; imagefolder needs train/ and val/ (or test/), "
                "one sub-directory of images per class"
            )
        return root

    def read(self, directory: Path | None) -> Splits:
        from torchvision import datasets
        from torchvision.transforms import v2

        root = Path(directory or "")
        info = self.info
        size = self.cfg.image_size or info.image_size
        tail = [v2.ToImage(), v2.ToDtype(torch.float32, scale=True), v2.Normalize(info.mean, info.std)]
        eval_t = v2.Compose([v2.Resize(int(round(size * 256 / 224)), antialias=True), v2.CenterCrop(size), *tail])
        train_t = (
            v2.Compose([v2.RandomResizedCrop(size, antialias=True), v2.RandomHorizontalFlip(), *tail])
            if self.cfg.augment
            else eval_t
        )
        train_dir = str(split_dir(root, "train"))

        def train(tf: v2.Transform | None) -> datasets.ImageFolder:
            return datasets.ImageFolder(train_dir, transform=tf)

        own_val, test_dir = root / "val", root / "test"
        if own_val.is_dir() and test_dir.is_dir():
            # The dataset's own validation split.
            classes = datasets.folder.find_classes(train_dir)[0]
            val = datasets.ImageFolder(str(own_val), transform=eval_t)
            test = datasets.ImageFolder(str(test_dir), transform=eval_t)
            if not (classes == val.classes == test.classes):
                raise ConfigError(f"data.root: train/, val/ and test/ of {str(root)!r} have different classes; "
                                  "all need the same class folders")
            return Splits(train, None, test, len(classes), train_t, eval_t, val)
        base = datasets.ImageFolder(train_dir)
        test = datasets.ImageFolder(str(split_dir(root, "eval")), transform=eval_t)
        if base.classes != test.classes:
            raise ConfigError(
                f"data.root: train/ and val/ of {str(root)!r} have different classes; both need the same class folders"
            )
        return Splits(train, np.asarray(base.targets), test, len(base.classes), train_t, eval_t)
