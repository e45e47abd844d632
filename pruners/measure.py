"""Measure a (pruned) model: FLOPs, sparsity-aware FLOPs, parameters, serialized size, latency.

Every trial reports these numbers once per epoch (design.md section 3), so they must be cheap
and must mean the same thing for dense, unstructured (masked) and structured (smaller) models:

* ``flops`` are **FLOPs = 2 x MACs**, exactly as counted by
  ``torch.utils.flop_counter.FlopCounterMode`` for one forward pass of ``example_inputs``.
* ``flops_sparse`` scales every counted operation that reads a layer's weight by the fraction
  of that (effective, i.e. masked) weight which is nonzero, since a sparse kernel skips the
  zeros; operations reading no weight (attention score matmuls, ...) count in full.
* ``size_bytes`` is the length of what we would actually ship: ``torch.save`` of the effective
  state dict, where each weight tensor is stored in CSR form (values + int32 row pointers +
  int16/int32 column indices) when that is smaller than its dense form. A dense or structurally
  pruned model therefore costs exactly its dense state dict.
"""

from __future__ import annotations

import copy
import io
import statistics
import time
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode
from torch.utils._pytree import tree_flatten

from pruners._devices import device_of

__all__ = ["Metrics", "LayerMetrics", "measure", "unwrap", "effective_state_dict", "serialized_size"]

