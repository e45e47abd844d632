"""int8 quantization of a (pruned) model into a file that a stock runtime runs on integer kernels.

Quantizing is torchao's PT2E flow: the model is exported (``torch.export``), a quantizer
annotates it (``X86InductorQuantizer``: int8 weights, symmetric and per output channel;
uint8 activations, affine and per tensor), observers see calibration batches (training
images, never validation or test ones: the caller hands them in), and ``convert_pt2e`` folds
the observed ranges into quantize / dequantize pairs around each weight-reading op. For
quantization-aware training (``int8_qat``) the same quantizer inserts fake-quantize modules
into the training graph instead, the model fine-tunes through them, and the same ``convert``
ends it.

What ships is an ONNX file: the converted graph exported by ``torch.onnx.export`` turns each
pair into ``QuantizeLinear`` / ``DequantizeLinear`` nodes (QDQ) around int8 weight
initializers, and ONNX Runtime's CPU provider fuses every QDQ group it has a kernel for into
an integer op (``QLinearConv``, ``QLinearMatMul``, ...). Why this and not the candidates:

* an AOTInductor package of the same int8 program (torchao's own path to integer kernels)
  compiled in 117 s on 2 cores and weighed 1.88 MB, where the ONNX file weighed 164 kB (the
  float ONNX file: 349 kB) for the ``small_resnet`` of the Fashion-MNIST config (measured
  2026-12-06), and a trial would have to compile one for every file it reports;
* a ``torch.export`` file of the converted graph (``pruners.save``) runs the quantize and
  dequantize ops as written, in float: no integer kernels, so no speed-up to report;
* TorchScript and FX-mode quantization are deprecated upstream.

A file ``save_onnx`` writes loads with nothing but ``onnxruntime`` (no Prunefront, no pickle:
ONNX is a protocol buffer); ``load_onnx`` checks it first (``check_onnx``: no external data,
no operator domain outside the standard ones), since an ONNX file that names external data
makes the runtime read files beside it. Prunefront's metadata rides in the model's
``metadata_props`` under ``prunefront``.
"""

from __future__ import annotations

import json
import os
import tempfile
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from pruners._devices import as_tuple, unwrap

__all__ = [
    "QUANTIZE_MODES",
    "OnnxProgram",
    "QatPhase",
    "calibration_inputs",
    "QuantizeReport",
    "UnsafeOnnxFile",
    "calibrate",
    "check_onnx",
    "convert",
    "load_onnx",
    "load_onnx_metadata",
    "prepare",
    "quantize_int8",
    "save_onnx",
    "weight_dtypes",
]

#: The values of the searched ``quantize`` choice.
QUANTIZE_MODES = ("none", "int8", "int8_qat")

#: Key of Prunefront's JSON metadata in an ONNX file's ``metadata_props``.
_META_KEY = "prunefront"
FORMAT = "prunefront-onnx-1"
#: Operator domains a file may use: the standard ONNX operators only.
_ALLOWED_DOMAINS = frozenset({"", "ai.onnx"})
#: Ops whose weight input decides whether they run on an integer kernel.
_WEIGHT_OPS = frozenset({"Conv", "ConvTranspose", "Gemm", "MatMul"})


class UnsafeOnnxFile(ValueError):
    """An ONNX file that is damaged or asks for something a Prunefront file never needs."""


def _quantizer(qat: bool) -> Any:
    from torchao.quantization.pt2e.quantizer import x86_inductor_quantizer as xiq

    quantizer = xiq.X86InductorQuantizer()
    quantizer.set_global(xiq.get_default_x86_inductor_quantization_config(is_qat=qat))
    return quantizer


def _two(args: tuple[Any, ...]) -> tuple[Any, ...]:
    # Export specialises a dimension of size 1 to a constant: trace with two copies of the
    # first example so the batch stays dynamic (pruners.save does the same).
    return tuple(torch.cat([a[:1], a[:1]]) if isinstance(a, torch.Tensor) and a.dim() > 0 else a for a in args)


