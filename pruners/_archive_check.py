"""Refuse a ``.pt2`` archive that would make ``torch.export.load`` run code, before it does.

``torch.export.load`` (torch 2.14) trusts its file: a payload marked ``use_pickle`` goes to
``torch.load(weights_only=False)``, an opaque or custom-object constant to ``pickle.loads`` /
the TorchScript unpickler, a legacy ``data/weights/<model>.pt`` layout and sample inputs that
the safe unpickler refuses fall back to full unpickling, a non-empty ``guards_code`` is
``exec``-ed when the module is built, and every ``expr_str`` of a symbolic shape goes through
``sympy.sympify`` (``eval``). A file written by ``pruners.save`` needs none of that: plain
tensors (raw bytes plus JSON metadata), ATen operators, shape expressions over symbols, and
sample inputs of plain tensors. So the archive is read here first, as data only, and anything
else is refused with one line naming the file and the entry (docs/security.md lists them).

Damaged files (truncated, CRC errors, not a zip) are refused the same way, instead of the
``BadZipFile`` / ``UnpicklingError`` and pages of warnings torch gives.
"""

from __future__ import annotations

import io
import json
import re
import zipfile
from typing import Any

__all__ = ["ModelFileError", "UnsafeModelFile", "check_archive"]


class ModelFileError(ValueError):
    """A model file that is not a readable ``pruners.save`` archive (damaged, foreign)."""


class UnsafeModelFile(ModelFileError):
    """A model file holding something whose loading would run code (pickle, exec, eval)."""


_MODEL = "model"
# Entries (below the archive's root folder) a torch.export archive of one model holds.
_FIXED = {
    "archive_format",
    "archive_version",
    "byteorder",
    ".data/version",
    ".data/serialization_id",
    f"models/{_MODEL}.json",
    f"data/weights/{_MODEL}_weights_config.json",
    f"data/constants/{_MODEL}_constants_config.json",
    f"data/sample_inputs/{_MODEL}.pt",
}
_WEIGHT = re.compile(r"data/weights/weight_\d+")
_CONSTANT = re.compile(r"data/constants/tensor_\d+")
_EXTRA = re.compile(r"extra/[A-Za-z0-9_.-]+")
_ROOT = re.compile(r"[A-Za-z0-9_.-]+")

# Graph node targets: ATen/prims operator overloads, and the Python scalar operators that
# symbolic shapes use. Anything else (torch.ops.load_library, torch.save, '#' extension
# operators, higher-order operators) is refused.
_OP_TARGET = re.compile(r"torch\.ops\.(aten|prims)\.[A-Za-z0-9_]+\.[A-Za-z0-9_]+")
_SCALAR_TARGETS = {f"_operator.{n}" for n in (
    "getitem", "add", "sub", "mul", "floordiv", "truediv", "mod", "pow", "neg", "pos", "abs",
    "eq", "ne", "lt", "le", "gt", "ge", "and_", "or_", "not_",
)} | {f"math.{n}" for n in ("ceil", "floor", "sqrt", "trunc")} | {
    "torch.sym_int", "torch.sym_float", "torch.sym_max", "torch.sym_min", "torch.sym_not",
    "torch.sym_ite", "torch.sym_sqrt", "torch._sym_sqrt",
}

# Shape expressions: sympy's own str() of expressions over shape symbols. Only these names,
# integer literals, quoted symbol names and operators; no attribute access, subscripts or
# other strings, so sympify's eval can only build sympy objects.
_SYMPY_NAMES = {
    "Symbol", "Integer", "Rational", "Float", "True", "False", "oo", "zoo", "nan", "Add", "Mul", "Pow",
    "positive", "negative", "integer", "real", "nonnegative", "finite",
    "Max", "Min", "Abs", "floor", "ceiling", "sqrt", "Eq", "Ne", "Lt", "Le", "Gt", "Ge",
    "And", "Or", "Not", "Piecewise", "Mod", "FloorDiv", "ModularIndexing", "Where", "PythonMod",
    "CleanDiv", "CeilToInt", "FloorToInt", "CeilDiv", "LShift", "RShift", "PowByNatural",
    "FloatPow", "FloatTrueDiv", "IntTrueDiv", "IsNonOverlappingAndDenseIndicator",
    "TruncToFloat", "TruncToInt", "RoundToInt", "RoundDecimal", "ToFloat", "Identity",
    "OpaqueUnaryFn_sqrt", "BitwiseFn_bitwise_and", "BitwiseFn_bitwise_or",
}
_TOKEN = re.compile(
    r"\s+|'[a-z]+\d+'|[A-Za-z_][A-Za-z0-9_]*|\d+(?:\.\d+)?(?:e[+-]?\d+)?|\*\*|//|==|!=|<=|>=|[-+*/%(),=<>&|~]"
)
_SYMBOL = re.compile(r"[a-z]+\d+")
_MAX_EXPR = 2000


