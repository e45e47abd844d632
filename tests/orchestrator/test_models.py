"""Model registry contract (every entry), torchvision names and user factories."""

from __future__ import annotations

import os
import sys
import textwrap

import pytest
import torch
from torch import nn

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

import pruners  # noqa: E402
from orchestrator import models  # noqa: E402
from orchestrator.config import ConfigError  # noqa: E402
from pruners.prune import find_classifier  # noqa: E402

# (in_channels, image size) each registered model is meant for.
INPUTS = {"small_cnn": (1, 8), "small_resnet": (1, 28)}


def _input(name: str, batch: int = 2) -> torch.Tensor:
    c, s = INPUTS.get(name, (3, 32))
    return torch.randn(batch, c, s, s)


def _params(m: nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


def test_registry_lists_the_models_the_issue_asks_for():
    assert {"small_cnn", "small_resnet", "resnet20", "resnet56"} <= set(models.list_models())


@pytest.mark.parametrize("name", models.list_models())
def test_registered_model_contract(name):
    x = _input(name)
    model = models.build_model(name, num_classes=7, in_channels=x.shape[1])
    model.eval()
    assert model(x).shape == (2, 7)
    # The output layer is a plain Linear (pruners never prunes it).
    classifier = dict(model.named_modules())[find_classifier(model, x[:1])]
    assert isinstance(classifier, nn.Linear) and classifier.out_features == 7
    assert any(isinstance(m, nn.BatchNorm2d) for m in model.modules())


def test_cifar_resnet_depths_follow_he_et_al():
    def convs(m):
        return sum(isinstance(x, nn.Conv2d) and x.kernel_size == (3, 3) for x in m.modules())

    # depth = 6n + 2: 6n 3x3 convs in blocks, 1 stem conv, 1 fully connected layer.
    for depth in (20, 56):
        m = models.build_model(f"resnet{depth}", 10, 3)
        assert convs(m) + 1 == depth
    # ResNet-20 has ~0.27M parameters in the paper; projection shortcuts add a few.
    assert 0.26e6 < _params(models.build_model("resnet20", 10, 3)) < 0.29e6


@pytest.mark.parametrize("name", models.list_models())
def test_structured_pruning_removes_channels_and_keeps_the_classifier(name):
    torch.manual_seed(0)
    x = _input(name)
    model = models.build_model(name, num_classes=10, in_channels=x.shape[1]).eval()
    before = _params(model)
    report = pruners.prune(model, criterion="magnitude", granularity="structured", amount=0.5, example_inputs=x[:1])
    assert report.achieved > 0.3
    assert _params(model) < 0.6 * before  # channels physically gone, residual adds included
    assert model(x).shape == (2, 10)


def test_small_resnet_has_residual_connections():
    m = models.build_model("small_resnet", 10, 1)
    blocks = [b for b in m.modules() if isinstance(b, models.BasicBlock)]
    assert len(blocks) == 3
    # Zeroing a block's body leaves its shortcut path: output = relu(shortcut(x)).
    b = blocks[0].eval()
    for p in b.body.parameters():
        nn.init.zeros_(p)
    x = torch.randn(1, 16, 8, 8)
    assert torch.allclose(b(x), torch.relu(b.shortcut(x)))


def test_kwargs_reach_the_builder():
    m = models.build_model("small_cnn", 10, 1, width=4, hidden=8)
    assert m.classifier.in_features == 8
    with pytest.raises(TypeError):
        models.build_model("small_cnn", 10, 1, depth=3)


def test_torchvision_classifier_by_name():
    m = models.build_model("mobilenet_v3_small", num_classes=5, in_channels=3).eval()
    assert m(torch.randn(1, 3, 32, 32)).shape == (1, 5)
    with pytest.raises(ValueError, match="takes 3-channel images but the dataset has 1"):
        models.build_model("mobilenet_v3_small", 5, 1)
    models.check_model_name("resnet50")


def test_unknown_name_lists_the_choices():
    with pytest.raises(ConfigError) as e:
        models.check_model_name("resnet57")
    assert str(e.value).startswith("model.name: unknown model 'resnet57'; valid choices: resnet110, resnet20")
    assert "any torchvision classifier" in str(e.value)


def test_user_factory(tmp_path, monkeypatch):
    (tmp_path / "mynets.py").write_text(
        textwrap.dedent(
            """
            from torch import nn

            def build(num_classes, hidden=4):
                return nn.Sequential(nn.Flatten(), nn.Linear(64, hidden), nn.ReLU(), nn.Linear(hidden, num_classes))

            class Net(nn.Module):
                def __init__(self, **kw):
                    super().__init__()
                    self.kw = kw

            def not_a_model(num_classes, in_channels):
                return 42

            VALUE = 3
            """
        )
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    # Only the arguments the factory accepts are passed (no in_channels here).
    m = models.build_model("mynets:build", num_classes=3, in_channels=1, hidden=6)
    assert m(torch.randn(2, 1, 8, 8)).shape == (2, 3) and m[1].out_features == 6
    assert models.build_model("mynets:Net", 3, 1).kw == {"num_classes": 3, "in_channels": 1}
    with pytest.raises(ValueError, match="returned int, not an nn.Module"):
        models.build_model("mynets:not_a_model", 3, 1)
    with pytest.raises(ConfigError, match="model.name: 'mynets' has no attribute 'missing'"):
        models.check_model_name("mynets:missing")
    with pytest.raises(ConfigError, match="model.name: 'mynets:VALUE' is not callable"):
        models.check_model_name("mynets:VALUE")
    with pytest.raises(ConfigError, match=r"cannot import 'nonexistent_pkg_xyz' \(ModuleNotFoundError"):
        models.check_model_name("nonexistent_pkg_xyz:build")