def _dynamic(args: tuple[Any, ...]) -> tuple[Any, ...]:
    batch = torch.export.Dim("batch", min=1)
    return tuple({0: batch} if isinstance(a, torch.Tensor) and a.dim() > 0 else None for a in args)


def prepare(model: nn.Module, example_inputs: Any, *, qat: bool = False) -> nn.Module:
    """Export ``model`` and insert observers (``qat=False``) or fake-quantize modules (``qat=True``).

    ``model`` is not modified: masks are made permanent on a copy first (``torch.nn.utils.prune``
    hooks do not export). For post-training quantization run ``calibrate`` on the result; for
    quantization-aware training train it like any module (it is in training mode), then
    ``convert``.
    """
    from torchao.quantization.pt2e.quantize_pt2e import prepare_pt2e, prepare_qat_pt2e

    from pruners.io import make_permanent_copy

    clone = make_permanent_copy(unwrap(model)).to("cpu")
    clone.train(qat)
    args = _two(tuple(a.detach().to("cpu") if isinstance(a, torch.Tensor) else a for a in as_tuple(example_inputs)))
    graph = torch.export.export(clone, args, dynamic_shapes=_dynamic(args)).module()
    if qat:
        return prepare_qat_pt2e(graph, _quantizer(qat=True))
    return prepare_pt2e(graph, _quantizer(qat=False))


def calibrate(prepared: nn.Module, batches: Iterable[Any], *, limit: int | None = None) -> int:
    """Run ``batches`` (tensors, or ``(inputs, labels)`` pairs) through ``prepared``'s observers.

    Stops once ``limit`` examples were seen (None: all). Returns the examples seen.
    """
    seen = 0
    with torch.no_grad():
        for batch in batches:
            x = batch[0] if isinstance(batch, (list, tuple)) else batch
            if limit is not None:
                x = x[: max(0, limit - seen)]
            if x.shape[0] == 0:
                break
            prepared(x.to("cpu"))
            seen += int(x.shape[0])
            if limit is not None and seen >= limit:
                break
    return seen


def convert(prepared: nn.Module) -> nn.Module:
    """Fold observed ranges into quantize / dequantize pairs (eval-mode graph)."""
    from torchao.quantization.pt2e import move_exported_model_to_eval
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e

    move_exported_model_to_eval(prepared)
    return convert_pt2e(prepared)


