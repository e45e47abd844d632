"""Torch-Pruning's dependency graph, made safe and fast for every torchvision classifier.

Torch-Pruning (``tp.DependencyGraph``) traces a forward pass and couples every layer that
removing a channel touches. Three of its limits are worked around here, without changing
the graph it builds for the layers it does understand:

* **Reshapes, splits and concatenations it cannot map.** Torch-Pruning assumes a reshape of
  a 4-D tensor is a flatten of ``(N, C, H, W)`` and maps channel ``c`` to a run of ``H * W``
  features. A channel shuffle (ShuffleNet: ``(N, C, H, W) -> (N, g, C/g, H, W) -> transpose
  -> (N, C, H, W)``) or a window partition breaks that assumption: in ShuffleNet-V2 the
  mapping divides by an inferred channel count of 0 (``ZeroDivisionError``), elsewhere it
  silently couples the wrong channels or multiplies index lists until memory runs out.
  After tracing, every reshape / view is classified from the input and output shapes
  autograd recorded (:func:`_classify_reshape`): a flatten of ``(N, C, H, W)`` into
  ``(N, C*H*W)`` is left to Torch-Pruning; a reshape that keeps the channel axis whole (at
  dim 1 or last, or only adds / drops size-1 axes) becomes an element-wise node (channel
  ``c`` stays channel ``c``, which is exact); anything else (a shuffle, a split of the
  channel axis) becomes a *barrier*: an element-wise node for Torch-Pruning, and every group
  that reaches it is left alone on purpose by ``prune``. Splits and chunks are barriers too
  (their parts are sized by the model's code, so uneven removal would misalign them), and
  so are concatenations along another axis than the channels or with inputs Torch-Pruning
  did not trace in order; the widths of the others are read from autograd rather than
  inferred. ShuffleNet-V2 thus keeps its shuffled stream channels (a shuffle position
  couples two channels of every block of a stage, so the smallest consistent unit is most
  of the stage) and loses channels everywhere else: the stem, the inner width of every
  branch, and the last 1x1 convolution.
* **Attention modules it traces through.** Multi-head attention that is not
  ``nn.MultiheadAttention`` (Swin's shifted-window attention with its relative position
  table, MaxViT's relative-position attention, timm's ``Attention`` / ``WindowAttention``)
  computes heads with reshapes and index tables Torch-Pruning cannot map. Such modules are
  made leaves of the graph (a customized pruner that couples their input and output, the
  residual stream, and refuses to prune) and traced as one autograd node from their inputs
  to their output (:class:`_Opaque`), so nothing inside them reaches the graph; the residual
  stream, like ViT's, is left alone and their MLP widths are pruned. ``prune`` removes heads
  only from :class:`~pruners._attention.PrunableMultiheadAttention` (also traced as one node).
* **Speed.** ``DependencyGraph.get_pruning_group`` recomputes every concat / split index
  mapping of the whole graph on each call, which dominates on DenseNets (one call per
  layer, hundreds of concatenations). Nothing changes the graph while groups are collected,
  so the mappings are computed once (:func:`collect_groups`). Removal does not ask
  Torch-Pruning for a group per unit at all: each collected group (full indices, each item
  carrying the root channel it comes from) is filtered down to the chosen root channels,
  the indices of every (layer, pruning function) are merged over all groups, and each
  layer is cut once (:func:`pruners._removal.remove_channels`), in the original numbering.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import torch
import torch_pruning as tp
from torch import nn
from torch_pruning import ops
from torch_pruning.dependency import graph as tp_graph
from torch_pruning.dependency import index_mapping as tp_index_mapping
from torch_pruning.dependency import shape_infer
from torch_pruning.pruner.function import BasePruningFunc

__all__ = [
    "PruneGraph",
    "build_graph",
    "collect_groups",
    "token_attention_types",
]


# ------------------------------------------------------------------------------ attention
def token_attention_types(model: nn.Module, handled: Iterable[type]) -> list[type]:
    """Classes of ``model``'s multi-head token attention modules that Torch-Pruning traces into.

    A module counts when its class name contains ``Attention`` and it has a head count
    attribute (``num_heads`` / ``n_heads`` / ``heads``): multi-head self-attention as
    torchvision's Swin / MaxViT and timm write it. Channel attention (squeeze-excitation,
    CBAM: no heads) is ordinary convolutions and stays traced. The innermost such module is
    taken (MaxViT's ``PartitionAttentionLayer`` holds an attention module and an MLP whose
    width is prunable). ``handled`` classes (ours, ``nn.MultiheadAttention``) are excluded.
    """
    skip = tuple(handled)

    def is_attention(m: nn.Module) -> bool:
        if isinstance(m, skip) or "Attention" not in type(m).__name__:
            return False
        return any(isinstance(getattr(m, a, None), int) for a in ("num_heads", "n_heads", "heads"))

    found: list[type] = []
    for m in model.modules():
        if type(m) in found or not is_attention(m):
            continue
        if not any(is_attention(sub) or isinstance(sub, skip) for sub in list(m.modules())[1:]):
            found.append(type(m))
    return found


class FixedModulePruner(BasePruningFunc):
    """Torch-Pruning handler of a module left whole: its input and output are one axis.

    Registering it makes the module a leaf of the graph (Torch-Pruning does not trace
    inside customized modules) coupled to the residual stream on both sides; groups that
    reach it are never pruned (``prune`` skips them), so pruning it is an error.
    """

    def prune_out_channels(self, layer: nn.Module, idxs):
        raise RuntimeError(f"{type(layer).__name__} is left whole on purpose; its channels cannot be removed")

    prune_in_channels = prune_out_channels

    def get_out_channels(self, layer: nn.Module):
        return None

    def get_in_channels(self, layer: nn.Module):
        return None


# ------------------------------------------------------------------------------ reshapes
def _normdim(dim: int, ndim: int) -> int | None:
    """``dim`` in ``[0, ndim)``, or ``None`` when it is a placeholder (uninitialised int)."""
    if -ndim <= dim < ndim:
        return dim % ndim
    return None


def _classify_reshape(in_shape: list[int], out_shape: list[int], channels: int | None) -> str:
    """``"torch_pruning"``, ``"identity"`` or ``"barrier"`` for one reshape / view.

    ``channels`` is the channel count Torch-Pruning infers for the input (``None`` if it
    cannot). Only what is certainly right is not a barrier.
    """
    if not in_shape or not out_shape:
        return "barrier"
    if [d for d in in_shape if d != 1] == [d for d in out_shape if d != 1]:
        return "identity"  # only size-1 axes added or dropped: gamma.view(1, -1, 1, 1)
    if channels is None:
        return "barrier"
    if in_shape[0] != out_shape[0] and len(in_shape) > 1:
        # The batch axis changes (windows folded into the batch): only channels-last
        # layouts keep the channel axis whole.
        if in_shape[-1] == out_shape[-1] == channels:
            return "identity"
        return "barrier"
    if len(in_shape) >= 2 and len(out_shape) >= 2 and in_shape[1] == out_shape[1] == channels:
        return "identity"  # (N, C, ...) -> (N, C, ...): only the trailing axes change
    if in_shape[-1] == out_shape[-1] == channels:
        return "identity"  # channels last, leading axes regrouped
    if (
        len(in_shape) == 4
        and len(out_shape) == 2
        and in_shape[1] == channels
        and out_shape[1] == math.prod(in_shape[1:])
    ):
        return "torch_pruning"  # the flatten before a classifier: channel c -> H*W features
    return "barrier"


def _cat_dim(grad_fn) -> int | None:
    """The axis of a concatenation / split / unbind, in ``[0, ndim)``; ``None`` if unknown."""
    dim = getattr(grad_fn, "_saved_dim", None)
    if not isinstance(dim, int):
        return None
    if dim >= 2**63:  # a negative dim comes back as an unsigned 64-bit integer
        dim -= 2**64
    sizes = getattr(grad_fn, "_saved_self_sym_sizes", None)
    ndim = len(sizes) if sizes is not None else _output_ndim(grad_fn)
    if ndim is None:
        return dim if dim >= 0 else None
    return _normdim(dim, ndim)


def _concat_inputs_in_order(node) -> bool:
    """Torch-Pruning's input list of a concat node is the concat's inputs, in order."""
    fns = node.grad_fn.next_functions
    return (
        all(f is not None for f, _ in fns)
        and len(fns) == len(node.inputs)
        and len(set(node.inputs)) == len(node.inputs)
    )


def _concat_sizes(node) -> list[int] | None:
    """Widths of a dim-1 concatenation's inputs, as autograd recorded them."""
    sizes = []
    for f, nr in node.grad_fn.next_functions:
        meta = getattr(f, "_input_metadata", None)
        if not meta or nr >= len(meta) or len(meta[nr].shape) < 2:
            return None
        sizes.append(int(meta[nr].shape[1]))
    return sizes


