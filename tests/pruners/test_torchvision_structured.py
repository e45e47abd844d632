"""Structured pruning of real architectures: one torchvision model per family.

The whole list (every torchvision classifier at 224x224) is ``bench/torchvision_sweep.py``;
here one model per family at the smallest input it accepts, so the suite stays fast. Each
must keep running with the same output shape, lose FLOPs, and report the fraction of units
it removed. A second test checks that channels are *removed*, not scrambled: channels made
to contribute nothing are pruned, and the function the network computes does not change.
"""

from __future__ import annotations

import importlib
import warnings

import pytest
import torch
import torchvision
from torch import nn

import pruners

prune_module = importlib.import_module("pruners.prune")
structured = importlib.import_module("pruners.structured")

# (model, input side, kwargs): 64x64 keeps the convnets cheap (resnext at 32); ViT, MaxViT
# check their input size (ViT takes any multiple of its patch through `image_size`).
FAMILIES = [
    ("alexnet", 64, {}),
    ("convnext_tiny", 64, {}),
    ("densenet121", 64, {}),
    ("efficientnet_b0", 64, {}),
    ("googlenet", 64, {"aux_logits": False, "init_weights": True}),
    ("inception_v3", 75, {"aux_logits": False, "init_weights": True}),
    ("maxvit_t", 224, {}),
    ("mnasnet0_5", 64, {}),
    ("mobilenet_v2", 64, {}),
    ("mobilenet_v3_small", 64, {}),
    ("regnet_y_400mf", 64, {}),
    ("resnet18", 64, {}),
    ("resnext50_32x4d", 32, {}),
    ("shufflenet_v2_x0_5", 64, {}),
    ("squeezenet1_1", 64, {}),
    ("swin_t", 64, {}),
    ("swin_v2_t", 64, {}),
    ("vgg11_bn", 64, {}),
    ("vit_b_16", 224, {}),
]

# Share of the dense FLOPs removed at amount=0.5 is at least this. Convnets lose half their
# channels, so ~3/4 of the FLOPs; where a family keeps layers whole on purpose, less:
# Swin / MaxViT keep the residual stream and heads (only MLP / MBConv widths go), ViT its
# stream (heads + MLP go), ShuffleNet-V2 its shuffled stream channels.
MIN_FLOPS_CUT = {"maxvit_t": 0.30, "swin_t": 0.10, "swin_v2_t": 0.10, "vit_b_16": 0.40, "shufflenet_v2_x0_5": 0.35}


def _build(arch: str, kwargs: dict) -> nn.Module:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # GoogLeNet / Inception's init-weights notice
        return torchvision.models.get_model(arch, weights=None, **kwargs).eval()


@pytest.mark.slow
@pytest.mark.parametrize("arch,size,kwargs", FAMILIES, ids=[a for a, _, _ in FAMILIES])
def test_half_of_the_channels_go_and_the_model_still_runs(arch, size, kwargs):
    model = _build(arch, kwargs)
    # prune converts attention first anyway (same outputs); done here so that the counts
    # before and after pruning are of the same modules.
    pruners.convert_attention(model)
    x = torch.randn(1, 3, size, size)
    with torch.no_grad():
        out_shape = model(x).shape
    params, flops = sum(p.numel() for p in model.parameters()), pruners.count_flops(model, x)

    report = pruners.prune(model, criterion="magnitude", granularity="structured", amount=0.5, example_inputs=x)

    with torch.no_grad():
        y = model(x)
    assert y.shape == out_shape == (1, 1000)  # the classifier keeps its 1000 outputs
    assert torch.isfinite(y).all()
    # Every family reaches the requested fraction of the units it prunes (a layer keeps
    # its last unit, which never binds at 50 %).
    assert report.achieved == pytest.approx(0.5, abs=0.01)
    assert report.units_after < report.units_before
    cut = 1 - pruners.count_flops(model, x) / flops
    assert cut >= MIN_FLOPS_CUT.get(arch, 0.6), f"FLOPs cut {cut:.1%}"
    assert sum(p.numel() for p in model.parameters()) < params
    if arch == "vit_b_16":
        heads = [layer for layer in report.layers if layer.name.endswith("self_attention")]
        assert len(heads) == 12 and all(layer.units_before == 12 for layer in heads)
        assert sum(layer.units_after for layer in heads) == 72  # half of 144 heads, ranked globally
        for block in model.encoder.layers:
            attn = block.self_attention
            assert isinstance(attn, pruners.PrunableMultiheadAttention)
            assert attn.q_proj.out_features == attn.num_heads * 64  # head_dim stays 64
            assert attn.embed_dim == 768  # the residual stream is not pruned


def test_shufflenet_prunes_around_its_channel_shuffle():
    """Torch-Pruning alone raises ZeroDivisionError on the channel shuffle's reshape."""
    model = _build("shufflenet_v2_x0_5", {})
    x = torch.randn(1, 3, 64, 64)
    flops = pruners.count_flops(model, x)
    report = pruners.prune(model, criterion="magnitude", granularity="structured", amount=0.5, example_inputs=x)
    with torch.no_grad():
        assert model(x).shape == (1, 1000)
    assert report.achieved == pytest.approx(0.5, abs=0.01)
    assert pruners.count_flops(model, x) < 0.65 * flops
    # What is pruned: the stem, every branch's inner width, the last 1x1 conv. What is not:
    # the channels that pass through a shuffle (their width is each stage's, unchanged).
    assert model.conv1[0].out_channels < 24 and model.conv5[0].out_channels < 1024
    for stage, width in ((model.stage2, 48), (model.stage3, 96), (model.stage4, 192)):
        for block in stage:
            assert block.branch2[0].out_channels < width // 2  # inner width pruned
            assert block.branch2[5].out_channels == width // 2  # shuffled width kept
    names = {layer.name for layer in report.layers}
    assert "conv1.0" in names and not any(n.endswith("branch2.5") for n in names)


