"""Structured pruning: channel groups from Torch-Pruning's dependency graph, and attention heads.

Torch-Pruning's ``DependencyGraph`` (with ``pruners._graph``'s corrections) groups every
coupled layer (BatchNorm, the next layer's inputs, residual adds, concatenations, grouped /
depthwise convolutions); the criterion scores each group's channels, heads of
:class:`~pruners._attention.PrunableMultiheadAttention` are units too, ranked among heads.
All groups are cut at once, each layer once (``pruners._removal.remove_channels``); the
removals are recorded so :func:`replay_structural` can rebuild the structure (a checkpoint).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from pruners._attention import PrunableMultiheadAttention, PrunableMultiheadAttentionPruner
from pruners._graph import build_graph, collect_groups, token_attention_types
from pruners._removal import remove_channels
from pruners.criteria import Criterion
from pruners.criteria._group import slice_cache
from pruners.criteria.base import eval_mode
from pruners.selection import LayerReport, call_model, keep_at_least, layer_keep, select_global, select_units

__all__ = ["collect_units", "build_dependency_graph", "prune_structured", "replay_structural"]


@dataclass
class _Unit:
    """One ranking unit set: a dependency group's channels or an attention layer's heads."""

    name: str
    scores: torch.Tensor  # one per unit
    module: nn.Module
    kind: str  # "group" | "heads"
    group: Any = None  # the dependency group (full indices), for removal
    ch_groups: int = 1


def _channel_groups(dg, group) -> int:
    """How many interleaved channel groups a group has (grouped conv / GroupNorm)."""
    best = 1
    for item in group:
        dep = item.dep
        mod = dep.target.module
        if not isinstance(mod, nn.Module):
            continue
        if isinstance(mod, nn.modules.conv._ConvNd) and mod.groups == mod.out_channels:
            continue  # depthwise: one channel per group, no interleaving constraint
        pruner = dg.get_pruner_of_module(mod)
        if pruner is None:
            continue
        if dg.is_out_channel_pruning_fn(dep.handler):
            g = pruner.get_out_channel_groups(mod)
        else:
            g = pruner.get_in_channel_groups(mod)
        best = max(best, int(g or 1))
    return best


_STREAM_TYPES = (PrunableMultiheadAttention, nn.MultiheadAttention)


def build_dependency_graph(model: nn.Module, example_inputs: Any):
    """Torch-Pruning's dependency graph of ``model``, with what it cannot map marked.

    Self-attention is already :class:`PrunableMultiheadAttention` (a leaf with its own
    pruner); other multi-head attention modules (Swin, MaxViT, timm) become leaves left
    whole; reshapes, concatenations and splits Torch-Pruning would map wrongly (a channel
    shuffle, a window partition) become barriers. See :mod:`pruners._graph`.
    """
    # Torch-Pruning traces in eval mode (and leaves the model there): restore every flag.
    with eval_mode(model), warnings.catch_warnings():
        # Torch-Pruning warns about unwrapped parameters it handles itself (ViT's class
        # token and position embedding, pruned along their last dim).
        warnings.simplefilter("ignore")
        with torch.enable_grad():
            return build_graph(
                model,
                example_inputs,
                forward_fn=lambda m, x: call_model(m, x),
                customized_pruners={PrunableMultiheadAttention: PrunableMultiheadAttentionPruner()},
                leave_whole=token_attention_types(model, _STREAM_TYPES),
                # The transformer residual stream: its width is baked into attributes of
                # the model (e.g. torchvision ViT's hidden_dim reshape), so it is left
                # alone; heads and MLP widths are the units pruned in transformers.
                stream_types=_STREAM_TYPES,
            )


def _warn_untraced(model: nn.Module, dg: Any) -> None:
    """Warn about Conv / Linear layers the example forward pass never reached.

    Nothing couples them to the layers that lose channels, so they keep their widths; a
    forward pass that does reach them (GoogLeNet's and Inception-v3's auxiliary classifiers
    run in training mode only) would no longer fit the pruned model.
    """
    inside_leaves = set(dg.IGNORED_LAYERS_IN_TRACING)
    missed = [
        n
        for n, m in model.named_modules()
        if isinstance(m, (nn.modules.conv._ConvNd, nn.Linear)) and m not in dg.module2node and m not in inside_leaves
    ]
    if missed:
        warnings.warn(
            f"{len(missed)} Conv/Linear layer(s) were not reached by the example forward pass and keep "
            f"their widths ({', '.join(missed[:4])}{', ...' if len(missed) > 4 else ''}); a forward pass "
            "that reaches them (e.g. training-only auxiliary classifiers) will not fit the pruned layers",
            stacklevel=4,
        )


def collect_units(
    model: nn.Module, crit: Criterion, ignored: set[nn.Module], example_inputs: Any
) -> tuple[Any, list[_Unit]]:
    """The dependency graph and every scored unit set (channel groups, then heads).

    Groups that reach a layer kept whole (an attention module, hence the transformer
    residual stream; a channel shuffle or another reshape Torch-Pruning cannot map) are
    left alone on purpose and are not units.
    """
    with crit.suspended():
        dg = build_dependency_graph(model, example_inputs)
    names = {m: n for n, m in model.named_modules()}
    _warn_untraced(model, dg)
    units: list[_Unit] = []
    candidates = 0
    roots = [nn.modules.conv._ConvNd, nn.Linear]
    # Nothing changes the weights while groups are scored: each layer is summed once.
    with slice_cache():
        for group in collect_groups(dg, ignored, roots):
            if dg.touches_fixed(group):
                continue
            candidates += 1
            root = group[0].dep.target.module
            scores = crit.group_scores(group)
            if scores is None:
                continue  # the criterion has nothing to say about this group (e.g. no BN)
            scores = scores.detach().to(torch.float64).flatten().cpu()
            if scores.numel() != len(group[0].idxs):
                raise ValueError(
                    f"criterion {crit.name!r} returned {scores.numel()} scores for {len(group[0].idxs)} channels"
                )
            ch_groups = _channel_groups(dg, group)
            if ch_groups > 1:
                scores = scores.view(ch_groups, -1).mean(0)
            units.append(_Unit(names.get(root, type(root).__name__), scores, root, "group", group, ch_groups))
    for module in model.modules():
        if isinstance(module, PrunableMultiheadAttention) and module not in ignored and module.num_heads > 1:
            candidates += 1
            scores = crit.head_scores(module)
            if scores is None:
                continue
            scores = scores.detach().to(torch.float64).flatten().cpu()
            if scores.numel() != module.num_heads:
                raise ValueError(
                    f"criterion {crit.name!r} returned {scores.numel()} head scores for {module.num_heads} heads"
                )
            units.append(_Unit(names[module], scores, module, "heads"))
    if not units:
        if candidates:
            raise ValueError(
                f"criterion {crit.name!r} scores no unit of this model"
                + (" (it needs BatchNorm layers)" if crit.name == "slimming" else "")
            )
        raise ValueError("the model has no prunable channel group (all ignored?)")
    for u in units:
        if not bool(torch.isfinite(u.scores).all()):
            raise ValueError(f"criterion {crit.name!r} produced non-finite scores for {u.name}")
    return dg, units


def prune_structured(
    model: nn.Module,
    crit: Criterion,
    value: float,
    rule: str,
    scope: str,
    ignored: set[nn.Module],
    example_inputs: Any,
    ops: list[dict[str, Any]] | None = None,
    min_keep: float = 0.0,
) -> tuple[list[LayerReport], int]:
    masked = [n for n, m in model.named_modules() if hasattr(m, "weight_mask")]
    if masked:
        raise ValueError(
            f"structured pruning of a model with unstructured masks ({masked[0]}...) is not "
            "supported; make the masks permanent with torch.nn.utils.prune.remove first"
        )
    dg, units = collect_units(model, crit, ignored, example_inputs)

    # Channels and heads are ranked separately (a head is not comparable with a channel).
    selections: list[torch.Tensor] = [None] * len(units)  # type: ignore[list-item]
    for kind in ("group", "heads"):
        idx = [i for i, u in enumerate(units) if u.kind == kind]
        if not idx:
            continue
        if scope == "global":
            sc = [units[i].scores for i in idx]
            sel = select_global(sc, [torch.zeros(s.numel(), dtype=torch.bool) for s in sc], rule, value,
                                [layer_keep(s.numel(), min_keep) for s in sc])
            for i, part in zip(idx, sel):
                selections[i] = part
        else:
            for i in idx:
                sc = units[i].scores
                selections[i] = select_units(sc, torch.zeros(sc.numel(), dtype=torch.bool), rule, value)
    requested = int(sum(int(x.sum()) for x in selections))

    picked: list[list[int]] = []
    for u, sel in zip(units, selections):
        # Never empty a layer: it keeps its best units (min_keep of them, at least one).
        sel = keep_at_least(sel, u.scores, layer_keep(u.scores.numel(), min_keep))
        picked.append(sel.nonzero().flatten().tolist())

    # Every channel group at once (each layer cut once, original numbering); then heads.
    groups = [i for i, u in enumerate(units) if u.kind == "group"]
    plans = []
    for i in groups:
        u, n = units[i], units[i].scores.numel()
        # Grouped layers: remove the same position from every interleaved group.
        plans.append((u.group, [j + g * n for g in range(u.ch_groups) for j in picked[i]]))
    try:
        ok, removed = remove_channels(dg, plans)
    finally:
        dg.release()  # the replaced weights go now, not at the next garbage collection
    done = dict.fromkeys(range(len(units)), 0)
    for i, carried, (_, full) in zip(groups, ok, plans):
        done[i] = len(picked[i]) if carried else 0
        if carried and ops is not None and full:
            ops.append({"module": units[i].name, "kind": "group", "idxs": [int(j) for j in full]})
    for i, u in enumerate(units):
        if u.kind == "heads" and picked[i]:
            u.module.remove_heads(picked[i])
            removed[u.module] = picked[i]
            done[i] = len(picked[i])
            if ops is not None:
                ops.append({"module": u.name, "kind": "heads", "idxs": list(picked[i])})
    layers = [
        LayerReport(u.name, u.scores.numel(), u.scores.numel() - done[i], done[i] / u.scores.numel())
        for i, u in enumerate(units)
    ]
    crit.after_prune(model, removed)
    return layers, requested


def replay_structural(
    model: nn.Module, ops: list[dict[str, Any]], example_inputs: Any, criterion: Criterion | None = None
) -> None:
    """Apply the structural removals of one ``prune`` call (``PruneReport.structural_ops``)
    to ``model``, which must have the structure that call started from.

    Channels go through the same dependency groups (found again by their root layer) and
    the same removal, so every coupled layer changes with them; ``criterion.after_prune``
    is told, as ``prune`` would tell it (gates follow).
    """
    modules = dict(model.named_modules())
    removed: dict[nn.Module, list[int]] = {}
    wanted = {op["module"]: list(op["idxs"]) for op in ops if op["kind"] == "group"}
    if wanted:
        dg = build_dependency_graph(model, example_inputs)
        names = {m: n for n, m in model.named_modules()}
        plans = []
        for group in collect_groups(dg, (), [nn.modules.conv._ConvNd, nn.Linear]):
            name = names.get(group[0].dep.target.module)
            if name in wanted and not dg.touches_fixed(group):
                plans.append((group, wanted.pop(name)))
        if wanted:
            raise ValueError(f"cannot replay the removal: no channel group rooted at {sorted(wanted)[0]!r}")
        try:
            ok, removed = remove_channels(dg, plans)
        finally:
            dg.release()
        if not all(ok):
            raise ValueError("cannot replay the removal: the model is not the one the removal started from")
    for op in ops:
        if op["kind"] == "heads":
            module = modules[op["module"]]
            module.remove_heads(list(op["idxs"]))
            removed[module] = list(op["idxs"])
    if criterion is not None and ops:
        criterion.after_prune(model, removed)


