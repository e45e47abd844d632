"""prune(): outcomes of unstructured and structured pruning on the small test models."""

from __future__ import annotations

import pytest
import torch

import pruners
from tests.pruners.models import MLP, ResidualCNN, cnn_batch, mlp_batch

MODELS = {"cnn": (ResidualCNN, cnn_batch), "mlp": (MLP, mlp_batch)}


def _params(m: torch.nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


def _zeros(m: torch.nn.Module) -> int:
    return sum(int((mod.weight == 0).sum()) for mod in m.modules() if hasattr(mod, "weight_mask"))


@pytest.mark.parametrize("model", sorted(MODELS))
@pytest.mark.parametrize("scope", ["global", "layerwise"])
def test_magnitude_unstructured_masks_half_of_the_weights(model, scope):
    build, batch = MODELS[model]
    m = build()
    x, _ = batch()
    shapes = {n: mod.weight.shape for n, mod in m.named_modules() if hasattr(mod, "weight")}
    r = pruners.prune(m, criterion="magnitude", granularity="unstructured", amount=0.5, scope=scope, example_inputs=x)
    assert r.units_before > 0
    assert abs(r.achieved - 0.5) <= 1 / r.units_before + 1e-9
    assert _zeros(m) == r.units_before - r.units_after
    # classifier untouched, shapes unchanged
    clf = m.fc if model == "cnn" else m.net[-1]
    assert not hasattr(clf, "weight_mask")
    assert {n: mod.weight.shape for n, mod in m.named_modules() if hasattr(mod, "weight")} == shapes
    assert torch.isfinite(m(x)).all()


@pytest.mark.parametrize("model", sorted(MODELS))
@pytest.mark.parametrize("scope", ["global", "layerwise"])
def test_magnitude_structured_removes_channels(model, scope):
    build, batch = MODELS[model]
    m = build()
    x, _ = batch()
    before = _params(m)
    out_shape = m(x).shape
    r = pruners.prune(m, criterion="magnitude", granularity="structured", amount=0.5, scope=scope, example_inputs=x)
    assert r.units_after < r.units_before
    assert abs(r.achieved - 0.5) <= 1 / r.units_before + 1e-9
    assert _params(m) < before
    assert m(x).shape == out_shape
