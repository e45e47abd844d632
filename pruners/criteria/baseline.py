"""``random``: the baseline every pruning study needs (a criterion that knows nothing)."""

from __future__ import annotations

import zlib
from collections.abc import Iterable

import torch
from torch import nn

from pruners.criteria.base import Batch, Criterion
from pruners.criteria.registry import register


@register
class RandomCriterion(Criterion):
    """Uniform random scores, reproducible and identical on every rank.

    Each tensor's scores come from a generator seeded by ``seed``, the pruning round and the
    parameter's dotted name, so DDP ranks (same seed, same call order) remove the same units
    without communicating, and successive rounds draw fresh scores.

    Params:
        seed: Shared seed (default 0).
    """

    name = "random"
    param_defaults = {"seed": 0}

    def __init__(self, **params) -> None:
        super().__init__(**params)
        self._round = -1
        self._names: dict[nn.Module, str] = {}

    def prepare(self, model: nn.Module, calibration: Iterable[Batch] | None) -> None:
        self._round += 1
        self._names = {m: n for n, m in model.named_modules()}

    def elementwise(self, module: nn.Module, name: str) -> torch.Tensor | None:
        param = getattr(module, name, None)
        if param is None:
            return None
        key = f"{self.params['seed']}:{max(self._round, 0)}:{self._names.get(module, type(module).__name__)}.{name}"
        gen = torch.Generator().manual_seed(zlib.crc32(key.encode()))
        return torch.rand(param.shape, generator=gen, dtype=torch.float32)
