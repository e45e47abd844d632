"""Datasets from files we make (idx, CIFAR pickles, PNG folders); downloads from file:// URLs."""

from __future__ import annotations

import gzip
import hashlib
import os
import pickle
import struct
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from orchestrator import data, datasets  # noqa: E402
from orchestrator.datasets import digits, idx  # noqa: E402
from orchestrator.config import ConfigError, DataConfig  # noqa: E402

DEBIAN_FASHION = Path("/usr/share/datasets/fashion-mnist")


# --------------------------------------------------------------------------------------
# Writers for the on-disk formats
# --------------------------------------------------------------------------------------


def idx_bytes(array: np.ndarray) -> bytes:
    """LeCun's idx format for uint8 arrays: magic 0x0000 08 <ndim>, big-endian dims, data."""
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(struct.pack(">I", d) for d in array.shape)
    return header + array.astype(np.uint8).tobytes()


def write_idx_set(directory: Path, n_train: int = 30, n_eval: int = 12, gz: bool = True, seed: int = 0):
    rng = np.random.default_rng(seed)
    directory.mkdir(parents=True, exist_ok=True)
    arrays = {
        "train-images-idx3-ubyte": rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
        "train-labels-idx1-ubyte": rng.integers(0, 10, n_train, dtype=np.uint8),
        "t10k-images-idx3-ubyte": rng.integers(0, 256, (n_eval, 28, 28), dtype=np.uint8),
        "t10k-labels-idx1-ubyte": rng.integers(0, 10, n_eval, dtype=np.uint8),
    }
    for name, a in arrays.items():
        raw = idx_bytes(a)
        if gz:
            with gzip.open(directory / (name + ".gz"), "wb") as f:
                f.write(raw)
        else:
            (directory / name).write_bytes(raw)
    return arrays


# The archives' layouts (https://www.cs.toronto.edu/~kriz/cifar.html): folder, train and test files.
CIFAR_LAYOUT = {
    "cifar10": ("cifar-10-batches-py", [f"data_batch_{i}" for i in range(1, 6)], ["test_batch"]),
    "cifar100": ("cifar-100-python", ["train"], ["test"]),
}


def write_cifar(directory: Path, dataset: str = "cifar10", per_file: int = 4, seed: int = 0):
    """CIFAR batches of random images; returns (folder, {file: (images, labels)}). CIFAR-100's
    files hold 100 fine labels and, like the real ones, 20 coarse labels (which differ)."""
    rng = np.random.default_rng(seed)
    folder, train, test = CIFAR_LAYOUT[dataset]
    d = directory / folder
    d.mkdir(parents=True, exist_ok=True)
    written = {}
    for name in train + test:
        images = rng.integers(0, 256, (per_file, 3 * 32 * 32), dtype=np.uint8)
        entry = {"data": images, "batch_label": name}
        if dataset == "cifar10":
            entry["labels"] = labels = rng.integers(0, 10, per_file).tolist()
        else:
            entry["fine_labels"] = labels = rng.integers(20, 100, per_file).tolist()
            entry["coarse_labels"] = rng.integers(0, 20, per_file).tolist()
        with open(d / name, "wb") as f:
            pickle.dump(entry, f)
        written[name] = (images, labels)
    return d, written


def md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


@pytest.fixture
def http_mirror(tmp_path):
    """A loopback HTTP server over ``tmp_path/mirror`` (the download code path, no network):
    yields (directory, base URL, list of requested paths)."""
    import functools
    import http.server
    import threading

    root = tmp_path / "mirror"
    root.mkdir()

    requests: list[str] = []

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def do_GET(self):
            requests.append(self.path)
            super().do_GET()

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Quiet, directory=str(root)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield root, f"http://127.0.0.1:{server.server_port}/", requests
    server.shutdown()
    server.server_close()


# --------------------------------------------------------------------------------------
# digits
# --------------------------------------------------------------------------------------


