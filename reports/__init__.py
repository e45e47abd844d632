"""Prunefront reports: Pareto fronts of a pruning search, as Parquet, plots and text.

Pure functions over DataFrames (``reports.pareto``, ``reports.tables``) with
Parquet / plot I/O around them, and ``reports.contract``, the result contract the
orchestrator writes by. Nothing here needs Ray (only ``reports.callback`` imports it)
or the orchestrator::

    import reports
    reports.build_report("prunefront-results/digits")      # -> {file name: path}
    frames = reports.load("prunefront-results/digits")     # trials / final / fronts / methods
    meta = reports.read_metadata("prunefront-results/digits")
    from reports import ReportCallback                      # imports ray here

Attributes are imported on first use (PEP 562), so ``import reports.contract`` in a Train
worker costs no pandas, pyarrow or matplotlib import.
"""

from __future__ import annotations

import importlib
from typing import Any

# public name -> module that defines it
_EXPORTS = {
    "build_report": "reports.build",
    "open_report": "reports.build",
    "write_report": "reports.build",
    "compare_fronts": "reports.compare",
    "load": "reports.io",
    "read_metadata": "reports.io",
    "METRIC_KEYS": "reports.contract",
    "Experiment": "reports.ledger",
    "read_experiment": "reports.ledger",
    "hv_contributions": "reports.pareto",
    "hypervolume_2d": "reports.pareto",
    "knee_point": "reports.pareto",
    "nondominated_sort": "reports.pareto",
    "pareto_mask": "reports.pareto",
    "DEFAULT_FRONTS": "reports.tables",
    "ReportTables": "reports.tables",
    "build_tables": "reports.tables",
    "pick": "reports.pick",
    "ReportCallback": "reports.callback",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'reports' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