# Column indices of a CSR matrix fit in int16 when a row is shorter than this.
_INT16_LIMIT = 2**15


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
        size_bytes: Bytes of the serialized effective state dict (sparse tensors as CSR when
            smaller).
        latency_ms: Median wall time of one forward pass at ``batch_size``.
        batch_size: Batch size the latency was measured at.
        per_layer: One ``LayerMetrics`` per module whose weights some counted op reads.
    """

    flops: int
    flops_sparse: float
    params: int
    params_nonzero: int
    size_bytes: int
    latency_ms: float
    batch_size: int = 1
    per_layer: tuple[LayerMetrics, ...] = field(default_factory=tuple)

    def to_dict(self) -> dict[str, Any]:
        """The flat metric keys of design.md section 3 (no per-layer detail)."""
        return {
            "flops": self.flops,
            "flops_sparse": self.flops_sparse,
            "params": self.params,
            "params_nonzero": self.params_nonzero,
            "size_bytes": self.size_bytes,
            "latency_ms": self.latency_ms,
        }

    def layers_dict(self) -> list[dict[str, Any]]:
        """Per-layer detail as plain dicts (for JSON)."""
        return [{**asdict(layer), "density": layer.density} for layer in self.per_layer]


def unwrap(model: nn.Module) -> nn.Module:
    """The module inside ``DistributedDataParallel`` / ``DataParallel`` wrappers."""
    while isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
        model = model.module
    return model


def as_tuple(example_inputs: Any) -> tuple[Any, ...]:
    """Positional arguments for ``model(*args)``: a lone tensor becomes a 1-tuple."""
    if isinstance(example_inputs, tuple):
        return example_inputs
    if isinstance(example_inputs, list):
        return tuple(example_inputs)
    return (example_inputs,)


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


def _csr_encoding(t: torch.Tensor) -> dict[str, Any]:
    """CSR of ``t`` viewed as (rows = dim 0, cols = the rest), with the narrowest index type."""
    mat = t.reshape(t.shape[0], -1).cpu()
    rows, cols = mat.shape
    nz_rows, nz_cols = mat.nonzero(as_tuple=True)
    counts = torch.bincount(nz_rows, minlength=rows)
    crow = torch.zeros(rows + 1, dtype=torch.int32)
    crow[1:] = torch.cumsum(counts, 0).to(torch.int32)
    col_dtype = torch.int16 if cols < _INT16_LIMIT else torch.int32
    return {
        "shape": tuple(t.shape),
        "crow_indices": crow,
        "col_indices": nz_cols.to(col_dtype),
        "values": mat[nz_rows, nz_cols].clone(),
    }


def _csr_nbytes(t: torch.Tensor, nnz: int) -> int:
    rows = t.shape[0]
    cols = t.numel() // max(rows, 1)
    col_bytes = 2 if cols < _INT16_LIMIT else 4
    return nnz * (t.element_size() + col_bytes) + (rows + 1) * 4


def serialized_size(model: nn.Module) -> int:
    """Bytes of ``torch.save`` of the effective state dict, sparse weights stored as CSR.

    Each floating tensor with at least two dimensions is written in CSR form when that is
    smaller than its dense bytes (a weight well below ~60 % density at float32); everything
    else is written dense. A model without zeros costs exactly its dense state dict.
    """
    sd = effective_state_dict(model)
    encoded: OrderedDict[str, Any] = OrderedDict()
    encoded._metadata = sd._metadata  # type: ignore[attr-defined]
    for key, t in sd.items():
        if isinstance(t, torch.Tensor) and t.is_floating_point() and t.dim() >= 2 and t.numel():
            nnz = int(torch.count_nonzero(t))
            if _csr_nbytes(t, nnz) < t.numel() * t.element_size():
                encoded[key] = _csr_encoding(t)
                continue
        encoded[key] = t.cpu() if isinstance(t, torch.Tensor) else t
    buf = io.BytesIO()
    torch.save(encoded, buf)
    return buf.getbuffer().nbytes


class _WeightAttributingFlopCounter(FlopCounterMode):
    """``FlopCounterMode`` that also remembers which layer's weight each counted op read.

    A forward pre-hook (registered after any pruning hook, so it sees the masked weight)
    records the storage of every layer's effective weight tensors; a counted op whose operand
    shares one of those storages (``linear`` reaches ``addmm`` through a transposed view) is
    attributed to that layer.
    """

    def __init__(self, owners: dict[int, tuple[str, torch.Tensor]]) -> None:
        super().__init__(display=False)
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
    try:
        counter = _WeightAttributingFlopCounter(owners)
        with torch.no_grad(), counter:
            model(*args)
    finally:
        for h in handles:
            h.remove()
    return counter.get_total_flops(), counter.by_layer, counter.unattributed


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


def _latency_ms(model: nn.Module, args: tuple[Any, ...], repeats: int, warmup: int) -> float:
    device = device_of(model)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    times: list[float] = []
    with torch.inference_mode():
        for i in range(warmup + repeats):
            sync()
            t0 = time.perf_counter()
            model(*args)
            sync()
            if i >= warmup:
                times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def measure(
    model: nn.Module,
    example_inputs: torch.Tensor | Sequence[torch.Tensor],
    *,
    latency_repeats: int = 20,
    batch_size: int = 1,
    warmup: int = 3,
) -> Metrics:
    """Measure FLOPs, parameters, serialized size and latency of ``model``.

    The model is measured in eval mode (its per-module train/eval flags are restored after)
    on the device its parameters live on; a ``DistributedDataParallel`` wrapper is looked
    through. The model is not modified.

    Args:
        model: Dense, masked (``torch.nn.utils.prune``) or structurally pruned model.
        example_inputs: A tensor (or tuple of positional tensors) whose first dimension is the
            batch. FLOPs are counted for its first example only (batch of one).
        latency_repeats: Timed forward passes; the median is reported.
        batch_size: Batch size of the latency measurement (the first example repeated).
        warmup: Untimed forward passes before timing (allocator, lazy init, caches).

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

    modes = {m: m.training for m in model.modules()}
    try:
        model.eval()
    except NotImplementedError:  # torch.export's module() refuses eval(); it is eval already
        pass
    try:
        flops, by_layer, _ = _count_flops(model, _batch_of(args, 1))
        latency = _latency_ms(model, _batch_of(args, batch_size), latency_repeats, warmup)
    finally:
        for m, training in modes.items():
            m.training = training

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

    return Metrics(
        flops=int(flops),
        flops_sparse=max(flops_sparse, 0.0),
        params=params,
        params_nonzero=params_nonzero,
        size_bytes=serialized_size(model),
        latency_ms=float(latency),
        batch_size=batch_size,
        per_layer=tuple(per_layer),
    )
