"""Structured pruning of timm models, one per family, built as a config names them.

``model.name: timm:<name>`` goes through ``orchestrator.models.build_model`` (random
weights, offline). Skipped when timm is not installed (``pip install 'prunefront[timm]'``).
The full sample at 224x224 is ``bench/torchvision_sweep.py --timm``.
"""

from __future__ import annotations

import pytest
import torch

import pruners

timm = pytest.importorskip("timm")

from orchestrator import models  # noqa: E402  (after the skip: needs timm)
from orchestrator.config import ConfigError  # noqa: E402

# (timm name, input side, kwargs, least share of FLOPs removed at 50 %). ViT / DeiT / Swin
# keep their residual stream and heads (timm's attention modules are left whole), so only
# their MLP widths go; the convnets lose about 3/4 of their FLOPs.
FAMILIES = [
    ("resnet18", 64, {}, 0.6),
    ("efficientnet_b0", 64, {}, 0.6),
    ("convnext_atto", 64, {}, 0.6),
    ("vit_tiny_patch16_224", 64, {"img_size": 64}, 0.25),
    ("deit_tiny_patch16_224", 64, {"img_size": 64}, 0.25),
    ("swin_tiny_patch4_window7_224", 64, {"img_size": 64, "window_size": 4}, 0.2),
    ("regnety_002", 64, {}, 0.6),
    ("mobilenetv3_small_050", 64, {}, 0.5),
]


@pytest.mark.slow
@pytest.mark.parametrize("name,size,kwargs,min_cut", FAMILIES, ids=[f[0] for f in FAMILIES])
def test_timm_family_prunes_and_runs(name, size, kwargs, min_cut):
    model = models.build_model(f"timm:{name}", num_classes=10, in_channels=3, **kwargs).eval()
    x = torch.randn(1, 3, size, size)
    flops = pruners.count_flops(model, x)
    report = pruners.prune(model, criterion="magnitude", granularity="structured", amount=0.5, example_inputs=x)
    with torch.no_grad():
        y = model(x)
    assert y.shape == (1, 10) and torch.isfinite(y).all()
    assert report.achieved == pytest.approx(0.5, abs=0.01)
    assert 1 - pruners.count_flops(model, x) / flops >= min_cut


def test_timm_names_are_checked_and_built_with_the_datasets_shape():
    models.check_model_name("timm:resnet18")
    models.check_model_name("timm:resnet50.a1_in1k")  # a pretrained tag is part of the name
    with pytest.raises(ConfigError, match="timm has no model 'resnet57'; close names: "):
        models.check_model_name("timm:resnet57")
    model = models.build_model("timm:resnet18", num_classes=4, in_channels=1).eval()
    assert model(torch.randn(1, 1, 32, 32)).shape == (1, 4)
    with pytest.raises(ValueError, match="model.kwargs.in_chans: set by the dataset"):
        models.build_model("timm:resnet18", 4, 1, in_chans=3)
