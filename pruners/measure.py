"""Measure a (pruned) model: FLOPs, sparsity-aware FLOPs, parameters, serialized size, latency.

Every trial reports these numbers once per epoch (design.md section 3), so they must be cheap
and must mean the same thing for dense, unstructured (masked) and structured (smaller) models:

* ``flops`` are **FLOPs = 2 x MACs**, as counted by ``torch.utils.flop_counter.FlopCounterMode``
  for one forward pass of ``example_inputs`` in eval mode. Two gaps of the counter are closed
  while counting: ``nn.MultiheadAttention``'s eval-mode fast path (one fused op the counter
  has no formula for, so a ViT's attention blocks counted nothing) is switched off, and the
  CPU kernel of ``scaled_dot_product_attention`` gets torch's own SDPA formula.
* ``flops_sparse`` scales every counted operation that reads a layer's weight by the fraction
  of that (effective, i.e. masked) weight which is nonzero, since a sparse kernel skips the
  zeros; operations reading no weight (attention score matmuls, ...) count in full.
* ``size_bytes`` is the size of the file ``pruners.save`` writes for the model (masks folded,
  entries compressed): what a user ships. ``measure`` writes that file itself unless it is
  handed one (``artifact=``).
* ``latency_ms`` is the median time of one forward pass of *that file* loaded back
  (``pruners.load``: masks folded, no hooks, what a user deploys; an ``.onnx`` file, the
  int8 format of ``pruners.quantize``, on ONNX Runtime's CPU provider), on a fixed number of
  threads, after warm-up; ``latency_iqr_ms`` is the spread (interquartile range). With a
  ``reference`` (the dense model's file) both are timed alternately, so ``speedup`` =
  the median over back-to-back pairs of dense time / model time, compares them under the
  same load.
"""

from __future__ import annotations

import copy
import os
import statistics
import tempfile
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode, sdpa_flop_count
from torch.utils._pytree import tree_flatten

from pruners._devices import as_tuple, device_of, unwrap

__all__ = ["Latency", "Metrics", "LayerMetrics", "count_flops", "measure", "paired_speedup", "runtime_of", "time_forward", "unwrap", "effective_state_dict"]


@dataclass(frozen=True)
class LayerMetrics:
    """Per-layer detail: FLOPs attributed to the operations that read this layer's weights."""

    name: str
    flops: int
    flops_sparse: float
    params: int
    params_nonzero: int

    @property
    def density(self) -> float:
        return self.params_nonzero / self.params if self.params else 1.0


@dataclass(frozen=True)
class Metrics:
    """What ``measure`` returns. ``to_dict`` gives the metric keys of design.md section 3.

    Attributes:
        flops: Dense FLOPs (2 x MACs) of one forward pass of ``example_inputs``.
        flops_sparse: Sparsity-aware FLOPs (weight-reading ops scaled by weight density).
        params: Total parameters of the effective model (a pruned ``weight_orig`` counts once,
            masks are not parameters).
        params_nonzero: Nonzero entries among those parameters.
        size_bytes: Bytes of the model's saved file (``pruners.save``).
        latency_ms: Median wall time of one forward pass of the saved file, loaded back, at
            ``batch_size`` on ``threads`` threads; None when not timed.
        latency_iqr_ms: Interquartile range of those times.
        dense_latency_ms: Median time of the reference (dense) file, timed alternately with
            this one; None without a reference.
        speedup: Median over back-to-back pairs of (dense time / this time); None without a
            reference. Paired, so load that comes and goes cancels out.
        batch_size: Batch size the latency was measured at.
        threads: Intra-op threads the latency was measured with (CPU).
        per_layer: One ``LayerMetrics`` per module whose weights some counted op reads.
    """

    flops: int
    flops_sparse: float
    params: int
    params_nonzero: int
    size_bytes: int | None
    latency_ms: float | None
    latency_iqr_ms: float | None = None
    dense_latency_ms: float | None = None
    speedup: float | None = None
    batch_size: int = 1
    threads: int = 1
    per_layer: tuple[LayerMetrics, ...] = field(default_factory=tuple)
    #: What timed ``latency_ms``: ``torch`` (a ``pruners.save`` file) or ``onnxruntime``
    #: (an ONNX file, e.g. int8); None when not timed.
    runtime: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """The flat metric keys of design.md section 3 (no per-layer detail)."""
        return {
            "flops": self.flops,
            "flops_sparse": self.flops_sparse,
            "params": self.params,
            "params_nonzero": self.params_nonzero,
            "size_bytes": self.size_bytes,
            "latency_ms": self.latency_ms,
            "latency_iqr_ms": self.latency_iqr_ms,
            "dense_latency_ms": self.dense_latency_ms,
            "speedup": self.speedup,
            "latency_runtime": self.runtime,
            "latency_threads": self.threads if self.runtime is not None else None,
        }

    def layers_dict(self) -> list[dict[str, Any]]:
        """Per-layer detail as plain dicts (for JSON)."""
        return [{**asdict(layer), "density": layer.density} for layer in self.per_layer]


