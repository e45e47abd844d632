"""``finetune``: prune on a schedule while fine-tuning, and report metrics once per epoch.

The loop reads top to bottom (design.md section 1, criterion life cycle in
``pruners/criteria/base.py``)::

    crit.attach(model); build optimizer (model + crit.trainable_parameters())
    for epoch in 1..epochs:
        for batch:
            s = step - crit.warmup_steps               # penalty-only warm-up first
            if schedule.is_update_step(s): prune (or, dynamic, re-derive masks) -> rebuild
            loss = loss_fn(model(x), y) + crit.penalty(model); step
        evaluate (all-reduced), measure, report(row), checkpoint(model, row)
    crit.detach(model)   # gates folded, hooks gone: the model exports cleanly

Steps are optimizer steps counted over all epochs, the unit of every schedule. Plain
PyTorch: under ``torch.distributed`` it expects an initialised process group and a
``DistributedDataParallel`` model, and never imports Ray; the caller's ``report`` callable is
the only link to a tuner.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from pruners import _dist
from pruners._devices import device_of, move_to
from pruners._attention import convert_attention
from pruners._dynamic import StraightThrough, regrow
from pruners.criteria import Criterion, list_criteria, make_criterion
from pruners.criteria.base import eval_mode
from pruners.measure import measure, unwrap
from pruners.prune import GRANULARITIES, SCOPES, PruneReport, find_classifier, prune
from pruners.registry import check_choice
from pruners.schedules import Schedule
from pruners.thresholds import get_threshold_rule, list_threshold_rules

__all__ = ["PruneSpec", "OptimizerConfig", "finetune", "OPTIMIZERS", "LR_SCHEDULES"]

OPTIMIZERS: tuple[str, ...] = ("adam", "adamw", "sgd")
LR_SCHEDULES: tuple[str, ...] = ("constant", "cosine")

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class PruneSpec:
    """What to prune: criterion, granularity, threshold rule and value, scope.

    Attributes:
        criterion: Registered criterion name (``pruners.list_criteria()``).
        granularity: ``unstructured`` or ``structured``; the criterion must support it.
        amount: The threshold value in the rule's units. For ``fraction`` it is the final
            fraction of units removed and must equal the schedule's ``target`` (the schedule
            ramps towards it); for the other rules it is applied at every update step.
        threshold_rule: ``fraction``, ``absolute``, ``mean_std`` or ``sensitivity``.
        scope: ``global`` or ``layerwise``.
        ignore: Dotted module names never pruned.
        params: Keyword parameters of the criterion (e.g. ``{"penalty": 1e-4}``).
    """

    criterion: str
    granularity: str = "unstructured"
    amount: float = 0.5
    threshold_rule: str = "fraction"
    scope: str = "global"
    ignore: tuple[str, ...] = ()
    params: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        check_choice("criterion", self.criterion, list_criteria())
        check_choice("granularity", self.granularity, GRANULARITIES)
        check_choice("threshold rule", self.threshold_rule, list_threshold_rules())
        check_choice("scope", self.scope, SCOPES)
        if isinstance(self.ignore, str) or not all(isinstance(n, str) for n in self.ignore):
            raise ValueError(f"ignore must be a sequence of module names, got {self.ignore!r}")
        object.__setattr__(self, "ignore", tuple(self.ignore))
        if not isinstance(self.params, Mapping):
            raise ValueError(f"params must be a mapping of criterion parameters, got {self.params!r}")
        object.__setattr__(self, "params", dict(self.params))
        object.__setattr__(
            self, "amount", get_threshold_rule(self.threshold_rule).validate(self.amount)
        )
        crit = self.make_criterion()  # unknown criterion parameters raise here, at once
        if self.granularity not in crit.granularities:
            raise ValueError(
                f"criterion {self.criterion!r} does not support {self.granularity} pruning; "
                f"it supports: {', '.join(crit.granularities)}"
            )

    def make_criterion(self) -> Criterion:
        """A fresh criterion instance with ``params``."""
        return make_criterion(self.criterion, **self.params)


@dataclass(frozen=True)
class OptimizerConfig:
    """The fine-tuning optimizer and its learning-rate schedule.

    Attributes:
        name: ``sgd``, ``adam`` or ``adamw``.
        lr: Peak learning rate (>= 0). 0 prunes without fine-tuning: no weight moves (not
            even by weight decay), though BatchNorm statistics still follow the training
            batches; the baseline a search compares real fine-tuning against.
        momentum: SGD momentum in [0, 1) (ignored by Adam).
        weight_decay: L2 / decoupled weight decay (>= 0).
        nesterov: SGD Nesterov momentum (needs momentum > 0).
        lr_schedule: ``constant`` or ``cosine`` (cosine decay to 0 over all optimizer steps).
    """

    name: str = "sgd"
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 0.0
    nesterov: bool = False
    lr_schedule: str = "constant"

    def __post_init__(self) -> None:
        check_choice("optimizer", self.name, OPTIMIZERS)
        check_choice("lr_schedule", self.lr_schedule, LR_SCHEDULES)
        for key, ok, allowed in (
            ("lr", _is_number(self.lr) and self.lr >= 0, "a number >= 0 (0 = prune without fine-tuning)"),
            ("momentum", _is_number(self.momentum) and 0 <= self.momentum < 1, "in [0, 1)"),
            ("weight_decay", _is_number(self.weight_decay) and self.weight_decay >= 0, ">= 0"),
        ):
            if not ok:
                raise ValueError(f"optimizer {key} must be {allowed}, got {getattr(self, key)!r}")
        if self.nesterov and (self.name != "sgd" or self.momentum == 0):
            raise ValueError("nesterov needs the sgd optimizer with momentum > 0")

    def build(self, params: Iterable[nn.Parameter]) -> torch.optim.Optimizer:
        """A fresh optimizer over ``params``."""
        params = list(params)
        if self.name == "sgd":
            return torch.optim.SGD(
                params, lr=self.lr, momentum=self.momentum, weight_decay=self.weight_decay,
                nesterov=self.nesterov,
            )
        cls = torch.optim.Adam if self.name == "adam" else torch.optim.AdamW
        return cls(params, lr=self.lr, weight_decay=self.weight_decay)

    def lr_at(self, step: int, total_steps: int | None) -> float:
        """Learning rate of optimizer step ``step`` (a pure function, like nanoGPT's)."""
        if self.lr_schedule == "constant" or not total_steps:
            return self.lr
        return 0.5 * self.lr * (1.0 + math.cos(math.pi * min(step, total_steps) / total_steps))


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


# ------------------------------------------------------------------------------ helpers
def _signature(module: nn.Module, extra: list[nn.Parameter]) -> tuple:
    """Identity and shape of every parameter and buffer: changes mean rebuild."""
    return (
        tuple((n, id(p), tuple(p.shape)) for n, p in module.named_parameters()),
        tuple((n, tuple(b.shape)) for n, b in module.named_buffers()),
        tuple(id(p) for p in extra),
    )


def _effective_weight(module: nn.Module) -> torch.Tensor:
    mask = getattr(module, "weight_mask", None)
    if mask is not None and hasattr(module, "weight_orig"):
        return module.weight_orig.detach() * mask
    return module.weight.detach()


def _prunable_weight_counts(
    net: nn.Module, example_inputs: Any, ignore: tuple[str, ...]
) -> dict[str, int]:
    """Weights of the Conv / Linear layers pruning may touch, by module name.

    The reference for ``sparsity``: the classifier (never pruned) and ignored modules are
    left out, as in ``pruners.prune``.
    """
    classifier = find_classifier(net, example_inputs)
    skipped = [n for n in (*ignore, classifier) if n is not None]

    def excluded(name: str) -> bool:
        return any(name == s or name.startswith(s + ".") for s in skipped)

    return {
        name: m.weight.numel() if not hasattr(m, "weight_orig") else m.weight_orig.numel()
        for name, m in net.named_modules()
        if isinstance(m, (nn.modules.conv._ConvNd, nn.Linear)) and not excluded(name)
    }


def _achieved_sparsity(net: nn.Module, reference: dict[str, int]) -> float:
    """1 - nonzero prunable weights now / prunable weights at the start."""
    modules = dict(net.named_modules())
    total = sum(reference.values())
    nonzero = 0
    for name in reference:
        m = modules.get(name)
        if m is not None:
            nonzero += int(torch.count_nonzero(_effective_weight(m)))
    return 1.0 - nonzero / total if total else 0.0


def _evaluate(
    net: nn.Module, loader: Iterable[Any], loss_fn: LossFn, device: torch.device
) -> tuple[float, float]:
    """(top-1 accuracy, mean loss) over ``loader``, summed over all ranks' samples."""
    correct = loss_sum = count = 0.0
    with eval_mode(net), torch.no_grad():
        for x, y in loader:
            x, y = move_to(x, device), move_to(y, device)
            out = net(x)
            n = float(y.shape[0])
            loss_sum += float(loss_fn(out, y)) * n  # loss_fn returns the batch mean
            correct += float((out.argmax(dim=1) == y).sum())
            count += n
    correct, loss_sum, count = _dist.all_reduce_sum([correct, loss_sum, count])
    if count == 0:
        raise ValueError("eval_loader yielded no samples")
    return correct / count, loss_sum / count


class _Batches:
    """Calibration batches drawn from the training data, cycling through it."""

    def __init__(self, loader: Iterable[Any], n: int, device: torch.device) -> None:
        self.loader, self.n, self.device = loader, n, device
        self._it: Iterator[Any] | None = None

    def take(self) -> list[tuple[Any, Any]]:
        out = []
        for _ in range(2 * self.n):  # at most one restart of the loader
            if len(out) == self.n:
                break
            if self._it is None:
                self._it = iter(self.loader)
            try:
                x, y = next(self._it)
            except StopIteration:
                self._it = None
                continue
            out.append((move_to(x, self.device), move_to(y, self.device)))
        if not out:
            raise ValueError("train_loader yielded no batch for calibration")
        return out


def _first_full_target_step(schedule: Schedule) -> int:
    """The update step at which the schedule's cumulative target reaches ``target``."""
    for s in schedule.update_steps():
        if schedule.sparsity_at(s) >= schedule.target - 1e-12:
            return s
    return schedule.update_steps()[-1]


def _validate(
    spec: PruneSpec, schedule: Schedule, epochs: int, calibration_batches: int,
    latency_batch_size: int, latency_repeats: int, crit: Criterion, steps_per_epoch: int | None,
) -> None:
    if not isinstance(schedule, Schedule):
        raise ValueError(f"schedule must come from pruners.make_schedule, got {type(schedule).__name__}")
    if spec.granularity not in schedule.granularities:
        raise ValueError(
            f"schedule {schedule.name!r} supports {', '.join(schedule.granularities)} pruning only, "
            f"not {spec.granularity}"
        )
    if spec.threshold_rule == "fraction" and abs(spec.amount - schedule.target) > 1e-9:
        raise ValueError(
            f"spec.amount {spec.amount} must equal the schedule's target {schedule.target} for the "
            "fraction rule (the schedule ramps to it)"
        )
    for key, value, low in (
        ("epochs", epochs, 1), ("calibration_batches", calibration_batches, 1),
        ("latency_batch_size", latency_batch_size, 1), ("latency_repeats", latency_repeats, 1),
    ):
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ValueError(f"{key} must be an integer >= {low}, got {value!r}")
    if steps_per_epoch is not None:
        total = steps_per_epoch * epochs
        last = crit.warmup_steps + _first_full_target_step(schedule)
        if last >= total:
            raise ValueError(
                f"schedule {schedule.name!r} reaches its target at optimizer step {last} "
                f"(criterion warm-up {crit.warmup_steps} included) but training has only {total} "
                f"steps ({epochs} epochs x {steps_per_epoch}); shorten the schedule"
            )


# ------------------------------------------------------------------------------ the loop
def finetune(
    model: nn.Module,
    train_loader: Iterable[Any],
    eval_loader: Iterable[Any],
    *,
    spec: PruneSpec,
    schedule: Schedule,
    epochs: int,
    optimizer: OptimizerConfig,
    report: Callable[[dict[str, Any]], Any],
    example_inputs: torch.Tensor | tuple[torch.Tensor, ...],
    device: str | torch.device | None = None,
    calibration_batches: int = 4,
    latency_batch_size: int = 1,
    latency_repeats: int = 10,
    loss_fn: LossFn = F.cross_entropy,
    checkpoint: Callable[[nn.Module, dict[str, Any]], Any] | None = None,
    accuracy_target: float | None = None,
) -> nn.Module:
    """Prune ``model`` on ``schedule`` while fine-tuning it; report metrics once per epoch.

    At every update step of the schedule (counted in optimizer steps over all epochs, after
    the criterion's ``warmup_steps`` of penalty-only training) the model is pruned with
    ``pruners.prune`` and the criterion instance, which keeps its statistics and gates:

    * unstructured + ``fraction``: the schedule's cumulative target is passed as is (masked
      weights count as removed);
    * structured + ``fraction``: the cumulative target is converted into the fraction of
      the units the model has now, ``(s_t - r) / (1 - r)`` with ``r`` removed so far;
    * other threshold rules: ``spec.amount`` is applied at every update step;
    * ``dynamic`` (unstructured only): pruned to the target at step 0, then at each later
      update the masks are re-derived from the dense weights' scores, regrowing up to
      ``regrow_fraction`` of the pruned weights; until the last update the dense weights
      behind the masks keep training (straight-through gradient, as in Dynamic Network
      Surgery, Guo et al. 2016), so pruned weights can earn their way back.

    After a change of parameters (structured pruning, new masks, gates) the optimizer is
    rebuilt (state carried over for parameters that survived) and a
    ``DistributedDataParallel`` model is re-wrapped with the same arguments. Pruning runs
    with the model in eval mode, so tracing and calibration leave BatchNorm statistics alone.

    Under ``torch.distributed`` (a ``DistributedDataParallel`` model and, normally, loaders
    with a ``DistributedSampler``): criteria all-reduce their statistics, gate gradients of
    parameters outside the module are averaged, evaluation sums correct predictions and loss
    over all ranks, the training loss is averaged, and after each update every rank checks
    that all ranks hold identical masks and shapes (``RuntimeError`` otherwise). So every
    rank reports the same row, except ``latency_ms`` (measured locally).

    Args:
        model: The model, or a ``DistributedDataParallel`` wrapping it.
        train_loader: Iterable of ``(inputs, targets)``; ``len()`` is used to check that the
            schedule fits in ``epochs`` when available.
        eval_loader: Held-out ``(inputs, targets)`` batches.
        spec: What to prune (criterion, granularity, rule, amount, scope, ignore, params).
        schedule: From ``pruners.make_schedule``; steps are optimizer steps.
        epochs: Fine-tuning epochs (>= 1).
        optimizer: Optimizer and learning-rate schedule.
        report: Called once per epoch with a dict holding the keys of design.md section 3
            (plus ``step``, optimizer steps done, and ``units_pruned``, the fraction of
            prunable units removed as ``prune`` counts them).
        example_inputs: One batch of inputs (e.g. ``x[:1]``) for tracing and measuring.
        device: Where to train; ``None`` keeps the model where it is.
        calibration_batches: Training batches handed to data-driven criteria per update.
        latency_batch_size: Batch size of the latency measurement.
        latency_repeats: Timed forward passes per latency measurement (median reported).
        loss_fn: ``loss_fn(logits, targets)`` returning the batch mean.
        checkpoint: Optional ``checkpoint(model, row)`` called after ``report`` every epoch
            (e.g. to keep the best model). Gates of the attention family are still attached
            at that point; they are folded only when ``finetune`` returns.
        accuracy_target: Keep only pruning rounds the model survives (the prune ->
            evaluate -> re-score loop of sensitivity-based pruning, the schedule providing
            the rounds). A round is judged after the fine-tuning that follows it: before
            the next round, and at the end of training for the last one, the model is
            evaluated on ``eval_loader``. If accuracy >= target the round is kept (and the
            next one runs); otherwise the round is undone (masks, weights, buffers and
            structure restored from a copy taken just before it: the same root module, its
            submodules replaced by the copy's; the optimizer restarts) and
            no further pruning happens. A dense model already below the target is never
            pruned. So the model left when pruning ends met the target when last evaluated.
            Rows then also carry ``pruning_stopped`` (0 or 1, from the epoch the stop
            happened in). Not with the ``dynamic`` schedule or gate criteria (attention
            family), which have no round to undo. ``None``: prune as scheduled.

    Returns:
        The pruned, fine-tuned model in eval mode; a ``DistributedDataParallel`` again if
        one was given. Unstructured masks stay in place (``pruners.save`` makes them
        permanent in the file it writes).

    Raises:
        ValueError: Bad arguments, a criterion / schedule / granularity mismatch, or a
            schedule that does not reach its target within ``epochs``.
    """
    if not isinstance(spec, PruneSpec):
        raise ValueError(f"spec must be a pruners.PruneSpec, got {type(spec).__name__}")
    if not isinstance(optimizer, OptimizerConfig):
        raise ValueError(f"optimizer must be a pruners.OptimizerConfig, got {type(optimizer).__name__}")
    crit = spec.make_criterion()
    steps_per_epoch = len(train_loader) if hasattr(train_loader, "__len__") else None  # type: ignore[arg-type]
    _validate(spec, schedule, epochs, calibration_batches, latency_batch_size, latency_repeats,
              crit, steps_per_epoch)
    if accuracy_target is not None and not (_is_number(accuracy_target) and 0 <= accuracy_target <= 1):
        raise ValueError(f"accuracy_target must be a number in [0, 1] or None, got {accuracy_target!r}")
    if accuracy_target is not None and schedule.name == "dynamic":
        raise ValueError(
            "accuracy_target needs pruning rounds to keep or undo (one_shot, iterative, gradual); "
            "the dynamic schedule re-derives its masks instead"
        )
    if accuracy_target is not None and type(crit).attach is not Criterion.attach:
        raise ValueError(
            f"accuracy_target cannot undo a round of criterion {spec.criterion!r}: its gates train "
            "across rounds; use a criterion without gates (e.g. sensitivity, taylor, magnitude)"
        )

    # 1. Unwrap, move, make attention head-prunable (as prune would) before anything holds
    #    references to the parameters, then attach the criterion's gates / hooks.
    ddp_kwargs = _dist.ddp_kwargs(model) if isinstance(model, nn.parallel.DistributedDataParallel) else None
    net = unwrap(model)
    if device is not None:
        net.to(device)
    dev = device_of(net)
    example = move_to(example_inputs, dev)
    convert_attention(net)
    reference = _prunable_weight_counts(net, example, spec.ignore)
    crit.attach(net)

    # 2. Optimizer (and DDP) over the model's parameters and the criterion's gates.
    def extra_params() -> list[nn.Parameter]:
        owned = {id(p) for p in net.parameters()}
        return [p for p in crit.trainable_parameters() if id(p) not in owned]

    def build(old: torch.optim.Optimizer | None) -> tuple[nn.Module, torch.optim.Optimizer]:
        params = [p for p in net.parameters() if p.requires_grad]
        params += [p for p in crit.trainable_parameters() if id(p) not in {id(q) for q in params}]
        opt = optimizer.build(params)
        if old is not None:  # momentum / Adam moments of surviving parameters carry over
            for p in params:
                if p in old.state:
                    opt.state[p] = old.state[p]
        return _dist.wrap(net, ddp_kwargs), opt

    wrapped, opt = build(None)
    signature = _signature(net, crit.trainable_parameters())

    total_steps = steps_per_epoch * epochs if steps_per_epoch is not None else None
    calib = _Batches(train_loader, calibration_batches, dev)
    straight = StraightThrough()
    dynamic = schedule.name == "dynamic"
    last_update = schedule.update_steps()[-1]
    units_orig: int | None = None
    units_now: int | None = None
    requested_units = 0.0  # cumulative fraction of original units the rule asked for
    pruned_once = False
    stopped = False  # accuracy_target fell: no more pruning
    # accuracy_target: the model and bookkeeping as they were before the latest round, kept
    # until the next check says whether that round is kept or undone.
    before_round: tuple[nn.Module, tuple[Any, ...]] | None = None

    def target_holds() -> bool:
        # All-reduced accuracy of rank 0's buffers: every rank decides the same.
        _dist.broadcast_buffers(net)
        return _evaluate(net, eval_loader, loss_fn, dev)[0] >= accuracy_target  # type: ignore[operator]

    def save_round() -> None:
        nonlocal before_round
        before_round = (copy.deepcopy(net), (units_now, requested_units, pruned_once))

    def undo_round() -> None:
        """Put the model back as it was before the latest round (in place: same root object)."""
        nonlocal before_round, units_now, requested_units, pruned_once
        assert before_round is not None
        saved, (units_now, requested_units, pruned_once) = before_round
        # The saved copy's submodules, parameters, buffers, masks and pruning hooks replace
        # the pruned ones; the optimizer and DDP are rebuilt below (new parameters).
        net.__dict__.clear()
        net.__dict__.update(saved.__dict__)
        before_round = None

    def prune_now(s: int) -> None:
        nonlocal units_orig, units_now, requested_units, pruned_once
        calibration = calib.take() if crit.needs_calibration else None
        with eval_mode(net):  # tracing and calibration leave BatchNorm statistics alone
            if dynamic and pruned_once:
                crit.prepare(net, calibration)
                regrow(net, crit, schedule.regrow_fraction, spec.scope)  # type: ignore[attr-defined]
                return
            target = schedule.sparsity_at(s)
            amount = spec.amount
            if spec.threshold_rule == "fraction":
                amount = target
                if spec.granularity == "structured" and units_orig:
                    removed = 1.0 - units_now / units_orig  # type: ignore[operator]
                    amount = (target - removed) / (1.0 - removed) if removed < 1 else 0.0
                if amount <= 1e-12:
                    return  # nothing new to remove at this step
                amount = min(amount, math.nextafter(1.0, 0.0))
            rep: PruneReport = prune(
                net, criterion=crit, granularity=spec.granularity, amount=amount,
                threshold_rule=spec.threshold_rule, scope=spec.scope, example_inputs=example,
                calibration=calibration, ignore=spec.ignore,
            )
        if units_orig is None:
            units_orig = rep.units_before
        requested_now = rep.requested_fraction * rep.units_before
        if spec.granularity == "structured":
            requested_now += units_orig - rep.units_before  # units gone before this call
        requested_units = requested_now / units_orig if units_orig else 0.0
        units_now = rep.units_after
        pruned_once = True

    # 3. Train. A model handed over in eval mode is switched to training once; a training
    #    model keeps every submodule's own flag (a BatchNorm the user froze stays frozen).
    if not net.training:
        net.train()
    step = 0
    for epoch in range(1, epochs + 1):
        sampler = getattr(train_loader, "sampler", None)
        if hasattr(sampler, "set_epoch"):
            sampler.set_epoch(epoch)  # DistributedSampler: a new shuffle every epoch
        loss_sum, batches = 0.0, 0
        for x, y in train_loader:
            s = step - crit.warmup_steps
            update = s >= 0 and schedule.is_update_step(s) and not stopped
            undone = False
            if update and accuracy_target is not None:
                # The previous round has been fine-tuned until now: keep it if the target
                # holds, else undo it and prune no more.
                if target_holds():
                    save_round()
                else:
                    stopped, update = True, False
                    if before_round is not None:
                        undo_round()
                        undone = True
            if update:
                prune_now(s)
                if dynamic and not straight.active and s < last_update:
                    straight.attach(net)
            if update or undone:
                new_signature = _signature(net, crit.trainable_parameters())
                if new_signature != signature:
                    wrapped, opt = build(opt)
                    signature = new_signature
                _dist.check_identical_across_ranks(net)
            if straight.active and s >= last_update:
                straight.detach()  # masks are final: train the survivors only

            x, y = move_to(x, dev), move_to(y, dev)
            lr = optimizer.lr_at(step, total_steps)
            for group in opt.param_groups:
                group["lr"] = lr
            opt.zero_grad(set_to_none=True)
            loss = loss_fn(wrapped(x), y)
            penalty = crit.penalty(net)
            if penalty is not None:
                loss = loss + penalty
            loss.backward()
            # DDP averages the module's gradients; gates living outside it need the same.
            _dist.all_reduce_mean_([p.grad for p in extra_params() if p.grad is not None])
            opt.step()
            loss_sum += float(loss.detach())
            batches += 1
            step += 1

        if epoch == epochs and before_round is not None and not stopped:
            # The last round has no next round to check it: check it now, before reporting.
            if not target_holds():
                stopped = True
                undo_round()
                wrapped, opt = build(opt)
                signature = _signature(net, crit.trainable_parameters())
                _dist.check_identical_across_ranks(net)

        # 4. Evaluate, measure, report (one model: rank 0's BatchNorm statistics everywhere).
        _dist.broadcast_buffers(net)
        accuracy, eval_loss = _evaluate(net, eval_loader, loss_fn, dev)
        loss_sum, batches_all = _dist.all_reduce_sum([loss_sum, float(batches)])
        s_last = step - 1 - crit.warmup_steps
        if spec.threshold_rule == "fraction":
            requested = schedule.sparsity_at(s_last) if s_last >= 0 else 0.0
        else:
            requested = requested_units
        metrics = measure(net, example, latency_repeats=latency_repeats,
                          batch_size=latency_batch_size)
        row: dict[str, Any] = {
            "epoch": epoch,
            "accuracy": accuracy,
            "loss": eval_loss,
            "train_loss": loss_sum / batches_all if batches_all else float("nan"),
            "sparsity": _achieved_sparsity(net, reference),
            "requested_sparsity": requested,
            **metrics.to_dict(),
            "step": step,
            "units_pruned": 1.0 - units_now / units_orig if units_orig else 0.0,
        }
        if accuracy_target is not None:
            row["pruning_stopped"] = int(stopped)
        report(row)
        if checkpoint is not None:
            checkpoint(wrapped, row)

    # 5. Fold gates, remove hooks; the returned model exports without them.
    straight.detach()
    crit.detach(net)
    if _signature(net, []) != signature[:2] + ((),):
        wrapped = _dist.wrap(net, ddp_kwargs)  # gates were module parameters: re-wrap
    _dist.check_identical_across_ranks(net)
    net.eval()
    return wrapped
