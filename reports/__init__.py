"""Prunefront reports: Pareto fronts of a pruning search, as Parquet, plots and text.

Pure functions over DataFrames (``reports.pareto``, ``reports.tables``) with
Parquet / plot I/O around them. Nothing here needs Ray; only
``reports.callback`` imports it, and only when first used::

    import reports
    reports.build_report("prunefront-results/digits")      # -> {file name: path}
    frames = reports.load("prunefront-results/digits")     # trials / final / fronts
    meta = reports.read_metadata("prunefront-results/digits")
    from reports import ReportCallback                      # imports ray here
"""

from __future__ import annotations

from typing import Any

from reports.build import build_report, open_report, write_report
from reports.compare import compare_fronts
from reports.io import load, read_metadata
from reports.ledger import METRIC_COLUMNS, Experiment, read_experiment
from reports.pareto import hv_contributions, hypervolume_2d, knee_point, nondominated_sort, pareto_mask
from reports.tables import FRONTS, ReportTables, build_tables

__all__ = [
    "FRONTS",
    "METRIC_COLUMNS",
    "Experiment",
    "ReportCallback",
    "ReportTables",
    "build_report",
    "build_tables",
    "compare_fronts",
    "hv_contributions",
    "hypervolume_2d",
    "knee_point",
    "load",
    "nondominated_sort",
    "open_report",
    "pareto_mask",
    "read_experiment",
    "read_metadata",
    "write_report",
]


def __getattr__(name: str) -> Any:
    # PEP 562: only touching reports.ReportCallback imports Ray.
    if name == "ReportCallback":
        from reports.callback import ReportCallback

        return ReportCallback
    raise AttributeError(f"module 'reports' has no attribute {name!r}")