def check_archive(path: str, data: bytes) -> None:
    """Raise ``ModelFileError`` / ``UnsafeModelFile`` unless ``data`` (read from ``path``)
    is a torch.export archive of one model that loads without unpickling or eval."""
    try:
        zf = zipfile.ZipFile(io.BytesIO(data))
    except (zipfile.BadZipFile, EOFError, ValueError) as e:
        raise ModelFileError(f"{path}: not a model file (damaged or truncated zip: {e})") from None
    with zf:
        try:
            bad = zf.testzip()
        except (zipfile.BadZipFile, EOFError, OSError, ValueError, NotImplementedError) as e:
            raise ModelFileError(f"{path}: damaged model file ({e})") from None
        if bad is not None:
            raise ModelFileError(f"{path}: damaged model file (entry {bad!r} fails its CRC check)")
        root, names = _entries(path, zf)
        read = _reader(path, zf, root)
        if read("archive_format") != b"pt2" or read("archive_version") != b"0":
            raise ModelFileError(f"{path}: not a torch.export .pt2 archive of the format torch 2.6+ writes")
        _payload_config(path, read, f"data/weights/{_MODEL}_weights_config.json", "weight_", names)
        _payload_config(path, read, f"data/constants/{_MODEL}_constants_config.json", "tensor_", names)
        _check_sample_inputs(path, read(f"data/sample_inputs/{_MODEL}.pt"))
        _check_program(path, _json(path, read, f"models/{_MODEL}.json"))


def _entries(path: str, zf: zipfile.ZipFile) -> tuple[str, set[str]]:
    names = zf.namelist()
    roots = {n.split("/", 1)[0] for n in names}
    if len(roots) != 1 or not _ROOT.fullmatch(next(iter(roots))):
        raise ModelFileError(f"{path}: not a torch.export .pt2 archive (entries under {sorted(roots)[:3]})")
    root = roots.pop()
    rel = set()
    for name in names:
        r = name.split("/", 1)[1] if "/" in name else ""
        if not (r in _FIXED or _WEIGHT.fullmatch(r) or _CONSTANT.fullmatch(r) or _EXTRA.fullmatch(r)):
            raise UnsafeModelFile(f"{path}: refused: unexpected entry {name!r} (pruners.save never writes it)")
        rel.add(r)
    missing = sorted(n for n in _FIXED if n not in rel and n != ".data/serialization_id")
    if missing:
        raise ModelFileError(f"{path}: not a complete .pt2 archive (missing {missing[0]!r})")
    return root, rel


def _reader(path: str, zf: zipfile.ZipFile, root: str):
    def read(rel: str) -> bytes:
        try:
            return zf.read(f"{root}/{rel}")
        except KeyError:
            raise ModelFileError(f"{path}: not a complete .pt2 archive (missing {rel!r})") from None
    return read


