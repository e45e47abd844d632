"""``prune``: score units with a criterion, pick them with a threshold rule, remove them.

* Unstructured: single weights of every Conv / Linear are masked through
  ``torch.nn.utils.prune`` (``weight_orig`` + ``weight_mask``); weights masked before count as
  removed, so calling again with a larger fraction reaches that total.
* Structured: Torch-Pruning's ``DependencyGraph`` groups every coupled layer (BatchNorm, the
  next layer's inputs, residual adds, concatenations, grouped / depthwise convolutions) and
  removes channels from all of them at once; the criterion scores each group's channels.
  Self-attention layers become :class:`~pruners._attention.PrunableMultiheadAttention`
  (same function) whose heads are units too, ranked among heads. Groups that reach a layer
  kept whole on purpose are left alone: other multi-head attention modules (Swin, MaxViT,
  timm; their relative position tables inside), and so the transformer residual stream;
  a channel shuffle or another reshape that splits the channel axis (``pruners._graph``).
  All groups are cut at once, each layer once (``pruners._graph.remove_channels``).

The final classifier (the last Conv / Linear executed in a forward pass) is never pruned.
Everything here is deterministic given the weights and the criterion's statistics, so DDP
ranks that share statistics make identical choices.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
import torch.nn.utils.prune as torch_prune
from torch import nn

from pruners._attention import (
    PrunableMultiheadAttention,
    PrunableMultiheadAttentionPruner,
    convert_attention,
)
from pruners._graph import build_graph, collect_groups, remove_channels, token_attention_types
from pruners.criteria import CRITERIA, Criterion, make_criterion
from pruners.criteria._group import slice_cache
from pruners.criteria.base import eval_mode
from pruners.measure import unwrap
from pruners.registry import check_choice
from pruners.thresholds import fraction_count, get_threshold_rule, lowest

GRANULARITIES: tuple[str, ...] = ("unstructured", "structured")
SCOPES: tuple[str, ...] = ("global", "layerwise")

Batch = tuple[torch.Tensor, torch.Tensor]


@dataclass(frozen=True)
class LayerReport:
    """Units of one layer (unstructured: weights; structured: channels or heads)."""

    name: str
    units_before: int
    units_after: int
    achieved: float


@dataclass(frozen=True)
class PruneReport:
    """What one ``prune`` call asked for and what it did.

    ``requested`` is the rule's own value (``amount``); ``requested_fraction`` the fraction of
    prunable units the rule selected; ``achieved`` the fraction actually removed (differs
    when a layer had to keep a unit, or Torch-Pruning refused a group).
    """

    criterion: str
    granularity: str
    threshold_rule: str
    scope: str
    requested: float
    requested_fraction: float
    achieved: float
    units_before: int
    units_after: int
    layers: list[LayerReport] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _resolve_criterion(criterion: str | Criterion) -> tuple[Criterion, bool]:
    if isinstance(criterion, Criterion):
        return criterion, False
    if isinstance(criterion, str):
        return make_criterion(criterion), True
    raise ValueError(
        f"criterion must be a name or a Criterion, got {type(criterion).__name__}; "
        f"valid names: {', '.join(CRITERIA.names())}"
    )


def _call(model: nn.Module, example_inputs: Any) -> Any:
    if isinstance(example_inputs, Mapping):
        return model(**example_inputs)
    if isinstance(example_inputs, (tuple, list)):
        return model(*example_inputs)
    return model(example_inputs)


def find_classifier(model: nn.Module, example_inputs: Any) -> str | None:
    """Dotted name of the last Conv / Linear executed in a forward pass (the output layer)."""
    order: list[nn.Module] = []
    hooks = [
        m.register_forward_hook(lambda mod, i, o: order.append(mod))
        for m in model.modules()
        if isinstance(m, (nn.modules.conv._ConvNd, nn.Linear))
    ]
    try:
        with eval_mode(model), torch.no_grad():
            _call(model, example_inputs)
    finally:
        for h in hooks:
            h.remove()
    if not order:
        return None
    names = {m: n for n, m in model.named_modules()}
    return names[order[-1]]


def _ignored_modules(model: nn.Module, ignore: Iterable[str] | None) -> set[nn.Module]:
    """The modules named in ``ignore`` and their submodules (unknown names raise)."""
    if isinstance(ignore, str):
        raise ValueError(f"ignore must be a list of module names, got the string {ignore!r}")
    modules = dict(model.named_modules())
    names = list(ignore or ())
    unknown = [n for n in names if n not in modules]
    if unknown:
        raise ValueError(f"ignore names unknown module(s) {', '.join(unknown)}; use names from model.named_modules()")
    return {sub for n in names for sub in modules[n].modules()}


def _check_granularity(criterion: Criterion, granularity: str) -> None:
    check_choice("granularity", granularity, GRANULARITIES)
    if granularity not in criterion.granularities:
        raise ValueError(
            f"criterion {criterion.name!r} does not support {granularity} pruning; "
            f"it supports: {', '.join(criterion.granularities)}"
        )


@contextlib.contextmanager
def _prepared(
    model: nn.Module,
    crit: Criterion,
    owned: bool,
    example_inputs: Any,
    calibration: Iterable[Batch] | None,
    ignore: Iterable[str] | None,
    fold: bool,
) -> Iterator[tuple[nn.Module, set[nn.Module]]]:
    """The unwrapped model, ready to score, and the modules never pruned (classifier too).

    What ``prune`` and ``score`` share: self-attention made head-prunable, the criterion
    prepared (statistics, gates), the classifier found; an owned criterion is detached on
    the way out, its gates folded into the weights if ``fold`` and the call succeeded,
    dropped otherwise.
    """
    net = unwrap(model)  # DDP / DataParallel keep the real model in .module
    if crit.needs_calibration and calibration is None and owned:
        raise ValueError(f"criterion {crit.name!r} needs calibration batches (calibration=...)")
    # Self-attention becomes head-prunable (exact same outputs); done before anything holds
    # references to the old parameters.
    convert_attention(net)
    ignored = _ignored_modules(net, ignore)  # bad names fail before any costly prepare
    try:
        # An owned criterion is attached (if it has anything to attach) by prepare itself.
        crit.prepare(net, calibration)
        with crit.suspended():
            classifier = find_classifier(net, example_inputs)
        if classifier is not None:
            ignored |= set(net.get_submodule(classifier).modules())
        yield net, ignored
    except BaseException:
        if owned:
            # Drop, not fold: half-trained gates must not change the model of a failed call.
            crit.detach(net, fold=False)
        raise
    if owned:
        crit.detach(net, fold=fold)


def _select(scores: torch.Tensor, removed: torch.Tensor, rule: str, value: float) -> torch.Tensor:
    """Mask of units to remove; ``removed`` units are gone already and stay gone.

    ``fraction`` counts them towards its total (cumulative targets); the other rules are
    applied to the surviving units' scores (their statistics describe what is left).
    """
    out = removed.clone()
    alive = (~removed).nonzero().flatten()
    if rule == "fraction":
        picked = lowest(scores[alive], fraction_count(scores.numel(), value) - int(removed.sum()))
    else:
        picked = get_threshold_rule(rule)(scores[alive], value)
    out[alive[picked]] = True
    return out


def prune(
    model: nn.Module,
    *,
    criterion: str | Criterion,
    granularity: str,
    amount: float,
    threshold_rule: str = "fraction",
    scope: str = "global",
    example_inputs: Any,
    calibration: Iterable[Batch] | None = None,
    ignore: Iterable[str] | None = None,
) -> PruneReport:
    """Prune ``model`` in place.

    Args:
        model: The model (a ``DistributedDataParallel`` is unwrapped; rebuild it after a
            structured prune, since parameters are replaced).
        criterion: A registered name (built, prepared, detached here) or a ``Criterion``
            instance (prepared here, left attached: ``finetune`` owns its life cycle).
        granularity: ``unstructured`` (mask weights) or ``structured`` (remove channels /
            heads physically).
        amount: The threshold value; its meaning is ``threshold_rule``'s.
        threshold_rule: ``fraction``, ``absolute``, ``mean_std`` or ``sensitivity``.
        scope: ``global`` (one ranking over all layers) or ``layerwise`` (the rule applied
            to every layer separately).
        example_inputs: A batch the model accepts (tensor, tuple of args, or kwargs dict);
            used to find the classifier and, for structured, to trace the graph.
        calibration: Iterable of ``(inputs, targets)`` batches, required by data-driven
            criteria.
        ignore: Dotted module names never pruned (with their submodules).

    Returns:
        A :class:`PruneReport` with requested vs achieved fractions overall and per layer.

    Raises:
        ValueError: Unknown names, unsupported granularity, bad amount, or missing
            calibration for a data-driven criterion.
    """
    crit, owned = _resolve_criterion(criterion)
    _check_granularity(crit, granularity)
    check_choice("scope", scope, SCOPES)
    value = get_threshold_rule(threshold_rule).validate(amount)
    with _prepared(model, crit, owned, example_inputs, calibration, ignore, fold=True) as (net, ignored):
        if granularity == "unstructured":
            layers, requested_units = _prune_unstructured(net, crit, value, threshold_rule, scope, ignored)
        else:
            layers, requested_units = _prune_structured(
                net, crit, value, threshold_rule, scope, ignored, example_inputs
            )
    before = sum(r.units_before for r in layers)
    after = sum(r.units_after for r in layers)
    return PruneReport(
        criterion=crit.name,
        granularity=granularity,
        threshold_rule=threshold_rule,
        scope=scope,
        requested=value,
        requested_fraction=requested_units / before if before else 0.0,
        achieved=(before - after) / before if before else 0.0,
        units_before=before,
        units_after=after,
        layers=layers,
    )


# --------------------------------------------------------------------------- unstructured
def prunable_weights(model: nn.Module, ignored: set[nn.Module]) -> list[tuple[str, nn.Module]]:
    """Conv / Linear layers whose weights unstructured pruning may mask."""
    return [
        (n, m)
        for n, m in model.named_modules()
        if isinstance(m, (nn.modules.conv._ConvNd, nn.Linear)) and m not in ignored
    ]


def _current_mask(module: nn.Module) -> torch.Tensor:
    mask = getattr(module, "weight_mask", None)
    if mask is None:
        return torch.ones_like(module.weight, dtype=torch.bool)
    return mask.detach().bool()


def _set_mask(module: nn.Module, keep: torch.Tensor) -> None:
    """Install ``keep`` as the weight mask (first time through ``torch.nn.utils.prune``).

    Later rounds overwrite the existing mask buffer in place instead of stacking another
    ``PruningContainer`` hook, which keeps one mask per layer and allows regrowth.
    """
    if hasattr(module, "weight_mask"):
        with torch.no_grad():
            module.weight_mask.copy_(keep.to(module.weight_mask.dtype))
    else:
        torch_prune.custom_from_mask(module, "weight", keep.to(module.weight.dtype))
    # The pre-hook recomputes `weight` each forward; refresh it now so counting nonzeros
    # before the next forward sees the new mask.
    with torch.no_grad():
        module.weight = module.weight_orig * module.weight_mask


def _weight_scores(crit: Criterion, module: nn.Module, weight: torch.Tensor) -> torch.Tensor:
    # float32: one score per weight, a float64 copy of a large model costs too much memory.
    s = crit.weight_scores(module, weight).detach().to("cpu", torch.float32).flatten()
    if s.numel() != weight.numel():
        raise ValueError(f"criterion {crit.name!r} returned {s.numel()} scores for {weight.numel()} weights")
    if not bool(torch.isfinite(s).all()):
        raise ValueError(f"criterion {crit.name!r} produced non-finite scores")
    return s


def _prune_unstructured(
    model: nn.Module, crit: Criterion, value: float, rule: str, scope: str, ignored: set[nn.Module]
) -> tuple[list[LayerReport], int]:
    targets = prunable_weights(model, ignored)
    if not targets:
        raise ValueError("the model has no prunable Conv / Linear layer (all ignored?)")
    scores = [_weight_scores(crit, m, m.weight) for _, m in targets]
    removed = [(~_current_mask(m)).flatten().cpu() for _, m in targets]
    if scope == "global":
        sel = _select(torch.cat(scores), torch.cat(removed), rule, value)
        masks = list(torch.split(sel, [s.numel() for s in scores]))
    else:
        masks = [_select(s, r, rule, value) for s, r in zip(scores, removed)]
    requested = int(sum(int(m.sum()) for m in masks))
    layers = []
    for (name, module), s, old, new in zip(targets, scores, removed, masks):
        n = new.numel()
        if bool(new.all()):
            # A layer with no weight left disconnects the network: keep its best weight,
            # among those still there (a weight masked before stays masked).
            new = new.clone()
            alive = ~old
            best = torch.where(alive, s, float("-inf")).argmax() if bool(alive.any()) else s.argmax()
            new[int(best)] = False
        keep = (~new).view_as(module.weight).to(module.weight.device)
        _set_mask(module, keep)
        after = int((~new).sum())
        layers.append(LayerReport(name, n, after, (n - after) / n))
    return layers, requested


# --------------------------------------------------------------------------- structured
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


def _build_graph(model: nn.Module, example_inputs: Any):
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
                forward_fn=lambda m, x: _call(m, x),
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


def _collect_units(
    model: nn.Module, crit: Criterion, ignored: set[nn.Module], example_inputs: Any
) -> tuple[Any, list[_Unit]]:
    """The dependency graph and every scored unit set (channel groups, then heads).

    Groups that reach a layer kept whole (an attention module, hence the transformer
    residual stream; a channel shuffle or another reshape Torch-Pruning cannot map) are
    left alone on purpose and are not units.
    """
    with crit.suspended():
        dg = _build_graph(model, example_inputs)
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


def _prune_structured(
    model: nn.Module,
    crit: Criterion,
    value: float,
    rule: str,
    scope: str,
    ignored: set[nn.Module],
    example_inputs: Any,
) -> tuple[list[LayerReport], int]:
    masked = [n for n, m in model.named_modules() if hasattr(m, "weight_mask")]
    if masked:
        raise ValueError(
            f"structured pruning of a model with unstructured masks ({masked[0]}...) is not "
            "supported; make the masks permanent with torch.nn.utils.prune.remove first"
        )
    dg, units = _collect_units(model, crit, ignored, example_inputs)

    # Channels and heads are ranked separately (a head is not comparable with a channel).
    selections: list[torch.Tensor] = [None] * len(units)  # type: ignore[list-item]
    for kind in ("group", "heads"):
        idx = [i for i, u in enumerate(units) if u.kind == kind]
        if not idx:
            continue
        if scope == "global":
            cat = torch.cat([units[i].scores for i in idx])
            sel = _select(cat, torch.zeros(cat.numel(), dtype=torch.bool), rule, value)
            for i, part in zip(idx, torch.split(sel, [units[i].scores.numel() for i in idx])):
                selections[i] = part
        else:
            for i in idx:
                sc = units[i].scores
                selections[i] = _select(sc, torch.zeros(sc.numel(), dtype=torch.bool), rule, value)
    requested = int(sum(int(x.sum()) for x in selections))

    picked: list[list[int]] = []
    for u, sel in zip(units, selections):
        if bool(sel.all()):
            # Never empty a layer: keep its best unit.
            sel = sel.clone()
            sel[int(torch.argmax(u.scores))] = False
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
    for i, carried in zip(groups, ok):
        done[i] = len(picked[i]) if carried else 0
    for i, u in enumerate(units):
        if u.kind == "heads" and picked[i]:
            u.module.remove_heads(picked[i])
            removed[u.module] = picked[i]
            done[i] = len(picked[i])
    layers = [
        LayerReport(u.name, u.scores.numel(), u.scores.numel() - done[i], done[i] / u.scores.numel())
        for i, u in enumerate(units)
    ]
    crit.after_prune(model, removed)
    return layers, requested


# --------------------------------------------------------------------------- inspection
def score(
    model: nn.Module,
    *,
    criterion: str | Criterion,
    granularity: str,
    example_inputs: Any,
    calibration: Iterable[Batch] | None = None,
    ignore: Iterable[str] | None = None,
) -> dict[str, torch.Tensor]:
    """The scores ``prune`` would rank, per layer, without removing anything.

    Unstructured: one score per weight (flattened) keyed by layer name. Structured: one per
    channel (per interleaved channel for grouped layers) keyed by the group's root layer,
    and one per head keyed by the attention layer. A named criterion is detached after,
    its gates dropped: the weights are left as they were. Self-attention modules are
    converted (same outputs) as in ``prune``.
    """
    crit, owned = _resolve_criterion(criterion)
    _check_granularity(crit, granularity)
    with _prepared(model, crit, owned, example_inputs, calibration, ignore, fold=False) as (net, ignored):
        if granularity == "unstructured":
            return {n: _weight_scores(crit, m, m.weight) for n, m in prunable_weights(net, ignored)}
        _, units = _collect_units(net, crit, ignored, example_inputs)
        return {u.name: u.scores for u in units}
