"""``finetune``: prune on a schedule while fine-tuning, and report metrics once per epoch.

The loop every trial runs, written over :class:`pruners.Pruner` (which any other training
loop can use the same way)::

    pruner = Pruner(model, spec, schedule, example_inputs, optimizer=opt, calibration=...)
    for epoch in 1..epochs:
        for x, y in train_loader:
            loss = loss_fn(pruner.model(x), y) + pruner.penalty(); backward; opt.step()
            pruner.step()                               # prunes when the schedule says so
        (last epoch) pruner.finalize()                  # gates folded, hooks gone
        evaluate on eval_loader (the validation split), measure the saved file,
        report(row), checkpoint(model, row, file)

Plain PyTorch: under ``torch.distributed`` it expects an initialised process group and a
``DistributedDataParallel`` model, and never imports Ray; the caller's ``report`` callable
is the only link to a tuner.
"""

from __future__ import annotations

import copy
import os
import tempfile
from collections.abc import Callable, Iterable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from pruners import _dist
from pruners._attention import convert_attention
from pruners._devices import device_of, move_to, unwrap
from pruners.criteria.base import eval_mode
from pruners.io import save
from pruners.measure import measure
from pruners.pruner import Pruner
from pruners.schedules import Schedule
from pruners.spec import LR_SCHEDULES, OPTIMIZERS, OptimizerConfig, PruneSpec

__all__ = ["LR_SCHEDULES", "OPTIMIZERS", "OptimizerConfig", "PruneSpec", "evaluate", "finetune"]

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
#: ``checkpoint(model, row, file, state)``: ``file`` is the model's saved file measured for
#: ``row`` (valid during the call; None on ranks other than 0), e.g. to keep the best one;
#: ``state()`` returns everything needed to continue after this epoch (``resume=``).
Checkpoint = Callable[[nn.Module, dict[str, Any], "str | None", Callable[[], dict[str, Any]]], Any]


def _rng_state() -> dict[str, Any]:
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def evaluate(
    net: nn.Module, loader: Iterable[Any], loss_fn: LossFn = F.cross_entropy, device: torch.device | None = None
) -> tuple[float, float]:
    """(top-1 accuracy, mean loss) over ``loader``, summed over all ranks' samples."""
    device = device if device is not None else device_of(unwrap(net))
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
        raise ValueError("the evaluation loader yielded no samples")
    return correct / count, loss_sum / count


