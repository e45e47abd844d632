"""torch.distributed helpers for ``finetune`` (all no-ops in a single process)."""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel as DDP


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def _comm_device() -> torch.device:
    # NCCL reduces CUDA tensors only; gloo (and mpi) take CPU tensors.
    if is_distributed() and dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def all_reduce_sum(values: list[float]) -> list[float]:
    """Sum each number over all ranks (float64, one collective)."""
    if not is_distributed():
        return list(values)
    t = torch.tensor(values, dtype=torch.float64, device=_comm_device())
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t.cpu().tolist()


#: Elements per collective in ``all_reduce_mean_``: bounds the staging buffer (256 MB of
#: float32) instead of one copy of everything (gigabytes for a VGG's gradient statistics).
_CHUNK_NUMEL = 1 << 26


def _reduce_dtype(t: torch.Tensor) -> torch.dtype:
    # Each tensor is reduced in its own precision; half types are summed in float32 so a
    # sum over ranks cannot overflow, and integer counts become float64 to be averaged.
    if t.dtype in (torch.float16, torch.bfloat16):
        return torch.float32
    return t.dtype if t.is_floating_point() else torch.float64


def all_reduce_mean_(tensors: list[torch.Tensor], chunk_numel: int = _CHUNK_NUMEL) -> None:
    """Average ``tensors`` in place over all ranks.

    Tensors of one reduction dtype are packed into flat buffers of at most ``chunk_numel``
    elements (a larger tensor goes alone, reduced in place when it already lives on the
    communication device), so the extra memory is one chunk, not a float64 copy of
    everything. Every rank receives the same summed bits and divides them the same way, so
    the results are bit-identical across ranks.
    """
    if not tensors or not is_distributed():
        return
    device = _comm_device()
    world = dist.get_world_size()
    by_dtype: dict[torch.dtype, list[torch.Tensor]] = {}
    for t in tensors:
        by_dtype.setdefault(_reduce_dtype(t), []).append(t)
    for dtype, group in by_dtype.items():
        chunk: list[torch.Tensor] = []
        size = 0
        for t in group + [None]:  # type: ignore[list-item]
            if t is not None and (not chunk or size + t.numel() <= chunk_numel):
                chunk.append(t)
                size += t.numel()
                continue
            if chunk:
                _reduce_chunk(chunk, dtype, device, world)
            chunk, size = ([t], t.numel()) if t is not None else ([], 0)


def _reduce_chunk(
    chunk: list[torch.Tensor], dtype: torch.dtype, device: torch.device, world: int
) -> None:
    if len(chunk) == 1 and chunk[0].dtype == dtype and chunk[0].device == device \
            and chunk[0].is_contiguous():
        t = chunk[0]
        with torch.no_grad():
            dist.all_reduce(t, op=dist.ReduceOp.SUM)
            t.div_(world)
        return
    flat = torch.cat([t.detach().flatten().to(device, dtype) for t in chunk])
    dist.all_reduce(flat, op=dist.ReduceOp.SUM)
    flat /= world
    offset = 0
    for t in chunk:
        n = t.numel()
        t.copy_(flat[offset : offset + n].view_as(t).to(t.device, t.dtype))
        offset += n


def broadcast_buffers(module: nn.Module, src: int = 0) -> None:
    """Copy rank ``src``'s buffers (BatchNorm running statistics...) to every rank.

    DDP broadcasts buffers at the start of each training forward, so after the last step
    each rank holds statistics updated by its own last batch; evaluating or saving then would
    use slightly different models per rank.
    """
    if not is_distributed():
        return
    device = _comm_device()
    for b in module.buffers():
        if b.numel() == 0:
            continue
        t = b.detach().to(device)
        dist.broadcast(t, src)
        if t is not b:
            b.copy_(t.to(b.device))


def ddp_kwargs(model: DDP) -> dict[str, Any]:
    """The constructor arguments needed to wrap a changed module the same way again."""
    return {
        "device_ids": model.device_ids,
        "output_device": model.output_device,
        "broadcast_buffers": model.broadcast_buffers,
        "find_unused_parameters": model.find_unused_parameters,
        "process_group": model.process_group,
        "gradient_as_bucket_view": model.gradient_as_bucket_view,
        "static_graph": getattr(model, "static_graph", False),
    }


def wrap(module: nn.Module, kwargs: dict[str, Any] | None) -> nn.Module:
    """``DistributedDataParallel(module, **kwargs)``, or ``module`` when not wrapping."""
    return module if kwargs is None else DDP(module, **kwargs)


def fingerprint(module: nn.Module) -> torch.Tensor:
    """A per-rank summary of structure and masks: shapes and mask checksums, float64."""
    values: list[float] = []
    for _, p in module.named_parameters():
        values.extend(float(s) for s in p.shape)
    for name, b in module.named_buffers():
        if name.endswith("_mask"):
            flat = b.detach().flatten().to(torch.float64).cpu()
            weights = torch.arange(1, flat.numel() + 1, dtype=torch.float64)
            values.extend([float(flat.sum()), float((flat * weights).sum())])
    return torch.tensor(values, dtype=torch.float64)


def check_identical_across_ranks(module: nn.Module) -> None:
    """Raise ``RuntimeError`` unless every rank has the same shapes and masks.

    Structured pruning that diverged between ranks would make DDP hang or fail obscurely
    later; a cheap fingerprint comparison catches it at the pruning step instead.
    """
    if not is_distributed():
        return
    fp = fingerprint(module).to(_comm_device())
    size = torch.tensor([float(fp.numel())], dtype=torch.float64, device=fp.device)
    sizes = [torch.zeros_like(size) for _ in range(dist.get_world_size())]
    dist.all_gather(sizes, size)
    if len({float(s) for s in sizes}) != 1:
        raise RuntimeError("ranks diverged after pruning: their models have different structure")
    lo, hi = fp.clone(), fp.clone()
    dist.all_reduce(lo, op=dist.ReduceOp.MIN)
    dist.all_reduce(hi, op=dist.ReduceOp.MAX)
    if not torch.equal(lo, hi):
        raise RuntimeError("ranks diverged after pruning: their masks or shapes differ")


def all_gather_rows(t: torch.Tensor) -> torch.Tensor:
    """Every rank's rows of ``t`` (first dimension may differ by rank), in rank order.

    One ``all_gather`` of zero-padded float64 blocks; a single process returns ``t``.
    """
    if not is_distributed():
        return t
    device = _comm_device()
    world = dist.get_world_size()
    n = torch.tensor([float(t.shape[0])], dtype=torch.float64, device=device)
    sizes = [torch.zeros_like(n) for _ in range(world)]
    dist.all_gather(sizes, n)
    rows = int(max(float(s) for s in sizes))
    padded = torch.zeros((rows, *t.shape[1:]), dtype=torch.float64, device=device)
    padded[: t.shape[0]] = t.to(device, torch.float64)
    blocks = [torch.zeros_like(padded) for _ in range(world)]
    dist.all_gather(blocks, padded)
    return torch.cat([b[: int(float(k))] for b, k in zip(blocks, sizes)]).cpu().to(t.dtype)


def broadcast_bytes(blob: bytes | None, src: int = 0) -> bytes:
    """``blob`` of rank ``src`` on every rank (a file rank 0 wrote, say); a single process
    returns it as is."""
    if not is_distributed():
        assert blob is not None
        return blob
    box = [blob if rank() == src else None]
    dist.broadcast_object_list(box, src=src, device=_comm_device())
    return box[0]
