"""Does MO-ASHA find the fronts at a fraction of the budget? (>= 0.97 of the grid's hypervolume at <= 1/3 of its epochs)

Record once, replay many times (tabular benchmarking, as Syne Tune's blackbox repository and
HPOBench do):

* ``--record``: a grid of 72 configurations (magnitude / Taylor / random x unstructured /
  structured x one-shot / gradual x amount 0.5 / 0.7 / 0.9 x lr 0.005 / 0.03, ``--epochs``
  fine-tuning epochs each, default 8) run by the real search (``orchestrator/search.py``, FIFO:
  every trial to its last epoch) on Fashion-MNIST with ``small_cnn``; every epoch's validation
  accuracy, test accuracy (kept epochs), FLOPs, sparse FLOPs, file size and wall time go to
  ``bench/data/search_grid.parquet`` (the first recording, 4 epochs per configuration, is kept
  as ``bench/data/search_grid_4ep.parquet``: replay it with ``--table``).
* replay (default): asynchronous searches on ``--workers`` simulated workers over that table
  (``bench/replay.py``), driving Prunefront's ``MultiObjectiveASHA`` and Ray's
  ``AsyncHyperBandScheduler`` (the real classes) through ``on_trial_result``, plus random
  search without early stopping, at budgets of 1/4, 1/3, 1/2 and 1 x the grid's epochs,
  ``--seeds`` seeds each. For each: the median (and IQR) over seeds of the hypervolume of the
  front found (chosen on validation accuracy, scored on test accuracy) against FLOPs and
  against file size, as a share of the full grid's.

    python bench/search_efficiency.py --record        # ~1 h on 2 cores
    python bench/search_efficiency.py [--seeds 30]    # seconds
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import _common
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import yaml

import replay
from orchestrator.steps import rung_epochs

ROOT = Path(__file__).resolve().parent.parent
TABLE = ROOT / "bench" / "data" / "search_grid_restarts.parquet"
OBJECTIVES = {"val_accuracy": "max", "flops": "min", "size_bytes": "min"}
COSTS = ("flops", "size_bytes")
BUDGETS = (0.25, 1 / 3, 0.5, 1.0)
TARGET = 0.97  # MO-ASHA's share of the grid's hypervolume at 1/3 of its epochs
METHODS = ("moasha", "asha", "none")
GRACE, ETA = 1, 2  # the replay's rungs: epochs 1, 2, 4 of 8
CRITERIA = ("magnitude", "taylor", "random")  # of the recorded grid
LABELS = {"moasha": "MO-ASHA", "asha": "ASHA (Ray)", "none": "random, no stopping"}


def record_config(smoke: bool, epochs: int = 8, lr_schedule: str = "cosine",
                  criteria: tuple[str, ...] = CRITERIA) -> dict:
    optimizer = {"name": "sgd", "momentum": 0.9, "weight_decay": 5e-4, "lr_schedule": lr_schedule}
    if lr_schedule == "cosine_restarts":  # restart after each epoch a rung of the replay judges
        optimizer["restart_epochs"] = rung_epochs(GRACE, ETA, epochs if not smoke else 2)
    return {
        "name": "search-grid",
        "seed": 0,
        "data": {"dataset": "fashion_mnist", "val_size": 2000 if not smoke else 200,
                 "train_subset": 6000 if not smoke else 300, "eval_subset": None if not smoke else 200,
                 "batch_size": 128, "eval_batch_size": 1000},
        "model": {"name": "small_cnn"},
        "dense": {"epochs": 8 if not smoke else 1, "lr": 0.05,
                  "optimizer": {"name": "sgd", "momentum": 0.9, "weight_decay": 5e-4, "lr_schedule": "cosine"}},
        "search": {
            "algorithm": "grid", "num_samples": 1, "epochs": epochs if not smoke else 2,
            "space": {"quantize": ["none"], "criterion": list(criteria) if not smoke else ["magnitude"],
                      "granularity": ["unstructured", "structured"], "scope": ["global"],
                      "threshold_rule": ["fraction"], "amount": [0.5, 0.7, 0.9] if not smoke else [0.5],
                      "schedule": ["one_shot", "gradual"] if not smoke else ["one_shot"],
                      "lr": [0.005, 0.03] if not smoke else [0.03]},
            "schedule_params": {"gradual": {"start_epoch": 0.0, "end_epoch": 0.8, "interval_epochs": 0.2}},
            "optimizer": optimizer,
        },
        "scheduler": {"name": "fifo"},
        "metrics": {"latency_repeats": 5},
        "resources": {"workers": 1, "cpus_per_worker": 0.9, "driver_cpus": 0.1},
    }


def record(out: Path, table: Path, smoke: bool, run: bool = True, epochs: int = 8, lr_schedule: str = "cosine",
           criteria: tuple[str, ...] = CRITERIA) -> None:
    """Run the grid with the real search (``run``; else it has run in ``out/grid``) and store
    every epoch of every trial."""
    out.mkdir(parents=True, exist_ok=True)
    cfg = record_config(smoke, epochs, lr_schedule, criteria)
    t0 = time.time()
    if run:
        (out / "grid.yaml").write_text(yaml.safe_dump(cfg))
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        proc = subprocess.run([sys.executable, str(ROOT / "orchestrator" / "search.py"), "--config",
                               str(out / "grid.yaml"), "--output", str(out / "grid")], env=env, capture_output=True,
                              text=True)
        (out / "grid.log").write_text(proc.stdout + proc.stderr)
        if proc.returncode != 0:
            raise SystemExit(f"the grid search failed (exit {proc.returncode}); see {out / 'grid.log'}")
    trials = pd.read_parquet(out / "grid" / "report" / "trials.parquet")
    dense = trials[trials["status"] == "reference"].iloc[0]
    rows = trials[trials["status"] != "reference"].sort_values(["trial_id", "epoch"]).copy()
    rows["time_s"] = rows.groupby("trial_id")["time_total_s"].diff().fillna(rows["time_total_s"])
    rows["method"] = rows["criterion"].astype(str) + "+" + rows["granularity"].astype(str) + "+" + rows["schedule"].astype(str)
    keep = ["trial_id", "method", "criterion", "granularity", "schedule", "amount", "lr", "epoch", "val_accuracy",
            "test_accuracy", "sparsity", "flops", "flops_sparse", "size_bytes", "time_s"]
    rows = rows[keep].rename(columns={"trial_id": "config_id"}).reset_index(drop=True)
    flags = " --smoke-test" if smoke else f" --epochs {epochs}"
    if lr_schedule != "cosine":
        flags += f" --lr-schedule {lr_schedule}"
    if tuple(criteria) != CRITERIA:
        flags += f" --criteria {','.join(criteria)}"
    meta = {"command": f"python bench/search_efficiency.py --record{flags} --table {table.name}",
            "config": cfg, "recorded_at": time.strftime("%Y-%m-%d"),
            "seconds": round(time.time() - t0) if run else None,  # None: the grid ran in an earlier call
            "dense": {k: (None if pd.isna(dense[k]) else float(dense[k])) for k in
                      ("val_accuracy", "test_accuracy", "flops", "flops_sparse", "size_bytes")}}
    t = pa.Table.from_pandas(rows, preserve_index=False)
    t = t.replace_schema_metadata({**(t.schema.metadata or {}), b"prunefront.grid": json.dumps(meta).encode()})
    table.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(t, table)
    took = f"in {meta['seconds']} s" if run else f"from the grid in {out / 'grid'}"
    print(f"recorded {rows['config_id'].nunique()} configurations x {rows['epoch'].max()} epochs {took} -> {table}")


def replay_all(table_path: Path, seeds: int, workers: int, verdict: bool = True) -> dict:
    table = pd.read_parquet(table_path)
    meta = json.loads(pq.read_schema(table_path).metadata[b"prunefront.grid"])
    dense = meta["dense"]
    costs = {c: float(dense[c]) for c in COSTS}
    max_t = int(table["epoch"].max())
    grid_epochs = len(table)
    full = replay.simulate(table, None, budget_epochs=float("inf"), workers=workers)
    full_hv = {c: replay.front_hypervolume(full.kept, c, costs[c]) for c in COSTS}
    print(f"# table: {table['config_id'].nunique()} configurations x {max_t} epochs = {grid_epochs} epochs "
          f"(recorded {meta['recorded_at']}: {meta['command']}); {workers} workers, {seeds} seeds")
    print("# full grid hypervolume: " + ", ".join(f"{c} {full_hv[c]:.4g}" for c in COSTS))
    rungs = rung_epochs(GRACE, ETA, max_t)
    corr = pd.concat([replay.rung_rank_correlation(table, rungs), replay.rung_rank_correlation(table, rungs, by="lr")])
    print(f"# rank correlation (Spearman) of the validation accuracy a rung judges (kept epoch so far) with the "
          f"final one, at epochs {rungs}: " + "; ".join(
              f"{'all' if k == 'all' else f'lr {k:g}'} " + " / ".join(f"{v:.2f}" for v in row) for k, row in corr.iterrows()))
    print(f"{'method':<22} {'budget':>6} " + " ".join(f"{'hv ' + c + ' median [IQR]':>30}" for c in COSTS)
          + f" {'epochs':>7}")
    results: dict = {"full_hv": full_hv, "grid_epochs": grid_epochs, "methods": {}, "paired": {},
                     "rung_rank_correlation": {str(k): {str(e): float(v) for e, v in row.items()}
                                               for k, row in corr.iterrows()}}
    raw: dict = {}
    for method in METHODS:
        for frac in BUDGETS:
            got = replay.run_method(
                table, lambda m=method: replay.make_scheduler(m, max_t, OBJECTIVES, grace=GRACE, eta=ETA),
                budget=frac * grid_epochs, seeds=seeds, workers=workers, costs=costs, full=full_hv,
            )
            raw[(method, frac)] = got
            summary = {c: replay.summarize(got[c]) for c in COSTS}
            results["methods"].setdefault(method, {})[f"{frac:.3f}"] = {**summary, "epochs": replay.summarize(got["epochs"])}
            cells = " ".join(f"{m:>16.3f} [{lo:.3f}, {hi:.3f}]" for m, lo, hi in (summary[c] for c in COSTS))
            print(f"{LABELS[method]:<22} {frac:>6.3f} {cells} {replay.summarize(got['epochs'])[0]:>7.0f}")
    print("# seed by seed (each seed starts the same configurations in the same order for every method): "
          "MO-ASHA minus the other method, median difference, seeds ahead / behind, Wilcoxon p")
    for other in ("none", "asha"):
        calls = []
        for frac in (b for b in BUDGETS if b < 1):
            cmp = {c: replay.paired(raw[("moasha", frac)][c], raw[(other, frac)][c]) for c in COSTS}
            results["paired"].setdefault(other, {})[f"{frac:.3f}"] = cmp
            cells = "   ".join(f"{c} {x['median_diff']:+.3f} ({x['ahead']}/{x['behind']}, p={x['p']:.2g})"
                               for c, x in cmp.items())
            print(f"  vs {LABELS[other]:<20} {frac:>6.3f}  {cells}")
            word = ("ahead" if all(x["median_diff"] > 0 and x["p"] < 0.05 for x in cmp.values()) else
                    "behind" if any(x["median_diff"] < 0 and x["p"] < 0.05 for x in cmp.values()) else "tied")
            calls.append(f"{word} at {frac:.3g}")
        results["paired"][other]["verdict"] = calls
    for other in ("none", "asha"):
        print(f"# MO-ASHA against {LABELS[other]}, seed by seed on both fronts (Wilcoxon p < 0.05): "
              f"{', '.join(results['paired'][other]['verdict'])}")
    third = f"{1 / 3:.3f}"
    mo = min(results["methods"]["moasha"][third][c][0] for c in COSTS)

    def moasha_ahead(budgets) -> bool:
        by_method = results["methods"]
        return all(by_method["moasha"][f"{b:.3f}"][c][0] >= by_method[m][f"{b:.3f}"][c][0]
                   for b in budgets for c in COSTS for m in ("asha", "none"))

    ahead = moasha_ahead(BUDGETS)
    # With the whole budget, random search without stopping runs every configuration: it *is*
    # the full grid (1.000 by construction), so only budgets below 1 can tell the methods apart.
    ahead_partial = moasha_ahead([b for b in BUDGETS if b < 1])
    print(f"# MO-ASHA ahead of (or tied with) ASHA and random search at every budget and front (median): {ahead}")
    print(f"# ... at every budget below the whole grid's (random search with the whole budget is the grid): "
          f"{ahead_partial}")
    results["moasha_third"], results["moasha_ahead"], results["moasha_ahead_below_full"] = mo, ahead, ahead_partial
    if verdict:
        _common.verdict("search_efficiency.moasha_hv_share_at_one_third_budget", mo, TARGET, higher_is_better=True)
    return results


def plot(runs: list[tuple[str, dict]], path: Path) -> None:
    """Share of the full grid's hypervolume against the budget: median and IQR per method,
    one panel per front; one line style per recorded table (``runs``: label, results)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(COSTS), figsize=(10, 4.4), dpi=120, sharey=True)
    titles = {"flops": "validation-selected front: test accuracy vs FLOPs",
              "size_bytes": "test accuracy vs file size"}
    colors = {"moasha": "C0", "asha": "C1", "none": "C2"}
    styles = ["-", "--", ":"]
    for ax, cost in zip(axes, COSTS):
        for k, (label, results) in enumerate(runs):
            for method in METHODS:
                by_budget = results["methods"][method]
                xs = [float(b) * (1 + 0.012 * k) for b in by_budget]  # side by side, not on top
                med = [by_budget[b][cost][0] for b in by_budget]
                lo = [by_budget[b][cost][0] - by_budget[b][cost][1] for b in by_budget]
                hi = [by_budget[b][cost][2] - by_budget[b][cost][0] for b in by_budget]
                name = LABELS[method] + (f" ({label})" if len(runs) > 1 else "")
                ax.errorbar(xs, med, yerr=[lo, hi], marker="o", markersize=4, capsize=3, color=colors[method],
                            linestyle=styles[k % len(styles)], label=name)
        ax.axhline(TARGET, color="0.5", linestyle=":", linewidth=1)
        ax.axvline(1 / 3, color="0.5", linestyle=":", linewidth=1)
        ax.set_xticks(list(BUDGETS))
        ax.set_xticklabels(["1/4", "1/3", "1/2", "1"])
        ax.set_xlabel("budget (fraction of the full grid's epochs)")
        ax.set_title(titles[cost], fontsize=9)
        ax.grid(True, alpha=0.3)
    axes[0].set_ylabel("hypervolume / full grid's (median, IQR)")
    axes[0].legend(fontsize=7, loc="lower right")
    if len(runs) > 1:
        fig.suptitle(", ".join(f"{name}: {label}" for name, (label, _) in zip(("solid", "dashed", "dotted"), runs)),
                     fontsize=9)
    fig.tight_layout()
    _common.save_figure(fig, path)