def _concat_mapped(node) -> bool:
    return all(dep.index_mapping[1] is not None for dep in node.dependencies if dep.target in node.inputs)


def _output_ndim(grad_fn) -> int | None:
    meta = getattr(grad_fn, "_input_metadata", None)
    try:
        return len(meta[0].shape) if meta else None
    except (IndexError, TypeError):
        return None


# ------------------------------------------------------------------------------ graph
class PruneGraph(tp.DependencyGraph):
    """A ``tp.DependencyGraph`` that marks what it cannot map (see the module docstring).

    Attributes:
        fixed: Graph nodes' modules that no pruned group may touch: barrier reshapes,
            concatenations / splits along a non-channel axis, attention leaves.
        mappings_frozen: While true, ``get_pruning_group`` reuses the index mappings
            computed last instead of recomputing them for the whole graph.
    """

    def __init__(self, whole_types: Iterable[type] = ()) -> None:
        super().__init__()
        self.whole_types = tuple(whole_types)
        self.fixed: set[Any] = set()
        self.mappings_frozen = False

    def build_dependency(self, model, example_inputs, **kwargs):
        super().build_dependency(model, example_inputs, **kwargs)
        # Torch-Pruning infers a concatenation's input widths by walking the graph, which
        # goes wrong across a barrier (it would count the width before a split). Autograd
        # recorded every input's shape: use those, then recompute every mapping.
        changed = True
        while changed:
            changed = False
            for node in self.module2node.values():
                if node.type == ops.OPTYPE.CONCAT:
                    node.module.concat_sizes = _concat_sizes(node)
                    node.module.offsets = None
                for dep in node.dependencies:  # every mapping comes from update_index_mapping
                    dep.index_mapping = [None, None]
            tp_index_mapping.update_index_mapping(self)
            for node in self.module2node.values():
                # A concat Torch-Pruning still declined to map (its output width did not add
                # up) would couple channel c of every input with channel c of the output.
                if node.type == ops.OPTYPE.CONCAT and not _concat_mapped(node):
                    self._make_barrier(node)
                    changed = True
        return self

    def _trace(self, model, example_inputs, forward_fn, output_transform):
        module2node = super()._trace(model, example_inputs, forward_fn, output_transform)
        for module, node in module2node.items():
            if isinstance(module, self.whole_types):
                self.fixed.add(module)
            elif node.type == ops.OPTYPE.RESHAPE:
                self._classify_reshape_node(node)
            elif node.type in (ops.OPTYPE.SPLIT, ops.OPTYPE.UNBIND):
                # The sizes of a split are the model code's (chunk: equal parts of the
                # current width; split: constants), so removing channels before it would
                # misalign its parts; unbind drops the axis (q / k / v of attention).
                self._make_barrier(node)
            elif node.type == ops.OPTYPE.CONCAT:
                # Torch-Pruning maps concatenations along dim 1 only; along any other axis
                # it couples channel c with channel c, which is wrong for a channels-last
                # concat (Swin's patch merging). It also takes the order of the inputs
                # from the order it met them: an input used twice, or one it did not
                # trace (a constant), would shift every offset after it.
                if _cat_dim(node.grad_fn) != 1 or not _concat_inputs_in_order(node):
                    self._make_barrier(node)
        return module2node

    def _make_barrier(self, node) -> None:
        node.type = ops.OPTYPE.ELEMENTWISE
        self.fixed.add(node.module)
        for dep in node.dependencies:
            dep.index_mapping = [None, None]
        for other in (*node.inputs, *node.outputs):
            for dep in other.dependencies:
                if dep.target is node:
                    dep.index_mapping = [None, None]

    def _classify_reshape_node(self, node) -> None:
        grad_fn = node.grad_fn
        in_shape = getattr(grad_fn, "_saved_self_sym_sizes", None)
        meta = getattr(grad_fn, "_input_metadata", None)
        out_shape = list(meta[0].shape) if meta else None
        channels = None
        if in_shape is not None and out_shape is not None:
            in_shape = [int(s) for s in in_shape]
            for n in node.inputs:
                channels = shape_infer.infer_out_channels_recursively(self, n, [0])
                if channels is not None:
                    break
        kind = _classify_reshape(in_shape or [], out_shape or [], channels)
        if kind == "identity":
            node.type = ops.OPTYPE.ELEMENTWISE
        elif kind == "barrier":
            self._make_barrier(node)

    def get_pruning_group(self, module, pruning_fn, idxs):
        if not self.mappings_frozen:
            return super().get_pruning_group(module, pruning_fn, idxs)
        with _frozen_mappings():
            return super().get_pruning_group(module, pruning_fn, idxs)

    def release(self) -> None:
        """Drop the traced autograd graph (it holds every parameter it saw, the replaced
        ones too, until the graph's reference cycles are collected)."""
        for node in self.module2node.values():
            node.grad_fn = None
        self.module2node = {}

    def touches_fixed(self, group) -> bool:
        """Whether any layer of ``group`` is one that must stay whole."""
        return any(item.dep.target.module in self.fixed for item in group)


