"""Replay searches over a recorded table: asynchronous workers in simulated time.

The HPO literature compares schedulers on tabular benchmarks (Syne Tune's blackbox
repository, HPOBench): every configuration of a fixed space is run once to its last epoch
and every epoch recorded; a search is then simulated any number of times by reading the
table instead of training. Here the schedulers are the real ones, Prunefront's
``MultiObjectiveASHA`` and Ray's ``AsyncHyperBandScheduler``, driven through
``on_trial_result`` with stand-in trials, exactly as Tune drives them.

``simulate`` runs ``workers`` trials at once: each epoch of a trial takes its recorded wall
time; when a trial reports, the scheduler answers continue or stop; a free worker starts the
next configuration in the (seeded) order; the search ends when the epoch budget is spent or
every configuration has run. A finished or stopped trial's result is its kept epoch
(``reports.contract.kept_epoch``) among the epochs it ran. ``front_hypervolume`` selects
the Pareto front on *validation* accuracy and scores it on the *test* accuracy of the
selected points.
"""

from __future__ import annotations

import heapq
import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import numpy as np
import pandas as pd

from reports.contract import SELECTION_METRIC
from reports.contract import kept_epoch
from reports.pareto import hypervolume_2d, nondominated_sort

__all__ = ["SearchRun", "front_hypervolume", "make_scheduler", "paired", "rung_rank_correlation", "simulate"]

CONTINUE, STOP = "CONTINUE", "STOP"


@dataclass
class SearchRun:
    """What a simulated search found: each started trial's kept row and the epochs spent."""

    kept: dict[Any, Mapping[str, Any]] = field(default_factory=dict)
    epochs: int = 0
    stopped_early: int = 0
    wall_s: float = 0.0


def make_scheduler(name: str, max_t: int, objectives: Mapping[str, str], grace: int = 1, eta: float = 2) -> Any:
    """``moasha`` (ours), ``asha`` (Ray's, on the first objective) or ``none`` (no stopping):
    the search's own schedulers (``tune_space.scheduler_for``)."""
    if name == "none":
        return None
    if name not in ("moasha", "asha"):
        raise ValueError(f"unknown scheduler {name!r}; valid choices: moasha, asha, none")
    from orchestrator.tune_space import scheduler_for

    metric, mode = next(iter(objectives.items()))
    return scheduler_for(name, metric=metric, mode=mode, objectives=dict(objectives), max_t=max_t,
                         grace_period=grace, reduction_factor=eta)