def schedule_label(table_path: Path) -> str:
    """The fine-tuning learning-rate schedule a table was recorded with."""
    meta = json.loads(pq.read_schema(table_path).metadata[b"prunefront.grid"])
    return meta["config"]["search"]["optimizer"].get("lr_schedule", "constant")


def main() -> None:
    p = _common.parser(__doc__.splitlines()[0])
    p.add_argument("--record", action="store_true", help="run the grid with the real search first (~1 h)")
    p.add_argument("--table-only", action="store_true",
                   help="with --record: the grid search has run (or was resumed) in <out>/grid; only build the table")
    p.add_argument("--epochs", type=int, default=8, help="with --record: fine-tuning epochs per configuration")
    p.add_argument("--lr-schedule", default="cosine_restarts", choices=("cosine", "cosine_restarts"),
                   help="with --record: the trials' learning-rate schedule (cosine_restarts: restarts after each rung)")
    p.add_argument("--criteria", default=",".join(CRITERIA), help="with --record: the criteria of the grid")
    p.add_argument("--table", default=str(TABLE))
    p.add_argument("--out", default="bench/out/grid")
    p.add_argument("--seeds", type=int, default=30)
    p.add_argument("--workers", type=int, default=2, help="trials at once (the recording ran 2)")
    p.add_argument("--json", help="also write the replay's numbers here")
    p.add_argument("--plot", type=Path, default=None, help="also draw hypervolume share vs budget to this PNG")
    p.add_argument("--compare", action="append", default=[], metavar="TABLE",
                   help="also replay this recorded table (e.g. the same grid under another learning-rate schedule); "
                        "the plot draws it dashed")
    args = p.parse_args()
    _common.setup(args.threads)
    table = Path(args.table)
    if args.smoke_test:
        table = Path(args.out).with_name("grid-smoke") / "search_grid.parquet"
        if not table.is_file():
            record(table.parent, table, smoke=True, lr_schedule="cosine_restarts")
        args.seeds = 3
    elif args.record:
        record(Path(args.out), table, smoke=False, run=not args.table_only, epochs=args.epochs,
               lr_schedule=args.lr_schedule, criteria=tuple(args.criteria.split(",")))
    results = replay_all(table, args.seeds, args.workers)
    runs = [(schedule_label(table), results)]
    for other in map(Path, args.compare):
        print(f"\n# compared: {other}")
        label = schedule_label(other)
        if label in dict(runs):
            label = f"{label}, {other.stem}"
        runs.append((label, replay_all(other, args.seeds, args.workers, verdict=False)))
    if args.json:
        Path(args.json).write_text(json.dumps(results if len(runs) == 1 else dict(runs), indent=2))
    if args.plot is not None:
        plot(runs, args.plot)


if __name__ == "__main__":
    main()
