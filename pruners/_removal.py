"""Removing chosen channels of collected dependency groups, each layer cut once.

Each collected group (full indices, each item carrying the root channel it comes from) is
filtered down to the chosen root channels, the indices of every (layer, pruning function)
are merged over all groups, and each layer is cut once, in the original numbering (see
``pruners._graph`` for why Torch-Pruning's group-by-group path is avoided).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch_pruning import ops

from pruners._graph import PruneGraph

__all__ = ["remove_channels"]

@dataclass
class _Cut:
    """Everything one (layer, pruning function) loses, in the numbering before removal."""

    dep: Any
    idxs: set[int] = field(default_factory=set)


def _selected(item, chosen: torch.Tensor) -> list[int]:
    """Indices of a group item whose root channel is in ``chosen`` (a bool mask by root)."""
    idxs = torch.as_tensor(item.idxs, dtype=torch.long)
    roots = torch.as_tensor(item.root_idxs, dtype=torch.long)
    return idxs[chosen[roots]].tolist()


def _has_plain_roots(group) -> bool:
    for item in group:
        roots = getattr(item, "root_idxs", None)
        if roots is None or len(roots) != len(item.idxs) or None in roots:
            return False
    return True


def remove_channels(
    dg: PruneGraph, plans: list[tuple[Any, list[int]]]
) -> tuple[list[bool], dict[nn.Module, list[int]]]:
    """Remove root channels ``idxs`` of every collected ``group``, each layer cut once.

    ``plans`` pairs a group collected with full indices (each item knows its root channel)
    with the root channels to remove. A group is refused, as Torch-Pruning's
    ``check_pruning_group`` would, when it would leave a layer with no channel. Should a
    group's items lack root indices (Torch-Pruning leaves them out for some mappings), every
    group goes through Torch-Pruning one by one instead (:func:`_remove_one_by_one`).

    Returns:
        Per plan, whether it was carried out; and for every module whose outputs shrank,
        the output indices removed (numbering before removal).
    """
    if not all(_has_plain_roots(group) for group, _ in plans):
        return _remove_one_by_one(dg, plans)
    cuts: dict[tuple[Any, Any], _Cut] = {}
    done: list[bool] = []
    for group, root_idxs in plans:
        if not root_idxs:
            done.append(False)
            continue
        n_root = max(max(max(item.root_idxs, default=-1) for item in group), max(root_idxs)) + 1
        chosen = torch.zeros(n_root, dtype=torch.bool)
        chosen[torch.as_tensor(root_idxs, dtype=torch.long)] = True
        staged: list[tuple[tuple[Any, Any], Any, list[int]]] = []
        ok = True
        for item in group:
            dep = item.dep
            idxs = _selected(item, chosen)
            if not idxs:
                continue
            key = (dep.target, dep.handler)
            staged.append((key, dep, idxs))
            total = _channels(dg, dep)
            if total is not None:
                already = cuts[key].idxs if key in cuts else set()
                if len(already.union(idxs)) >= total:
                    ok = False  # it would empty a layer
                    break
        done.append(ok)
        if ok:
            for key, dep, idxs in staged:
                cuts.setdefault(key, _Cut(dep)).idxs.update(idxs)

    removed: dict[nn.Module, list[int]] = {}
    for cut in cuts.values():
        dep, idxs = cut.dep, sorted(cut.idxs)
        target = dep.target
        if isinstance(target.module, nn.Module) and dg.is_out_channel_pruning_fn(dep.handler):
            removed[target.module] = sorted(set(removed.get(target.module, [])) | set(idxs))
        if target.type == ops.OPTYPE.PARAMETER:
            _prune_parameter(dg, dep, idxs)
        else:
            dep(idxs)
    return done, removed


def _channels(dg: PruneGraph, dep) -> int | None:
    if dg.is_out_channel_pruning_fn(dep.handler):
        return dg.get_out_channels(dep.target)
    if dg.is_in_channel_pruning_fn(dep.handler):
        return dg.get_in_channels(dep.target)
    return None


def _remove_one_by_one(
    dg: PruneGraph, plans: list[tuple[Any, list[int]]]
) -> tuple[list[bool], dict[nn.Module, list[int]]]:
    """Torch-Pruning's own way: a fresh group per plan, checked, pruned (slower)."""
    done: list[bool] = []
    removed: dict[nn.Module, list[int]] = {}
    for group, root_idxs in plans:
        ok = False
        if root_idxs:
            pg = dg.get_pruning_group(group[0].dep.target.module, group[0].dep.handler, root_idxs)
            ok = dg.check_pruning_group(pg)
            if ok:
                for item in pg:
                    mod = item.dep.target.module
                    if isinstance(mod, nn.Module) and dg.is_out_channel_pruning_fn(item.dep.handler):
                        removed[mod] = sorted(set(removed.get(mod, [])) | {int(i) for i in item.idxs})
                pg.prune()
        done.append(ok)
    return done, removed


def _prune_parameter(dg: PruneGraph, dep, idxs: list[int]) -> None:
    """A free ``nn.Parameter`` (ViT's class token, ConvNeXt's layer scale) is replaced,
    as ``tp.Group.prune`` does it: the new parameter is set on its owner module."""
    old = dep.target.module
    name = dg._param_to_name[old]
    new = dep(idxs)
    owner = dg.model
    *path, leaf = name.split(".")
    for part in path:
        owner = getattr(owner, part)
    setattr(owner, leaf, new)
    dg._param_to_name.pop(old)
    dg._param_to_name[new] = name
    dg.module2node[new] = dg.module2node.pop(old)
    dg.module2node[new].module = new
