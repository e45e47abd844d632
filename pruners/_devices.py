"""Device and module helpers shared by the criteria, ``finetune``, ``measure``, ``io`` and
``targets``."""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn
from torch.nn.utils import prune as torch_prune


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


def unwrap(model: nn.Module) -> nn.Module:
    """The module inside ``DistributedDataParallel`` / ``DataParallel`` wrappers."""
    while isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
        model = model.module
    return model


def as_tuple(example_inputs: Any) -> tuple[Any, ...]:
    """Positional arguments for ``model(*args)``: a lone tensor becomes a 1-tuple."""
    if isinstance(example_inputs, tuple):
        return example_inputs
    if isinstance(example_inputs, list):
        return tuple(example_inputs)
    return (example_inputs,)


def clone_model(model: nn.Module) -> nn.Module:
    """A deep copy that keeps ``torch.nn.utils.prune`` masks and hooks.

    prune's pre-hook leaves ``module.weight`` as a non-leaf tensor (``weight_orig * mask``),
    which ``deepcopy`` refuses: deepcopy is handed a detached stand-in (the copy's hook
    recomputes it at its next forward).
    """
    memo: dict[int, Any] = {}
    for module in model.modules():
        for hook in module._forward_pre_hooks.values():
            if isinstance(hook, torch_prune.BasePruningMethod):
                t = getattr(module, hook._tensor_name, None)
                if isinstance(t, torch.Tensor) and not t.is_leaf:
                    memo[id(t)] = t.detach().clone()
    return copy.deepcopy(model, memo)