class _NoMappingUpdate:
    """Stands in for ``torch_pruning.dependency.index_mapping`` inside ``graph.py``."""

    def __getattr__(self, name: str):
        return getattr(tp_index_mapping, name)

    @staticmethod
    def update_index_mapping(graph) -> None:
        return None


_NO_UPDATE = _NoMappingUpdate()


class _frozen_mappings:
    """Within the block, ``get_pruning_group`` does not recompute the graph's mappings.

    ``graph.py`` reaches ``update_index_mapping`` through its module attribute
    ``index_mapping``; that attribute is swapped for the block's duration (and restored
    even on error). Mappings only change when layers are pruned, which never happens while
    groups are being collected.
    """

    def __enter__(self):
        self._saved = tp_graph.index_mapping
        tp_graph.index_mapping = _NO_UPDATE
        return self

    def __exit__(self, *exc):
        tp_graph.index_mapping = self._saved
        return False


class _Opaque(torch.autograd.Function):
    """Output of a module computed without autograd, linked straight to its inputs.

    Used while tracing: Torch-Pruning then sees the module as one node between its input
    tensors and its output, not the hundreds of reshapes, index-table gathers and matmuls
    inside a window attention (which it would otherwise map index by index).
    """

    @staticmethod
    def forward(ctx, out: torch.Tensor, *inputs: torch.Tensor) -> torch.Tensor:
        ctx.shapes = [t.shape for t in inputs]
        return out.clone()

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return (None, *[grad.new_zeros(s) for s in ctx.shapes])


