"""pruners.measure: exact FLOP counts by hand, sparse FLOPs, parameters, size, latency."""

from __future__ import annotations

import math
import os
import time

import pytest
import torch
from torch import nn
from torch.nn.utils import prune as torch_prune

import pruners
from pruners.measure import Metrics, measure
from tests.pruners.models import MLP, ResidualCNN, cnn_batch

METRIC_KEYS = {"flops", "flops_sparse", "params", "params_nonzero", "size_bytes", "latency_ms",
               "latency_iqr_ms", "dense_latency_ms", "speedup"}


def _tiny() -> nn.Sequential:
    """Conv 1->2 (3x3, no bias) on 6x6 -> 2x4x4, then Linear 32->3 (with bias)."""
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(1, 2, 3, bias=False), nn.ReLU(), nn.Flatten(), nn.Linear(32, 3)
    )


def test_dense_flops_are_twice_the_macs_counted_by_hand():
    model = _tiny()
    m = measure(model, torch.randn(5, 1, 6, 6), latency_repeats=2, warmup=0)
    # conv: 2 out channels x 4x4 positions x 9 MACs = 288 MACs; linear: 32 x 3 = 96 MACs.
    assert m.flops == 2 * (288 + 96)
    assert m.flops_sparse == m.flops
    assert m.params == 18 + 32 * 3 + 3
    assert {layer.name: layer.flops for layer in m.per_layer} == {"0": 576, "3": 192}


def test_sparse_flops_scale_each_layer_by_its_masked_weight_density():
    model = _tiny()
    conv_mask = torch.zeros(2, 1, 3, 3)
    conv_mask.view(-1)[:9] = 1  # 9 of 18 weights kept: density 1/2
    lin_mask = torch.zeros(3, 32)
    lin_mask.view(-1)[::4] = 1  # 24 of 96 kept: density 1/4
    with torch.no_grad():  # no accidental zeros among the kept weights
        model[0].weight.copy_(torch.arange(1.0, 19.0).view(2, 1, 3, 3))
        model[3].weight.fill_(0.5)
        model[3].bias.fill_(1.0)
    torch_prune.custom_from_mask(model[0], "weight", conv_mask)
    torch_prune.custom_from_mask(model[3], "weight", lin_mask)

    m = measure(model, torch.randn(1, 1, 6, 6), latency_repeats=2, warmup=0)
    assert m.flops == 768
    assert m.flops_sparse == pytest.approx(576 * 0.5 + 192 * 0.25)  # = 336
    # The effective model: weight_orig counts once, masks are no parameters.
    assert m.params == 18 + 96 + 3
    assert m.params_nonzero == 9 + 24 + 3
    layers = {layer.name: layer for layer in m.per_layer}
    assert layers["0"].density == pytest.approx(0.5)
    assert layers["3"].flops_sparse == pytest.approx(48)


