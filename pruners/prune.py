"""``prune``: score units with a criterion, pick them with a threshold rule, remove them.

* Unstructured: single weights of every Conv / Linear are masked through
  ``torch.nn.utils.prune`` (``weight_orig`` + ``weight_mask``); weights masked before count as
  removed, so calling again with a larger fraction reaches that total.
* Structured: Torch-Pruning's ``DependencyGraph`` groups every coupled layer (BatchNorm, the
  next layer's inputs, residual adds, concatenations, grouped / depthwise convolutions) and
  removes channels from all of them at once; the criterion scores each group's channels.
  Self-attention layers become :class:`~pruners._attention.PrunableMultiheadAttention`
  (same function) whose heads are units too, ranked among heads.

The final classifier (the last Conv / Linear executed in a forward pass) is never pruned.
Everything here is deterministic given the weights and the criterion's statistics, so DDP
ranks that share statistics make identical choices.
"""

from __future__ import annotations

import contextlib
import math
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
from pruners.criteria import CRITERIA, Criterion, make_criterion
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
    #: Structural removals in the order applied, ``{"module", "kind", "idxs"}`` with kind
    #: ``out`` / ``in`` (a dependency group rooted at that module's output / input
    #: channels) or ``heads``: what :func:`replay_structural` needs to rebuild the structure.
    structural_ops: tuple[dict[str, Any], ...] = ()

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
    min_keep: float = 0.0,
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
        threshold_rule: ``fraction``, ``absolute``, ``mean_std``, ``sensitivity``, or a cost
            rule: ``flops_cut`` / ``params_cut`` (``amount`` is the factor by which FLOPs or
            nonzero parameters must fall, from the model as given: ``pruners.targets``).
        scope: ``global`` (one ranking over all layers) or ``layerwise`` (the rule applied
            to every layer separately).
        example_inputs: A batch the model accepts (tensor, tuple of args, or kwargs dict);
            used to find the classifier and, for structured, to trace the graph.
        calibration: Iterable of ``(inputs, targets)`` batches, required by data-driven
            criteria.
        ignore: Dotted module names never pruned (with their submodules).
        min_keep: Fraction of its units (weights, channels or heads) every layer keeps in
            this call, whatever the scope (0: at least one), so a global ranking cannot
            empty a layer; the best-scored units are the ones kept back.

    Returns:
        A :class:`PruneReport` with requested vs achieved fractions overall and per layer.

    Raises:
        ValueError: Unknown names, unsupported granularity, bad amount, or missing
            calibration for a data-driven criterion.
    """
    crit, owned = _resolve_criterion(criterion)
    _check_granularity(crit, granularity)
    check_choice("scope", scope, SCOPES)
    rule = get_threshold_rule(threshold_rule)
    value = rule.validate(amount)
    if rule.kind == "cost":
        from pruners.targets import model_cost, prune_to_cost

        target = model_cost(unwrap(model), example_inputs, threshold_rule, granularity) / value
        rep, _ = prune_to_cost(model, target_cost=target, rule=threshold_rule, criterion=crit, granularity=granularity,
                               example_inputs=example_inputs, scope=scope, calibration=calibration, ignore=ignore,
                               min_keep=min_keep)
        if owned:
            crit.detach(unwrap(model), fold=True)
        if rep is None:
            raise ValueError(f"the model already meets {threshold_rule} {value:g}; nothing to prune")
        return PruneReport(**{**rep.to_dict(), "criterion": crit.name, "threshold_rule": threshold_rule,
                              "requested": value, "layers": rep.layers, "structural_ops": rep.structural_ops})
    with _prepared(model, crit, owned, example_inputs, calibration, ignore, fold=True) as (net, ignored):
        ops: list[dict[str, Any]] = []
        if not 0 <= min_keep < 1:
            raise ValueError(f"min_keep must be a fraction in [0, 1), got {min_keep!r}")
        if granularity == "unstructured":
            layers, requested_units = _prune_unstructured(net, crit, value, threshold_rule, scope, ignored, min_keep)
        else:
            layers, requested_units = _prune_structured(
                net, crit, value, threshold_rule, scope, ignored, example_inputs, ops, min_keep
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
        structural_ops=tuple(ops),
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


def keep_at_least(sel: torch.Tensor, scores: torch.Tensor, keep: int, fixed: torch.Tensor | None = None) -> torch.Tensor:
    """``sel`` (True = remove) with its best-scored selected units kept back until at least
    ``keep`` units remain. ``fixed`` units (removed before) stay removed."""
    n = sel.numel()
    over = int(sel.sum()) - (n - keep)
    if over <= 0:
        return sel
    sel = sel.clone()
    candidates = sel if fixed is None else sel & ~fixed
    ranked = torch.where(candidates, scores.to(torch.float64), torch.tensor(float("-inf"), dtype=torch.float64))
    back = torch.sort(ranked, descending=True, stable=True).indices[: min(over, int(candidates.sum()))]
    sel[back] = False
    return sel


def _layer_keep(n: int, min_keep: float) -> int:
    return max(1, math.ceil(min_keep * n))


def _prune_unstructured(
    model: nn.Module, crit: Criterion, value: float, rule: str, scope: str, ignored: set[nn.Module],
    min_keep: float = 0.0,
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
        # A layer with no weight left disconnects the network: it keeps its best weights
        # (min_keep of them, at least one), among those still there (masked ones stay masked).
        new = keep_at_least(new, s, _layer_keep(n, min_keep), fixed=old)
        if bool(new.all()):
            new = new.clone()
            new[int(s.argmax())] = False
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
    handler: Any = None
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


def _touches_attention_embedding(group) -> bool:
    # The residual stream of a transformer: its width is baked into attributes of the
    # model (e.g. torchvision ViT's hidden_dim reshape), so it is left alone; heads and MLP
    # widths are the units pruned in transformers.
    return any(
        isinstance(item.dep.target.module, (PrunableMultiheadAttention, nn.MultiheadAttention))
        for item in group
    )


def _build_graph(model: nn.Module, example_inputs: Any):
    import torch_pruning as tp

    # Torch-Pruning traces in eval mode (and leaves the model there): restore every flag.
    with eval_mode(model), warnings.catch_warnings():
        # Torch-Pruning warns about unwrapped parameters it handles itself (ViT's class
        # token and position embedding, pruned along their last dim).
        warnings.simplefilter("ignore")
        with torch.enable_grad():
            return tp.DependencyGraph().build_dependency(
                model,
                example_inputs=example_inputs,
                forward_fn=lambda m, x: _call(m, x),
                customized_pruners={PrunableMultiheadAttention: PrunableMultiheadAttentionPruner()},
                verbose=False,
            )


def _collect_units(
    model: nn.Module, crit: Criterion, ignored: set[nn.Module], example_inputs: Any
) -> tuple[Any, list[_Unit]]:
    """The dependency graph and every scored unit set (channel groups, then heads)."""
    with crit.suspended():
        dg = _build_graph(model, example_inputs)
    names = {m: n for n, m in model.named_modules()}
    units: list[_Unit] = []
    candidates = 0
    for group in dg.get_all_groups(
        ignored_layers=list(ignored), root_module_types=[nn.modules.conv._ConvNd, nn.Linear]
    ):
        if _touches_attention_embedding(group):
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
        units.append(_Unit(names.get(root, type(root).__name__), scores, root, "group", group[0].dep.handler, ch_groups))
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
    ops: list[dict[str, Any]] | None = None,
    min_keep: float = 0.0,
) -> tuple[list[LayerReport], int]:
    masked = [n for n, m in model.named_modules() if hasattr(m, "weight_mask")]
    if masked:
        raise ValueError(
            f"structured pruning of a model with unstructured masks ({masked[0]}...) is not "
            "supported; make the masks permanent with torch.nn.utils.prune.remove first"
        )
    dg, units = _collect_units(model, crit, ignored, example_inputs)
    names = {m: n for n, m in model.named_modules()}

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

    removed: dict[nn.Module, list[int]] = {}
    layers: list[LayerReport] = []
    for u, sel in zip(units, selections):
        n = u.scores.numel()
        # Never empty a layer: it keeps its best units (min_keep of them, at least one).
        sel = keep_at_least(sel, u.scores, _layer_keep(n, min_keep))
        idxs = sel.nonzero().flatten().tolist()
        done = 0
        if idxs and u.kind == "heads":
            u.module.remove_heads(idxs)
            removed[u.module] = idxs
            done = len(idxs)
            if ops is not None:
                ops.append({"module": names[u.module], "kind": "heads", "idxs": list(idxs)})
        elif idxs:
            # Grouped layers: remove the same position from every interleaved group.
            full = [i + g * n for g in range(u.ch_groups) for i in idxs]
            pg = dg.get_pruning_group(u.module, u.handler, full)
            if dg.check_pruning_group(pg):
                _collect_removed(dg, pg, removed)
                pg.prune()
                done = len(idxs)
                if ops is not None:
                    kind = "out" if dg.is_out_channel_pruning_fn(u.handler) else "in"
                    ops.append({"module": names[u.module], "kind": kind, "idxs": [int(i) for i in full]})
        layers.append(LayerReport(u.name, n, n - done, done / n))
    crit.after_prune(model, removed)
    return layers, requested


def _collect_removed(dg: Any, pg: Any, removed: dict[nn.Module, list[int]]) -> None:
    """Add the output channels ``pg`` removes, per module, to ``removed`` (for gates)."""
    for item in pg:
        mod = item.dep.target.module
        if isinstance(mod, nn.Module) and dg.is_out_channel_pruning_fn(item.dep.handler):
            removed[mod] = sorted(set(removed.get(mod, [])) | set(int(i) for i in item.idxs))


def replay_structural(
    model: nn.Module, ops: list[dict[str, Any]], example_inputs: Any, criterion: Criterion | None = None
) -> None:
    """Apply the structural removals of one ``prune`` call (``PruneReport.structural_ops``)
    to ``model``, which must have the structure that call started from.

    Channels go through the same dependency groups, so every coupled layer changes with
    them; ``criterion.after_prune`` is told, as ``prune`` would tell it (gates follow).
    """
    modules = dict(model.named_modules())
    dg = _build_graph(model, example_inputs) if any(op["kind"] != "heads" for op in ops) else None
    removed: dict[nn.Module, list[int]] = {}
    for op in ops:
        module = modules[op["module"]]
        if op["kind"] == "heads":
            module.remove_heads(list(op["idxs"]))
            removed[module] = list(op["idxs"])
            continue
        pruner = dg.get_pruner_of_module(module)
        fn = pruner.prune_out_channels if op["kind"] == "out" else pruner.prune_in_channels
        pg = dg.get_pruning_group(module, fn, list(op["idxs"]))
        _collect_removed(dg, pg, removed)
        pg.prune()
    if criterion is not None and ops:
        criterion.after_prune(model, removed)


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
