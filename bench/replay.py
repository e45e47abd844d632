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

Run as a script (issue 20), it is a simulated cluster: 64 and 256 workers over a
10,000-configuration space sampled from ranges, larger than any budget here (1/8, 1/4, 1/3 of
the epochs that run every configuration to its end), with several seeds. Its stand-in epochs
come from ``bench/stand_in.py``: per-method validation-accuracy curves through the recorded
grid's configurations (quadratic in ``amount``, linear in ``log(lr)``), plus per-epoch and
per-configuration Gaussian noise whose size is fitted per method from the grid's
epoch-to-epoch changes; test accuracy is validation plus an offset fitted to the grid;
costs are interpolated in ``amount``; epoch times are drawn from the recorded ones; one
seeded generator per seed. It reports MO-ASHA's hypervolume share against random search (no
early stopping), Ray's ASHA and Syne Tune's MOASHA (``bench/syne_peer.py``, as shipped and
with one line corrected; skipped, said, without ``.[syne]``), seed by seed, on that space
and on the recorded grid. ``--smoke-test``: 200 configurations, 2 seeds.
"""

from __future__ import annotations

import heapq
import math
import random
from collections.abc import Callable, Mapping, Sequence
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
    snapshots: dict[float, dict[Any, Mapping[str, Any]]] = field(default_factory=dict)  # budget -> kept


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


def group(table: pd.DataFrame) -> dict[Any, list[dict[str, Any]]]:
    """Each configuration's rows, in epoch order (what :func:`simulate` reads; build it once
    to replay one table many times)."""
    t = table.sort_values(["config_id", "epoch"], kind="stable")
    rows = t.to_dict("records")
    ids = t["config_id"].to_numpy()
    starts = np.flatnonzero(np.r_[True, ids[1:] != ids[:-1]]) if len(ids) else np.array([], dtype=int)
    ends = np.r_[starts[1:], len(ids)]
    return {ids[a]: rows[a:b] for a, b in zip(starts, ends)}


def simulate(
    table: pd.DataFrame | Mapping[Any, list[Mapping[str, Any]]],
    scheduler: Any,
    *,
    budget_epochs: float,
    workers: int = 4,
    seed: int = 0,
    order: list[Any] | None = None,
    snapshots: Sequence[float] = (),
) -> SearchRun:
    """One asynchronous search over ``table`` (rows: ``config_id, epoch, time_s`` and metrics).

    Args:
        table: Every configuration's every epoch (``time_s``: that epoch's wall time), or
            :func:`group` of it.
        scheduler: A Tune scheduler (``on_trial_result(None, trial, result) -> action``) or None.
        budget_epochs: The search stops starting trials and epochs once it has spent this many.
        workers: Trials running at once.
        seed: Shuffles the order configurations are tried in (unless ``order`` is given).
        snapshots: Smaller budgets: ``run.snapshots[b]`` is exactly the ``kept`` that
            ``simulate(..., budget_epochs=b)`` returns. Until it starts its ``ceil(b)``-th epoch
            that search is this one event for event; it then starts nothing more and its
            epochs in flight end the trials they belong to whatever the scheduler says, so
            each trial keeps its kept epoch among its epochs started before then.
    """
    by_config = group(table) if isinstance(table, pd.DataFrame) else table
    queue = list(order) if order is not None else sorted(by_config, key=str)
    if order is None:
        random.Random(seed).shuffle(queue)
    run = SearchRun()
    clock: list[tuple[float, int, Any, int]] = []  # (time the epoch ends, tie-break, config, epoch index)
    counter = 0
    history: dict[Any, list[Mapping[str, Any]]] = {}
    started: dict[Any, list[int]] = {}  # config -> each of its epochs' place in the order epochs started

    def start(now: float) -> None:
        nonlocal counter
        while queue and len(clock) < workers and run.epochs < budget_epochs:
            cid = queue.pop(0)
            trial = SimpleNamespace(trial_id=str(cid))
            if scheduler is not None and hasattr(scheduler, "on_trial_add"):
                scheduler.on_trial_add(None, trial)
            history[cid] = []
            started[cid] = [run.epochs]
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
        started[cid].append(run.epochs)
        run.epochs += 1
        heapq.heappush(clock, (now + float(by_config[cid][i + 1]["time_s"]), counter, cid, i + 1))
        counter += 1
    for b in snapshots:
        n = math.ceil(b)  # the epochs that search starts: the first n of this one
        run.snapshots[b] = {cid: kept_epoch([r for r, k in zip(rows, started[cid]) if k < n])
                            for cid, rows in history.items() if started[cid][0] < n}
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


# --- the simulated cluster: a large space, and Syne Tune's MOASHA as a peer (issue 20) -------------

LARGE_OBJECTIVES = {"val_accuracy": "max", "size_bytes": "min"}  # configs/default.yaml's scheduler
COSTS = ("flops", "size_bytes")
LARGE_BUDGETS = (1 / 8, 1 / 4, 1 / 3)
GRID_BUDGETS = (1 / 4, 1 / 3, 1 / 2)
LABELS = {"moasha": "MO-ASHA (ours)", "asha": "ASHA (Ray)", "none": "random, no stopping",
          "syne": "Syne MOASHA shipped", "syne-fixed": "Syne MOASHA fixed"}
PAIRS = (("moasha", "none"), ("moasha", "asha"), ("moasha", "syne"), ("moasha", "syne-fixed"), ("syne-fixed", "syne"))


def scheduler_factory(method: str, max_t: int, objectives: Mapping[str, str]) -> Callable[[], Any]:
    """A fresh scheduler per search: ours, Ray's, none, or Syne Tune's (``syne``, ``syne-fixed``)."""
    if method.startswith("syne"):
        import syne_peer

        return lambda: syne_peer.make(method, max_t, objectives)
    return lambda: make_scheduler(method, max_t, objectives)


def replay_space(by_config: Mapping[Any, list], methods: Sequence[str], objectives: Mapping[str, str],
                 budgets: Sequence[float], workers: int, seed: int, costs: Mapping[str, float]) -> dict:
    """Every method once on one table (seed ``seed``: the order configurations start in), its
    largest budget run and the smaller ones read from it (``simulate``'s ``snapshots``): per
    method and budget, the hypervolume share per cost, epochs spent, configurations started."""
    max_t = max(len(rows) for rows in by_config.values())
    full_kept = {cid: kept_epoch(rows) for cid, rows in by_config.items()}
    full = {c: front_hypervolume(full_kept, c, ref) for c, ref in costs.items()}
    total = sum(len(rows) for rows in by_config.values())
    out: dict = {}
    for method in methods:
        top = max(budgets) * total
        run = simulate(by_config, scheduler_factory(method, max_t, objectives)(), budget_epochs=top,
                       workers=workers, seed=seed, snapshots=[b * total for b in budgets if b < max(budgets)])
        for b in budgets:
            kept = run.snapshots.get(b * total, run.kept)
            out[(method, b)] = {**{c: front_hypervolume(kept, c, ref) / full[c] for c, ref in costs.items()},
                                "epochs": min(math.ceil(b * total), run.epochs), "started": len(kept)}
    return out


def print_tables(scores: dict, methods: Sequence[str], budgets: Sequence[float], title: str) -> None:
    """Median [IQR] over seeds per method and budget, then seed-by-seed pairs (Wilcoxon)."""
    print(f"{'method':<22} {'budget':>6} " + " ".join(f"{'hv ' + c + ' median [IQR]':>27}" for c in COSTS)
          + f" {'epochs':>7} {'started':>7}")
    for method in methods:
        for b in budgets:
            seeds = scores[(method, b)]
            cells = " ".join("{:>13.3f} [{:.3f}, {:.3f}]".format(*summarize([s[c] for s in seeds])) for c in COSTS)
            print(f"{LABELS[method]:<22} {b:>6.3f} {cells} {summarize([s['epochs'] for s in seeds])[0]:>7.0f} "
                  f"{summarize([s['started'] for s in seeds])[0]:>7.0f}")
    print(f"# {title}: seed by seed, first minus second, median difference (seeds ahead / behind, Wilcoxon p)")
    for a, other in PAIRS:
        if a not in methods or other not in methods:
            continue
        for b in budgets:
            cmp = {c: paired([s[c] for s in scores[(a, b)]], [s[c] for s in scores[(other, b)]]) for c in COSTS}
            print(f"  {LABELS[a]} vs {LABELS[other]:<22} {b:>6.3f}  " + "   ".join(
                f"{c} {x['median_diff']:+.4f} ({x['ahead']}/{x['behind']}, p={x['p']:.2g})" for c, x in cmp.items()))


def syne_methods() -> list[str]:
    import syne_peer

    if syne_peer.AVAILABLE:
        return list(syne_peer.VARIANTS)
    print(syne_peer.SKIP)
    return []


def large_space(grid: pd.DataFrame, dense: Mapping[str, float], configs: int, workers: Sequence[int], seeds: int,
                methods: Sequence[str]) -> dict:
    """The simulated cluster: for each seed a ``configs``-configuration space sampled by
    ``stand_in`` from the model fitted to ``grid``, replayed on each worker count."""
    import stand_in

    model = stand_in.fit(grid)
    costs = {c: float(dense[c]) for c in COSTS}
    print(f"# large space: {configs} configurations x {model.epochs} epochs sampled from ranges, stand-in epochs "
          f"from the model fitted to the recorded grid (bench/stand_in.py); objectives {dict(LARGE_OBJECTIVES)}; "
          f"budgets {', '.join(f'{b:.3f}' for b in LARGE_BUDGETS)} of {configs * model.epochs} epochs; {seeds} seeds")
    results: dict = {}
    for w in workers:
        scores: dict = {}
        for seed in range(seeds):
            by_config = group(stand_in.sample(model, configs, seed))
            got = replay_space(by_config, methods, LARGE_OBJECTIVES, LARGE_BUDGETS, w, seed, costs)
            for key, value in got.items():
                scores.setdefault(key, []).append(value)
        print(f"\n## {w} workers")
        print_tables(scores, methods, LARGE_BUDGETS, f"large space, {w} workers")
        results[w] = scores
    return results


def recorded_grid(table: pd.DataFrame, dense: Mapping[str, float], objectives: Mapping[str, str], workers: int,
                  seeds: int, methods: Sequence[str]) -> dict:
    """The peers on the recorded grid itself, as ``bench/search_efficiency.py`` replays it."""
    costs = {c: float(dense[c]) for c in COSTS}
    by_config = group(table)
    print(f"# recorded grid: {len(by_config)} configurations, objectives {dict(objectives)}, {workers} workers, "
          f"{seeds} seeds" + (" (Syne Tune's own bracket: three objectives)" if len(methods) > 1 else ""))
    scores: dict = {}
    for seed in range(seeds):
        for key, value in replay_space(by_config, methods, objectives, GRID_BUDGETS, workers, seed, costs).items():
            scores.setdefault(key, []).append(value)
    print_tables(scores, methods, GRID_BUDGETS, "recorded grid")
    return scores


def main() -> None:
    import json
    import time
    from pathlib import Path

    import _common
    import pyarrow.parquet as pq

    import search_efficiency as se

    p = _common.parser("Simulated cluster over a large space; Syne Tune's MOASHA as a peer (issue 20)")
    p.add_argument("--table", default=str(se.TABLE), help="the recorded grid (the stand-in model is fitted to it)")
    p.add_argument("--configs", type=int, default=10_000)
    p.add_argument("--workers", default="64,256")
    p.add_argument("--seeds", type=int, default=3, help="seeds of the large space (about 1 min each on 2 cores)")
    p.add_argument("--grid-seeds", type=int, default=20, help="seeds of the recorded grid's peer replay (about 2 s each)")
    p.add_argument("--json", help="also write the numbers here")
    args = p.parse_args()
    if args.smoke_test:
        args.configs, args.workers, args.seeds, args.grid_seeds = 200, "8,32", 2, 2
    _common.setup(1)
    t0 = time.time()
    table = pd.read_parquet(args.table)
    dense = json.loads(pq.read_schema(args.table).metadata[b"prunefront.grid"])["dense"]
    peers = syne_methods()
    grid = recorded_grid(table, dense, se.OBJECTIVES, 2, args.grid_seeds, ["moasha", *peers])
    print()
    workers = [int(w) for w in args.workers.split(",")]
    large = large_space(table, dense, args.configs, workers, args.seeds, ["moasha", "asha", "none", *peers])
    w, third = max(workers), 1 / 3
    diff = paired([s["size_bytes"] for s in large[w][("moasha", third)]],
                  [s["size_bytes"] for s in large[w][("none", third)]])["median_diff"]
    print(f"\n# took {time.time() - t0:.0f} s")
    _common.verdict(f"replay.large_space_moasha_minus_random_size_hv_share_at_one_third_{w}_workers", diff, 0.0,
                    higher_is_better=True)
    if args.json:
        flat = {"grid": {f"{m}@{b:.3f}": v for (m, b), v in grid.items()},
                "large": {str(k): {f"{m}@{b:.3f}": v for (m, b), v in s.items()} for k, s in large.items()}}
        Path(args.json).write_text(json.dumps(flat, indent=1))


if __name__ == "__main__":
    main()