class _AttentionLike(nn.Module):
    """A masked Linear followed by a weight-free batched matmul of activations."""

    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Linear(4, 4, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.proj(x)  # (B, 3, 4)
        return h @ h.transpose(1, 2)  # (B, 3, 3): reads no weight


def test_ops_reading_no_weight_are_not_scaled():
    model = _AttentionLike()
    with torch.no_grad():
        model.proj.weight.fill_(1.0)
    torch_prune.custom_from_mask(model.proj, "weight", torch.eye(4))  # density 1/4
    m = measure(model, torch.randn(1, 3, 4), latency_repeats=2, warmup=0)
    linear, bmm = 2 * 3 * 4 * 4, 2 * 3 * 3 * 4
    assert m.flops == linear + bmm
    assert m.flops_sparse == pytest.approx(linear / 4 + bmm)


class _SelfAttention(nn.Module):
    def __init__(self, dim: int = 32, heads: int = 4) -> None:
        super().__init__()
        self.attn = nn.MultiheadAttention(dim, heads, batch_first=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.attn(x, x, x, need_weights=False)[0]


@pytest.mark.parametrize("converted", [False, True], ids=["nn.MultiheadAttention", "PrunableMultiheadAttention"])
def test_attention_counts_whole_in_eval_mode(converted):
    # nn.MultiheadAttention's eval fast path counted 0 FLOPs, and the CPU kernel of
    # scaled_dot_product_attention (what the head-prunable attention runs) had no formula.
    torch.manual_seed(0)
    model = _SelfAttention().eval()
    if converted:
        pruners.convert_attention(model)
    tokens, dim = 10, 32
    by_hand = 2 * (4 * tokens * dim * dim) + 2 * (2 * tokens * tokens * dim)  # q, k, v, out; QK^T and AV
    x = torch.randn(1, tokens, dim)
    assert pruners.count_flops(model, x) == by_hand
    assert measure(model, x, latency_repeats=1, warmup=0).flops == by_hand
    assert not model.training and torch.backends.mha.get_fastpath_enabled()


def test_size_is_the_saved_files_size(tmp_path):
    model = ResidualCNN()
    x = cnn_batch(2)[0]
    path = tmp_path / "model.pt2"
    pruners.save(model, path, x)
    m = measure(model, x, artifact=path, latency_repeats=2, warmup=0)
    assert m.size_bytes == os.path.getsize(path)
    assert m.params == sum(p.numel() for p in model.parameters())
    # BatchNorm biases start at zero: nonzeros are counted, not assumed.
    assert m.params_nonzero == sum(int(p.count_nonzero()) for p in model.parameters())
    # Without a file, measure writes one itself: a real pruners.save file of that size.
    assert measure(model, x, latency_repeats=2, warmup=0).size_bytes == m.size_bytes
    assert measure(model, x, files=False).size_bytes is None


def test_masked_model_saves_to_a_smaller_file():
    model = MLP(hidden=256)
    dense = measure(model, torch.randn(1, 64), latency_repeats=2, warmup=0)
    for layer in (model.net[1], model.net[4]):
        torch_prune.l1_unstructured(layer, "weight", amount=0.9)
    sparse = measure(model, torch.randn(1, 64), latency_repeats=2, warmup=0)
    assert sparse.params == dense.params
    assert sparse.params_nonzero < 0.2 * dense.params
    # The file's zeros are deflated away: what ships shrinks with the sparsity.
    assert sparse.size_bytes < 0.3 * dense.size_bytes
    assert sparse.flops_sparse < 0.15 * sparse.flops


def test_latency_is_the_saved_file_not_the_instrumented_model():
    """Hooks on the live model (pruning masks, gates, a profiler) are not what ships: the
    latency is the saved file, loaded back. A 20 ms hook must not show up in it."""
    model = MLP(hidden=64)
    torch_prune.l1_unstructured(model.net[1], "weight", amount=0.8)
    model.net[1].register_forward_pre_hook(lambda mod, inp: time.sleep(0.02))
    m = measure(model, torch.randn(1, 64), latency_repeats=3, warmup=1)
    assert m.latency_ms < 10
    assert m.latency_iqr_ms is not None and m.latency_iqr_ms >= 0


def test_reference_is_timed_alongside(tmp_path):
    dense = MLP(hidden=64)
    ref = tmp_path / "dense.pt2"
    pruners.save(dense, ref, torch.randn(1, 64))
    pruned = MLP(hidden=64)
    torch_prune.l1_unstructured(pruned.net[1], "weight", amount=0.8)
    m = measure(pruned, torch.randn(1, 64), reference=ref, latency_repeats=5, warmup=1)
    assert m.dense_latency_ms > 0 and m.speedup > 0
    # The speedup is paired (pass by pass), so it tracks the ratio of the medians loosely.
    assert 0.3 < m.speedup / (m.dense_latency_ms / m.latency_ms) < 3
    assert measure(pruned, torch.randn(1, 64), latency_repeats=2).speedup is None


def test_measure_leaves_the_model_as_it_was():
    model = ResidualCNN()
    torch_prune.l1_unstructured(model.conv1, "weight", amount=0.5)
    model.train()
    model.bn1.eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    m = measure(model, cnn_batch(4)[0], latency_repeats=3, batch_size=4)
    assert isinstance(m, Metrics)
    assert model.training and not model.bn1.training and model.conv1.training
    assert hasattr(model.conv1, "weight_mask")
    after = model.state_dict()
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)  # BN stats not updated
    assert set(m.to_dict()) == METRIC_KEYS | {"latency_runtime", "latency_threads"}
    assert (m.to_dict()["latency_runtime"], m.to_dict()["latency_threads"]) == ("torch", 1)
    assert math.isfinite(m.latency_ms) and m.latency_ms > 0 and m.batch_size == 4


@pytest.mark.parametrize("kw", [{"latency_repeats": 0}, {"batch_size": 0}, {"warmup": -1}])
def test_bad_arguments_raise(kw):
    with pytest.raises(ValueError, match=next(iter(kw))):
        measure(MLP(), torch.randn(1, 64), **kw)