def test_digits_fixed_stratified_split_and_standardised_inputs():
    ds = data.load_datasets(DataConfig(dataset="digits"), seed=123)
    assert (len(ds.train) + len(ds.val), len(ds.test)) == (1347, 450)
    assert ds.input_shape == (1, 8, 8) and ds.num_classes == 10
    # Standardised with the statistics of the training data (validation split included).
    x = torch.stack([ds.train[i][0] for i in range(len(ds.train))] + [ds.val[i][0] for i in range(len(ds.val))])
    assert abs(float(x.mean())) < 1e-4 and abs(float(x.std()) - 1.0) < 1e-3
    assert len(ds.val) == 269  # data.val_size 0.2 (the default) of the 1347 training images
    from sklearn.datasets import load_digits

    eval_labels = np.array([ds.test[i][1] for i in range(len(ds.test))])
    per_class = np.bincount(load_digits().target)
    # Stratified: each class is held out in proportion (a quarter of it, up to rounding).
    assert np.all(np.abs(np.bincount(eval_labels) - per_class * 0.25) <= 1)
    # Neither the test set nor the validation split depends on the experiment seed.
    other = data.load_datasets(DataConfig(dataset="digits"), seed=7)
    assert torch.equal(ds.test[0][0], other.test[0][0]) and ds.test[5][1] == other.test[5][1]
    assert ds.val.indices == other.val.indices


