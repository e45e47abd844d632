"""``Pruner``: prune on a schedule inside any training loop, in the spirit of ``torch.ao.pruning``.

::

    pruner = pruners.Pruner(model, spec, schedule, example_inputs=x, optimizer=opt,
                            calibration=train_loader)
    for x, y in batches:
        loss = loss_fn(pruner.model(x), y)
        if (p := pruner.penalty()) is not None:
            loss = loss + p                  # slimming / group-lasso / gate L1 terms
        opt.zero_grad(); loss.backward()
        pruner.sync_gradients()              # gates under torch.distributed (no-op otherwise)
        opt.step()
        pruner.step()                        # prune when the schedule says so
    model = pruner.finalize()                # gates folded, hooks gone; masks stay

Like ``torch.ao.pruning``'s sparsifier, ``step()`` comes after ``optimizer.step()``: the
``k``-th call applies what the schedule does at step ``k - 1`` (after the criterion's
``warmup_steps`` of penalty-only training), so a one-shot schedule prunes after the first
optimizer step. After a structural change the optimizer's parameter groups are updated in
place (state kept for parameters that survived) and a ``DistributedDataParallel`` model is
re-wrapped with the same arguments: always call ``pruner.model``.

``state_dict()`` holds everything needed to continue mid-schedule on a freshly built model:
the step, the structural removals (replayed through the dependency graph), the masks, the
criterion's state (gates, random rounds), the calibration draws and the accuracy-target
bookkeeping. Restore with ``Pruner(fresh_model, ...).load_state_dict(state)`` and then load
the model's and optimizer's own state dicts into ``pruner.module`` and the optimizer.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import torch
from torch import nn

from pruners import _dist
from pruners._attention import convert_attention
from pruners._devices import device_of, move_to, unwrap
from pruners._dynamic import StraightThrough, regrow
from pruners.calibration import CalibrationBatches
from pruners.criteria import Criterion
from pruners.criteria.base import eval_mode
from pruners.prune import PruneReport, prune, prune_to_cost
from pruners.structured import replay_structural
from pruners.schedules import Schedule
from pruners.spec import PruneSpec
from pruners.targets import model_cost
from pruners.sparsity import achieved_sparsity, install_masks, masks_of, prunable_weight_counts
from pruners.thresholds import get_threshold_rule, schedule_target

__all__ = ["Pruner", "achieved_sparsity", "prunable_weight_counts"]

STATE_VERSION = 1


def first_full_target_step(schedule: Schedule) -> int:
    """The update step at which the schedule's cumulative target reaches ``target``."""
    for s in schedule.update_steps():
        if schedule.sparsity_at(s) >= schedule.target - 1e-12:
            return s
    return schedule.update_steps()[-1]


