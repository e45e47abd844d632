"""int8 quantization of a (pruned) model into a file that a stock runtime runs on integer kernels.

What ships is an ONNX file in QDQ form: ``QuantizeLinear`` / ``DequantizeLinear`` pairs around
int8 weight initializers, which ONNX Runtime's CPU provider fuses into integer ops
(``QLinearConv``, ``QLinearMatMul``, ...). ONNX Runtime is the latency runtime.

* **Post-training** (``int8``, and the ``dense-int8`` reference): the float model is exported
  (``save_onnx``) and ONNX Runtime's own quantizer (``onnxruntime.quantization.quantize_static``)
  quantizes it: int8 weights, symmetric per output channel; uint8 activations, per tensor,
  MinMax over the calibration batches (training images, never validation or test ones: the
  caller hands them in).
* **Quantization-aware training** (``int8_qat``): torchao's PT2E flow. The model is exported
  (``torch.export``), ``X86InductorQuantizer`` (same scheme) inserts fake-quantize modules
  (``prepare(qat=True)``), the model fine-tunes through them, and ``convert_pt2e`` folds the
  learned ranges into quantize / dequantize pairs that ``torch.onnx.export`` writes as QDQ.

Why ONNX Runtime's quantizer after training, measured on the Fashion-MNIST ``small_resnet``
(1 thread, 2026-12-07): its file ran 1.22x / 1.37x / 1.25x faster than the float ONNX file at
batch 1 / 16 / 64, where the torchao-converted file ran 0.64x / 0.60x / 0.55x (slower: the
X86 quantizer annotates for torch's compiler, leaving patterns ONNX Runtime runs as float
kernels on dequantized weights), weighed 119 kB against 164 kB (float: 349 kB), and took
0.9 s to make against 17 s. Why not the other candidates:

* an AOTInductor package of the torchao int8 program (torchao's own path to integer kernels)
  compiled in 117 s on 2 cores and weighed 1.88 MB (2026-12-06), and a trial would compile
  one for every epoch it reports;
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
from pruners.onnx_file import _META_KEY, FORMAT, OnnxProgram, UnsafeOnnxFile, check_onnx, load_onnx  # noqa: F401
from pruners.onnx_file import load_onnx_metadata, weight_dtypes  # noqa: F401

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



def _quantizer(qat: bool) -> Any:
    """torchao's X86 quantizer with weights in 7 bits ([-64, 63]), like the post-training
    files (``reduce_range``; see ``_quantize_static``): full-scale 8-bit weights overflow
    ONNX Runtime's int16 pair sums on x86 CPUs without VNNI."""
    import dataclasses

    from torchao.quantization.pt2e.quantizer import x86_inductor_quantizer as xiq

    config = xiq.get_default_x86_inductor_quantization_config(is_qat=qat)
    weight = dataclasses.replace(config.weight, quant_min=-64, quant_max=63)
    quantizer = xiq.X86InductorQuantizer()
    quantizer.set_global(dataclasses.replace(config, weight=weight))
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
    _name_each_call(graph, tag=True)
    if qat:
        prepared = prepare_qat_pt2e(graph, _quantizer(qat=True))
    else:
        prepared = prepare_pt2e(graph, _quantizer(qat=False))
    _name_each_call(prepared, tag=False)
    return prepared


def _name_each_call(graph: torch.fx.GraphModule, *, tag: bool) -> None:
    """Give each call of a module its own name in the nodes' ``nn_module_stack`` (``tag``),
    or take those names back off (not ``tag``).

    The quantizer finds its patterns by grouping ops per module (torch's
    ``get_source_partitions`` falls back to the innermost ``nn_module_stack`` entry when an
    export records no ``source_fn_stack``). A module called twice, such as the one ``nn.ReLU``
    of torchvision's ``BasicBlock``, then forms one group with two outputs, and annotation
    raises "Input partition has more than one output node". Export already keys a repeated
    call apart (``layer1.0.relu@1``); tagging copies that suffix into the module name the
    grouping reads. A module's real name never holds ``@``.
    """
    for node in graph.graph.nodes:
        stack = node.meta.get("nn_module_stack")
        if not stack:
            continue
        key, (fqn, cls) = next(reversed(stack.items()))
        if "@" not in key:
            continue
        call = "@" + key.rsplit("@", 1)[1]
        if tag and not fqn.endswith(call):
            fqn = fqn + call
        elif not tag and fqn.endswith(call):
            fqn = fqn[: -len(call)]
        else:
            continue
        node.meta["nn_module_stack"] = {**stack, key: (fqn, cls)}


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
        _write_model(program.model_proto, tmp, path, meta)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return meta


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
        seen = _quantize_static(model, path, example_inputs, calibration, calibration_examples, metadata)
    else:  # after QAT: torchao's conversion of the trained graph (its learned ranges)
        converted = convert(prepared)
        save_onnx(converted, path, example_inputs, metadata={"quantize": "int8", "calibration_examples": 0,
                                                               **(metadata or {})})
        seen = 0
    dtypes = weight_dtypes(path)
    quantized = tuple(n for n, d in dtypes.items() if d == "int8")
    left = tuple(n for n, d in dtypes.items() if d != "int8")
    if dtypes and not quantized:
        raise ValueError(f"no layer of {type(unwrap(model)).__name__} could be quantized to int8 (first: {left[0]})")
    return QuantizeReport(os.fspath(path), os.path.getsize(path), seen, quantized, left)


