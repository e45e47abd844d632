"""Models to prune, built by name: ``build_model(name, num_classes, in_channels, **kwargs)``.

A name is one of

* a registered builder (``list_models()``): ``small_cnn`` for 8x8 / 28x28 images,
  ``small_resnet`` (a ResNet-8-style net for Fashion-MNIST), and the CIFAR ResNets
  ``resnet20/32/44/56/110`` of He et al., "Deep Residual Learning for Image Recognition"
  (CVPR 2016, section 4.2);
* any torchvision classifier (``torchvision.models.list_models(module=torchvision.models)``),
  e.g. ``resnet50``, with ``kwargs`` passed to ``torchvision.models.get_model`` (``weights``);
* ``timm:<name>``, any model of ``timm.list_models()`` (e.g. ``timm:convnext_tiny``, with a
  pretrained tag ``timm:resnet50.a1_in1k`` if wanted), built by ``timm.create_model`` with
  ``num_classes`` and ``in_chans`` set from the dataset and ``kwargs`` passed on. Weights
  are random unless ``kwargs`` say ``pretrained: true``, which downloads them (a machine
  without network then fails with a clear error rather than silently training from
  random weights); needs ``pip install 'prunefront[timm]'``;
* ``package.module:factory``, a user's callable returning an ``nn.Module``; it gets
  ``num_classes`` and ``in_channels`` when its signature accepts them, plus ``kwargs``.

Every registered model ends in a plain ``nn.Linear`` classifier (``pruners`` never prunes
the final classifier) and uses Conv-BatchNorm-ReLU blocks, so Torch-Pruning's dependency
graph can remove channels structurally (residual adds included).
"""

from __future__ import annotations

import difflib
import importlib
import inspect
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from orchestrator.errors import ConfigError
from pruners.registry import Registry

__all__ = [
    "MODELS",
    "BasicBlock",
    "CifarResNet",
    "SmallCNN",
    "build_model",
    "check_model_name",
    "list_models",
    "register_model",
    "timm_model_name",
    "torchvision_classifiers",
]

#: Prefix of a timm model name (``timm:convnext_tiny``).
TIMM_PREFIX = "timm:"

MODELS: Registry[Callable[..., nn.Module]] = Registry("model")


def register_model(name: str) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    """Decorator: register a builder ``fn(num_classes, in_channels, **kwargs) -> nn.Module``."""
    return MODELS.register(name)


def list_models() -> list[str]:
    """Names of the registered builders (torchvision names and factories work too)."""
    return MODELS.names()