def _json(path: str, read, rel: str) -> Any:
    try:
        return json.loads(read(rel).decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:
        raise ModelFileError(f"{path}: entry {rel!r} is not valid JSON ({e.__class__.__name__})") from None


def _payload_config(path: str, read, rel: str, prefix: str, names: set[str]) -> None:
    """The payload table: every entry a raw tensor in a file of its own kind, no pickle."""
    doc = _json(path, read, rel)
    config = doc.get("config") if isinstance(doc, dict) else None
    if not isinstance(config, dict):
        raise ModelFileError(f"{path}: entry {rel!r} has no payload table")
    folder = rel.rsplit("/", 1)[0]
    for fqn, meta in config.items():
        if not isinstance(meta, dict):
            raise ModelFileError(f"{path}: entry {rel!r}: payload {fqn!r} is not an object")
        if meta.get("use_pickle") is not False:
            raise UnsafeModelFile(f"{path}: refused: {rel!r} marks {fqn!r} as pickled (use_pickle), which would run code on load")
        name = meta.get("path_name")
        if not isinstance(name, str) or not re.fullmatch(re.escape(prefix) + r"\d+", name):
            raise UnsafeModelFile(f"{path}: refused: {rel!r} stores {fqn!r} as {name!r}, not a plain tensor")
        if f"{folder}/{name}" not in names:
            raise ModelFileError(f"{path}: entry {rel!r}: payload {fqn!r} points at missing {name!r}")
        if not isinstance(meta.get("tensor_meta"), dict):
            raise ModelFileError(f"{path}: entry {rel!r}: payload {fqn!r} has no tensor_meta")


def _check_sample_inputs(path: str, blob: bytes) -> None:
    """torch reads them with the safe unpickler and falls back to full pickle: refuse what the
    safe one refuses, so the fallback never runs."""
    import torch

    try:
        obj = torch.load(io.BytesIO(blob), map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any refusal by the safe unpickler
        # torch's first line advises weights_only=False; the line naming the object is the one to show.
        lines = [ln.strip() for ln in str(e).splitlines() if "Unsupported" in ln or "global" in ln.lower()]
        why = lines[0].removeprefix("WeightsUnpickler error: ")[:160] if lines else e.__class__.__name__
        raise UnsafeModelFile(
            f"{path}: refused: entry 'data/sample_inputs/{_MODEL}.pt' needs full pickle, which would run code on load ({why})"
        ) from None
    if not isinstance(obj, (tuple, dict)):
        raise ModelFileError(f"{path}: entry 'data/sample_inputs/{_MODEL}.pt' is not a tuple of inputs")


def _check_program(path: str, program: Any) -> None:
    rel = f"models/{_MODEL}.json"
    if not isinstance(program, dict):
        raise ModelFileError(f"{path}: entry {rel!r} is not a program")
    if program.get("guards_code"):
        raise UnsafeModelFile(f"{path}: refused: {rel!r} carries guards_code, which torch would exec")
    stack: list[Any] = [program]
    while stack:  # iterative: a deeply nested program cannot exhaust the stack
        node = stack.pop()
        if isinstance(node, dict):
            target = node.get("target")
            if isinstance(target, str) and "inputs" in node and not _target_ok(target):
                raise UnsafeModelFile(f"{path}: refused: {rel!r} calls {target[:80]!r}, not an ATen operator")
            expr = node.get("expr_str")
            if expr is not None and not _expr_ok(expr):
                raise UnsafeModelFile(f"{path}: refused: {rel!r} has shape expression {str(expr)[:80]!r}, which torch would eval")
            stack.extend(node.values())
        elif isinstance(node, list):
            stack.extend(node)


def _target_ok(target: str) -> bool:
    return "__" not in target and (bool(_OP_TARGET.fullmatch(target)) or target in _SCALAR_TARGETS)


def _expr_ok(expr: Any) -> bool:
    if not isinstance(expr, str) or len(expr) > _MAX_EXPR:
        return False
    tokens = []
    pos = 0
    while pos < len(expr):
        m = _TOKEN.match(expr, pos)
        if m is None:
            return False
        pos = m.end()
        if not m.group().isspace():
            tokens.append(m.group())
    for i, tok in enumerate(tokens):
        if tok[0].isalpha() or tok[0] == "_":
            if tok not in _SYMPY_NAMES and not _SYMBOL.fullmatch(tok):
                return False
        elif tok == "**":  # a small literal exponent only: 9**9**9 would hang sympify
            nxt = tokens[i + 1] if i + 1 < len(tokens) else ""
            after = tokens[i + 2] if i + 2 < len(tokens) else ""
            if not (nxt.isdigit() and len(nxt) <= 2 and after != "**"):
                return False
        elif tok[0].isdigit() and len(tok) > 30:
            return False
    return True
