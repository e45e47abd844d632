"""Device helpers shared by the criteria, ``finetune`` and ``measure``."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn


def device_of(module: nn.Module) -> torch.device:
    """The device of the module's first parameter (else first buffer, else CPU)."""
    for t in module.parameters():
        return t.device
    for t in module.buffers():
        return t.device
    return torch.device("cpu")


def move_to(x: Any, device: torch.device) -> Any:
    """``x`` with every tensor inside (tuples, lists, mappings, nested) moved to ``device``.

    Non-blocking copies: a pinned host batch overlaps its transfer with compute on CUDA, and
    on CPU the flag is a no-op.
    """
    if isinstance(x, torch.Tensor):
        return x.to(device, non_blocking=True)
    if isinstance(x, (tuple, list)):
        return type(x)(move_to(v, device) for v in x)
    if isinstance(x, Mapping):
        return {k: move_to(v, device) for k, v in x.items()}
    return x