def _conv_bn(cin: int, cout: int, stride: int = 1, kernel: int = 3) -> list[nn.Module]:
    return [
        nn.Conv2d(cin, cout, kernel, stride=stride, padding=kernel // 2, bias=False),
        nn.BatchNorm2d(cout),
    ]


class SmallCNN(nn.Module):
    """Three Conv-BN-ReLU blocks, global average pooling, a hidden Linear layer, a classifier.

    Global pooling makes it independent of the input size (8x8 digits, 28x28 MNIST); the
    hidden Linear layer gives neuron-level pruning something to remove besides channels.

    Args:
        num_classes: Output classes.
        in_channels: Input image channels.
        width: Channels of the first block (then 2x, 4x).
        hidden: Units of the hidden Linear layer.
        dropout: Dropout before the classifier.
    """

    def __init__(self, num_classes: int, in_channels: int = 1, width: int = 16, hidden: int = 64, dropout: float = 0.0):
        super().__init__()
        w = width
        self.features = nn.Sequential(
            *_conv_bn(in_channels, w), nn.ReLU(inplace=True),
            nn.MaxPool2d(2, ceil_mode=True),
            *_conv_bn(w, 2 * w), nn.ReLU(inplace=True),
            nn.MaxPool2d(2, ceil_mode=True),
            *_conv_bn(2 * w, 4 * w), nn.ReLU(inplace=True),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
        )
        self.hidden = nn.Sequential(nn.Linear(4 * w, hidden), nn.ReLU(inplace=True), nn.Dropout(dropout))
        self.classifier = nn.Linear(hidden, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.hidden(self.features(x)))


class BasicBlock(nn.Module):
    """Two 3x3 Conv-BN layers with a residual connection.

    When the shape changes the shortcut is a 1x1 Conv-BN projection (He et al.'s option B)
    rather than the paper's zero-padding (option A) for CIFAR: a padded identity has no
    module for Torch-Pruning to follow, so its channels could not be removed consistently.
    """

    def __init__(self, cin: int, cout: int, stride: int = 1):
        super().__init__()
        self.body = nn.Sequential(*_conv_bn(cin, cout, stride), nn.ReLU(inplace=True), *_conv_bn(cout, cout))
        self.shortcut: nn.Module = (
            nn.Sequential(*_conv_bn(cin, cout, stride, kernel=1)) if stride != 1 or cin != cout else nn.Identity()
        )
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(self.body(x) + self.shortcut(x))


class CifarResNet(nn.Module):
    """The CIFAR ResNet of He et al. (2016): a 3x3 stem, three stages of ``blocks`` basic
    blocks at ``widths`` channels (stride 2 between stages), global pooling, a Linear layer.

    Depth is ``6 * blocks + 2`` (ResNet-20: 3 blocks, ResNet-56: 9).

    Args:
        num_classes: Output classes.
        in_channels: Input image channels.
        blocks: Basic blocks per stage.
        widths: Channels of the three stages.
    """

    def __init__(self, num_classes: int, in_channels: int = 3, blocks: int = 3, widths: tuple[int, int, int] = (16, 32, 64)):
        super().__init__()
        if blocks < 1:
            raise ValueError(f"blocks must be >= 1, got {blocks}")
        widths = tuple(int(w) for w in widths)
        if len(widths) != 3 or min(widths) < 1:
            raise ValueError(f"widths must be three positive channel counts, got {widths}")
        self.stem = nn.Sequential(*_conv_bn(in_channels, widths[0]), nn.ReLU(inplace=True))
        layers: list[nn.Module] = []
        cin = widths[0]
        for i, w in enumerate(widths):
            for b in range(blocks):
                layers.append(BasicBlock(cin, w, stride=2 if (i > 0 and b == 0) else 1))
                cin = w
        self.layers = nn.Sequential(*layers)
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.fc = nn.Linear(cin, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.pool(self.layers(self.stem(x))))


@register_model("small_cnn")
def small_cnn(num_classes: int, in_channels: int, **kwargs: Any) -> nn.Module:
    """:class:`SmallCNN` (kwargs: width, hidden, dropout)."""
    return SmallCNN(num_classes, in_channels, **kwargs)


@register_model("small_resnet")
def small_resnet(num_classes: int, in_channels: int, **kwargs: Any) -> nn.Module:
    """ResNet-8-style :class:`CifarResNet` (one block per stage; kwargs: blocks, widths)."""
    kwargs.setdefault("blocks", 1)
    return CifarResNet(num_classes, in_channels, **kwargs)


def _cifar_resnet(depth: int) -> Callable[..., nn.Module]:
    def build(num_classes: int, in_channels: int, **kwargs: Any) -> nn.Module:
        if "blocks" in kwargs:
            raise ValueError(f"resnet{depth} fixes blocks={(depth - 2) // 6}; use small_resnet for other depths")
        return CifarResNet(num_classes, in_channels, blocks=(depth - 2) // 6, **kwargs)

    build.__doc__ = f"CIFAR ResNet-{depth} (He et al. 2016; kwargs: widths)."
    return build


for _depth in (20, 32, 44, 56, 110):
    register_model(f"resnet{_depth}")(_cifar_resnet(_depth))


# --------------------------------------------------------------------------------------
# torchvision and user factories
# --------------------------------------------------------------------------------------


def torchvision_classifiers() -> list[str]:
    """Classification model names torchvision knows (imports torchvision, a few seconds)."""
    import torchvision

    return list(torchvision.models.list_models(module=torchvision.models))


def _resolve_factory(spec: str) -> Callable[..., Any]:
    module_name, _, attr = spec.partition(":")
    try:
        obj: Any = importlib.import_module(module_name)
    except Exception as e:  # noqa: BLE001 - any import failure is the user's module's
        raise ConfigError(
            f"model.name: cannot import {module_name!r} ({e.__class__.__name__}: {e}); "
            "package.module:factory must be importable (on PYTHONPATH) on every node"
        ) from None
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise ConfigError(f"model.name: {module_name!r} has no attribute {attr!r}; name a callable that builds the model")
        obj = getattr(obj, part)
    if not callable(obj):
        raise ConfigError(f"model.name: {spec!r} is not callable; name a function or class that builds the model")
    return obj


def _unknown(name: str) -> ConfigError:
    return ConfigError(
        f"model.name: unknown model {name!r}; valid choices: {', '.join(list_models())}, any torchvision "
        "classifier (e.g. resnet18, resnet50, mobilenet_v2), timm:<name> (e.g. timm:convnext_tiny), "
        "or package.module:factory"
    )


def _timm():
    try:
        import timm
    except ImportError:
        raise ConfigError(
            "model.name: timm:<name> needs the timm package; install it with pip install 'prunefront[timm]'"
        ) from None
    return timm


def timm_model_name(name: str) -> str | None:
    """The timm model name of ``timm:<name>`` (checked against ``timm``), else ``None``.

    Raises:
        ConfigError: timm is not installed, or does not know the name (the message lists
            close matches).
    """
    if not name.startswith(TIMM_PREFIX):
        return None
    timm = _timm()
    model = name[len(TIMM_PREFIX):]
    arch = model.split(".", 1)[0]  # "resnet50.a1_in1k": architecture + pretrained tag
    if not arch or not timm.is_model(arch):
        near = difflib.get_close_matches(arch, timm.list_models(), n=5) if arch else []
        raise ConfigError(
            f"model.name: timm has no model {model!r}"
            + (f"; close names: {', '.join(near)}" if near else "")
            + "; see timm.list_models()"
        )
    return model


def check_model_name(name: str) -> None:
    """Raise :class:`ConfigError` unless ``name`` resolves to a model builder (builds nothing)."""
    if name in MODELS:
        return
    if timm_model_name(name) is not None:
        return
    if ":" in name:
        _resolve_factory(name)
        return
    if name not in torchvision_classifiers():
        raise _unknown(name)


def build_model(name: str, num_classes: int, in_channels: int, **kwargs: Any) -> nn.Module:
    """Build model ``name`` for ``num_classes`` outputs and ``in_channels``-channel images.

    Args:
        name: Registry name, torchvision classifier name, ``timm:<name>``, or
            ``package.module:factory``.
        num_classes: Output classes.
        in_channels: Channels of the input images.
        **kwargs: Passed to the builder (torchvision: ``get_model``, e.g. ``weights``;
            timm: ``create_model``, e.g. ``pretrained``, ``img_size``).

    Raises:
        ValueError: unknown name, a torchvision model with non-RGB input, a factory that
            does not return an ``nn.Module`` (``ConfigError`` for a name problem).
    """
    if name in MODELS:
        return MODELS.get(name)(num_classes, in_channels, **kwargs)
    timm_name = timm_model_name(name)
    if timm_name is not None:
        return _build_timm(timm_name, num_classes, in_channels, **kwargs)
    if ":" in name:
        factory = _resolve_factory(name)
        try:
            params = inspect.signature(factory).parameters
            var_kw = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
            accepted = {k for k in ("num_classes", "in_channels") if var_kw or k in params}
        except (TypeError, ValueError):  # builtins without a signature: pass everything
            accepted = {"num_classes", "in_channels"}
        given = {"num_classes": num_classes, "in_channels": in_channels}
        model = factory(**{k: v for k, v in given.items() if k in accepted}, **kwargs)
        if not isinstance(model, nn.Module):
            raise ValueError(f"model factory {name!r} returned {type(model).__name__}, not an nn.Module")
        return model
    if name in torchvision_classifiers():
        if in_channels != 3:
            raise ValueError(
                f"torchvision model {name!r} takes 3-channel images but the dataset has {in_channels}; "
                "use small_cnn / small_resnet or an RGB dataset"
            )
        import torchvision

        return torchvision.models.get_model(name, num_classes=num_classes, **kwargs)
    raise _unknown(name)


def _build_timm(name: str, num_classes: int, in_channels: int, **kwargs: Any) -> nn.Module:
    """``timm.create_model`` with the dataset's classes and channels; random weights unless
    ``pretrained=True`` (whose download failing is an error, not a silent fallback)."""
    timm = _timm()
    for k in ("num_classes", "in_chans"):
        if k in kwargs:
            raise ValueError(f"model.kwargs.{k}: set by the dataset; remove it")
    pretrained = bool(kwargs.pop("pretrained", False))
    try:
        return timm.create_model(
            name, pretrained=pretrained, num_classes=num_classes, in_chans=in_channels, **kwargs
        )
    except (OSError, RuntimeError) as e:
        if not pretrained:
            raise
        raise ValueError(
            f"timm model {name!r}: pretrained weights could not be loaded ({e.__class__.__name__}: {e}); "
            "check the network (or HF_HUB_OFFLINE and a local cache), or set pretrained: false"
        ) from e