def _effective_tensors(module: nn.Module) -> dict[str, tuple[nn.Parameter, torch.Tensor]]:
    """The module's own parameters as the forward pass sees them, by local name.

    ``torch.nn.utils.prune`` replaces ``weight`` by a parameter ``weight_orig`` and a buffer
    ``weight_mask``; the effective weight is their product, whatever attribute state the last
    forward pre-hook left behind. Values are (underlying parameter, effective tensor).
    """
    out: dict[str, tuple[nn.Parameter, torch.Tensor]] = {}
    buffers = dict(module.named_buffers(recurse=False))
    for name, p in module.named_parameters(recurse=False):
        mask = buffers.get(f"{name[:-5]}_mask") if name.endswith("_orig") else None
        if mask is not None:
            out[name[:-5]] = (p, p.detach() * mask)
        else:
            out[name] = (p, p.detach())
    return out


def effective_state_dict(model: nn.Module) -> OrderedDict[str, torch.Tensor]:
    """``state_dict`` of the effective model: ``w_orig * w_mask`` stored as ``w``, no masks."""
    model = unwrap(model)
    sd = model.state_dict()
    out: OrderedDict[str, torch.Tensor] = OrderedDict()
    # Keep the module-version metadata load_state_dict relies on: it is part of what ships.
    out._metadata = copy.copy(getattr(sd, "_metadata", OrderedDict()))  # type: ignore[attr-defined]
    for key, value in sd.items():
        if key.endswith("_mask") and f"{key[:-5]}_orig" in sd:
            continue
        if key.endswith("_orig") and f"{key[:-5]}_mask" in sd:
            out[key[:-5]] = value.detach() * sd[f"{key[:-5]}_mask"]
        else:
            out[key] = value.detach() if isinstance(value, torch.Tensor) else value
    return out


def _sdpa_flops(query_shape: Any, key_shape: Any, value_shape: Any, *_args: Any, out_shape: Any = None,
                **_kwargs: Any) -> int:
    return sdpa_flop_count(query_shape, key_shape, value_shape)


#: Ops ``FlopCounterMode`` has no formula for, counted with torch's own formulas (torch
#: registers SDPA's CUDA kernels only; on CPU ``scaled_dot_product_attention`` runs this one).
_MISSING_FORMULAS = {
    getattr(torch.ops.aten, name): _sdpa_flops
    for name in ("_scaled_dot_product_flash_attention_for_cpu",)
    if hasattr(torch.ops.aten, name)
}


class _WeightAttributingFlopCounter(FlopCounterMode):
    """``FlopCounterMode`` that also remembers which layer's weight each counted op read.

    A forward pre-hook (registered after any pruning hook, so it sees the masked weight)
    records the storage of every layer's effective weight tensors; a counted op whose operand
    shares one of those storages (``linear`` reaches ``addmm`` through a transposed view) is
    attributed to that layer.
    """

    def __init__(self, owners: dict[int, tuple[str, torch.Tensor]]) -> None:
        super().__init__(display=False, custom_mapping=_MISSING_FORMULAS)
        self.owners = owners  # storage data_ptr -> (layer name, tensor), see _count_flops
        self.by_layer: dict[str, int] = {}
        self.unattributed = 0

    def _count_flops(self, func_packet, out, args, kwargs):  # noqa: ANN001 - torch's signature
        global_counts = self.flop_counts["Global"]
        before = global_counts.get(func_packet, 0)
        result = super()._count_flops(func_packet, out, args, kwargs)
        delta = self.flop_counts["Global"].get(func_packet, 0) - before
        if delta:
            owner = None
            for a in tree_flatten((args, kwargs))[0]:
                if isinstance(a, torch.Tensor) and a.device.type != "meta":
                    hit = self.owners.get(a.untyped_storage().data_ptr())
                    if hit is not None:
                        owner = hit[0]
                        break
            if owner is None:
                self.unattributed += delta
            else:
                self.by_layer[owner] = self.by_layer.get(owner, 0) + delta
        return result


