"""``train_epochs``: the one training loop, with or without a :class:`pruners.Pruner`.

Every model Prunefront trains goes through it: the dense baseline (no pruner) and every
trial (``pruners.finetune``, which hands it a pruner and measures each epoch's file)::

    for epoch in first..epochs:
        sampler.set_epoch(epoch)                        # DistributedSampler: a new shuffle
        for x, y in train_loader:
            lr = optimizer.lr_at(step, total_steps)     # a pure function of the step
            loss = loss_fn(model(x), y) [+ distillation] [+ pruner.penalty()]   # bf16 autocast
            backward; [pruner.sync_gradients()]; opt.step(); [pruner.step()]
        [last epoch: pruner.finalize()]
        evaluate on eval_loader, all-reduce the training loss
        on_epoch(EpochEnd(row, model, state))          # the one reporting hook

Plain PyTorch: under ``torch.distributed`` it expects an initialised process group and a
``DistributedDataParallel`` model, and never imports Ray.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from pruners import _dist
from pruners._devices import device_of, move_to, unwrap
from pruners.criteria.base import eval_mode
from pruners.pruner import Pruner
from pruners.spec import OptimizerConfig

__all__ = ["EpochEnd", "LossFn", "check_training", "evaluate", "train_epochs"]

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
#: ``make_pruner(optimizer, total_steps)``: the pruner to train with, built over the loop's
#: optimizer (after the model went channels-last, so it tracks the tensors that train).
MakePruner = Callable[[torch.optim.Optimizer, "int | None"], Pruner]


@dataclass(frozen=True)
class EpochEnd:
    """What the loop hands ``on_epoch`` after each epoch.

    Attributes:
        row: ``epoch``, ``val_accuracy``, ``val_loss`` (``eval_loader``, summed over ranks)
            and ``train_loss`` (the epoch's mean over all ranks' batches, distillation and
            penalty included; NaN for an epoch without batches).
        model: The model to forward through (a ``DistributedDataParallel`` when training
            under DDP; the pruner's current wrapper when pruning).
        module: The unwrapped module (what to save or measure).
        pruner: The pruner, or None.
        state: Returns everything needed to continue after this epoch (``resume=``);
            taken lazily, but as of this epoch's end.
        qat: True in the epochs of a :class:`pruners.quantize.QatPhase`: ``module`` is then
            the QAT graph (fake-quantized), and ``pruner.module`` the float model it came from.
    """

    row: dict[str, Any]
    model: nn.Module
    module: nn.Module
    pruner: Pruner | None
    state: Callable[[], dict[str, Any]]
    qat: bool = False


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
    if device is None:  # an ONNX Runtime program (an int8 file) has no parameters: it takes CPU tensors
        device = device_of(unwrap(net)) if isinstance(net, nn.Module) else torch.device("cpu")
    correct = loss_sum = count = 0.0
    # A module is switched to eval and back; an ONNX Runtime program (an int8 file) has no mode.
    with eval_mode(net) if isinstance(net, nn.Module) else contextlib.nullcontext(), torch.no_grad():
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


def check_training(optimizer: Any, epochs: int, teacher: nn.Module | None, distill: float,
                   temperature: float, **positive: int) -> None:
    """Raise ``ValueError`` on arguments :func:`train_epochs` refuses (and the caller's
    other ``positive`` integers), before anything is built."""
    if not isinstance(optimizer, OptimizerConfig):
        raise ValueError(f"optimizer must be a pruners.OptimizerConfig, got {type(optimizer).__name__}")
    if not 0 <= distill < 1 or (distill > 0 and teacher is None) or not temperature > 0:
        raise ValueError(f"distill must be in [0, 1) with a teacher and temperature > 0, got distill={distill!r}, "
                         f"teacher={'given' if teacher is not None else None}, temperature={temperature!r}")
    _check_ints(epochs=epochs, **positive)


def _distillation(teacher: nn.Module | None, distill: float, temperature: float, dev: torch.device) -> Any:
    """The distillation term ``kd(x, student_logits)`` from the frozen ``teacher`` on
    ``dev`` (None without distillation)."""
    if teacher is None:
        return None
    teacher = unwrap(teacher).to(dev).eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    if distill == 0:
        return None

    def kd(x: Any, out: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            soft = F.log_softmax(teacher(x).float() / temperature, dim=1)
        return F.kl_div(F.log_softmax(out.float() / temperature, dim=1), soft, log_target=True,
                        reduction="batchmean") * temperature**2

    return kd


def train_epochs(
    model: nn.Module,
    train_loader: Iterable[Any],
    eval_loader: Iterable[Any],
    *,
    epochs: int,
    optimizer: OptimizerConfig,
    on_epoch: Callable[[EpochEnd], Any] | None = None,
    make_pruner: MakePruner | None = None,
    device: str | torch.device | None = None,
    loss_fn: LossFn = F.cross_entropy,
    teacher: nn.Module | None = None,
    distill: float = 0.0,
    temperature: float = 4.0,
    resume: dict[str, Any] | None = None,
    bf16: bool = False,
    channels_last: bool = False,
    qat: Any = None,
) -> nn.Module:
    """Train ``model`` for ``epochs`` (pruning it if ``make_pruner``); hook after every epoch.

    Args:
        model: The model (a ``DistributedDataParallel`` under DDP).
        train_loader: Training ``(inputs, targets)`` batches; ``len`` (if defined) gives the
            steps the learning-rate schedule spans (and the pruner's ``total_steps``). A
            ``sampler`` with ``set_epoch`` is called with each epoch first.
        eval_loader: Validation batches: the ``val_*`` of each row.
        epochs: Training epochs (>= 1).
        optimizer: Optimizer and learning-rate schedule, set per step (``lr_at``).
        on_epoch: Called with an :class:`EpochEnd` after each epoch, on every rank.
        make_pruner: ``make_pruner(opt, total_steps)`` -> the :class:`pruners.Pruner` to step
            after every optimizer step (None: train only). The model it is built over is
            switched to training once if handed over in eval mode.
        device: Where to train; ``None`` keeps the model where it is.
        loss_fn: ``loss_fn(logits, targets)`` returning the batch mean.
        teacher, distill, temperature: Distillation (Hinton et al. 2015) from a frozen
            ``teacher``: the loss is ``(1 - distill) * loss_fn + distill * T^2 * KL``.
        resume: A ``state()`` an earlier run's hook received, on the model that run started
            from: training continues after that epoch, bit-identical to a run never
            interrupted (weights, pruner, optimizer, learning-rate position, data order, RNGs).
        bf16: The training forward and loss under bfloat16 autocast; evaluation in float32.
        channels_last: Train in the channels-last memory format (4-d inputs).
        qat: A :class:`pruners.quantize.QatPhase`: from its ``start`` epoch on, train its QAT
            graph of the model instead (the pruner, finalized the epoch before, no longer
            steps; a fresh optimizer continues the same learning-rate schedule; no bf16 or
            channels-last there).

    Returns:
        The trained model (the pruner's current wrapper when pruning; the QAT graph after QAT).
    """
    check_training(optimizer, epochs, teacher, distill, temperature)
    net = unwrap(model)
    if device is not None:
        net.to(device)
    dev = device_of(net)
    kd = _distillation(teacher, distill, temperature, dev)
    steps_per_epoch = len(train_loader) if hasattr(train_loader, "__len__") else None  # type: ignore[arg-type]
    total_steps = steps_per_epoch * epochs if steps_per_epoch is not None else None
    if channels_last:
        net.to(memory_format=torch.channels_last)
    opt = optimizer.build([p for p in net.parameters() if p.requires_grad])
    # With QAT, pruning ends (is finalized) the epoch before QAT starts.
    prune_epochs = epochs if qat is None else min(epochs, int(qat.start) - 1)
    if qat is not None and prune_epochs < 1:
        raise ValueError(f"QAT from epoch {qat.start} leaves no epoch to prune and fine-tune in before it")
    pruner = (make_pruner(opt, steps_per_epoch * prune_epochs if steps_per_epoch is not None else None)
              if make_pruner is not None else None)
    quant: list[nn.Module] = []  # [forward, graph] once QAT started

    def current() -> tuple[nn.Module, nn.Module]:  # (what to forward through, the module)
        if quant:
            return quant[0], quant[1]
        return (pruner.model, pruner.module) if pruner is not None else (model, net)

    def start_qat(state: dict[str, Any] | None = None) -> torch.optim.Optimizer:
        forward, module = current()
        graph = qat.build(module, state)
        kwargs = _dist.ddp_kwargs(forward) if isinstance(forward, nn.parallel.DistributedDataParallel) else None
        quant[:] = [_dist.wrap(graph, kwargs), graph]
        return optimizer.build([p for p in graph.parameters() if p.requires_grad])

    # A model handed over in eval mode is switched to training once; a training model
    # keeps every submodule's own flag (a BatchNorm the user froze stays frozen).
    if not net.training:
        net.train()
    step, first = 0, 1
    if resume is not None:
        if pruner is not None:
            pruner.load_state_dict(resume["pruner"])
            if channels_last:  # replayed removals made new tensors, as pruner.step() does
                pruner.module.to(memory_format=torch.channels_last)
        step, first = int(resume["step"]), int(resume["epoch"]) + 1
        if qat is not None and first > qat.start:  # resumed inside QAT: rebuild its graph
            if pruner is not None:
                pruner.finalize()
            opt = start_qat(resume["model"])
        else:
            current()[1].load_state_dict(resume["model"])
        opt.load_state_dict(resume["optimizer"])
        _set_rng_state(resume["rng"])
        if first > prune_epochs and pruner is not None:
            pruner.finalize()

    def state_after(epoch: int) -> Callable[[], dict[str, Any]]:
        # Taken lazily (only when the caller keeps a checkpoint), but at this epoch's end.
        # Copies throughout: the optimizer's and pruner's state dicts hold the live tensors,
        # which the next epoch would change under a caller keeping the state in memory.
        snapshot = {"epoch": epoch, "step": step, "rng": _rng_state()}
        return lambda: copy.deepcopy({
            **snapshot, **({"pruner": pruner.state_dict()} if pruner is not None else {}),
            "optimizer": opt.state_dict(),
            "model": {k: v.detach().cpu() for k, v in current()[1].state_dict().items()}})

    for epoch in range(first, epochs + 1):
        if qat is not None and epoch == qat.start:
            opt = start_qat()
        in_qat = bool(quant)
        sampler = getattr(train_loader, "sampler", None)
        if hasattr(sampler, "set_epoch"):
            sampler.set_epoch(epoch)  # DistributedSampler: a new shuffle every epoch
        loss_sum, batches = 0.0, 0
        for x, y in train_loader:
            x, y = move_to(x, dev), move_to(y, dev)
            if channels_last and not in_qat and isinstance(x, torch.Tensor) and x.dim() == 4:
                x = x.contiguous(memory_format=torch.channels_last)
            lr = optimizer.lr_at(step, total_steps)
            for group in opt.param_groups:
                group["lr"] = lr
            opt.zero_grad(set_to_none=True)
            pruning = pruner is not None and not in_qat
            with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=bf16 and not in_qat):
                out = current()[0](x)
                loss = loss_fn(out, y)
                if kd is not None:
                    loss = (1 - distill) * loss + distill * kd(x, out)
            penalty = pruner.penalty() if pruning else None
            if penalty is not None:
                loss = loss + penalty
            loss.backward()
            if pruning:
                pruner.sync_gradients()
            opt.step()
            if pruning and pruner.step() and channels_last:  # removed channels: new tensors
                pruner.module.to(memory_format=torch.channels_last)
            loss_sum += float(loss.detach())
            batches += 1
            step += 1
        if epoch == prune_epochs and pruner is not None:
            pruner.finalize()

        # Evaluate (one model: rank 0's BatchNorm statistics everywhere), then the hook.
        forward, module = current()
        _dist.broadcast_buffers(module)
        with qat.eval_mode(forward) if in_qat else contextlib.nullcontext():
            val_accuracy, val_loss = evaluate(forward, eval_loader, loss_fn, dev)
        loss_sum, batches_all = _dist.all_reduce_sum([loss_sum, float(batches)])
        row: dict[str, Any] = {
            "epoch": epoch,
            "val_accuracy": val_accuracy,
            "val_loss": val_loss,
            "train_loss": loss_sum / batches_all if batches_all else float("nan"),
        }
        if on_epoch is not None:
            on_epoch(EpochEnd(row, forward, module, pruner, state_after(epoch), in_qat))
    return current()[0]
