"""``finetune``: prune on a schedule while fine-tuning, and report metrics once per epoch.

The loop every trial runs: :func:`pruners.loop.train_epochs` (the one training loop, which
the dense baseline runs without a pruner) with a :class:`pruners.Pruner` stepped after every
optimizer step, and each epoch's model saved and measured::

    pruner = Pruner(model, spec, schedule, example_inputs, optimizer=opt, calibration=...)
    train_epochs(model, ..., make_pruner=...):          # steps, lr, bf16, DDP: pruners.loop
        for x, y in train_loader:
            loss = loss_fn(pruner.model(x), y) + pruner.penalty(); backward; opt.step()
            pruner.step()                               # prunes when the schedule says so
        (last epoch) pruner.finalize()                  # gates folded, hooks gone
        evaluate on eval_loader (the validation split), then per epoch here:
        save and measure the model, report(row), checkpoint(model, row, file, state)

Plain PyTorch: under ``torch.distributed`` it expects an initialised process group and a
``DistributedDataParallel`` model, and never imports Ray; the caller's ``report`` /
``checkpoint`` callables are the only link to a tuner.
"""

from __future__ import annotations

import contextlib
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
from pruners.io import save
from pruners.loop import EpochEnd, LossFn, check_training, evaluate, train_epochs
from pruners.measure import measure
from pruners.pruner import Pruner
from pruners.schedules import Schedule
from pruners.quantize import (QUANTIZE_MODES, QatPhase, QuantizeReport, calibration_inputs, load_onnx, quantize_int8,
                              save_onnx)
from pruners.spec import LR_SCHEDULES, OPTIMIZERS, OptimizerConfig, PruneSpec

__all__ = ["LR_SCHEDULES", "OPTIMIZERS", "OptimizerConfig", "PruneSpec", "evaluate", "finetune", "ship_int8"]

#: ``checkpoint(model, row, file, state)``: ``file`` is the model's saved file measured for
#: ``row`` (valid during the call; None on ranks other than 0), e.g. to keep the best one;
#: ``state()`` returns everything needed to continue after this epoch (``resume=``).
Checkpoint = Callable[[nn.Module, dict[str, Any], "str | None", Callable[[], dict[str, Any]]], Any]