class Pruner:
    """Prune ``model`` on ``schedule`` while a training loop (yours) fine-tunes it.

    Args:
        model: The model (a ``DistributedDataParallel`` is unwrapped and re-wrapped after
            structural changes: train through :attr:`model`).
        spec: What to prune (criterion, granularity, rule, amount, scope, ignore, params).
        schedule: From ``pruners.make_schedule``; its steps are ``step()`` calls.
        example_inputs: One batch of inputs (e.g. ``x[:1]``) for tracing.
        optimizer: The training optimizer; its parameter groups are updated in place after
            structural changes, and the criterion's gates (attention family) are added to it
            as a group of their own. None: no optimizer to keep in sync.
        calibration: Where data-driven criteria draw batches from: a ``DataLoader`` (its
            dataset is sampled afresh, never its iterator) or a re-iterable of
            ``(inputs, targets)`` batches. Required by data-driven criteria.
        calibration_batches: Batches per scoring.
        total_steps: Optimizer steps the training will take, if known: a schedule that would
            reach its target only after them is refused up front.
        accuracy_target: Keep only pruning rounds the model survives (sensitivity pruning's
            prune -> evaluate -> re-score loop): before each round and in :meth:`finalize`
            ``evaluate(model)`` must reach it, else the previous round is undone (weights,
            masks, structure restored) and no further pruning happens. Needs ``evaluate``.
        evaluate: ``evaluate(model) -> accuracy`` (all ranks agree), for ``accuracy_target``.
        seed: Seed of the calibration draws.

    Raises:
        ValueError: a spec / schedule mismatch, a schedule that does not fit in
            ``total_steps``, or ``accuracy_target`` with a schedule or criterion that has no
            round to undo.
    """

    def __init__(
        self,
        model: nn.Module,
        spec: PruneSpec,
        schedule: Schedule,
        example_inputs: Any,
        *,
        optimizer: torch.optim.Optimizer | None = None,
        calibration: Iterable[Any] | None = None,
        calibration_batches: int = 4,
        total_steps: int | None = None,
        accuracy_target: float | None = None,
        evaluate: Callable[[nn.Module], float] | None = None,
        seed: int = 0,
    ) -> None:
        if not isinstance(spec, PruneSpec):
            raise ValueError(f"spec must be a pruners.PruneSpec, got {type(spec).__name__}")
        self.spec, self.schedule = spec, schedule
        self._cost_rule = get_threshold_rule(spec.threshold_rule).kind == "cost"
        self.crit: Criterion = spec.make_criterion()
        self._check(total_steps, calibration_batches, accuracy_target, evaluate)
        self.accuracy_target, self.evaluate = accuracy_target, evaluate
        self.optimizer = optimizer
        self._ddp_kwargs = _dist.ddp_kwargs(model) if isinstance(model, nn.parallel.DistributedDataParallel) else None
        self.module = unwrap(model)
        self._device = device_of(self.module)
        self.example = move_to(example_inputs, self._device)
        convert_attention(self.module)  # self-attention becomes head-prunable (same outputs)
        if optimizer is not None:
            live = {id(p) for p in self.module.parameters()}
            if any(id(p) not in live for g in optimizer.param_groups for p in g["params"]):
                raise ValueError(
                    "the optimizer holds parameters the model no longer has: build it after "
                    "pruners.convert_attention(model) (self-attention layers are replaced)"
                )
        self.reference = prunable_weight_counts(self.module, self.example, spec.ignore)
        # A cost rule ramps the model's cost down from what it is now (the dense model).
        self.dense_cost = model_cost(self.module, self.example, spec.threshold_rule, spec.granularity) \
            if self._cost_rule else None
        self.calibration = (
            CalibrationBatches(calibration, calibration_batches, self._device, seed=seed)
            if calibration is not None else None
        )
        if self.crit.needs_calibration and self.calibration is None:
            raise ValueError(f"criterion {spec.criterion!r} needs calibration batches (calibration=...)")
        self.crit.attach(self.module)
        self._straight = StraightThrough()
        self._last_update = schedule.update_steps()[-1]
        self._gate_group: dict[str, Any] | None = None
        self._sync_optimizer(initial=True)
        self.model = _dist.wrap(self.module, self._ddp_kwargs) if self._ddp_kwargs is not None else model
        self._signature = self._params_signature()
        self.steps = 0  # step() calls so far
        self.units_orig: int | None = None
        self.units_now: int | None = None
        self.requested_units = 0.0  # cumulative fraction of original units the rule asked for
        self.pruned_once = False
        self.stopped = False  # accuracy_target fell: no more pruning
        self.ops: list[list[dict[str, Any]]] = []  # structural removals, one list per prune call
        self._before_round: dict[str, Any] | None = None
        self.last_report: PruneReport | None = None
        self.finalized = False

    # -- checks --------------------------------------------------------------------------
    def _check(self, total_steps: int | None, calibration_batches: int, target: float | None,
               evaluate: Any) -> None:
        spec, schedule, crit = self.spec, self.schedule, self.crit
        if not isinstance(schedule, Schedule):
            raise ValueError(f"schedule must come from pruners.make_schedule, got {type(schedule).__name__}")
        if spec.granularity not in schedule.granularities:
            raise ValueError(
                f"schedule {schedule.name!r} supports {', '.join(schedule.granularities)} pruning only, "
                f"not {spec.granularity}"
            )
        if spec.threshold_rule == "fraction" or self._cost_rule:
            # The fraction rule ramps to its amount, a cost rule to the share of the cost it
            # removes; the other rules apply their amount at every update (any target).
            want = schedule_target(spec.threshold_rule, spec.amount)
            if abs(want - schedule.target) > 1e-9:
                raise ValueError(
                    f"{spec.threshold_rule} {spec.amount:g}: the schedule's target must be {want:.6g} (the schedule "
                    f"ramps to it: the fraction itself, 1 - 1/factor of the cost for a cost rule), got {schedule.target}"
                )
        if isinstance(calibration_batches, bool) or not isinstance(calibration_batches, int) or calibration_batches < 1:
            raise ValueError(f"calibration_batches must be an integer >= 1, got {calibration_batches!r}")
        if total_steps is not None:
            last = crit.warmup_steps + first_full_target_step(schedule)
            if last >= total_steps:
                raise ValueError(
                    f"schedule {schedule.name!r} reaches its target at optimizer step {last} "
                    f"(criterion warm-up {crit.warmup_steps} included) but training has only {total_steps} "
                    "steps; shorten the schedule"
                )
        if target is not None:
            if isinstance(target, bool) or not isinstance(target, (int, float)) or not 0 <= target <= 1:
                raise ValueError(f"accuracy_target must be a number in [0, 1] or None, got {target!r}")
            if schedule.name == "dynamic":
                raise ValueError(
                    "accuracy_target needs pruning rounds to keep or undo (one_shot, iterative, gradual); "
                    "the dynamic schedule re-derives its masks instead"
                )
            if type(crit).attach is not Criterion.attach:
                raise ValueError(
                    f"accuracy_target cannot undo a round of criterion {spec.criterion!r}: its gates train "
                    "across rounds; use a criterion without gates (e.g. sensitivity, taylor, magnitude)"
                )
            if evaluate is None:
                raise ValueError("accuracy_target needs evaluate=callable(model) -> accuracy")

    # -- the training-loop API -----------------------------------------------------------
    def penalty(self) -> torch.Tensor | None:
        """The criterion's loss term (None when it has none): add it to the loss."""
        return self.crit.penalty(self.module)

    def sync_gradients(self) -> None:
        """Average the gates' gradients over ranks (DDP averages the module's own)."""
        _dist.all_reduce_mean_([p.grad for p in self._extra_params() if p.grad is not None])

    def step(self) -> bool:
        """Advance one optimizer step and prune if the schedule says so.

        Returns:
            True when the model's parameters changed (new structure or new masks): the
            optimizer was updated in place and :attr:`model` may be a new wrapper.
        """
        if self.finalized:
            raise RuntimeError("the pruner was finalized; build a new one to prune again")
        s = self.steps - self.crit.warmup_steps  # the schedule step this call applies
        self.steps += 1
        update = s >= 0 and self.schedule.is_update_step(s) and not self.stopped
        undone = False
        if update and self.accuracy_target is not None:
            # The previous round has been fine-tuned until now: keep it if the target holds,
            # else undo it and prune no more.
            if self._target_holds():
                self._before_round = self._snapshot()
            else:
                self.stopped, update = True, False
                if self._before_round is not None:
                    self._restore_snapshot()
                    undone = True
        if update:
            self._prune_now(s)
            if self.schedule.name == "dynamic" and not self._straight.active and s < self._last_update:
                self._straight.attach(self.module)
        if self._straight.active and s >= self._last_update:
            self._straight.detach()  # masks are final: train the survivors only
        return (update or undone) and self._refresh()

    def finalize(self) -> nn.Module:
        """End pruning: judge the last round (``accuracy_target``), fold gates, drop hooks.

        Returns:
            :attr:`model` (re-wrapped if the gates were parameters of the module), in eval
            mode. Unstructured masks stay (``pruners.save`` makes them permanent in its file).
        """
        if self.finalized:
            return self.model
        if self._before_round is not None and not self.stopped and not self._target_holds():
            # The last round has no next round to check it: check it now.
            self.stopped = True
            self._restore_snapshot()
            self._refresh()
        self._straight.detach()
        self.crit.detach(self.module)
        self._sync_optimizer()
        self._refresh(force=True)
        _dist.check_identical_across_ranks(self.module)
        self.module.eval()
        self.finalized = True
        return self.model

    def stats(self) -> dict[str, Any]:
        """``sparsity`` (achieved, of the prunable weights), ``requested_sparsity``,
        ``units_pruned`` (fraction of prunable units removed) and ``step``."""
        s_last = self.steps - 1 - self.crit.warmup_steps  # the schedule step of the last call
        if self.spec.threshold_rule == "fraction" or self._cost_rule:
            requested = self.schedule.sparsity_at(s_last) if s_last >= 0 else 0.0
        else:
            requested = self.requested_units
        out = {
            "sparsity": achieved_sparsity(self.module, self.reference),
            "requested_sparsity": requested,
            "units_pruned": 1.0 - self.units_now / self.units_orig if self.units_orig else 0.0,
            "step": self.steps,
        }
        if self.accuracy_target is not None:
            out["pruning_stopped"] = int(self.stopped)
        return out

    # -- pruning -------------------------------------------------------------------------
    def _prune_now(self, s: int) -> None:
        spec, crit = self.spec, self.crit
        calibration = self.calibration.take() if crit.needs_calibration and self.calibration else None
        with eval_mode(self.module):  # tracing and calibration leave BatchNorm statistics alone
            if self.schedule.name == "dynamic" and self.pruned_once:
                crit.prepare(self.module, calibration)
                regrow(self.module, crit, self.schedule.regrow_fraction, spec.scope)  # type: ignore[attr-defined]
                return
            if self._cost_rule:
                desired = self.dense_cost * (1.0 - self.schedule.sparsity_at(s))  # type: ignore[operator]
                rep, _ = prune_to_cost(
                    self.module, target_cost=desired, rule=spec.threshold_rule, criterion=crit,
                    granularity=spec.granularity, example_inputs=self.example, scope=spec.scope,
                    calibration=calibration, ignore=spec.ignore, min_keep=spec.min_keep,
                )
                if rep is None:
                    return  # the cost is already there
                self._record(rep)
                return
            amount = spec.amount
            if spec.threshold_rule == "fraction":
                target = self.schedule.sparsity_at(s)
                amount = target
                if spec.granularity == "structured" and self.units_orig:
                    removed = 1.0 - self.units_now / self.units_orig  # type: ignore[operator]
                    amount = (target - removed) / (1.0 - removed) if removed < 1 else 0.0
                if amount <= 1e-12:
                    return  # nothing new to remove at this step
                amount = min(amount, math.nextafter(1.0, 0.0))
            rep = prune(
                self.module, criterion=crit, granularity=spec.granularity, amount=amount,
                threshold_rule=spec.threshold_rule, scope=spec.scope, example_inputs=self.example,
                calibration=calibration, ignore=spec.ignore, min_keep=spec.min_keep,
            )
        self._record(rep)

    def _record(self, rep: PruneReport) -> None:
        spec = self.spec
        if rep.structural_ops:
            self.ops.append([dict(op) for op in rep.structural_ops])
        if self.units_orig is None:
            self.units_orig = rep.units_before
        requested_now = rep.requested_fraction * rep.units_before
        if spec.granularity == "structured":
            requested_now += self.units_orig - rep.units_before  # units gone before this call
        self.requested_units = requested_now / self.units_orig if self.units_orig else 0.0
        self.units_now = rep.units_after
        self.pruned_once = True
        self.last_report = rep

    def _target_holds(self) -> bool:
        # Rank 0's buffers everywhere, so every rank evaluates (and decides) the same.
        _dist.broadcast_buffers(self.module)
        return float(self.evaluate(self.model)) >= float(self.accuracy_target)  # type: ignore[misc, arg-type]

    def _counters(self) -> dict[str, Any]:
        return {"units_orig": self.units_orig, "units_now": self.units_now,
                "requested_units": self.requested_units, "pruned_once": self.pruned_once}

    def _snapshot(self) -> dict[str, Any]:
        return {"module": copy.deepcopy(self.module), "counters": self._counters(), "ops": len(self.ops)}

    def _restore_snapshot(self) -> None:
        """Put the model back as it was before the latest round (same root object)."""
        snap, self._before_round = self._before_round, None
        assert snap is not None
        # The copy's submodules, parameters, buffers, masks and pruning hooks replace the
        # pruned ones; the optimizer and DDP follow in _refresh.
        self.module.__dict__.clear()
        self.module.__dict__.update(snap["module"].__dict__)
        for k, v in snap["counters"].items():
            setattr(self, k, v)
        del self.ops[snap["ops"]:]

    # -- keeping the optimizer and DDP in step with the parameters ------------------------
    def _extra_params(self) -> list[nn.Parameter]:
        owned = {id(p) for p in self.module.parameters()}
        return [p for p in self.crit.trainable_parameters() if id(p) not in owned]

    def _params_signature(self) -> tuple:
        return (
            tuple((n, id(p), tuple(p.shape)) for n, p in self.module.named_parameters()),
            tuple((n, tuple(b.shape)) for n, b in self.module.named_buffers()),
            tuple(id(p) for p in self.crit.trainable_parameters()),
        )

    def _refresh(self, force: bool = False) -> bool:
        """After a change: sync the optimizer, re-wrap DDP, check the ranks agree."""
        sig = self._params_signature()
        changed = sig != self._signature
        if changed or force:
            self._sync_optimizer()
            if self._ddp_kwargs is not None:
                self.model = _dist.wrap(self.module, self._ddp_kwargs)
            self._signature = sig
        _dist.check_identical_across_ranks(self.module)
        return changed

    def _sync_optimizer(self, initial: bool = False) -> None:
        """Point the optimizer's groups at the model's current parameters (and the gates)."""
        opt = self.optimizer
        if opt is None:
            return
        if initial:
            self._names = {id(p): n for n, p in self.module.named_parameters()}
        current = dict(self.module.named_parameters())
        live = {id(p) for p in current.values()}
        gates = self._extra_params()
        for group in opt.param_groups:
            if group is self._gate_group:
                continue
            new = []
            for p in group["params"]:
                if id(p) in live:
                    new.append(p)
                    continue
                name = self._names.get(id(p))
                q = current.get(name) if name else None
                q = q if q is not None else (current.get(f"{name}_orig") if name else None)
                if q is not None:
                    new.append(q)
                    opt.state.pop(p, None)  # a replaced (sliced) tensor: its moments no longer fit
            group["params"] = new
        if gates and self._gate_group is None:
            opt.add_param_group({"params": gates})
            self._gate_group = opt.param_groups[-1]
        elif self._gate_group is not None:
            for p in self._gate_group["params"]:
                if all(p is not g for g in gates):
                    opt.state.pop(p, None)
            self._gate_group["params"] = gates
        self._names = {id(p): n for n, p in self.module.named_parameters()}

    # -- state ---------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue mid-schedule (weights excluded: save
        ``pruner.module.state_dict()`` and the optimizer's beside it)."""
        before = None
        if self._before_round is not None:
            snap = self._before_round["module"]
            before = {"counters": dict(self._before_round["counters"]), "ops": self._before_round["ops"],
                      "masks": masks_of(snap), "weights": {k: v.detach().cpu().clone() for k, v in snap.state_dict().items()}}
        return {
            "version": STATE_VERSION,
            "steps": self.steps,
            "stopped": self.stopped,
            **self._counters(),
            "ops": copy.deepcopy(self.ops),
            "masks": masks_of(self.module),
            "criterion": self.crit.state_dict(self.module),
            "calibration": None if self.calibration is None else self.calibration.state_dict(),
            "before_round": before,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Bring a pruner built on the *unpruned* model to ``state`` (structure replayed)."""
        if state.get("version") != STATE_VERSION:
            raise ValueError(f"pruner state version {state.get('version')!r} is not {STATE_VERSION}")
        if self.steps or self.ops or self.pruned_once:
            raise ValueError("load_state_dict needs a fresh pruner on the unpruned model")
        before = state.get("before_round")
        with self.crit.suspended():
            for i, call in enumerate(state["ops"]):
                if before is not None and i == before["ops"]:
                    self._before_round = self._rebuild_snapshot(before)
                replay_structural(self.module, call, self.example, self.crit)
            if before is not None and before["ops"] == len(state["ops"]):
                self._before_round = self._rebuild_snapshot(before)
        install_masks(self.module, state["masks"])
        self.crit.load_state_dict(self.module, state.get("criterion") or {})
        if self.calibration is not None and state.get("calibration") is not None:
            self.calibration.load_state_dict(state["calibration"])
        self.ops = copy.deepcopy(list(state["ops"]))
        self.steps, self.stopped = int(state["steps"]), bool(state["stopped"])
        for k in ("units_orig", "units_now", "requested_units", "pruned_once"):
            setattr(self, k, state[k])
        s_last = self.steps - 1 - self.crit.warmup_steps
        if self.schedule.name == "dynamic" and self.pruned_once and s_last < self._last_update:
            self._straight.attach(self.module)
        self._refresh(force=True)

    def _rebuild_snapshot(self, before: Mapping[str, Any]) -> dict[str, Any]:
        snap = copy.deepcopy(self.module)
        install_masks(snap, before["masks"])
        snap.load_state_dict(before["weights"])
        return {"module": snap, "counters": dict(before["counters"]), "ops": before["ops"]}
