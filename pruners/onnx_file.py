"""ONNX files Prunefront ships (int8 trials, ``dense-int8``): checked, loaded, inspected.

An ONNX file is a protocol buffer: reading it unpickles nothing. What a file can still ask of
ONNX Runtime is refused by :func:`check_onnx` before the runtime sees it (external data, which
makes the runtime read other files; operator domains other than the standard one, which load
native code); :func:`load_onnx` hands the checked bytes, not the path, to the runtime.
Prunefront's metadata rides in ``metadata_props`` under ``prunefront``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from typing import Any

import torch

__all__ = ["FORMAT", "OnnxProgram", "UnsafeOnnxFile", "check_onnx", "load_onnx", "load_onnx_metadata", "weight_dtypes"]

#: Ops whose weight input decides whether they run on an integer kernel.
_WEIGHT_OPS = frozenset({"Conv", "ConvTranspose", "Gemm", "MatMul"})
#: Operator domains a file may use: the standard ONNX operators only.
_ALLOWED_DOMAINS = frozenset({"", "ai.onnx"})
#: Key of Prunefront's JSON metadata in an ONNX file's ``metadata_props``.
_META_KEY = "prunefront"
FORMAT = "prunefront-onnx-1"
class UnsafeOnnxFile(ValueError):
    """An ONNX file that is damaged or asks for something a Prunefront file never needs."""


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