def _count_flops(
    model: nn.Module, args: tuple[Any, ...]
) -> tuple[int, dict[str, int], int]:
    """Dense FLOPs of one forward: total, per weight-owning layer, and ops reading no weight."""
    # storage data_ptr -> (layer name, tensor). Holding the tensor keeps its memory from being
    # reused by an activation, which would otherwise be mistaken for the weight.
    owners: dict[int, tuple[str, torch.Tensor]] = {}

    def record(name: str, module: nn.Module) -> None:
        for local in _effective_tensors(module):
            t = getattr(module, local, None)
            if isinstance(t, torch.Tensor) and t.numel() and t.device.type != "meta":
                owners[t.untyped_storage().data_ptr()] = (name, t)

    def make_hook(name: str):
        def hook(module: nn.Module, _inputs: Any) -> None:
            # Runs after prune's pre-hook: ``weight`` is now the freshly masked tensor, the
            # one whose storage the counted ops will see.
            record(name, module)

        return hook

    layers = [(n, m) for n, m in model.named_modules() if _effective_tensors(m)]
    # Record up front too: a parent may read a child's weight without calling the child
    # (nn.MultiheadAttention reads out_proj.weight), so no pre-hook of the child runs.
    for name, m in layers:
        record(name, m)
    handles = [m.register_forward_pre_hook(make_hook(name)) for name, m in layers]
    # nn.MultiheadAttention's eval-mode fast path is one fused op with no FLOP formula; the
    # regular path computes the same thing through ops the counter knows.
    fast_path = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        counter = _WeightAttributingFlopCounter(owners)
        with torch.no_grad(), counter:
            model(*args)
    finally:
        torch.backends.mha.set_fastpath_enabled(fast_path)
        for h in handles:
            h.remove()
    return counter.get_total_flops(), counter.by_layer, counter.unattributed


def _count_flops_eval(model: nn.Module, args: tuple[Any, ...]) -> tuple[int, dict[str, int], int]:
    """``_count_flops`` in eval mode; every module's training flag is restored after."""
    modes = {m: m.training for m in model.modules()}
    try:
        model.eval()
    except NotImplementedError:  # torch.export's module() refuses eval(); it is eval already
        pass
    try:
        return _count_flops(model, args)
    finally:
        for m, training in modes.items():
            m.training = training


def count_flops(model: nn.Module, example_inputs: Any) -> int:
    """FLOPs (2 x MACs) of one eval-mode forward pass of ``example_inputs``, at their batch
    size: the ``flops`` column of :func:`measure` without its file and latency. Attention is
    counted whole (see the module docstring); masks are not (that is ``flops_sparse``).

    >>> count_flops(nn.Linear(8, 4), torch.randn(1, 8))
    64
    """
    model = unwrap(model)
    return _count_flops_eval(model, _to(as_tuple(example_inputs), device_of(model)))[0]


def _batch_of(args: tuple[Any, ...], batch_size: int) -> tuple[Any, ...]:
    """Inputs of ``batch_size`` samples made by repeating the first example."""

    def grow(a: Any) -> Any:
        if isinstance(a, torch.Tensor) and a.dim() > 0:
            first = a[:1]
            return first.expand(batch_size, *first.shape[1:]).contiguous()
        return a

    return tuple(grow(a) for a in args)


def _to(args: tuple[Any, ...], device: torch.device) -> tuple[Any, ...]:
    return tuple(a.to(device) if isinstance(a, torch.Tensor) else a for a in args)


@dataclass(frozen=True)
class Latency:
    """Timings of one model: median and interquartile range of a forward pass, in ms."""

    median_ms: float
    iqr_ms: float
    repeats: int
    batch_size: int
    threads: int
    #: Every timed pass, in order (passes of models timed together alternate).
    samples: tuple[float, ...] = ()


