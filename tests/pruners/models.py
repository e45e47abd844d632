"""Small models for pruning tests (also imported by the fine-tuning tests)."""

from __future__ import annotations

import torch
from torch import nn


class ResidualCNN(nn.Module):
    """Conv-BN-ReLU stem, one residual block (add), a strided conv, pooling and a classifier.

    The residual add couples the stem and the block's second conv, so structured pruning
    has to remove the same channels from both (and from their BatchNorms).
    """

    def __init__(self, in_channels: int = 1, num_classes: int = 10, width: int = 8) -> None:
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU()
        )
        self.conv1 = nn.Conv2d(width, width, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.down = nn.Sequential(
            nn.Conv2d(width, 2 * width, 3, stride=2, padding=1, bias=False),
            nn.BatchNorm2d(2 * width),
            nn.ReLU(),
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(2 * width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        y = torch.relu(self.bn1(self.conv1(x)))
        x = torch.relu(x + self.bn2(self.conv2(y)))
        x = self.down(x)
        return self.fc(torch.flatten(self.pool(x), 1))


class MLP(nn.Module):
    """Flatten -> Linear-BN-ReLU -> Linear-ReLU -> Linear classifier."""

    def __init__(self, in_features: int = 64, num_classes: int = 10, hidden: int = 32) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Flatten(),
            nn.Linear(in_features, hidden),
            nn.BatchNorm1d(hidden),
            nn.ReLU(),
            nn.Linear(hidden, hidden),
            nn.ReLU(),
            nn.Linear(hidden, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def cnn_batch(n: int = 8, seed: int = 0, classes: int = 10) -> tuple[torch.Tensor, torch.Tensor]:
    """A reproducible (inputs, targets) batch for ``ResidualCNN`` (1x8x8 images)."""
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 1, 8, 8, generator=g), torch.randint(0, classes, (n,), generator=g)


def mlp_batch(n: int = 8, seed: int = 0, classes: int = 10) -> tuple[torch.Tensor, torch.Tensor]:
    """A reproducible (inputs, targets) batch for ``MLP`` (64 features, like digits)."""
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 64, generator=g), torch.randint(0, classes, (n,), generator=g)


class TinyTransformer(nn.Module):
    """Token embedding -> one ``nn.TransformerEncoderLayer`` (4 heads) -> mean pool -> classifier.

    Inputs are ``(batch, tokens=8, features=8)``; exercises head pruning on
    ``nn.MultiheadAttention`` and MLP-width pruning inside a transformer block.
    """

    def __init__(self, features: int = 8, dim: int = 16, heads: int = 4, num_classes: int = 10) -> None:
        super().__init__()
        self.embed = nn.Linear(features, dim)
        self.block = nn.TransformerEncoderLayer(dim, heads, dim_feedforward=32, dropout=0.0, batch_first=True)
        self.head = nn.Linear(dim, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.block(self.embed(x)).mean(1))


def transformer_batch(n: int = 8, seed: int = 0, classes: int = 10) -> tuple[torch.Tensor, torch.Tensor]:
    """A reproducible (inputs, targets) batch for ``TinyTransformer``."""
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 8, 8, generator=g), torch.randint(0, classes, (n,), generator=g)
