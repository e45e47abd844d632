"""Datasets, one module per file format, each registered under its ``data.dataset`` name.

* ``digits`` (:mod:`.digits`): scikit-learn's bundled 8x8 digits, offline;
* ``mnist``, ``fashion_mnist`` (:mod:`.idx`): LeCun's idx files;
* ``cifar10``, ``cifar100`` (:mod:`.cifar`): the python pickle batches;
* ``imagefolder`` (:mod:`.imagefolder`): ``root/<split>/<class>/<image>``.

As torchvision's dataset modules do, a module holds everything about its datasets: the
facts a model needs (:class:`DatasetInfo`), where the files may be, how to download them and
how to read them (a :class:`DatasetSource` subclass, ``@DATASETS.register(name)``).
``base`` holds what they share: the default data directories (``$PRUNEFRONT_DATA``,
``~/.cache/prunefront/data``, ``./data``), downloads into ``data.root`` or
``~/.cache/prunefront/data`` under a lock, one-line errors. ``orchestrator.data`` turns what a
dataset reads into train, validation and test splits and loaders. No Ray import here.

Every module of this package is imported below, so a new dataset is one new module; the
config's ``data.dataset`` choices and ``configs/schema.json`` come from :data:`DATASETS`.
"""

from __future__ import annotations

import importlib
import pkgutil

from orchestrator.datasets.base import (
    DATASETS,
    DataOptions,
    DatasetInfo,
    DatasetSource,
    Splits,
    TensorImages,
    default_roots,
    download_root,
    load,
    locate,
    prepare,
    source,
    stratified_split,
)

__all__ = ["DATASETS", "DataOptions", "DatasetInfo", "DatasetSource", "Splits", "TensorImages", "default_roots",
           "download_root", "load", "locate", "prepare", "source", "stratified_split"]

# Each format module registers its datasets when imported.
for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")