def _sync(device: torch.device) -> Callable[[], None]:
    if device.type == "cuda":
        return lambda: torch.cuda.synchronize(device)
    return lambda: None


def time_forward(
    models: Mapping[str, Callable[..., Any]],
    args: tuple[Any, ...],
    *,
    repeats: int = 20,
    warmup: int = 3,
    threads: int | None = 1,
) -> dict[str, Latency]:
    """Time one forward pass of each model, alternately (round robin), on ``args``.

    Alternating means load drift on a shared machine hits every model alike, so ratios
    between them hold even when absolute times move. CPU work runs on ``threads``
    intra-op threads (restored after; None keeps the current setting); on CUDA each pass is
    bracketed by ``synchronize``.
    """
    if repeats < 1 or warmup < 0:
        raise ValueError(f"need repeats >= 1 and warmup >= 0, got {repeats}, {warmup}")
    device = next((a.device for a in args if isinstance(a, torch.Tensor)), torch.device("cpu"))
    sync = _sync(device)
    before = torch.get_num_threads()
    if threads is not None and device.type == "cpu":
        torch.set_num_threads(int(threads))
    used = torch.get_num_threads()
    times: dict[str, list[float]] = {k: [] for k in models}
    try:
        with torch.inference_mode():
            for i in range(warmup + repeats):
                for name, model in models.items():
                    sync()
                    t0 = time.perf_counter()
                    model(*args)
                    sync()
                    if i >= warmup:
                        times[name].append((time.perf_counter() - t0) * 1e3)
    finally:
        torch.set_num_threads(before)
    out = {}
    for name, ts in times.items():
        q = statistics.quantiles(ts, n=4, method="inclusive") if len(ts) > 1 else [ts[0]] * 3
        out[name] = Latency(statistics.median(ts), q[2] - q[0], repeats, int(_batch(args)), used, tuple(ts))
    return out


def paired_speedup(reference: Latency, model: Latency) -> float:
    """Median of ``reference / model`` over passes timed back to back: load drift on a
    shared machine hits both sides of each pair alike, so it cancels in the ratio."""
    ratios = [r / m for r, m in zip(reference.samples, model.samples) if m > 0]
    return statistics.median(ratios) if ratios else float("nan")


def _batch(args: tuple[Any, ...]) -> int:
    first = next((a for a in args if isinstance(a, torch.Tensor) and a.dim() > 0), None)
    return 1 if first is None else int(first.shape[0])


def runtime_of(path: str | os.PathLike[str]) -> str:
    """The runtime a saved file is timed on: ``onnxruntime`` for an ONNX file (the int8
    models ``pruners.quantize`` writes), ``torch`` for a ``pruners.save`` file."""
    return "onnxruntime" if os.fspath(path).endswith(".onnx") else "torch"


def _loaded(model_or_path: Any, device: torch.device, threads: int | None = 1) -> Any:
    if isinstance(model_or_path, (str, os.PathLike)):
        if runtime_of(model_or_path) == "onnxruntime":  # ONNX Runtime's CPU provider
            from pruners.quantize import load_onnx

            return load_onnx(model_or_path, threads=threads or torch.get_num_threads())
        from pruners.io import load

        model_or_path = load(model_or_path)
    return model_or_path.to(device) if device.type != "cpu" and hasattr(model_or_path, "to") else model_or_path