def _groups(model: nn.Module, x: torch.Tensor) -> list:
    """The channel groups ``prune`` would rank (its own collection, magnitude criterion)."""
    crit = pruners.make_criterion("magnitude")
    ignored = set(model.get_submodule(prune_module.find_classifier(model, x)).modules())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        _, units = structured.collect_units(model, crit, ignored, x)
    return [u for u in units if u.kind == "group"]


@torch.no_grad()
def _silence(unit, fraction: float) -> int:
    """Zero every weight of the first ``fraction`` of a group's channels; how many."""
    n = unit.scores.numel()
    k = max(1, int(n * fraction))
    if k >= n:
        return 0
    roots = {j + g * n for g in range(unit.ch_groups) for j in range(k)}
    dg = unit.group._DG
    for item in unit.group:
        layer = item.dep.target.module
        idxs = [i for i, r in zip(item.idxs, item.root_idxs) if r in roots]
        rows = torch.as_tensor(idxs, dtype=torch.long)
        if isinstance(layer, nn.Parameter):
            layer.index_fill_(item.dep.target.pruning_dim, rows, 0.0)
        elif isinstance(layer, (nn.modules.conv._ConvNd, nn.Linear)):
            transposed = getattr(layer, "transposed", False)
            depthwise = isinstance(layer, nn.modules.conv._ConvNd) and layer.groups == layer.out_channels > 1
            if dg.is_out_channel_pruning_fn(item.dep.handler) or depthwise:
                layer.weight.index_fill_(1 if transposed else 0, rows, 0.0)
                if layer.bias is not None:
                    layer.bias.index_fill_(0, rows, 0.0)
            elif isinstance(layer, nn.modules.conv._ConvNd) and layer.groups > 1:
                per = layer.in_channels // layer.groups  # input c is column c % per of group c // per
                for c in idxs:
                    g = c // per
                    out_per = layer.out_channels // layer.groups
                    layer.weight[g * out_per : (g + 1) * out_per, c % per] = 0.0
            else:
                layer.weight.index_fill_(0 if transposed else 1, rows, 0.0)
        elif isinstance(layer, nn.modules.batchnorm._BatchNorm):
            layer.weight.index_fill_(0, rows, 0.0)
            layer.bias.index_fill_(0, rows, 0.0)
    return k


# Families where every prunable group can be silenced exactly (normalisation over the
# channel axis, LayerNorm / GroupNorm, would see a silenced channel: those groups are skipped).
EXACT = ["alexnet", "densenet121", "googlenet", "mobilenet_v3_small", "regnet_y_400mf", "resnext50_32x4d",
         "shufflenet_v2_x0_5", "squeezenet1_1", "vgg11_bn", "convnext_tiny", "swin_t"]


@pytest.mark.slow
@pytest.mark.parametrize("arch", EXACT)
def test_removed_channels_are_the_ones_chosen_and_nothing_else_changes(arch):
    """Channels that contribute nothing are exactly the ones removed; outputs unchanged.

    A quarter of every group's channels is zeroed in every layer the group couples (conv
    rows and bias, the consumers' input columns, BatchNorm scale and shift); those score 0
    and an ``absolute`` threshold removes exactly them. Removing the right channels of every
    coupled layer (residual adds, concatenations, grouped and depthwise convolutions, the
    flatten before a classifier, channel shuffles, layer scales) leaves the outputs as
    they were; removing any other channel would not.
    """
    size, kwargs = next((s, kw) for a, s, kw in FAMILIES if a == arch)
    model = _build(arch, kwargs)
    x = torch.randn(2, 3, size, size)
    silenced = 0
    for unit in _groups(model, x[:1]):
        if any(isinstance(item.dep.target.module, (nn.LayerNorm, nn.GroupNorm)) for item in unit.group):
            continue
        silenced += _silence(unit, 0.25)
    assert silenced > 0
    with torch.no_grad():
        before = model(x)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        report = pruners.prune(model, criterion="magnitude", granularity="structured", amount=1e-12,
                               threshold_rule="absolute", example_inputs=x[:1])
    assert report.units_before - report.units_after == silenced
    with torch.no_grad():
        after = model(x)
    torch.testing.assert_close(after, before, rtol=1e-4, atol=1e-5)


def test_googlenet_auxiliary_classifiers_are_reported_not_pruned():
    """Training-only layers the eval-mode trace never reaches keep their widths, with a warning."""
    model = _build("googlenet", {"aux_logits": True, "init_weights": True})
    x = torch.randn(1, 3, 64, 64)
    with pytest.warns(UserWarning, match=r"not reached by the example forward pass .*aux1"):
        pruners.prune(model, criterion="magnitude", granularity="structured", amount=0.5, example_inputs=x)
    with torch.no_grad():
        assert model(x).shape == (1, 1000)
