"""Structured pruning of real architectures: residual, depthwise, plain, SE, dense concat, ViT."""

from __future__ import annotations

import pytest
import torch
import torchvision
from torch.utils.flop_counter import FlopCounterMode

import pruners

# (model, input size): 64x64 keeps the convnets cheap; torchvision's ViT checks for 224.
ARCHS = [
    ("resnet18", 64),
    ("mobilenet_v2", 64),
    ("vgg11_bn", 64),
    ("efficientnet_b0", 64),
    ("densenet121", 64),
    ("vit_b_16", 224),
]


def _flops(model: torch.nn.Module, x: torch.Tensor) -> int:
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(x)
    return counter.get_total_flops()


@pytest.mark.slow
@pytest.mark.parametrize("arch,size", ARCHS, ids=[a for a, _ in ARCHS])
def test_half_of_the_channels_go_and_the_model_still_runs(arch, size):
    model = getattr(torchvision.models, arch)(weights=None).eval()
    x = torch.randn(1, 3, size, size)
    with torch.no_grad():
        out_shape = model(x).shape
    params, flops = sum(p.numel() for p in model.parameters()), _flops(model, x)

    report = pruners.prune(model, criterion="magnitude", granularity="structured", amount=0.5, example_inputs=x)

    with torch.no_grad():
        y = model(x)
    assert y.shape == out_shape == (1, 1000)  # the classifier keeps its 1000 outputs
    assert torch.isfinite(y).all()
    assert report.achieved == pytest.approx(0.5, abs=0.01)
    assert sum(p.numel() for p in model.parameters()) < 0.6 * params
    assert _flops(model, x) < 0.8 * flops
    if arch == "vit_b_16":
        heads = [layer for layer in report.layers if layer.name.endswith("self_attention")]
        assert len(heads) == 12 and all(layer.units_before == 12 for layer in heads)
        assert sum(layer.units_after for layer in heads) == 72  # half of 144 heads, ranked globally
        for block in model.encoder.layers:
            attn = block.self_attention
            assert isinstance(attn, pruners.PrunableMultiheadAttention)
            assert attn.q_proj.out_features == attn.num_heads * 64  # head_dim stays 64
            assert attn.embed_dim == 768  # the residual stream is not pruned