def simulate(
    table: pd.DataFrame,
    scheduler: Any,
    *,
    budget_epochs: float,
    workers: int = 4,
    seed: int = 0,
    order: list[Any] | None = None,
) -> SearchRun:
    """One asynchronous search over ``table`` (rows: ``config_id, epoch, time_s`` and metrics).

    Args:
        table: Every configuration's every epoch (``time_s``: that epoch's wall time).
        scheduler: A Tune scheduler (``on_trial_result(None, trial, result) -> action``) or None.
        budget_epochs: The search stops starting trials and epochs once it has spent this many.
        workers: Trials running at once.
        seed: Shuffles the order configurations are tried in (unless ``order`` is given).
    """
    by_config = {cid: rows.sort_values("epoch").to_dict("records") for cid, rows in table.groupby("config_id")}
    queue = list(order) if order is not None else sorted(by_config, key=str)
    if order is None:
        random.Random(seed).shuffle(queue)
    run = SearchRun()
    clock: list[tuple[float, int, Any, int]] = []  # (time the epoch ends, tie-break, config, epoch index)
    counter = 0
    history: dict[Any, list[Mapping[str, Any]]] = {}

    def start(now: float) -> None:
        nonlocal counter
        while queue and len(clock) < workers and run.epochs < budget_epochs:
            cid = queue.pop(0)
            trial = SimpleNamespace(trial_id=str(cid))
            if scheduler is not None and hasattr(scheduler, "on_trial_add"):
                scheduler.on_trial_add(None, trial)
            history[cid] = []
            run.epochs += 1
            heapq.heappush(clock, (now + float(by_config[cid][0]["time_s"]), counter, cid, 0))
            counter += 1

    start(0.0)
    while clock:
        now, _, cid, i = heapq.heappop(clock)
        row = by_config[cid][i]
        history[cid].append(row)
        run.wall_s = now
        last = i + 1 == len(by_config[cid])
        action = CONTINUE
        if scheduler is not None:
            result = {k: v for k, v in row.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
            action = str(scheduler.on_trial_result(None, SimpleNamespace(trial_id=str(cid)), result)).upper()
        if last or action == STOP or run.epochs >= budget_epochs:
            if not last and action == STOP:
                run.stopped_early += 1
            run.kept[cid] = kept_epoch(history[cid])
            if scheduler is not None and hasattr(scheduler, "on_trial_complete"):
                scheduler.on_trial_complete(None, SimpleNamespace(trial_id=str(cid)), dict(row))
            start(now)
            continue
        run.epochs += 1
        heapq.heappush(clock, (now + float(by_config[cid][i + 1]["time_s"]), counter, cid, i + 1))
        counter += 1
    return run


def front_hypervolume(kept: Mapping[Any, Mapping[str, Any]], cost: str, reference_cost: float) -> float:
    """Hypervolume of the front chosen on validation accuracy, scored on test accuracy.

    The points on the validation front (rank 1 of ``(val_accuracy, cost)``) are re-scored
    with their ``test_accuracy``; the area they dominate in ``(test accuracy, cost)`` inside
    the box from (0, ``reference_cost``) is the search's value on that front.
    """
    rows = [r for r in kept.values() if r is not None]
    if not rows:
        return 0.0
    val = np.array([[r["val_accuracy"], r[cost]] for r in rows], dtype=float)
    front = nondominated_sort(val, ("max", "min")) == 1
    test = np.array([[r["test_accuracy"], r[cost]] for r, on in zip(rows, front) if on], dtype=float)
    return hypervolume_2d(test, (0.0, reference_cost), ("max", "min"))


def summarize(values: list[float]) -> tuple[float, float, float]:
    """(median, 25th, 75th percentile)."""
    a = np.asarray(values, dtype=float)
    return float(np.median(a)), float(np.percentile(a, 25)), float(np.percentile(a, 75))


def paired(mine: list[float], other: list[float]) -> dict[str, float]:
    """Seed-by-seed comparison of two methods' scores (seed ``i`` of each started the same
    configurations in the same order): median difference, seeds ahead / behind, and the
    two-sided Wilcoxon signed-rank p-value (ties dropped; 1.0 when every seed ties)."""
    from scipy.stats import wilcoxon

    d = np.asarray(mine, dtype=float) - np.asarray(other, dtype=float)
    ahead, behind = int((d > 0).sum()), int((d < 0).sum())
    p = float(wilcoxon(d, zero_method="wilcox").pvalue) if ahead + behind else 1.0
    return {"median_diff": float(np.median(d)), "ahead": ahead, "behind": behind, "seeds": len(d), "p": p}


def rung_rank_correlation(table: pd.DataFrame, epochs: list[int], by: str | None = None) -> pd.DataFrame:
    """Spearman rank correlation, over configurations, of the validation accuracy a rung sees
    at each of ``epochs`` (the kept epoch so far, as MO-ASHA judges) with the accuracy the
    configuration ends with (its kept epoch over all epochs); per value of ``by`` if given.

    High means stopping at that epoch keeps the configurations that end best."""
    rows = []
    for cid, g in table.groupby("config_id"):
        g = g.sort_values("epoch").to_dict("records")
        final = kept_epoch(g)[SELECTION_METRIC]
        row = {"config_id": cid, "final": final, **({by: g[0][by]} if by else {})}
        for e in epochs:
            row[e] = kept_epoch([r for r in g if r["epoch"] <= e])[SELECTION_METRIC]
        rows.append(row)
    df = pd.DataFrame(rows)
    groups = df.groupby(by) if by else [("all", df)]
    out = {key: {e: g[e].corr(g["final"], method="spearman") for e in epochs} for key, g in groups}
    return pd.DataFrame(out).T


def run_method(
    table: pd.DataFrame, make: Callable[[], Any], budget: float, seeds: int, workers: int,
    costs: Mapping[str, float], full: Mapping[str, float],
) -> dict[str, list[float]]:
    """Hypervolume shares (per cost) and epochs of ``seeds`` simulated searches."""
    out: dict[str, list[float]] = {c: [] for c in costs}
    out["epochs"] = []
    for seed in range(seeds):
        run = simulate(table, make(), budget_epochs=budget, workers=workers, seed=seed)
        for cost, ref in costs.items():
            out[cost].append(front_hypervolume(run.kept, cost, ref) / full[cost])
        out["epochs"].append(run.epochs)
    return out