def test_digits_are_sklearns_arrays_read_without_importing_sklearn():
    from sklearn.datasets import load_digits

    x, y = digits.read_digits()
    ref_x, ref_y = load_digits(return_X_y=True)
    assert np.array_equal(x, ref_x) and np.array_equal(y, ref_y)
    # Every Train worker loads digits: scikit-learn + SciPy would cost each one ~2 s.
    code = (
        "import sys; from orchestrator import data; from orchestrator.config import DataConfig; "
        "ds = data.load_datasets(DataConfig(dataset='digits')); "
        "print(len(ds.train), 'sklearn' in sys.modules, 'scipy' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=str(Path(data.__file__).resolve().parents[1]))
    assert out.stdout.split() == ["1078", "False", "False"]


def test_stratified_split_exact_total_per_class_quota_and_seeded():
    y = np.array([0] * 5 + [1] * 3 + [2] * 2)
    tr, ev = datasets.stratified_split(y, 0.25, seed=0)
    assert len(ev) == 3 and len(tr) == 7 and set(tr).isdisjoint(ev)
    # quotas 1.25, 0.75, 0.5 -> floors 1, 0, 0; two more places by largest fraction: 1, 2
    assert sorted(np.bincount(y[ev], minlength=3)) == [1, 1, 1]
    assert np.array_equal(datasets.stratified_split(y, 0.25, seed=0)[1], ev)
    assert any(not np.array_equal(datasets.stratified_split(y, 0.25, seed=s)[1], ev) for s in range(1, 6))


def test_subsets_are_seeded_and_capped():
    a = data.load_datasets(DataConfig(dataset="digits", train_subset=100, eval_subset=50), seed=1)
    b = data.load_datasets(DataConfig(dataset="digits", train_subset=100, eval_subset=50), seed=1)
    c = data.load_datasets(DataConfig(dataset="digits", train_subset=100), seed=2)
    assert (len(a.train), len(a.val), len(a.test)) == (100, 50, 50)
    assert a.train.indices == b.train.indices and a.train.indices != c.train.indices


def test_validation_split_is_stratified_disjoint_and_sized_by_val_size():
    ds = data.load_datasets(DataConfig(dataset="digits", val_size=0.2))
    train, val = set(ds.train.indices), set(ds.val.indices)
    assert train.isdisjoint(val) and len(train) + len(val) == 1347 and len(val) == round(0.2 * 1347)
    labels = np.array([ds.val[i][1] for i in range(len(ds.val))])
    train_labels = np.array([ds.train[i][1] for i in range(len(ds.train))])
    # Each class is in the validation split in proportion (up to rounding).
    share = np.bincount(labels) / (np.bincount(labels) + np.bincount(train_labels))
    assert np.all(np.abs(share - 0.2) < 0.02)
    assert len(data.load_datasets(DataConfig(dataset="digits", val_size=300)).val) == 300
    with pytest.raises(ConfigError, match="data.val_size: 5000 of 1347 training examples leaves"):
        data.load_datasets(DataConfig(dataset="digits", val_size=5000))


def test_image_size_resizes():
    ds = data.load_datasets(DataConfig(dataset="digits", image_size=16))
    assert ds.input_shape == (1, 16, 16) and ds.example_inputs(3).shape == (3, 1, 16, 16)


# --------------------------------------------------------------------------------------
# idx datasets (MNIST / Fashion-MNIST)
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("layout", ["flat-gz", "torchvision-raw"])
def test_mnist_from_idx_files(tmp_path, layout):
    if layout == "flat-gz":
        arrays = write_idx_set(tmp_path, gz=True)
    else:
        arrays = write_idx_set(tmp_path / "MNIST" / "raw", gz=False)
    ds = data.load_datasets(DataConfig(dataset="mnist", root=str(tmp_path)))
    assert (len(ds.train) + len(ds.val), len(ds.test)) == (30, 12)
    assert ds.input_shape == (1, 28, 28) and ds.num_classes == 10
    x, y = ds.test[3]
    raw = arrays["t10k-images-idx3-ubyte"][3].astype(np.float32) / 255.0
    expected = (raw - 0.1307) / 0.3081
    assert np.allclose(x[0].numpy(), expected, atol=1e-6)
    assert y == int(arrays["t10k-labels-idx1-ubyte"][3])


def test_read_idx_rejects_truncated_files(tmp_path):
    p = tmp_path / "bad-idx"
    p.write_bytes(idx_bytes(np.zeros((4, 3, 3), np.uint8))[:-5])
    with pytest.raises(ValueError, match="expected 36 values"):
        idx.read_idx(p)


def test_missing_dataset_says_where_it_looked(tmp_path):
    with pytest.raises(ConfigError) as e:
        datasets.locate(DataConfig(dataset="mnist", root=str(tmp_path)))
    msg = str(e.value)
    assert msg.startswith("data.dataset: mnist not found; looked in ")
    assert str(tmp_path / "MNIST" / "raw") in msg and "data.download: true" in msg


def test_missing_default_places_include_debian_for_fashion_mnist(tmp_path, monkeypatch):
    monkeypatch.setenv("PRUNEFRONT_DATA", str(tmp_path))
    monkeypatch.setattr(idx.FashionMNIST, "system_dir", tmp_path / "debian")
    with pytest.raises(ConfigError) as e:
        datasets.locate(DataConfig(dataset="fashion_mnist"))
    assert str(tmp_path / "FashionMNIST" / "raw") in str(e.value)
    assert str(tmp_path / "debian") in str(e.value)
    assert "install Debian's dataset-fashion-mnist" in str(e.value)


@pytest.mark.skipif(not DEBIAN_FASHION.is_dir(), reason="Debian's dataset-fashion-mnist is not installed")
def test_fashion_mnist_found_in_debian_package(tmp_path, monkeypatch):
    monkeypatch.setenv("PRUNEFRONT_DATA", str(tmp_path))  # nothing there: falls through to Debian
    assert datasets.locate(DataConfig(dataset="fashion_mnist")) == DEBIAN_FASHION
    ds = data.load_datasets(DataConfig(dataset="fashion_mnist", train_subset=64, eval_subset=64))
    assert (len(ds.train), len(ds.test), ds.num_classes, ds.input_shape) == (64, 64, 10, (1, 28, 28))
    # Fashion-MNIST's full training set has 6000 images of each of its 10 classes.
    labels = idx.read_idx(DEBIAN_FASHION / "train-labels-idx1-ubyte.gz")
    assert labels.shape == (60000,) and np.bincount(labels).tolist() == [6000] * 10


def test_fashion_mnist_download_with_torchvision(tmp_path, monkeypatch, http_mirror):
    import torchvision.datasets as tvd

    mirror, url, requests = http_mirror
    arrays = write_idx_set(mirror, gz=True, seed=3)
    resources = [(name + ".gz", md5(mirror / (name + ".gz"))) for name in arrays]
    monkeypatch.setattr(tvd.FashionMNIST, "mirrors", [url])
    monkeypatch.setattr(tvd.FashionMNIST, "resources", resources)
    cfg = DataConfig(dataset="fashion_mnist", root=str(tmp_path / "data"), download=True)
    assert datasets.locate(cfg) is None  # not there yet, but allowed to download
    ds = data.load_datasets(cfg)
    raw = tmp_path / "data" / "FashionMNIST" / "raw"
    assert (raw / "train-images-idx3-ubyte").is_file()  # torchvision's layout, unpacked
    assert (len(ds.train) + len(ds.val), len(ds.test)) == (30, 12)
    first_train = ds.train.indices[0]  # the validation split took some images out
    assert ds.train[0][1] == int(arrays["train-labels-idx1-ubyte"][first_train])
    # Found locally from now on, without downloading again.
    assert datasets.locate(DataConfig(dataset="fashion_mnist", root=str(tmp_path / "data"))) == raw


def test_concurrent_prepares_download_once(tmp_path, monkeypatch, http_mirror):
    from concurrent.futures import ThreadPoolExecutor

    import torchvision.datasets as tvd

    mirror, url, requests = http_mirror
    arrays = write_idx_set(mirror, gz=True)
    monkeypatch.setattr(tvd.MNIST, "mirrors", [url])
    monkeypatch.setattr(tvd.MNIST, "resources", [(n + ".gz", md5(mirror / (n + ".gz"))) for n in arrays])
    datasets.prepare(DataConfig(dataset="mnist", root=str(tmp_path / "alone"), download=True))
    one_download = sorted(requests)  # torchvision may ask twice per file (redirect check)
    assert set(one_download) == {f"/{n}.gz" for n in arrays}
    requests.clear()
    cfg = DataConfig(dataset="mnist", root=str(tmp_path / "d"), download=True)
    with ThreadPoolExecutor(4) as pool:  # like the DDP workers of one node
        found = list(pool.map(lambda _: datasets.prepare(cfg), range(4)))
    assert found == [tmp_path / "d" / "MNIST" / "raw"] * 4
    assert sorted(requests) == one_download  # downloaded once, not four times


def test_download_with_a_wrong_checksum_is_refused(tmp_path, monkeypatch, http_mirror):
    import torchvision.datasets as tvd

    mirror, url, requests = http_mirror
    arrays = write_idx_set(mirror, gz=True)
    monkeypatch.setattr(tvd.MNIST, "mirrors", [url])
    monkeypatch.setattr(tvd.MNIST, "resources", [(name + ".gz", "0" * 32) for name in arrays])
    with pytest.raises(ConfigError, match="data.download: downloading mnist into .* failed"):
        data.load_datasets(DataConfig(dataset="mnist", root=str(tmp_path / "d"), download=True))


def test_failed_download_is_one_clear_error(tmp_path, monkeypatch, http_mirror):
    import torchvision.datasets as tvd

    _, url, _ = http_mirror  # serves nothing: every file is a 404
    monkeypatch.setattr(tvd.MNIST, "mirrors", [url])
    with pytest.raises(ConfigError) as e:
        data.load_datasets(DataConfig(dataset="mnist", root=str(tmp_path / "d"), download=True))
    assert str(e.value).startswith(f"data.download: downloading mnist into {tmp_path / 'd'} failed")
    assert "\n" not in str(e.value)


# --------------------------------------------------------------------------------------
# CIFAR
# --------------------------------------------------------------------------------------


def test_cifar10_from_pickle_batches(tmp_path):
    _, written = write_cifar(tmp_path, "cifar10")
    ds = data.load_datasets(DataConfig(dataset="cifar10", root=str(tmp_path)))
    assert (len(ds.train) + len(ds.val), len(ds.test)) == (20, 4)
    assert ds.input_shape == (3, 32, 32) and ds.num_classes == 10
    x, y = ds.test[1]
    images, labels = written["test_batch"]
    chw = images[1].reshape(3, 32, 32).astype(np.float32) / 255.0
    mean = np.array([0.4914, 0.4822, 0.4465], np.float32).reshape(3, 1, 1)
    std = np.array([0.2470, 0.2435, 0.2616], np.float32).reshape(3, 1, 1)
    assert np.allclose(x.numpy(), (chw - mean) / std, atol=1e-5)
    assert y == labels[1]
    # Training images are augmented (random crops/flips): same shape, not always identical.
    torch.manual_seed(0)
    views = [ds.train[0][0] for _ in range(8)]
    assert all(v.shape == (3, 32, 32) for v in views)
    assert any(not torch.equal(views[0], v) for v in views[1:])


def test_cifar100_uses_fine_labels(tmp_path):
    _, written = write_cifar(tmp_path, "cifar100", per_file=6)  # fine labels 20..99, coarse 0..19
    ds = data.load_datasets(DataConfig(dataset="cifar100", root=str(tmp_path), augment=False))
    assert (len(ds.train) + len(ds.val), len(ds.test), ds.num_classes) == (6, 6, 100)
    assert [ds.test[i][1] for i in range(6)] == written["test"][1]
    train = {**dict(zip(ds.train.indices, (ds.train[i][1] for i in range(len(ds.train))))),
             **dict(zip(ds.val.indices, (ds.val[i][1] for i in range(len(ds.val)))))}
    assert [train[i] for i in range(6)] == written["train"][1]
    assert torch.equal(ds.train[0][0], ds.train[0][0])  # no augmentation


def test_cifar10_download_with_torchvision(tmp_path, monkeypatch, http_mirror):
    import torchvision.datasets as tvd

    mirror, url, requests = http_mirror
    src = tmp_path / "src"
    write_cifar(src, "cifar10")
    archive = mirror / "cifar-10-python.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(src / "cifar-10-batches-py", arcname="cifar-10-batches-py")
    monkeypatch.setattr(tvd.CIFAR10, "url", url + archive.name)
    monkeypatch.setattr(tvd.CIFAR10, "tgz_md5", md5(archive))
    ds = data.load_datasets(DataConfig(dataset="cifar10", root=str(tmp_path / "dl"), download=True))
    assert (tmp_path / "dl" / "cifar-10-batches-py" / "data_batch_5").is_file()
    assert (len(ds.train) + len(ds.val), len(ds.test)) == (20, 4)


def test_corrupt_cifar_files_are_a_clear_error(tmp_path):
    d, _ = write_cifar(tmp_path, "cifar10")
    (d / "test_batch").write_bytes(b"not a pickle")
    with pytest.raises(ConfigError, match="cifar10 files in .* are unreadable"):
        data.load_datasets(DataConfig(dataset="cifar10", root=str(tmp_path)))


# --------------------------------------------------------------------------------------
# imagefolder
# --------------------------------------------------------------------------------------


def write_imagefolder(root: Path, splits=("train", "val"), classes=("cat", "dog"), per_class: int = 3):
    from PIL import Image

    rng = np.random.default_rng(0)
    for split in splits:
        for c in classes:
            d = root / split / c
            d.mkdir(parents=True)
            for i in range(per_class):
                Image.fromarray(rng.integers(0, 256, (20, 24, 3), dtype=np.uint8)).save(d / f"{i}.png")


def test_imagefolder_of_pngs(tmp_path):
    write_imagefolder(tmp_path)
    ds = data.load_datasets(DataConfig(dataset="imagefolder", root=str(tmp_path), image_size=16))
    assert (len(ds.train) + len(ds.val), len(ds.test), ds.num_classes) == (6, 6, 2)
    assert ds.input_shape == (3, 16, 16)
    assert ds.train[0][0].shape == (3, 16, 16)
    assert sorted({ds.test[i][1] for i in range(6)}) == [0, 1]


def test_imagefolder_with_val_and_test_validates_on_its_own_val(tmp_path):
    write_imagefolder(tmp_path, splits=("train", "val", "test"))
    ds = data.load_datasets(DataConfig(dataset="imagefolder", root=str(tmp_path), image_size=16))
    assert (len(ds.train), len(ds.val), len(ds.test)) == (6, 6, 6)
    assert ds.val.root == str(tmp_path / "val") and ds.test.root == str(tmp_path / "test")


def test_validation_images_are_not_augmented(tmp_path):
    write_cifar(tmp_path, "cifar10", per_file=20)
    ds = data.load_datasets(DataConfig(dataset="cifar10", root=str(tmp_path), augment=True))
    # Random crops and flips on training images only: the validation split is deterministic.
    assert torch.equal(ds.val[0][0], ds.val[0][0])
    assert any(not torch.equal(ds.train[0][0], ds.train[0][0]) for _ in range(10))


def test_imagefolder_accepts_test_instead_of_val(tmp_path):
    write_imagefolder(tmp_path, splits=("train", "test"))
    assert datasets.locate(DataConfig(dataset="imagefolder", root=str(tmp_path))) == tmp_path


def test_imagefolder_without_val_is_refused(tmp_path):
    write_imagefolder(tmp_path, splits=("train",))
    with pytest.raises(ConfigError, match=r"has no val/ \(or test/\); imagefolder needs train/ and val/"):
        datasets.locate(DataConfig(dataset="imagefolder", root=str(tmp_path)))


def test_imagefolder_with_different_classes_is_refused(tmp_path):
    write_imagefolder(tmp_path / "a", splits=("train",), classes=("cat", "dog"))
    write_imagefolder(tmp_path / "a", splits=("val",), classes=("cat", "cow"))
    with pytest.raises(ConfigError, match="have different classes"):
        data.load_datasets(DataConfig(dataset="imagefolder", root=str(tmp_path / "a")))


# --------------------------------------------------------------------------------------
# Loaders
# --------------------------------------------------------------------------------------


def _dataset(n: int):
    return torch.utils.data.TensorDataset(torch.arange(n).float().view(n, 1), torch.arange(n))


def test_distributed_training_shards_cover_the_data_and_reshuffle_by_epoch():
    ds = _dataset(10)
    loaders = [data.build_loader(ds, 2, shuffle=True, rank=r, world_size=2, seed=5) for r in range(2)]
    seen = [sorted(int(i) for _, y in loader for i in y) for loader in loaders]
    assert sorted(seen[0] + seen[1]) == list(range(10)) and not set(seen[0]) & set(seen[1])
    first = [int(i) for _, y in loaders[0] for i in y]
    loaders[0].sampler.set_epoch(1)
    assert first != [int(i) for _, y in loaders[0] for i in y]


def test_distributed_eval_counts_every_example_once():
    ds = _dataset(11)  # not divisible: DistributedSampler would repeat an example
    seen = []
    for r in range(3):
        loader = data.build_loader(ds, 4, shuffle=False, rank=r, world_size=3)
        seen += [int(i) for _, y in loader for i in y]
    assert sorted(seen) == list(range(11))


def test_single_process_shuffle_is_seeded():
    order = lambda seed: [int(i) for _, y in data.build_loader(_dataset(20), 5, shuffle=True, seed=seed) for i in y]  # noqa: E731
    assert order(1) == order(1) and order(1) != order(2)
    with pytest.raises(ValueError, match="0 <= rank < world_size"):
        data.build_loader(_dataset(4), 2, shuffle=False, rank=2, world_size=2)


# --------------------------------------------------------------------------------------
# The registry: a dataset is one module
# --------------------------------------------------------------------------------------


@pytest.fixture
def throwaway(monkeypatch):
    """Register a dataset the way a new module of orchestrator/datasets would (removed after)."""
    from orchestrator.datasets import DATASETS, DatasetInfo, DatasetSource, Splits
    from orchestrator.datasets.base import tensor_splits

    monkeypatch.setattr(DATASETS, "_entries", dict(DATASETS._entries))  # restored after the test

    @DATASETS.register("throwaway")
    class Throwaway(DatasetSource):
        info = DatasetInfo(2, 3, 6, (0.5, 0.5), (0.25, 0.25))

        def check(self) -> None:
            if self.cfg.download:
                raise ConfigError("data.download: throwaway cannot be downloaded")

        def locate(self) -> Path | None:
            return None  # generated, no files

        def read(self, directory: Path | None) -> Splits:
            g = torch.Generator().manual_seed(0)
            train = (torch.randint(0, 256, (40, 2, 6, 6), generator=g, dtype=torch.uint8), torch.arange(40) % 3)
            test = (torch.randint(0, 256, (9, 2, 6, 6), generator=g, dtype=torch.uint8), torch.arange(9) % 3)
            return tensor_splits(train, test, self.info.mean, self.info.std, 3, None, None)

    return Throwaway


def test_a_registered_dataset_needs_no_other_file(throwaway):
    from orchestrator.config import SearchConfig
    from orchestrator.loading import json_schema

    cfg = SearchConfig.from_dict({"data": {"dataset": "throwaway", "val_size": 10}})
    schema = json_schema()["$defs"]["DataConfig"]["properties"]["dataset"]
    assert "throwaway" in schema["enum"] and "digits" in schema["enum"]
    with pytest.raises(ConfigError, match="data.download: throwaway cannot be downloaded"):
        SearchConfig.from_dict({"data": {"dataset": "throwaway", "download": True}})  # its own config rule
    ds = data.load_datasets(cfg.data, seed=0)
    assert (len(ds.train), len(ds.val), len(ds.test), ds.num_classes, ds.input_shape) == (30, 10, 9, 3, (2, 6, 6))
    # Validation is carved stratified from its training set: classes 0, 1, 2 of 14, 13, 13.
    assert sorted(np.bincount([ds.val[i][1] for i in range(10)]).tolist()) == [3, 3, 4]
    x, y = next(iter(data.build_loader(ds.train, 8, shuffle=True, seed=0)))
    assert x.shape == (8, 2, 6, 6) and x.dtype == torch.float32 and y.shape == (8,)
    assert datasets.locate(cfg.data) is None


def test_unregistered_dataset_is_refused_with_the_registered_choices():
    from orchestrator.config import SearchConfig
    from orchestrator.datasets import DATASETS

    with pytest.raises(ConfigError) as e:
        SearchConfig.from_dict({"data": {"dataset": "throwaway"}})
    assert str(e.value) == f"data.dataset: unknown value 'throwaway'; valid choices: {', '.join(DATASETS.names())}"
