"""pruners.train_epochs without a pruner: the dense job's loop (the trials' with one is
tested through finetune in test_finetune.py)."""

from __future__ import annotations

import pytest
import torch
from sklearn.datasets import load_digits
from torch.utils.data import DataLoader, TensorDataset
from torch.utils.data.distributed import DistributedSampler

import pruners
from tests.pruners.models import MLP

EPOCHS = 3


@pytest.fixture(scope="module")
def loaders():
    d = load_digits()
    x, y = torch.tensor(d.data, dtype=torch.float32) / 16.0, torch.tensor(d.target)
    train_set = TensorDataset(x[:1280], y[:1280])
    sampler = DistributedSampler(train_set, num_replicas=1, rank=0, shuffle=True, seed=3)
    return DataLoader(train_set, batch_size=64, sampler=sampler), DataLoader(TensorDataset(x[1280:], y[1280:]),
                                                                            batch_size=256)


def _train(loaders, resume=None, states=None):
    train, val = loaders
    torch.manual_seed(0)
    rows: list[dict] = []

    def on_epoch(end: pruners.EpochEnd) -> None:
        assert end.pruner is None and end.module is end.model
        rows.append(dict(end.row))
        if states is not None:
            states.append(end.state())

    model = pruners.train_epochs(
        MLP(hidden=64), train, val, epochs=EPOCHS, on_epoch=on_epoch, resume=resume,
        optimizer=pruners.OptimizerConfig(name="sgd", lr=0.1, momentum=0.9, lr_schedule="cosine", warmup=0.1))
    return model, rows


def test_without_a_pruner_it_trains_reports_each_epoch_and_resumes_bit_identically(loaders):
    states: list[dict] = []
    full, rows = _train(loaders, states=states)
    assert [r["epoch"] for r in rows] == [1, 2, 3]
    assert all(set(r) == {"epoch", "val_accuracy", "val_loss", "train_loss"} for r in rows)  # the dense job's rows
    assert rows[-1]["val_accuracy"] > 0.8 and rows[-1]["train_loss"] < rows[0]["train_loss"]
    assert "pruner" not in states[0] and states[0]["epoch"] == 1

    resumed, rest = _train(loaders, resume=states[0])  # as if the job died during epoch 2
    assert rest == rows[1:]
    for (name, a), (_, b) in zip(full.state_dict().items(), resumed.state_dict().items(), strict=True):
        assert torch.equal(a, b), name
