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
  All groups are cut at once, each layer once (``pruners.structured``).
* Cost rules (``flops_cut`` / ``params_cut``: "4x fewer FLOPs"): :func:`prune_to_cost`
  bisects the fraction of units to remove, on copies pruned with the same scores, until the
  cost ``pruners.targets.model_cost`` counts falls to the target.

The final classifier (the last Conv / Linear executed in a forward pass) is never pruned.
Everything here is deterministic given the weights and the criterion's statistics, so DDP
ranks that share statistics make identical choices.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
import torch.nn.utils.prune as torch_prune
from torch import nn

from pruners._attention import convert_attention
from pruners.criteria import CRITERIA, Criterion, make_criterion
from pruners.criteria.base import eval_mode
from pruners._devices import clone_model, unwrap
from pruners.registry import check_choice
from pruners.selection import LayerReport, call_model, keep_at_least, layer_keep, min_keep_problem, select_global, select_units
from pruners.structured import collect_units, prune_structured
from pruners.targets import model_cost
from pruners.thresholds import get_threshold_rule

GRANULARITIES: tuple[str, ...] = ("unstructured", "structured")
SCOPES: tuple[str, ...] = ("global", "layerwise")

Batch = tuple[torch.Tensor, torch.Tensor]


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
            call_model(model, example_inputs)
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
        if (problem := min_keep_problem(min_keep)) is not None:
            raise ValueError(f"min_keep {problem}, got {min_keep!r}")
        if granularity == "unstructured":
            layers, requested_units = _prune_unstructured(net, crit, value, threshold_rule, scope, ignored, min_keep)
        else:
            layers, requested_units = prune_structured(
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


def set_mask(module: nn.Module, keep: torch.Tensor) -> None:
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
    model: nn.Module, crit: Criterion, value: float, rule: str, scope: str, ignored: set[nn.Module],
    min_keep: float = 0.0,
) -> tuple[list[LayerReport], int]:
    targets = prunable_weights(model, ignored)
    if not targets:
        raise ValueError("the model has no prunable Conv / Linear layer (all ignored?)")
    scores = [_weight_scores(crit, m, m.weight) for _, m in targets]
    removed = [(~_current_mask(m)).flatten().cpu() for _, m in targets]
    if scope == "global":
        keeps = [layer_keep(s.numel(), min_keep) for s in scores]
        masks = select_global(scores, removed, rule, value, keeps)
    else:
        masks = [select_units(s, r, rule, value) for s, r in zip(scores, removed)]
    requested = int(sum(int(m.sum()) for m in masks))
    layers = []
    for (name, module), s, old, new in zip(targets, scores, removed, masks):
        n = new.numel()
        # A layer with no weight left disconnects the network: it keeps its best weights
        # (min_keep of them, at least one), among those still there (masked ones stay masked).
        new = keep_at_least(new, s, layer_keep(n, min_keep), fixed=old)
        if bool(new.all()):
            new = new.clone()
            new[int(s.argmax())] = False
        keep = (~new).view_as(module.weight).to(module.weight.device)
        set_mask(module, keep)
        after = int((~new).sum())
        layers.append(LayerReport(name, n, after, (n - after) / n))
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
        _, units = collect_units(net, crit, ignored, example_inputs)
        return {u.name: u.scores for u in units}


# --------------------------------------------------------------------------- cost targets
class FixedScores(Criterion):
    """A criterion that answers with scores computed before (by name), so copies of a model
    are pruned exactly as the model itself would be. Life-cycle calls go to ``base``."""

    name = "fixed"
    granularities = ("unstructured", "structured")

    def __init__(self, scores: Mapping[str, torch.Tensor], model: nn.Module, base: Criterion | None = None) -> None:
        super().__init__()
        self.scores, self.base = scores, base
        self.names = {m: n for n, m in model.named_modules()}

    def _of(self, module: nn.Module) -> torch.Tensor | None:
        return self.scores.get(self.names.get(module, ""))

    def weight_scores(self, module: nn.Module, weight: torch.Tensor) -> torch.Tensor:
        return self._of(module).reshape(weight.shape)

    def group_scores(self, group: Any) -> torch.Tensor | None:
        s = self._of(group[0].dep.target.module)
        if s is None:
            return None
        n = len(group[0].idxs)
        return s.repeat(n // s.numel()) if s.numel() != n else s  # interleaved groups: one score each

    def head_scores(self, module: nn.Module) -> torch.Tensor | None:
        return self._of(module)

    def after_prune(self, model: nn.Module, removed: Any = None) -> None:
        if self.base is not None:
            self.base.after_prune(model, removed)

    def suspended(self) -> Any:
        return self.base.suspended() if self.base is not None else super().suspended()


def prune_to_cost(
    model: nn.Module,
    *,
    target_cost: float,
    rule: str,
    criterion: str | Criterion,
    granularity: str,
    example_inputs: Any,
    scope: str = "global",
    calibration: Iterable[Any] | None = None,
    ignore: Iterable[str] | None = None,
    min_keep: float = 0.0,
    rtol: float = 0.01,
    max_steps: int = 14,
) -> tuple[PruneReport | None, float]:
    """Prune ``model`` until its ``rule`` cost (``targets.model_cost``) is at most
    ``target_cost``, removing as few units as the criterion's ranking allows: the model is
    scored once, the fraction of units to remove is bisected on copies of it (each pruned
    with those same scores, its cost counted) until the cost is at or just below the
    target, and the model itself is pruned with that fraction.

    Returns:
        ``(report, cost)``: the prune's report (None when the model already met the target)
        and the cost reached. When even removing all but ``min_keep`` of every layer cannot
        reach the target, the model is pruned as far as it goes and the cost says so.
    """
    net = unwrap(model)
    now = model_cost(net, example_inputs, rule, granularity)
    if now <= target_cost * (1 + rtol):
        return None, now
    crit = criterion
    ignore = list(ignore or ())
    scores = score(net, criterion=crit, granularity=granularity, example_inputs=example_inputs,
                   calibration=calibration, ignore=ignore)

    def pruned(frac: float, on: nn.Module, base: Criterion | None) -> tuple[PruneReport, float]:
        rep = prune(on, criterion=FixedScores(scores, on, base), granularity=granularity, amount=frac,
                    threshold_rule="fraction", scope=scope, example_inputs=example_inputs, ignore=ignore,
                    min_keep=min_keep)
        return rep, model_cost(on, example_inputs, rule, granularity)

    def trial(frac: float) -> float:
        return pruned(frac, clone_model(net), None)[1]

    # Unstructured fractions count the weights masked before (cumulative), structured ones
    # are fractions of the channels the model has now; either way cost falls as the
    # fraction grows, so bisection finds the smallest fraction that meets the target.
    lo, hi = 0.0, math.nextafter(1.0, 0.0)
    best = hi
    for _ in range(max_steps):
        mid = (lo + hi) / 2
        if trial(mid) <= target_cost * (1 + rtol):
            best, hi = mid, mid
        else:
            lo = mid
        if hi - lo < 1e-3:
            break
    base = criterion if isinstance(criterion, Criterion) else None
    rep, cost = pruned(best, net, base)
    return rep, cost
