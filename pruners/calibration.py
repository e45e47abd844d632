"""Calibration batches for data-driven criteria, drawn without touching any training iterator.

Criteria such as ``taylor`` score a few training batches at each pruning step. Taking them
from the training loader's iterator would disturb the epoch in progress (with persistent
``DataLoader`` workers, ``iter(loader)`` even restarts it), so :class:`CalibrationBatches`
samples the loader's *dataset* afresh: the ``k``-th draw is a seeded random sample, a pure
function of ``(seed, rank, k)``, so a run restored mid-schedule draws what it would have.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch.utils.data import DataLoader, Subset

from pruners import _dist
from pruners._devices import move_to

__all__ = ["CalibrationBatches"]


class CalibrationBatches:
    """``take()`` returns ``n`` batches of ``(inputs, targets)`` on ``device``.

    Args:
        source: A ``DataLoader`` (its dataset, batch size and collate function are used;
            the loader itself is never iterated) or a re-iterable of batches (a list, ...),
            cycled through in order.
        n: Batches per draw.
        device: Where the batches go.
        seed: Seed of the draws (each rank adds its rank, so shards differ).
    """

    def __init__(self, source: Iterable[Any], n: int, device: torch.device, seed: int = 0) -> None:
        if isinstance(source, DataLoader) and source.batch_size is None:
            raise ValueError("a calibration DataLoader needs a batch_size (batch_sampler loaders are not supported)")
        self.source, self.n, self.device, self.seed = source, int(n), device, int(seed)
        self.draws = 0

    def take(self) -> list[tuple[Any, Any]]:
        k = self.draws
        self.draws += 1
        if isinstance(self.source, DataLoader):
            batches = self._sample(k)
        else:
            batches = self._cycle(k)
        out = [(move_to(b[0], self.device), move_to(b[1], self.device)) for b in batches]
        if not out:
            raise ValueError("the calibration source yielded no batch")
        return out

    def _sample(self, k: int) -> list[Any]:
        loader: DataLoader = self.source  # type: ignore[assignment]
        dataset = loader.dataset
        size = len(dataset)  # type: ignore[arg-type]
        g = torch.Generator().manual_seed((self.seed * 1_000_003 + _dist.rank() * 7_919 + k) % (2**63 - 1))
        idx = torch.randperm(size, generator=g)[: self.n * int(loader.batch_size)].tolist()
        sub = DataLoader(Subset(dataset, idx), batch_size=loader.batch_size, shuffle=False,
                         collate_fn=loader.collate_fn, num_workers=0)
        return list(sub)

    def _cycle(self, k: int) -> list[Any]:
        batches = list(self.source)
        if not batches:
            return []
        start = (k * self.n) % len(batches)
        return [batches[(start + i) % len(batches)] for i in range(min(self.n, len(batches)))]

    def state_dict(self) -> dict[str, int]:
        return {"draws": self.draws}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.draws = int(state["draws"])