def _check_ints(**values: int) -> None:
    for key, value in values.items():
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{key} must be an integer >= 1, got {value!r}")


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
    calibration: Iterable[Any] | None = None,
    calibration_batches: int = 4,
    latency_batch_size: int = 1,
    latency_repeats: int = 20,
    latency_threads: int | None = 1,
    loss_fn: LossFn = F.cross_entropy,
    checkpoint: Checkpoint | None = None,
    accuracy_target: float | None = None,
    seed: int = 0,
    artifact_metadata: dict[str, Any] | None = None,
    teacher: nn.Module | None = None,
    distill: float = 0.0,
    temperature: float = 4.0,
    resume: dict[str, Any] | None = None,
    bf16: bool = False,
    channels_last: bool = False,
) -> nn.Module:
    """Prune ``model`` on ``schedule`` while fine-tuning it; report metrics once per epoch.

    At every update step of the schedule (in optimizer steps over all epochs, after the
    criterion's ``warmup_steps`` of penalty-only training) the model is pruned with
    ``pruners.prune`` and the criterion instance, which keeps its statistics and gates
    (see :class:`pruners.Pruner` for the details: fraction targets, ``dynamic`` regrowth,
    optimizer and DDP kept in step).

    Each epoch's row is measured on what would ship: the model is saved with
    ``pruners.save`` (on rank 0), ``size_bytes`` is that file's size and the latency is
    the file loaded back, timed alternately with the file of the model as it was handed
    in (``dense_latency_ms``, ``speedup``).

    Args:
        model: The model to prune (a ``DistributedDataParallel`` is looked through and
            re-wrapped after structural changes).
        train_loader: Training ``(inputs, targets)`` batches; ``len`` (if defined) is used to
            check that the schedule fits in ``epochs``.
        eval_loader: Validation ``(inputs, targets)`` batches: the ``val_*`` of each row and
            the data ``accuracy_target`` is judged on.
        spec: What to prune (criterion, granularity, rule, amount, scope, ignore, params).
        schedule: From ``pruners.make_schedule``; steps are optimizer steps.
        epochs: Fine-tuning epochs (>= 1).
        optimizer: Optimizer and learning-rate schedule.
        report: Called once per epoch with a dict holding the keys of design.md section 3
            (``val_accuracy``, ``val_loss``, ``train_loss``, the pruning and cost metrics) plus
            ``step`` and ``units_pruned`` (and ``pruning_stopped`` with ``accuracy_target``).
        example_inputs: One batch of inputs (e.g. ``x[:1]``) for tracing and measuring.
        device: Where to train; ``None`` keeps the model where it is.
        calibration: Where data-driven criteria draw their batches: default the training
            loader's *dataset*, sampled afresh (its iterator is never touched).
        calibration_batches: Batches per scoring.
        latency_batch_size: Batch size of the latency measurement.
        latency_repeats: Timed forward passes per latency measurement (median reported).
        latency_threads: CPU threads while timing (None: leave as is).
        loss_fn: ``loss_fn(logits, targets)`` returning the batch mean.
        checkpoint: Optional ``checkpoint(model, row, file, state)`` called after ``report``
            every epoch with the file measured for the row (rank 0; None elsewhere) and
            ``state()``, which returns everything needed to continue after this epoch.
        accuracy_target: Keep only pruning rounds the model survives on ``eval_loader``
            (see :class:`pruners.Pruner`); rows then carry ``pruning_stopped``.
        seed: Seed of the calibration draws.
        artifact_metadata: JSON-serialisable information stored in every epoch's saved file
            (``pruners.load_metadata`` reads it; e.g. the config that produced the model).
        teacher: A model to distil from (Hinton et al. 2015), typically the dense model the
            pruned one started as; frozen, in eval mode.
        distill: Weight of the distillation term in [0, 1): the loss is
            ``(1 - distill) * loss_fn + distill * T^2 * KL(teacher_T || student_T)``.
        temperature: ``T``, softening both distributions.
        resume: A ``state()`` an earlier run's ``checkpoint`` received: ``model`` must be the
            model that run started from; training continues after that epoch and ends
            bit-identical to a run never interrupted (weights, masks, structure, gates,
            optimizer, learning-rate position, data order, random number generators).
        bf16: Run the training forward and loss under bfloat16 autocast (GPUs with bf16,
            recent CPUs). Validation and every measurement stay in float32: they describe
            the saved model, which is float32.
        channels_last: Train an image model in the channels-last memory format (faster
            convolutions on GPUs with tensor cores); the saved model is unaffected.

    Returns:
        The pruned, fine-tuned model in eval mode (a ``DistributedDataParallel`` again if
        one was given), gates folded. Unstructured masks stay in place.

    Raises:
        ValueError: Bad arguments, a criterion / schedule / granularity mismatch, or a
            schedule that does not reach its target within ``epochs``.
    """
    if not isinstance(optimizer, OptimizerConfig):
        raise ValueError(f"optimizer must be a pruners.OptimizerConfig, got {type(optimizer).__name__}")
    if not 0 <= distill < 1 or (distill > 0 and teacher is None) or not temperature > 0:
        raise ValueError(f"distill must be in [0, 1) with a teacher and temperature > 0, got distill={distill!r}, "
                         f"teacher={'given' if teacher is not None else None}, temperature={temperature!r}")
    _check_ints(epochs=epochs, calibration_batches=calibration_batches,
                latency_batch_size=latency_batch_size, latency_repeats=latency_repeats)
    steps_per_epoch = len(train_loader) if hasattr(train_loader, "__len__") else None  # type: ignore[arg-type]
    total_steps = steps_per_epoch * epochs if steps_per_epoch is not None else None
    net = unwrap(model)
    if device is not None:
        net.to(device)
    dev = device_of(net)
    if teacher is not None:
        teacher = unwrap(teacher).to(dev).eval()
        for p in teacher.parameters():
            p.requires_grad_(False)
    example = move_to(example_inputs, dev)
    main_rank = _dist.rank() == 0

    with tempfile.TemporaryDirectory(prefix="prunefront-finetune-") as tmp:
        # The model as handed in: the reference every epoch's latency is timed against.
        reference = os.path.join(tmp, "reference.pt2")
        if main_rank:
            save(net, reference, example)
        convert_attention(net)  # the optimizer must see the head-prunable attention's parameters
        if channels_last:
            net.to(memory_format=torch.channels_last)
        opt = optimizer.build([p for p in net.parameters() if p.requires_grad])
        pruner = Pruner(
            model, spec, schedule, example, optimizer=opt,
            calibration=train_loader if calibration is None else calibration,
            calibration_batches=calibration_batches, total_steps=total_steps,
            accuracy_target=accuracy_target, seed=seed,
            evaluate=lambda m: evaluate(m, eval_loader, loss_fn, dev)[0],
        )
        # A model handed over in eval mode is switched to training once; a training model
        # keeps every submodule's own flag (a BatchNorm the user froze stays frozen).
        if not pruner.module.training:
            pruner.module.train()
        step, first = 0, 1
        if resume is not None:
            pruner.load_state_dict(resume["pruner"])
            pruner.module.load_state_dict(resume["model"])
            opt.load_state_dict(resume["optimizer"])
            _set_rng_state(resume["rng"])
            step, first = int(resume["step"]), int(resume["epoch"]) + 1
            if first > epochs:
                pruner.finalize()

        def state_after(epoch: int) -> Callable[[], dict[str, Any]]:
            # Taken lazily (only when the caller keeps a checkpoint), but at this epoch's end.
            # Copies throughout: the optimizer's and pruner's state dicts hold the live tensors,
            # which the next epoch would change under a caller keeping the state in memory.
            snapshot = {"epoch": epoch, "step": step, "rng": _rng_state()}
            return lambda: copy.deepcopy({
                **snapshot, "pruner": pruner.state_dict(), "optimizer": opt.state_dict(),
                "model": {k: v.detach().cpu() for k, v in pruner.module.state_dict().items()}})

        for epoch in range(first, epochs + 1):
            sampler = getattr(train_loader, "sampler", None)
            if hasattr(sampler, "set_epoch"):
                sampler.set_epoch(epoch)  # DistributedSampler: a new shuffle every epoch
            loss_sum, batches = 0.0, 0
            for x, y in train_loader:
                x, y = move_to(x, dev), move_to(y, dev)
                if channels_last and isinstance(x, torch.Tensor) and x.dim() == 4:
                    x = x.contiguous(memory_format=torch.channels_last)
                lr = optimizer.lr_at(step, total_steps)
                for group in opt.param_groups:
                    group["lr"] = lr
                opt.zero_grad(set_to_none=True)
                with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=bf16):
                    out = pruner.model(x)
                    loss = loss_fn(out, y)
                    if distill > 0:
                        with torch.no_grad():
                            soft = F.log_softmax(teacher(x).float() / temperature, dim=1)  # type: ignore[misc]
                        kd = F.kl_div(F.log_softmax(out.float() / temperature, dim=1), soft, log_target=True,
                                      reduction="batchmean") * temperature**2
                        loss = (1 - distill) * loss + distill * kd
                penalty = pruner.penalty()
                if penalty is not None:
                    loss = loss + penalty
                loss.backward()
                pruner.sync_gradients()
                opt.step()
                if pruner.step() and channels_last:  # removed channels: new weight tensors
                    pruner.module.to(memory_format=torch.channels_last)
                loss_sum += float(loss.detach())
                batches += 1
                step += 1
            if epoch == epochs:
                pruner.finalize()

            # Evaluate, measure, report (one model: rank 0's BatchNorm statistics everywhere).
            _dist.broadcast_buffers(pruner.module)
            val_accuracy, val_loss = evaluate(pruner.model, eval_loader, loss_fn, dev)
            loss_sum, batches_all = _dist.all_reduce_sum([loss_sum, float(batches)])
            artifact = os.path.join(tmp, f"epoch-{epoch}.pt2")
            if main_rank:
                save(pruner.module, artifact, example, metadata=artifact_metadata)
            metrics = measure(
                pruner.module, example, artifact=artifact if main_rank else None, files=main_rank,
                reference=reference if main_rank else None, latency_repeats=latency_repeats,
                batch_size=latency_batch_size, threads=latency_threads,
            )
            row: dict[str, Any] = {
                "epoch": epoch,
                "val_accuracy": val_accuracy,
                "val_loss": val_loss,
                "train_loss": loss_sum / batches_all if batches_all else float("nan"),
                **metrics.to_dict(),
                **pruner.stats(),
            }
            report(row)
            if checkpoint is not None:
                checkpoint(pruner.model, row, artifact if main_rank else None, state_after(epoch))
            if main_rank:
                os.unlink(artifact)
    return pruner.model