def _strip_debug_metadata(graph: Any) -> None:
    """Drop what the exporter attaches to each node and value for debugging (stack traces, FX
    node text, source paths, name scopes): half of a small int8 file's bytes, none of them
    needed to run it, and the build machine's paths in every shipped file."""
    from pruners.onnx_file import _all_nodes

    for node in _all_nodes(graph):
        del node.metadata_props[:]
        node.doc_string = ""
    for value in (*graph.input, *graph.output, *graph.value_info):
        del value.metadata_props[:]
    del graph.metadata_props[:]


def _write_model(proto: Any, tmp: str, path: str | os.PathLike[str], meta: dict[str, Any]) -> None:
    """``proto`` with Prunefront's metadata, written to ``tmp`` (fsynced, checked by
    ``onnx.checker``) and renamed to ``path``: the file is whole or absent."""
    import onnx

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


def _quantize_static(model: nn.Module, path: str | os.PathLike[str], example_inputs: Any, calibration: Iterable[Any],
                     limit: int | None, metadata: dict[str, Any] | None) -> int:
    """Post-training int8 by ONNX Runtime's quantizer on the float ONNX file of ``model``:
    QDQ format, int8 weights symmetric per output channel in 7 bits (``reduce_range``, see
    below), uint8 activations (MinMax over the calibration batches). Writes ``path`` atomically; returns the examples seen."""
    import onnx
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    folder = os.path.dirname(os.path.abspath(path))
    with tempfile.TemporaryDirectory(prefix=".quantize-", dir=folder) as tmp:
        float_path, int8_path = os.path.join(tmp, "float.onnx"), os.path.join(tmp, "int8.onnx")
        meta = save_onnx(model, float_path, example_inputs)
        name = onnx.load(float_path, load_external_data=False).graph.input[0].name
        batches, seen = [], 0
        for batch in calibration:
            x = batch[0] if isinstance(batch, (list, tuple)) else batch
            x = x[: max(0, limit - seen)] if limit is not None else x
            if x.shape[0] == 0:
                break
            batches.append({name: x.detach().cpu().float().numpy()})
            seen += int(x.shape[0])
            if limit is not None and seen >= limit:
                break
        if seen == 0:
            raise ValueError("calibration batches held no examples")

        class Reader(CalibrationDataReader):
            def __init__(self) -> None:
                self.items = iter(batches)

            def get_next(self) -> dict[str, Any] | None:
                return next(self.items, None)

        with warnings.catch_warnings(), _quiet_root_logger():
            warnings.simplefilter("ignore")
            # reduce_range: 7-bit weights. On x86 without VNNI (AVX2), ONNX Runtime's u8 x s8
            # kernels add pairs of products in int16 (VPMADDUBSW), which full-scale 8-bit
            # weights overflow (2 x 255 x 127 > 32,767): outputs clip and accuracy drops (0.7
            # points on the compression bench's small_resnet). A shipped file must compute on
            # the user's CPU what it computed here, so it is quantized for every x86 CPU.
            quantize_static(float_path, int8_path, Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                            reduce_range=True, weight_type=QuantType.QInt8, activation_type=QuantType.QUInt8)
        meta["user"] = {"quantize": "int8", "calibration_examples": seen, **(metadata or {})}
        _write_model(onnx.load(int8_path, load_external_data=False), int8_path, path, meta)
    return seen


def _quiet_root_logger() -> Any:
    """ONNX Runtime's quantizer logs advice on the root logger (pre-processing hints)."""
    import contextlib
    import logging

    @contextlib.contextmanager
    def ctx() -> Any:
        root = logging.getLogger()
        level = root.level
        root.setLevel(max(level, logging.ERROR))
        try:
            yield
        finally:
            root.setLevel(level)

    return ctx()


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
