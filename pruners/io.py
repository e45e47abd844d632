"""Save a pruned model so it loads and runs without the code that pruned it.

The file is a ``torch.export`` program (``.pt2``): the graph is stored as data and the
weights as plain tensors, so loading needs neither our classes nor unpickling arbitrary
Python objects. Masks of unstructured pruning are made permanent first (on a copy), so the
program holds ordinary weights with zeros in them; structurally pruned models are simply
smaller. A small JSON document (``prunefront.json``) rides along in the archive.

The archive's entries are deflate-compressed (PyTorch's zip reader inflates them;
``torch.export.load`` needs nothing else), so the zeros of an unstructured model shrink the
file: at 80 % sparsity it is about a quarter of the dense file (``bench/file_size.py``
compares this with sparse tensors and a bitmask-plus-values encoding). The file's size is
the model's ``size_bytes``: what a user ships is what the report says.
"""

from __future__ import annotations

import io
import json
import os
import types
import zipfile
from typing import Any

import torch
from torch import nn
from torch.export import Dim
from torch.nn.utils import prune as torch_prune

from pruners._archive_check import ModelFileError, UnsafeModelFile, check_archive
from pruners._devices import as_tuple, clone_model, unwrap

__all__ = ["save", "load", "load_metadata", "check_model_file", "make_permanent_copy", "ModelFileError", "UnsafeModelFile"]

FORMAT = "prunefront.model/1"
_META = "prunefront.json"


def make_permanent_copy(model: nn.Module) -> nn.Module:
    """A deep copy of ``model`` (DDP wrapper removed) with every pruning mask made permanent.

    The caller's model is left untouched (masks, hooks, train/eval flags).
    """
    clone = clone_model(unwrap(model))
    for module in clone.modules():
        for hook in list(module._forward_pre_hooks.values()):
            if isinstance(hook, torch_prune.BasePruningMethod):
                torch_prune.remove(module, hook._tensor_name)
    return clone


def _first(args: tuple[Any, ...]) -> torch.Tensor:
    for a in args:
        if isinstance(a, torch.Tensor):
            return a
    raise ValueError("example_inputs must contain at least one tensor")


