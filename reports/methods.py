"""Which method wins: the best trial of each method at each compression level.

A *method* is a criterion x granularity x schedule. For every front cost (FLOPs, sparse
FLOPs, size, ...) and compression level (the dense cost divided by the trial's cost is at
least 1.5x, 2x, 4x, 8x, 16x), :func:`methods_table` keeps the method's trial with the best
validation accuracy among those reaching that level, and reports its test accuracy beside
it. Selection is on validation only; the test column is what the user would measure.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import pandas as pd

from reports.contract import FINISHED_STATUSES, REFERENCE_ID, REFERENCE_INT8_ID, REFERENCE_STATUS, SELECTION_METRIC

#: Compression levels (dense cost / trial cost) the table reports.
LEVELS: tuple[float, ...] = (1.5, 2.0, 4.0, 8.0, 16.0)
COLUMNS = ["cost", "level", "method", "criterion", "granularity", "schedule", "n_trials",
           "trial_id", "compression", SELECTION_METRIC, "test_accuracy"]


def methods_table(final: pd.DataFrame, costs: Mapping[str, str]) -> pd.DataFrame:
    """Long table: one row per (cost, level, method) that some trial of the method reached.

    Args:
        final: The final table (reference row first, then one row per finished trial,
            with a ``method`` column).
        costs: ``{front name: cost column}``; each cost gets its rows.

    Returns:
        Columns :data:`COLUMNS`: ``n_trials`` is how many of the method's finished trials
        reach the level; ``trial_id`` / ``compression`` / ``val_accuracy`` /
        ``test_accuracy`` describe the best of them on validation (ties: the higher
        compression, then the trial id).
    """
    ref = final[(final["status"] == REFERENCE_STATUS) & (final["trial_id"] == REFERENCE_ID)]
    # dense-int8 is a method too: the dense model quantized, with its own compression.
    trials = final[(final["status"].isin(FINISHED_STATUSES) | (final["trial_id"] == REFERENCE_INT8_ID))
                   & final["method"].notna()]
    rows = []
    for cost in dict.fromkeys(costs.values()):
        if ref.empty or cost not in final.columns or pd.isna(ref[cost].iloc[0]):
            continue
        dense_cost = float(ref[cost].iloc[0])
        cst = trials[cost].to_numpy(dtype=float, na_value=np.nan)
        acc = trials[SELECTION_METRIC].to_numpy(dtype=float, na_value=np.nan)
        with np.errstate(divide="ignore", invalid="ignore"):
            compression = np.where(cst > 0, dense_cost / cst, np.inf)
        ok = np.isfinite(acc) & np.isfinite(cst)
        for level in LEVELS:
            reached = trials[ok & (compression >= level)].assign(compression=compression[ok & (compression >= level)])
            # One sort for every method: the first row of a method is its best (trial ids
            # are unique, so no tie is left to the row order).
            ranked = reached.sort_values([SELECTION_METRIC, "compression", "trial_id"],
                                         ascending=[False, False, True], kind="stable")
            bests = ranked.drop_duplicates("method").sort_values("method", kind="stable")
            counts = reached["method"].value_counts()
            for _, best in bests.iterrows():
                rows.append({
                    "cost": cost, "level": level, "method": best["method"],
                    "criterion": best.get("criterion"), "granularity": best.get("granularity"),
                    "schedule": best.get("schedule"), "n_trials": int(counts[best["method"]]),
                    "trial_id": best["trial_id"], "compression": float(best["compression"]),
                    SELECTION_METRIC: float(best[SELECTION_METRIC]),
                    "test_accuracy": float(best["test_accuracy"]) if pd.notna(best.get("test_accuracy")) else np.nan,
                })
    out = pd.DataFrame(rows, columns=COLUMNS)
    for c in ("cost", "method", "criterion", "granularity", "schedule", "trial_id"):
        out[c] = out[c].astype("string")
    out["n_trials"] = out["n_trials"].astype("Int64")
    for c in ("level", "compression", SELECTION_METRIC, "test_accuracy"):
        out[c] = out[c].astype("float64")
    return out


def method_matrix(methods: pd.DataFrame, cost: str) -> pd.DataFrame:
    """One cost's rows as a matrix: methods x levels, cells ``(val, test, trial_id)``."""
    part = methods[methods["cost"] == cost]
    levels = sorted(part["level"].unique())
    out = pd.DataFrame(index=sorted(part["method"].unique()), columns=levels, dtype=object)
    for _, r in part.iterrows():
        out.at[r["method"], r["level"]] = (r[SELECTION_METRIC], r["test_accuracy"], r["trial_id"])
    return out
