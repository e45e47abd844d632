"""``random``: the baseline every pruning study needs (a criterion that knows nothing)."""

from __future__ import annotations

import zlib
from collections.abc import Iterable
from typing import Any

import torch
from torch import nn

from pruners.criteria.base import Batch, Criterion
from pruners.criteria.registry import register


@register
class RandomCriterion(Criterion):
    """Uniform random scores, reproducible and identical on every rank.

    Every unit (weight, channel or head) scores an independent ``U(0, 1)`` draw from a
    generator seeded by ``seed``, the pruning round and the scored tensor's dotted name, so
    DDP ranks (same seed, same call order) remove the same units without communicating, and
    successive rounds draw fresh scores. A channel draws one number of its own rather than
    summing its weights' draws: a sum would grow with the layer's fan-in, and a global
    ranking would then empty the narrow layers first instead of choosing at random.

    Params:
        seed: Shared seed (default 0).
    """

    name = "random"
    param_defaults = {"seed": 0}

    def __init__(self, **params: Any) -> None:
        super().__init__(**params)
        self._round = -1
        self._names: dict[nn.Module, str] = {}

    def prepare(self, model: nn.Module, calibration: Iterable[Batch] | None) -> None:
        self._round += 1
        self._names = {m: n for n, m in model.named_modules()}

    def state_dict(self, model: nn.Module) -> dict[str, Any]:
        return {"round": self._round}

    def load_state_dict(self, model: nn.Module, state: Any) -> None:
        self._round = int(state.get("round", -1))

    def _uniform(self, module: nn.Module, what: str, shape: torch.Size | tuple[int, ...]) -> torch.Tensor:
        name = self._names.get(module, type(module).__name__)
        key = f"{self.params['seed']}:{max(self._round, 0)}:{name}.{what}"
        gen = torch.Generator().manual_seed(zlib.crc32(key.encode()))
        return torch.rand(shape, generator=gen, dtype=torch.float32)

    def elementwise(self, module: nn.Module, name: str) -> torch.Tensor | None:
        param = getattr(module, name, None)
        return None if param is None else self._uniform(module, name, param.shape)

    def group_scores(self, group: Any) -> torch.Tensor:
        root = group[0].dep.target.module
        return self._uniform(root, "channels", (len(group[0].idxs),)).to(torch.float64)

    def head_scores(self, module: nn.Module) -> torch.Tensor:
        return self._uniform(module, "heads", (module.num_heads,)).to(torch.float64)