def save_onnx(
    model: nn.Module,
    path: str | os.PathLike[str],
    example_inputs: Any,
    *,
    metadata: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Export ``model`` (float, or ``convert``'s int8 graph) to an ONNX file at ``path``, atomically.

    The batch dimension is dynamic. Returns the metadata stored in the file.
    """
    import onnx

    if isinstance(model, nn.Module) and not isinstance(model, torch.fx.GraphModule):
        from pruners.io import make_permanent_copy

        model = make_permanent_copy(unwrap(model)).to("cpu").eval()
    args = _two(tuple(a.detach().to("cpu") if isinstance(a, torch.Tensor) else a for a in as_tuple(example_inputs)))
    dyn = tuple({0: "batch"} if isinstance(a, torch.Tensor) and a.dim() > 0 else None for a in args)
    path = os.fspath(path)
    meta = {
        "format": FORMAT,
        "torch": torch.__version__,
        "input_shapes": [[1, *a.shape[1:]] for a in args if isinstance(a, torch.Tensor)],
        "user": metadata or {},
    }
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".onnx-", suffix=".tmp", dir=folder)
    os.close(fd)
    try:
        with torch.no_grad(), warnings.catch_warnings():
            # A converted PT2E graph keeps its training flag although it computes eval
            # behaviour (move_exported_model_to_eval rewrote it); the exporter warns about it.
            warnings.filterwarnings("ignore", message="Exporting a model while it is in training mode")
            program = torch.onnx.export(model, args, dynamo=True, dynamic_shapes=dyn, verbose=False, optimize=True)
        proto = program.model_proto
        _strip_debug_metadata(proto.graph)
        del proto.metadata_props[:]
        entry = proto.metadata_props.add()
        entry.key, entry.value = _META_KEY, json.dumps(meta, sort_keys=True)
        with open(tmp, "wb") as f:
            f.write(proto.SerializeToString())
            f.flush()
            os.fsync(f.fileno())
        onnx.checker.check_model(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return meta


def check_onnx(path: str | os.PathLike[str]) -> Any:
    """Parse the ONNX file at ``path`` and refuse what a Prunefront file never holds.

    Refused, with one line naming the file and the entry: a file that is not an ONNX model,
    a tensor stored as external data (the runtime would read another file), and an operator
    domain other than the standard one (custom ops load native code). Returns the parsed
    ``onnx.ModelProto``.
    """
    import onnx
    from google.protobuf.message import DecodeError

    name = os.fspath(path)
    try:
        with open(name, "rb") as f:
            proto = onnx.ModelProto.FromString(f.read())
    except (DecodeError, RuntimeError, ValueError) as exc:
        raise UnsafeOnnxFile(f"{name}: not a readable ONNX model ({type(exc).__name__})") from None
    if not proto.HasField("graph"):
        raise UnsafeOnnxFile(f"{name}: not a readable ONNX model (no graph)")
    for opset in proto.opset_import:
        if opset.domain not in _ALLOWED_DOMAINS:
            raise UnsafeOnnxFile(f"{name}: opset_import domain {opset.domain!r} is not a standard ONNX domain; only the default domain is allowed")
    for tensor in _all_tensors(proto.graph):
        if tensor.data_location == onnx.TensorProto.EXTERNAL or tensor.external_data:
            raise UnsafeOnnxFile(f"{name}: tensor {tensor.name!r} is stored as external data; a Prunefront file keeps every tensor inside it")
    for node in _all_nodes(proto.graph):
        if node.domain not in _ALLOWED_DOMAINS:
            raise UnsafeOnnxFile(f"{name}: node {node.name or node.op_type!r} uses operator domain {node.domain!r}; only the default domain is allowed")
    for function in proto.functions:
        if function.domain not in _ALLOWED_DOMAINS and any(n.domain not in _ALLOWED_DOMAINS for n in function.node):
            raise UnsafeOnnxFile(f"{name}: function {function.name!r} uses a non-standard operator domain")
    return proto


def _strip_debug_metadata(graph: Any) -> None:
    """Drop what the exporter attaches to each node and value for debugging (stack traces, FX
    node text, source paths, name scopes): half of a small int8 file's bytes, and none of
    them needed to run it."""
    for node in _all_nodes(graph):
        del node.metadata_props[:]
        node.doc_string = ""
    for value in (*graph.input, *graph.output, *graph.value_info):
        del value.metadata_props[:]
    del graph.metadata_props[:]


def _all_nodes(graph: Any) -> Iterable[Any]:
    for node in graph.node:
        yield node
        for attr in node.attribute:
            for sub in [attr.g, *attr.graphs] if attr.HasField("g") else attr.graphs:
                yield from _all_nodes(sub)


def _all_tensors(graph: Any) -> Iterable[Any]:
    yield from graph.initializer
    yield from (s.values for s in graph.sparse_initializer)
    for node in graph.node:
        for attr in node.attribute:
            if attr.HasField("t"):
                yield attr.t
            yield from attr.tensors
            for sub in [attr.g, *attr.graphs] if attr.HasField("g") else attr.graphs:
                yield from _all_tensors(sub)


class OnnxProgram:
    """An ONNX file on ONNX Runtime's CPU provider, called like a module: tensors in, tensor out."""

    def __init__(self, path: str | os.PathLike[str], *, threads: int = 1) -> None:
        import onnxruntime as ort

        proto = check_onnx(path)
        self.path = os.fspath(path)
        self.metadata = _metadata_of(proto)
        options = ort.SessionOptions()
        options.intra_op_num_threads = int(threads)
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        # Handing the bytes over (not the path) leaves the runtime nothing to resolve on disk.
        self.session = ort.InferenceSession(proto.SerializeToString(), options, providers=["CPUExecutionProvider"])
        self.threads = int(threads)
        self._inputs = [i.name for i in self.session.get_inputs()]

    def __call__(self, *args: torch.Tensor) -> torch.Tensor:
        feed = {name: a.detach().cpu().float().numpy() for name, a in zip(self._inputs, args)}
        out = torch.from_numpy(self.session.run(None, feed)[0])
        first = next((a for a in args if isinstance(a, torch.Tensor)), None)
        return out if first is None or first.device.type == "cpu" else out.to(first.device)

    def eval(self) -> "OnnxProgram":  # a module's API, so callers can treat it as one
        return self


def load_onnx(path: str | os.PathLike[str], *, threads: int = 1) -> OnnxProgram:
    """Check and load an ONNX file (``check_onnx``) on ONNX Runtime, ``threads`` intra-op threads."""
    return OnnxProgram(path, threads=threads)


def _metadata_of(proto: Any) -> dict[str, Any]:
    for entry in proto.metadata_props:
        if entry.key == _META_KEY:
            try:
                meta = json.loads(entry.value)
            except ValueError:
                return {}
            return meta if isinstance(meta, dict) else {}
    return {}


def load_onnx_metadata(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The JSON metadata ``save_onnx`` stored in the file (``{}`` for a foreign ONNX file)."""
    return _metadata_of(check_onnx(path))


def weight_dtypes(path: str | os.PathLike[str]) -> dict[str, str]:
    """Each weight-reading node of the file -> the dtype of the weight it reads.

    ``int8`` means the node's weight is stored as integers (a ``DequantizeLinear`` of an
    int8 initializer feeds it), so the runtime can run it on an integer kernel; ``float32``
    means it was left in float.
    """
    import onnx

    proto = check_onnx(path)
    graph = proto.graph
    inits = {t.name: t for t in graph.initializer}
    producer = {out: n for n in graph.node for out in n.output}
    out: dict[str, str] = {}
    for i, node in enumerate(graph.node):
        if node.op_type not in _WEIGHT_OPS or len(node.input) < 2:
            continue
        src = node.input[1]
        while src in producer and producer[src].op_type in ("DequantizeLinear", "Transpose", "Reshape", "Identity"):
            src = producer[src].input[0]
        tensor = inits.get(src)
        if tensor is None:
            continue  # an activation x activation product (attention scores): no weight
        dtype = onnx.helper.tensor_dtype_to_np_dtype(tensor.data_type).name
        out[node.name or f"{node.op_type}_{i}"] = dtype
    return out


@dataclass(frozen=True)
class QuantizeReport:
    """What ``quantize_int8`` wrote: the file, its size, and which nodes run on int8 weights."""

    path: str
    size_bytes: int
    calibration_examples: int
    quantized: tuple[str, ...]
    left_float: tuple[str, ...]


def quantize_int8(
    model: nn.Module,
    path: str | os.PathLike[str],
    example_inputs: Any,
    calibration: Iterable[Any] | None = None,
    *,
    calibration_examples: int | None = 2048,
    prepared: nn.Module | None = None,
    metadata: dict[str, Any] | None = None,
) -> QuantizeReport:
    """Quantize ``model`` to int8 and write the ONNX file ``path``.

    Post-training (``prepared`` None): observers see up to ``calibration_examples`` examples
    of ``calibration`` (training batches). After quantization-aware training, pass the
    trained ``prepare(..., qat=True)`` graph as ``prepared`` (``model`` and ``calibration``
    are then not used). Raises ``ValueError`` naming the module if nothing could be quantized.
    """
    if prepared is None:
        if calibration is None:
            raise ValueError("post-training int8 quantization needs calibration batches")
        prepared = prepare(model, example_inputs)
        seen = calibrate(prepared, calibration, limit=calibration_examples)
        if seen == 0:
            raise ValueError("calibration batches held no examples")
    else:
        seen = 0
    converted = convert(prepared)
    info = {"quantize": "int8", "calibration_examples": seen, **(metadata or {})}
    save_onnx(converted, path, example_inputs, metadata=info)
    dtypes = weight_dtypes(path)
    quantized = tuple(n for n, d in dtypes.items() if d == "int8")
    left = tuple(n for n, d in dtypes.items() if d != "int8")
    if dtypes and not quantized:
        raise ValueError(f"no layer of {type(unwrap(model)).__name__} could be quantized to int8 (first: {left[0]})")
    return QuantizeReport(os.fspath(path), os.path.getsize(path), seen, quantized, left)


def calibration_inputs(loader: Any, examples: int, *, seed: int = 0) -> list[torch.Tensor]:
    """Up to ``examples`` training inputs to calibrate on, in batches of the loader's size.

    Drawn from ``loader``'s *dataset* (the loader is never iterated, so no epoch in
    progress is disturbed) by a seeded permutation, inside a forked RNG seeded with ``seed``:
    every call (every epoch, every rank, a resumed run) sees the same images, and the
    training's random state is left as it was. Pass the *training* loader: activations are
    never calibrated on validation or test images.
    """
    from torch.utils.data import DataLoader, Subset

    dataset = getattr(loader, "dataset", None)
    if dataset is None:  # a plain re-iterable of batches
        return [x for x, _ in loader][: max(1, examples)]
    g = torch.Generator().manual_seed(int(seed))
    idx = torch.randperm(len(dataset), generator=g)[: int(examples)].tolist()
    batch = int(getattr(loader, "batch_size", None) or 64)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(seed))  # augmentations draw the same crops every call
        sub = DataLoader(Subset(dataset, idx), batch_size=batch, shuffle=False,
                         collate_fn=getattr(loader, "collate_fn", None), num_workers=0)
        return [b[0] if isinstance(b, (list, tuple)) else b for b in sub]


@dataclass
class QatPhase:
    """Quantization-aware training over a run's last epochs (``pruners.train_epochs(qat=...)``).

    From epoch ``start`` on, the loop trains ``prepare(module, example, qat=True)`` (the
    float model as pruning left it, exported with fake-quantize modules) instead of the
    float model. Weights that pruning zeroed stay zero: their gradients are masked, so
    unstructured sparsity survives QAT (structured pruning already removed its channels).
    Validation runs the graph in eval mode (observers frozen, BatchNorm on running
    statistics): validation images never calibrate anything.
    """

    start: int
    example_inputs: Any

    def build(self, module: nn.Module, state: dict[str, Any] | None = None) -> nn.Module:
        """The QAT graph of ``module`` (on its device), with ``state`` loaded when resuming."""
        from pruners._devices import device_of

        from torchao.quantization.pt2e import allow_exported_model_train_eval

        device = device_of(module)
        graph = prepare(module, self.example_inputs, qat=True).to(device)
        allow_exported_model_train_eval(graph)  # .eval() / .train() switch BatchNorm and dropout
        if state is not None:
            graph.load_state_dict(state)
        for name, p in graph.named_parameters():
            if p.dim() >= 2 and bool((p == 0).any()):
                mask = (p.detach() != 0).to(p.dtype)
                p.register_hook(lambda g, m=mask: g * m)
        return graph

    @staticmethod
    def eval_mode(graph: nn.Module) -> Any:
        """Context: ``graph`` (a QAT graph, maybe DDP-wrapped) in eval behaviour, then back."""
        import contextlib

        from torchao.quantization.pt2e import (
            disable_observer, enable_observer, move_exported_model_to_eval, move_exported_model_to_train)

        inner = unwrap(graph)

        @contextlib.contextmanager
        def ctx() -> Any:
            move_exported_model_to_eval(inner)
            inner.apply(disable_observer)  # quantization ranges stay the training data's
            try:
                yield
            finally:
                inner.apply(enable_observer)
                move_exported_model_to_train(inner)

        return ctx()


def as_batches(x: torch.Tensor, batch_size: int = 64) -> Sequence[torch.Tensor]:
    """Split a tensor of examples into batches (a convenience for ``calibrate``)."""
    return [x[i : i + batch_size] for i in range(0, x.shape[0], batch_size)]
