"""pruners.save / load: torch.export round trips of pruned models, without our code."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from torch import nn

import pruners
from pruners.io import load, load_metadata, save
from tests.pruners.models import MLP, ResidualCNN, cnn_batch


def _pruned(granularity: str) -> nn.Module:
    torch.manual_seed(0)
    model = ResidualCNN()
    x, _ = cnn_batch(4)
    with torch.no_grad():  # non-trivial BatchNorm statistics, so eval mode matters
        model.train()
        model(x * 3 + 1)
    pruners.prune(model, criterion="magnitude", granularity=granularity, amount=0.5,
                  example_inputs=x[:1])
    return model


@pytest.mark.parametrize("granularity", ["unstructured", "structured"])
def test_round_trip_gives_the_same_outputs_at_batch_1_and_4(tmp_path, granularity):
    model = _pruned(granularity)
    model.train()  # save must export eval behaviour without changing the caller's mode
    x, _ = cnn_batch(4, seed=1)
    meta = save(model, tmp_path / "model.pt2", x[:1], metadata={"trial": "t1"})
    assert model.training
    if granularity == "unstructured":
        assert hasattr(model.conv1, "weight_mask")  # the caller's masks were not made permanent

    loaded = load(tmp_path / "model.pt2")
    model.eval()
    with torch.no_grad():
        for batch in (x[:1], x):
            torch.testing.assert_close(loaded(batch), model(batch), rtol=0, atol=0)
    assert meta["dynamic_batch"] is True
    assert load_metadata(tmp_path / "model.pt2")["user"] == {"trial": "t1"}
    # No mask buffers or *_orig parameters in the program: masks were made permanent.
    names = [n for n, _ in loaded.named_parameters()] + [n for n, _ in loaded.named_buffers()]
    assert not any(n.endswith(("_mask", "_orig")) for n in names)
    loaded.eval()  # accepted (the graph is eval already); training it is not
    with pytest.raises(NotImplementedError):
        loaded.train()


def test_structured_model_saves_smaller_than_dense(tmp_path):
    x, _ = cnn_batch(1)
    save(ResidualCNN(), tmp_path / "dense.pt2", x)
    save(_pruned("structured"), tmp_path / "pruned.pt2", x)
    dense, pruned = (load(tmp_path / f"{n}.pt2") for n in ("dense", "pruned"))
    n_dense = sum(p.numel() for p in dense.parameters())
    n_pruned = sum(p.numel() for p in pruned.parameters())
    assert n_pruned < 0.6 * n_dense


def test_saved_file_loads_in_a_fresh_interpreter_without_prunefront(tmp_path):
    """The archive holds no pickled Prunefront objects: plain torch loads and runs it."""
    model = _pruned("structured").eval()
    x = torch.randn(3, 1, 8, 8)
    save(model, tmp_path / "m.pt2", x[:1])
    torch.save(x, tmp_path / "x.pt")
    with torch.no_grad():
        torch.save(model(x), tmp_path / "y.pt")
    code = (
        "import sys, torch\n"
        "sys.modules['pruners'] = sys.modules['tests'] = None  # importing ours would fail\n"
        f"m = torch.export.load({str(tmp_path / 'm.pt2')!r}).module()\n"
        f"x = torch.load({str(tmp_path / 'x.pt')!r}, weights_only=True)\n"
        f"y = torch.load({str(tmp_path / 'y.pt')!r}, weights_only=True)\n"
        "torch.testing.assert_close(m(x), y, rtol=0, atol=0)\n"
    )
    # cwd away from the repo, so `pruners` is not even importable by path.
    subprocess.run([sys.executable, "-c", code], check=True, cwd=tmp_path, timeout=120)


def test_model_with_fixed_batch_falls_back_to_a_static_export(tmp_path):
    class FixedBatch(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(64, 10)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc(x.reshape(3, 64))  # only works for batch 3

    model = FixedBatch()
    x = torch.randn(3, 64)
    meta = save(model, tmp_path / "m.pt2", x)
    assert meta["dynamic_batch"] is False
    with torch.no_grad():
        torch.testing.assert_close(load(tmp_path / "m.pt2")(x), model(x))


def test_save_works_on_a_model_whose_masked_weight_has_a_graph(tmp_path):
    """After a training forward, prune's `weight` is a non-leaf tensor deepcopy rejects."""
    model = MLP()
    pruners.prune(model, criterion="magnitude", granularity="unstructured", amount=0.7,
                  example_inputs=torch.randn(2, 64))
    model.train()
    model(torch.randn(4, 64)).sum().backward()
    save(model, tmp_path / "m.pt2", torch.randn(1, 64))
    loaded = load(tmp_path / "m.pt2")
    model.eval()
    x = torch.randn(5, 64)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x), rtol=0, atol=0)
