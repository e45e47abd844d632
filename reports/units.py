"""Names and units of the report's costs: labels, SI formatting, and parsing budgets."""

from __future__ import annotations

import math
import re
from typing import Any

#: Axis / column labels of the costs a front can use.
COST_LABELS: dict[str, str] = {
    "flops": "FLOPs",
    "flops_sparse": "sparse FLOPs",
    "params": "parameters",
    "params_nonzero": "nonzero parameters",
    "size_bytes": "file size",
    "latency_ms": "latency",
}
#: Short column headers for terminal tables.
COST_HEADERS: dict[str, str] = {
    "flops": "flops",
    "flops_sparse": "sp.flops",
    "params": "params",
    "params_nonzero": "nnz",
    "size_bytes": "size",
    "latency_ms": "latency",
}


def front_title(cost: str) -> str:
    """``validation accuracy vs FLOPs`` and the like."""
    return f"validation accuracy vs {COST_LABELS.get(cost, cost)}"


def _missing(value: Any) -> bool:
    if value is None:
        return True
    try:
        return math.isnan(float(value))
    except (TypeError, ValueError):
        return True


def format_cost(value: Any, cost: str) -> str:
    """Human-readable cost: ``1.23M`` (FLOPs, parameters), ``45.6KiB`` (bytes), ``0.42ms``."""
    if _missing(value):
        return "-"
    v = float(value)
    if cost == "size_bytes":
        for unit in ("B", "KiB", "MiB", "GiB"):
            if abs(v) < 1024 or unit == "GiB":
                return f"{v:.0f}{unit}" if unit == "B" else f"{v:.1f}{unit}"
            v /= 1024
    if cost == "latency_ms":
        return f"{v:.3g}ms"
    unit, scale = next(
        ((u, s) for u, s in (("T", 1e12), ("G", 1e9), ("M", 1e6), ("k", 1e3)) if abs(v) >= s),
        ("", 1.0),
    )
    x = v / scale
    digits = 0 if abs(x) >= 100 else 1 if abs(x) >= 10 else 2
    return f"{x:.{digits}f}{unit}"


_SUFFIX = {"": 1.0, "k": 1e3, "m": 1e6, "g": 1e9, "t": 1e12,
           "ki": 1024.0, "mi": 1024.0**2, "gi": 1024.0**3}


def parse_quantity(text: str, what: str) -> float:
    """``"2.5M"``, ``"50KiB"``, ``"200kB"``, ``"1e6"`` -> a number (bytes / FLOPs / ms).

    Raises:
        ValueError: one line saying what was expected.
    """
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)\s*([kKmMgGtT]i?)?\s*(b|B|ms|flops|FLOPs)?\s*", text)
    if not m:
        raise ValueError(
            f"{what}: {text!r} is not a number; write e.g. 2.5M, 50KiB, 200k or 1e6"
        )
    value = float(m.group(1)) * _SUFFIX[(m.group(2) or "").lower()]
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"{what}: {text!r} must be a positive number")
    return value