class _opaque_forwards:
    """While tracing, every module of ``types`` computes its output as one autograd node."""

    def __init__(self, model: nn.Module, types: tuple[type, ...]) -> None:
        self.modules = [m for m in model.modules() if types and isinstance(m, types)]

    def __enter__(self):
        self.own = [m.__dict__.get("forward") for m in self.modules]  # a forward set on the instance
        for m in self.modules:
            m.forward = _opaque_forward(m.forward)  # an instance attribute, undone on exit
        return self

    def __exit__(self, *exc):
        for m, own in zip(self.modules, self.own):
            if own is None:
                m.__dict__.pop("forward", None)
            else:
                m.forward = own
        return False


def _opaque_forward(forward: Callable[..., Any]) -> Callable[..., Any]:
    def run(*args: Any, **kwargs: Any) -> Any:
        with torch.no_grad():
            out = forward(*args, **kwargs)
        inputs, seen = [], set()
        for t in [*args, *kwargs.values()]:
            if isinstance(t, torch.Tensor) and t.requires_grad and id(t) not in seen:
                seen.add(id(t))
                inputs.append(t)
        if not inputs:
            return out
        if isinstance(out, torch.Tensor):
            return _Opaque.apply(out, *inputs)
        if isinstance(out, tuple) and out and isinstance(out[0], torch.Tensor):
            return (_Opaque.apply(out[0], *inputs), *out[1:])  # (output, attention weights)
        return out

    return run


def _drop(tensor: torch.Tensor) -> None:
    return None


def _dropped(packed: None) -> torch.Tensor:
    raise RuntimeError("pruners traced this graph without keeping tensors for backward")


def build_graph(
    model: nn.Module,
    example_inputs: Any,
    forward_fn: Callable[[nn.Module, Any], Any],
    customized_pruners: dict[Any, BasePruningFunc],
    leave_whole: Iterable[type] = (),
    stream_types: Iterable[type] = (),
) -> PruneGraph:
    """Trace ``model`` into a :class:`PruneGraph` (the model is in eval mode; grad enabled).

    ``leave_whole`` classes become graph leaves that no pruned group may touch;
    ``stream_types`` (modules with a pruner of their own, e.g. head-prunable attention)
    stay as they are traced, but their input / output width is not pruned either.
    """
    pruners = dict(customized_pruners)
    fixed = FixedModulePruner()
    leave_whole = tuple(leave_whole)
    for cls in leave_whole:
        pruners.setdefault(cls, fixed)
    # Modules with a pruner of their own are single nodes: what is inside is theirs.
    leaves = tuple(t for t in pruners if isinstance(t, type))
    # The trace only reads the autograd graph's structure (and the sizes its nodes record),
    # never runs backward: activations saved for backward are dropped as they are made, so
    # tracing a large model at 224x224 costs one activation at a time, not all of them.
    with _opaque_forwards(model, leaves), torch.autograd.graph.saved_tensors_hooks(_drop, _dropped):
        return PruneGraph(leave_whole + tuple(stream_types)).build_dependency(
            model,
            example_inputs=example_inputs,
            forward_fn=forward_fn,
            customized_pruners=pruners,
            verbose=False,
        )


def collect_groups(dg: PruneGraph, ignored: Iterable[nn.Module], root_types) -> Iterator[Any]:
    """``dg.get_all_groups(...)`` with the index mappings computed once for all groups."""
    tp_index_mapping.update_index_mapping(dg)
    dg.mappings_frozen = True
    try:
        yield from dg.get_all_groups(ignored_layers=list(ignored), root_module_types=list(root_types))
    finally:
        dg.mappings_frozen = False