def finetune(
    model: nn.Module,
    train_loader: Iterable[Any],
    eval_loader: Iterable[Any],
    *,
    spec: PruneSpec,
    schedule: Schedule,
    epochs: int,
    optimizer: OptimizerConfig,
    report: Callable[[dict[str, Any]], Any] | None = None,
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
    quantize: str = "none",
    quantize_calibration: int = 512,
    qat_epochs: int = 1,
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
        report: Optional, called once per epoch with the row: a dict holding the keys of
            design.md section 3 (``val_accuracy``, ``val_loss``, ``train_loss``, the pruning
            and cost metrics) plus ``step`` and ``units_pruned`` (and ``pruning_stopped``
            with ``accuracy_target``).
        example_inputs: One batch of inputs (e.g. ``x[:1]``) for tracing and measuring.
        device: Where to train; ``None`` keeps the model where it is.
        calibration: Where data-driven criteria draw their batches: default the training
            loader's *dataset*, sampled afresh (its iterator is never touched).
        calibration_batches: Batches per scoring.
        latency_batch_size: Batch size of the latency measurement.
        latency_repeats: Timed forward passes per latency measurement (median reported).
        latency_threads: CPU threads while timing (None: leave as is).
        loss_fn: ``loss_fn(logits, targets)`` returning the batch mean.
        checkpoint: Optional ``checkpoint(model, row, file, state)`` called every epoch
            (after ``report``) with the same row, the file measured for it (rank 0; None
            elsewhere) and ``state()``, which returns everything needed to continue after
            this epoch. A caller that reports and checkpoints together (a tuner's one
            report call carrying the checkpoint) passes only this.
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
        quantize: ``none`` (ship float32), ``int8`` (post-training static int8 after every
            epoch) or ``int8_qat`` (the last ``qat_epochs`` epochs train through fake
            quantization, then convert; the epochs before ship post-training int8). An int8
            epoch's file is the int8 ONNX file (``pruners.quantize``), and its row is that
            file's: ``val_accuracy`` / ``val_loss`` from its outputs on ONNX Runtime (the float
            model's as ``float_val_accuracy``), ``size_bytes`` its size, the latency and
            ``speedup`` timed on ONNX Runtime against the float ONNX file of the model handed
            in (one runtime, one thread count). FLOPs and parameters stay the float model's
            (quantization changes neither), ``int8_layers`` / ``float_layers`` count the
            weight ops that run on int8 weights and those left in float.
        quantize_calibration: Training examples the post-training int8 calibrates on (the
            same seeded draw from ``train_loader``'s dataset every epoch).
        qat_epochs: Epochs of quantization-aware training with ``int8_qat``; the schedule
            must finish pruning before them.

    Returns:
        The pruned, fine-tuned model in eval mode (a ``DistributedDataParallel`` again if
        one was given), gates folded. Unstructured masks stay in place.

    Raises:
        ValueError: Bad arguments, a criterion / schedule / granularity mismatch, or a
            schedule that does not reach its target within ``epochs``.
    """
    check_training(optimizer, epochs, teacher, distill, temperature, calibration_batches=calibration_batches,
                   latency_batch_size=latency_batch_size, latency_repeats=latency_repeats,
                   quantize_calibration=quantize_calibration, qat_epochs=qat_epochs)
    if quantize not in QUANTIZE_MODES:
        raise ValueError(f"quantize must be one of {', '.join(QUANTIZE_MODES)}, got {quantize!r}")
    if quantize == "int8_qat" and qat_epochs >= epochs:
        raise ValueError(f"int8_qat needs more epochs ({epochs}) than qat_epochs ({qat_epochs}): "
                         "pruning and fine-tuning come first")
    net = unwrap(model)
    if device is not None:
        net.to(device)
    dev = device_of(net)
    example = move_to(example_inputs, dev)
    main_rank = _dist.rank() == 0

    shipper = _Int8Shipper(quantize, train_loader, quantize_calibration, seed, example, artifact_metadata,
                           latency_repeats, latency_batch_size, latency_threads, loss_fn, eval_loader)

    def make_pruner(opt: torch.optim.Optimizer, total_steps: int | None) -> Pruner:
        return Pruner(
            model, spec, schedule, example, optimizer=opt,
            calibration=train_loader if calibration is None else calibration,
            calibration_batches=calibration_batches, total_steps=total_steps,
            accuracy_target=accuracy_target, seed=seed,
            evaluate=lambda m: evaluate(m, eval_loader, loss_fn, dev)[0],
        )

    with tempfile.TemporaryDirectory(prefix="prunefront-finetune-") as tmp:
        # The model as handed in: the reference every epoch's latency is timed against.
        reference = os.path.join(tmp, "reference.pt2")
        if main_rank:
            save(net, reference, example)
        shipper.start(net, tmp, main_rank)
        convert_attention(net)  # the optimizer must see the head-prunable attention's parameters

        def on_epoch(end: EpochEnd) -> None:
            if shipper.on:
                row, model_out, artifact = shipper.epoch(end, main_rank)
                if report is not None:
                    report(row)
                if checkpoint is not None:
                    checkpoint(model_out, row, artifact if main_rank else None, end.state)
                if main_rank:
                    os.unlink(artifact)
                return
            # Measure what would ship: the file saved on rank 0, loaded back and timed.
            artifact = os.path.join(tmp, f"epoch-{end.row['epoch']}.pt2")
            if main_rank:
                save(end.module, artifact, example, metadata=artifact_metadata)
            metrics = measure(
                end.module, example, artifact=artifact if main_rank else None, files=main_rank,
                reference=reference if main_rank else None, latency_repeats=latency_repeats,
                batch_size=latency_batch_size, threads=latency_threads,
            )
            row = {**end.row, **metrics.to_dict(), **end.pruner.stats()}  # type: ignore[union-attr]
            if report is not None:
                report(row)
            if checkpoint is not None:
                checkpoint(end.model, row, artifact if main_rank else None, end.state)
            if main_rank:
                os.unlink(artifact)

        return train_epochs(
            model, train_loader, eval_loader, epochs=epochs, optimizer=optimizer, on_epoch=on_epoch,
            make_pruner=make_pruner, loss_fn=loss_fn, teacher=teacher, distill=distill,
            temperature=temperature, resume=resume, bf16=bf16, channels_last=channels_last,
            qat=QatPhase(epochs - qat_epochs + 1, example) if quantize == "int8_qat" else None,
        )


class _Int8Shipper:
    """Each epoch of an int8 trial: quantize, write the int8 ONNX file (rank 0), hand its
    bytes to every rank, evaluate that file on validation, measure it (see ``finetune``)."""

    def __init__(self, mode: str, train_loader: Any, calibration: int, seed: int, example: Any,
                 metadata: dict[str, Any] | None, repeats: int, batch_size: int, threads: int | None,
                 loss_fn: LossFn, eval_loader: Any) -> None:
        self.on = mode != "none"
        self.mode, self.train_loader, self.calibration, self.seed = mode, train_loader, calibration, seed
        self.example, self.metadata, self.loss_fn, self.eval_loader = example, metadata, loss_fn, eval_loader
        self.timing = {"latency_repeats": repeats, "batch_size": batch_size, "threads": threads}
        self.tmp = self.reference = ""

    def start(self, net: nn.Module, tmp: str, main_rank: bool) -> None:
        """The float ONNX file of the model as handed in: what int8 latencies are timed against."""
        if not self.on:
            return
        self.tmp, self.reference = tmp, os.path.join(tmp, "reference.onnx")
        if main_rank:
            save_onnx(net, self.reference, self.example)

    def epoch(self, end: EpochEnd, main_rank: bool) -> tuple[dict[str, Any], Any, str]:
        artifact = os.path.join(self.tmp, f"epoch-{end.row['epoch']}.onnx")
        float_module = end.pruner.module if end.qat and end.pruner is not None else end.module
        info = {"quantize": self.mode if end.qat else "int8", **(self.metadata or {})}

        def write() -> QuantizeReport:
            if end.qat:  # convert a copy: the QAT graph trains on
                return quantize_int8(float_module, artifact, self.example, prepared=copy.deepcopy(end.module),
                                     metadata=info)
            inputs = calibration_inputs(self.train_loader, self.calibration, seed=self.seed)
            return quantize_int8(float_module, artifact, self.example, inputs,
                                 calibration_examples=self.calibration, metadata=info)

        row, program = ship_int8(float_module, artifact, self.example, write if main_rank else None,
                                 self.eval_loader, end.row, loss_fn=self.loss_fn,
                                 reference=self.reference if main_rank else None, **self.timing)
        return {**row, **(end.pruner.stats() if end.pruner is not None else {})}, program, artifact


def ship_int8(
    module: nn.Module,
    path: str,
    example_inputs: Any,
    write: Callable[[], QuantizeReport] | None,
    eval_loader: Iterable[Any],
    float_row: dict[str, Any],
    *,
    loss_fn: LossFn = F.cross_entropy,
    reference: str | None = None,
    latency_repeats: int = 20,
    batch_size: int = 1,
    threads: int | None = 1,
) -> tuple[dict[str, Any], Any]:
    """The row of an int8 file, and the file loaded (an ONNX Runtime program).

    The row is ``float_row`` (the float model's, at the same point) with the file's figures
    over it; the float model's validation accuracy and loss stay as ``float_val_accuracy``
    and ``float_val_loss``.

    ``write()`` (rank 0 only; None on the others) quantizes and writes the ONNX file at
    ``path``; its bytes go to every rank, which evaluates the file on its shard of
    ``eval_loader`` (summed over ranks): ``val_accuracy`` / ``val_loss`` are the file's.
    Rank 0 measures it: FLOPs and parameters of the float ``module`` (quantization changes
    neither), ``size_bytes`` the file's, latency on ONNX Runtime against ``reference`` (the
    float ONNX file of the dense model) on ``threads`` threads. ``int8_layers`` /
    ``float_layers`` count the weight ops on int8 weights and those left in float.
    """
    main_rank = write is not None
    done = write() if main_rank else None
    layers = [len(done.quantized), len(done.left_float)] if done is not None else [0, 0]
    with open(path, "rb") if main_rank else contextlib.nullcontext() as f:
        blob = _dist.broadcast_bytes(f.read() if f is not None else None)
    local = path
    if not main_rank:
        fd, local = tempfile.mkstemp(suffix=".onnx")
        with os.fdopen(fd, "wb") as out:
            out.write(blob)
    try:
        program = load_onnx(local, threads=max(1, torch.get_num_threads()))
    finally:
        if not main_rank:
            os.unlink(local)
    val_accuracy, val_loss = evaluate(program, eval_loader, loss_fn, torch.device("cpu"))
    layers = [int(v) for v in _dist.all_reduce_sum([float(v) for v in layers])]  # rank 0's counts
    metrics = measure(module, example_inputs, artifact=path if main_rank else None, files=main_rank,
                      reference=reference, latency_repeats=latency_repeats, batch_size=batch_size,
                      threads=threads)
    return {**float_row, "float_val_accuracy": float_row["val_accuracy"], "float_val_loss": float_row["val_loss"],
            "val_accuracy": val_accuracy, "val_loss": val_loss, **metrics.to_dict(),
            "int8_layers": layers[0], "float_layers": layers[1]}, program