def save(
    model: nn.Module,
    path: str | os.PathLike[str],
    example_inputs: torch.Tensor | tuple[torch.Tensor, ...],
    *,
    metadata: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Export ``model`` (eval mode, masks permanent) to ``path`` with ``torch.export``.

    The batch dimension (dim 0 of every tensor input) is exported as dynamic, so the loaded
    program accepts any batch size; if the model's code fixes the batch size, the program is
    exported for the batch size of ``example_inputs`` instead and the metadata says so.

    Args:
        model: The model to save (a ``DistributedDataParallel`` wrapper is looked through).
            It is not modified.
        path: Destination file, conventionally ``model.pt2``.
        example_inputs: A tensor (or tuple of positional tensors) with a batch dimension.
        metadata: Extra JSON-serialisable information stored under ``"user"``.

    Returns:
        The metadata written to the archive (``load_metadata`` reads it back).
    """
    args = as_tuple(example_inputs)
    _first(args)
    clone = make_permanent_copy(model).eval()
    device = next((p.device for p in clone.parameters()), torch.device("cpu"))
    clone = clone.to("cpu")  # a program saved from a GPU trial must load on a CPU-only reader
    args = tuple(a.detach().to("cpu") if isinstance(a, torch.Tensor) else a for a in args)

    # Export specialises a dimension of size 1 (and 0) to a constant, so trace with two
    # copies of the first example and declare the batch dynamic from 1 upwards.
    two = tuple(
        torch.cat([a[:1], a[:1]]) if isinstance(a, torch.Tensor) and a.dim() > 0 else a
        for a in args
    )
    batch = Dim("batch", min=1)
    dyn = tuple({0: batch} if isinstance(a, torch.Tensor) and a.dim() > 0 else None for a in two)
    dynamic_batch = True
    try:
        with torch.no_grad():
            program = torch.export.export(clone, two, dynamic_shapes=dyn)
    except Exception:  # noqa: BLE001 - any failure to generalise the batch falls back to static
        dynamic_batch = False
        with torch.no_grad():
            program = torch.export.export(clone, args)

    n_params = sum(p.numel() for p in clone.parameters())
    n_nonzero = sum(int(torch.count_nonzero(p)) for p in clone.parameters())
    meta = {
        "format": FORMAT,
        "torch": torch.__version__,
        "dynamic_batch": dynamic_batch,
        "input_shapes": [list(a.shape) for a in args if isinstance(a, torch.Tensor)],
        "saved_from_device": str(device),
        "params": n_params,
        "params_nonzero": n_nonzero,
        "user": metadata or {},
    }
    buf = io.BytesIO()
    torch.export.save(program, buf, extra_files={_META: json.dumps(meta)})
    write_compressed(buf.getvalue(), path)
    return meta


#: Fixed entry time, so the same model always gives the same bytes.
_EPOCH = (1980, 1, 1, 0, 0, 0)


def write_compressed(archive: bytes, path: str | os.PathLike[str], level: int = 6) -> None:
    """Rewrite a PyTorch zip archive with every entry deflated, atomically, to ``path``.

    PyTorch writes its archives uncompressed (entries aligned for memory mapping); its
    reader inflates deflated entries too, so the result loads with ``torch.export.load``
    (or ``torch.load``) as before. Zeros, the whole point of unstructured pruning, then cost
    almost nothing on disk.
    """
    path = os.fspath(path)
    tmp = f"{path}.{os.getpid()}.tmp"
    try:
        with zipfile.ZipFile(io.BytesIO(archive)) as src, zipfile.ZipFile(tmp, "w") as dst:
            for info in src.infolist():
                entry = zipfile.ZipInfo(info.filename, date_time=_EPOCH)
                # The archive's random id is stored as is, so the same model always gives
                # a file of the same size.
                random_id = info.filename.endswith("serialization_id")
                entry.compress_type = zipfile.ZIP_STORED if random_id else zipfile.ZIP_DEFLATED
                dst.writestr(entry, src.read(info), compresslevel=level)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def load(path: str | os.PathLike[str]) -> nn.Module:
    """Load a model written by ``save``: a plain ``nn.Module`` (eval-mode graph) on CPU.

    Needs only PyTorch: no Prunefront code, no pickled Python classes. The archive is checked
    first (``pruners/_archive_check.py``): a file that would make torch unpickle, exec or eval
    anything raises ``UnsafeModelFile``, a damaged one ``ModelFileError``, each one line naming
    the file and the entry; torch then loads the very bytes that were checked. ``eval()`` (and
    ``train(False)``) are accepted as no-ops, since the graph was exported in eval mode;
    ``train()`` raises, since an exported graph cannot switch to training behaviour.
    """
    name, data = _checked_bytes(path)
    try:
        module = torch.export.load(io.BytesIO(data)).module()
    except Exception as e:  # noqa: BLE001 - torch's many failure types become one line
        first = (str(e).strip().splitlines() or [""])[0][:200]
        raise ModelFileError(f"{name}: torch cannot load this model file ({e.__class__.__name__}: {first})") from None
    module.train = types.MethodType(_train_eval_only, module)  # type: ignore[method-assign]
    module.eval = types.MethodType(lambda self: self, module)  # type: ignore[method-assign]
    return module


def check_model_file(path: str | os.PathLike[str]) -> None:
    """Raise ``UnsafeModelFile`` / ``ModelFileError`` unless ``load`` would accept ``path``
    (the archive checks only: torch is not asked to load anything)."""
    _checked_bytes(path)


def _checked_bytes(path: str | os.PathLike[str]) -> tuple[str, bytes]:
    """The file's bytes, read once, after ``check_archive`` accepted them."""
    name = os.fspath(path)
    try:
        with open(name, "rb") as f:
            data = f.read()
    except OSError as e:
        raise ModelFileError(f"{name}: cannot read model file ({e.strerror or e})") from None
    check_archive(name, data)
    return name, data


def _train_eval_only(self: nn.Module, mode: bool = True) -> nn.Module:
    if mode:
        raise NotImplementedError(
            "a model loaded by pruners.load is an eval-mode export graph; it cannot train()"
        )
    return self


def load_metadata(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The JSON metadata ``save`` stored in the archive (``{}`` for a foreign .pt2 file).

    Read from the checked archive as JSON only: torch is not asked to load the program.
    """
    name, data = _checked_bytes(path)
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        entry = next((n for n in zf.namelist() if n.split("/", 1)[-1] == f"extra/{_META}"), None)
        if entry is None:
            return {}
        try:
            meta = json.loads(zf.read(entry).decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:
            raise ModelFileError(f"{name}: entry {entry!r} is not valid JSON ({e.__class__.__name__})") from None
    if not isinstance(meta, dict):
        raise ModelFileError(f"{name}: entry {entry!r} is not a JSON object")
    return meta