def measure(
    model: nn.Module,
    example_inputs: torch.Tensor | Sequence[torch.Tensor],
    *,
    artifact: str | os.PathLike[str] | None = None,
    reference: Any = None,
    latency_repeats: int = 20,
    batch_size: int = 1,
    warmup: int = 3,
    threads: int | None = 1,
    time_latency: bool = True,
    files: bool = True,
) -> Metrics:
    """Measure FLOPs and parameters of ``model``, and size and latency of its saved file.

    FLOPs and parameters are counted on ``model`` (eval mode, flags restored after; a
    ``DistributedDataParallel`` wrapper is looked through; the model is not modified).
    Size and latency are the artifact's: ``artifact`` (a file ``pruners.save`` wrote for
    this model) or, when None, a file written here to a temporary directory. The latency is
    that file loaded back and timed on the model's device.

    Args:
        model: Dense, masked (``torch.nn.utils.prune``) or structurally pruned model.
        example_inputs: A tensor (or tuple of positional tensors) whose first dimension is the
            batch. FLOPs are counted for its first example only (batch of one).
        artifact: The model's saved file, if already written.
        reference: The dense model's saved file (path) or loaded module, timed alternately
            with this one (``dense_latency_ms``, ``speedup``).
        latency_repeats: Timed forward passes; the median is reported.
        batch_size: Batch size of the latency measurement (the first example repeated).
        warmup: Untimed forward passes before timing (allocator, lazy init, caches).
        threads: CPU intra-op threads while timing (None: leave as is).
        time_latency: False skips the latency (size and FLOPs only).
        files: False skips the file altogether: FLOPs and parameters only (size and
            latency None), e.g. on DDP ranks whose figures nobody reads.

    Returns:
        ``Metrics``; ``flops`` are FLOPs = 2 x MACs as counted by ``FlopCounterMode``, and
        ``flops_sparse`` scales each weight-reading op by its weight's nonzero fraction.

    Raises:
        ValueError: If ``latency_repeats`` or ``batch_size`` is below 1 or ``warmup`` below 0.
    """
    if latency_repeats < 1:
        raise ValueError(f"latency_repeats must be >= 1, got {latency_repeats}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if warmup < 0:
        raise ValueError(f"warmup must be >= 0, got {warmup}")
    model = unwrap(model)
    device = device_of(model)
    args = _to(as_tuple(example_inputs), device)

    flops, by_layer, _ = _count_flops_eval(model, _batch_of(args, 1))

    per_layer: list[LayerMetrics] = []
    params = params_nonzero = 0
    flops_sparse = float(flops)
    seen: set[int] = set()  # shared (tied) parameters count once, like model.parameters()
    for name, module in model.named_modules():
        tensors = _effective_tensors(module)
        if not tensors:
            continue
        own = [t for p, t in tensors.values() if id(p) not in seen]
        seen.update(id(p) for p, _ in tensors.values())
        n = sum(t.numel() for t in own)
        nnz = sum(int(torch.count_nonzero(t)) for t in own)
        params += n
        params_nonzero += nnz
        layer_flops = by_layer.get(name, 0)
        if layer_flops:
            # Only the weight tensors (>= 2-D) gate the MACs; biases add no multiplications.
            w = [t for _, t in tensors.values() if t.dim() >= 2]
            w = w or [t for _, t in tensors.values()]
            numel = sum(t.numel() for t in w)
            density = sum(int(torch.count_nonzero(t)) for t in w) / numel if numel else 1.0
            layer_sparse = layer_flops * density
            flops_sparse -= layer_flops - layer_sparse
            per_layer.append(LayerMetrics(name, layer_flops, layer_sparse, n, nnz))

    size = lat = dense = None
    with tempfile.TemporaryDirectory(prefix="prunefront-measure-") as tmp:
        path = Path(artifact) if artifact is not None else Path(tmp, "measured.pt2")
        if not files:
            time_latency = False
        elif artifact is None:
            from pruners.io import save

            save(model, path, args)
        if files:
            size = os.path.getsize(path)
        if time_latency:
            batch = _batch_of(args, batch_size)
            models = {"model": _loaded(path, device, threads)}
            if reference is not None:
                models["dense"] = _loaded(reference, device, threads)
            timed = time_forward(models, batch, repeats=latency_repeats, warmup=warmup, threads=threads)
            lat, dense = timed["model"], timed.get("dense")

    return Metrics(
        flops=int(flops),
        flops_sparse=max(flops_sparse, 0.0),
        params=params,
        params_nonzero=params_nonzero,
        size_bytes=None if size is None else int(size),
        latency_ms=None if lat is None else float(lat.median_ms),
        latency_iqr_ms=None if lat is None else float(lat.iqr_ms),
        dense_latency_ms=None if dense is None else float(dense.median_ms),
        speedup=None if dense is None or lat is None else float(paired_speedup(dense, lat)),
        batch_size=batch_size,
        threads=lat.threads if lat is not None else (threads or torch.get_num_threads()),
        per_layer=tuple(per_layer),
        runtime=None if lat is None else runtime_of(path),
    )
