"""Driver cost per trial result as a search grows: 100, 1,000 and 10,000 stand-in trials.

Every trial result passes through the driver: the scheduler decides, then Prunefront's
callbacks (ledger, monitor, live report) run, in the order ``orchestrator/search.py``
registers them. This benchmark drives them the way ``bench/replay.py`` drives schedulers:
direct ``on_trial_result`` / ``on_trial_complete`` / ``on_trial_error`` calls with stand-in
trials (no Tune controller: on 2 shared cores Tune's own loop would dominate and time out at
10,000 trials), asynchronous workers in simulated time, results drawn from a small model
(validation accuracy quantized to 0.001 and sparsity to 0.05, so results tie), several rungs
(grace 1, eta 2, 8 epochs: rungs 1, 2, 4), and at 10,000 trials 1 % errored trials (half
failing in their own code, half lost by Tune). The monitor runs with ``export=False`` (no Ray
actor); everything else is the real code.

Per step it prints the median, p99 and max driver cost per result (all hooks one result
causes, a trial's end included), per component, then the times of ``reports build
--no-plots``, ``reports show`` and ``reports pick`` on the experiment directory it wrote.
The floor is the same loop with Ray's ``FIFOScheduler`` (and Ray's ASHA) and no callbacks.
It ends with ``RESULT`` lines against the goal of issue 20: median <= 1 ms and p99 <= 10 ms
at 10,000 trials, growth from 100 to 10,000 no faster than log n.

A step that would take longer than ``--budget-s`` stops early and says so (its figures are
those of the results it reached).

    python bench/driver_scale.py                # 100, 1,000, 10,000 (long on a busy machine)
    python bench/driver_scale.py --smoke-test   # tiny sizes, < 30 s
"""

from __future__ import annotations

import contextlib
import heapq
import json
import math
import os
import random
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import _common
import numpy as np

from reports.layout import MODEL_FILE, Layout

OBJECTIVES = {"val_accuracy": "max", "size_bytes": "min"}  # the config's default objectives
MAX_T, GRACE, ETA = 8, 1, 2
COMPONENTS = ("scheduler", "ledger", "monitor", "report")
DENSE = {"val_accuracy": 0.975, "val_loss": 0.09, "test_accuracy": 0.972, "test_loss": 0.095, "train_loss": 0.04,
         "sparsity": 0.0, "requested_sparsity": 0.0, "flops": 34048, "flops_sparse": 34048, "params": 17226,
         "params_nonzero": 17226, "size_bytes": 70845, "latency_ms": 0.05}
METHODS = ("magnitude+unstructured+one_shot", "taylor+structured+gradual", "l1+structured+one_shot")


def _config(rng: random.Random) -> dict[str, Any]:
    return {"method": rng.choice(METHODS), "scope": "global", "threshold_rule": "fraction",
            "amount": round(rng.uniform(0.3, 0.95), 2), "lr": rng.choice((0.01, 0.03, 0.1)), "epochs": MAX_T}


def _row(cfg: dict[str, Any], skill: float, epoch: int, rng: random.Random) -> dict[str, Any]:
    """A stand-in epoch: accuracy falls with sparsity, rises with epochs, noisy, quantized."""
    sparsity = round(round(cfg["amount"] / 0.05) * 0.05, 2)
    acc = round(min(0.99, 0.97 - 0.25 * sparsity ** 3 + skill - 0.05 / epoch + rng.gauss(0, 0.004)), 3)
    size = int(DENSE["size_bytes"] * (1 - sparsity) + 4000)
    return {"epoch": epoch, "val_accuracy": acc, "val_loss": round(1.2 - acc, 4), "test_accuracy": round(acc - 0.003, 3),
            "test_loss": round(1.21 - acc, 4), "train_loss": round(1.1 - acc, 4), "sparsity": sparsity,
            "requested_sparsity": sparsity, "flops": 34048, "flops_sparse": int(34048 * (1 - sparsity)),
            "params": 17226, "params_nonzero": int(17226 * (1 - sparsity)), "size_bytes": size,
            "latency_ms": 0.05, "time_total_s": 2.0 * epoch, "training_iteration": epoch}


def _experiment_dir(root: Path, trials: int) -> Path:
    out = Layout(root / f"exp{trials}")
    out.dense.mkdir(parents=True)
    out.dense_metrics.write_text(json.dumps(DENSE))
    info = {"name": f"driver-scale-{trials}", "config": {"name": f"driver-scale-{trials}",
            "dataset": {"name": "digits"}, "model": {"name": "mlp"},
            "search": {"num_samples": trials, "max_epochs": MAX_T}}, "versions": {}, "started_at": "2026-12-06T00:00:00+00:00"}
    out.experiment.write_text(json.dumps(info))
    return out.root


def _hooks(kind: str, out: Path, trials: int) -> tuple[Any, dict[str, Any]]:
    """The scheduler and callbacks of one variant: ``prunefront`` (MO-ASHA and the three
    callbacks, as orchestrator/search.py assembles them) or the floors ``fifo`` / ``asha``."""
    if kind == "moasha":  # the scheduler alone
        from orchestrator.moasha import MultiObjectiveASHA

        return MultiObjectiveASHA(OBJECTIVES, time_attr="epoch", max_t=MAX_T, grace_period=GRACE,
                                  reduction_factor=ETA), {}
    if kind == "fifo":
        from ray.tune.schedulers import FIFOScheduler

        return FIFOScheduler(), {}
    if kind == "asha":
        from ray.tune.schedulers import AsyncHyperBandScheduler

        return AsyncHyperBandScheduler(time_attr="epoch", metric="val_accuracy", mode="max", max_t=MAX_T,
                                       grace_period=GRACE, reduction_factor=ETA), {}
    from orchestrator.ledger import LedgerCallback
    from orchestrator.moasha import MultiObjectiveASHA
    from orchestrator.monitor import MonitorCallback
    from reports.callback import ReportCallback

    scheduler = MultiObjectiveASHA(OBJECTIVES, time_attr="epoch", max_t=MAX_T, grace_period=GRACE, reduction_factor=ETA)
    callbacks = {"ledger": LedgerCallback(out, scheduler=scheduler, max_epochs=MAX_T, echo=False),
                 "monitor": MonitorCallback(out, "driver-scale", trials, export=False, echo=False),
                 "report": ReportCallback(out, every=max(5, trials // 2), plots=False, at_end=False)}
    for cb in callbacks.values():
        cb.setup()
    return scheduler, callbacks


def _timed(spent: dict[str, float], name: str, fn: Any, *args: Any) -> Any:
    """Call ``fn``; add its wall seconds to ``spent[name]`` and its CPU seconds (this thread:
    what a busy machine's preemptions do not inflate) to ``spent["cpu"]``."""
    t0, c0 = time.perf_counter(), time.thread_time()
    value = fn(*args)
    spent[name] = spent.get(name, 0.0) + time.perf_counter() - t0
    spent["cpu"] = spent.get("cpu", 0.0) + time.thread_time() - c0
    return value


def run_step(trials: int, kind: str, root: Path, *, workers: int, errored: float, seed: int,
             budget_s: float) -> dict[str, Any]:
    """One simulated search; per result, the seconds each component spent on it."""
    from orchestrator.ledger import TRIAL_ERROR_KEY

    rng = random.Random(seed)
    out = _experiment_dir(root, trials) if kind == "prunefront" else root
    scheduler, callbacks = _hooks(kind, out, trials)
    all_trials: list[Any] = []
    clock: list[tuple[float, int, Any]] = []
    costs: list[dict[str, float]] = []
    started, counter, t_start = 0, 0, time.perf_counter()
    skills: dict[str, float] = {}

    def end(trial: Any, now: float, spent: dict[str, float], error: bool) -> None:
        trial.status = "ERROR" if error else "TERMINATED"
        if not error:
            _timed(spent, "scheduler", scheduler.on_trial_complete, None, trial, trial.last_result)
        for name, cb in callbacks.items():
            hook = cb.on_trial_error if error else cb.on_trial_complete
            _timed(spent, name, hook, 0, all_trials, trial)

    def start(now: float) -> None:
        nonlocal started, counter
        while started < trials and len(clock) < workers:
            trial = SimpleNamespace(trial_id=f"t{started:05d}", config=_config(rng), status="RUNNING",
                                    last_result={}, error_file=None, epoch=0)
            skills[trial.trial_id] = rng.gauss(0, 0.01)
            scheduler.on_trial_add(None, trial)
            all_trials.append(trial)
            started += 1
            heapq.heappush(clock, (now + rng.uniform(1, 3), counter, trial))
            counter += 1

    start(0.0)
    partial = False
    while clock:
        if time.perf_counter() - t_start > budget_s:
            partial = True
            break
        now, _, trial = heapq.heappop(clock)
        trial.epoch += 1
        result = _row(trial.config, skills[trial.trial_id], trial.epoch, rng)
        fails = rng.random() < errored / MAX_T
        if fails and rng.random() < 0.5:  # failed in its own code: reports the error, then ends
            result = {**result, TRIAL_ERROR_KEY: "RuntimeError: stand-in failure"}
        spent: dict[str, float] = {}
        if fails and TRIAL_ERROR_KEY not in result:  # lost by Tune (e.g. its node died)
            end(trial, now, spent, error=True)
        else:
            trial.last_result = result
            action = _timed(spent, "scheduler", scheduler.on_trial_result, None, trial, dict(result))
            for name, cb in callbacks.items():
                _timed(spent, name, cb.on_trial_result, 0, all_trials, trial, dict(result))
            if fails or str(action).upper() == "STOP" or trial.epoch >= MAX_T:
                end(trial, now, spent, error=False)
            else:
                heapq.heappush(clock, (now + rng.uniform(1, 3), counter, trial))
                counter += 1
        costs.append(spent)
        if trial.status != "RUNNING":
            start(now)
    for cb in callbacks.values():
        if hasattr(cb, "on_experiment_end"):
            cb.on_experiment_end(all_trials)
    return {"costs": costs, "partial": partial, "started": started, "dir": out}


def summary(costs: list[dict[str, float]], names: tuple[str, ...]) -> dict[str, tuple[float, float, float]]:
    """(median, p99, max) in ms, per component, for their sum ("total", wall) and the CPU
    time of the whole ("cpu")."""
    out = {}
    for name in (*names, "total", "cpu"):
        v = np.array([sum(v for k, v in c.items() if k != "cpu") if name == "total" else c.get(name, 0.0)
                      for c in costs]) * 1e3
        out[name] = (float(np.median(v)), float(np.percentile(v, 99)), float(v.max())) if len(v) else (math.nan,) * 3
    return out


def _stand_in_models(exp: Path) -> None:
    """A model file for every trial that finished with a result (the ledger copies real ones
    from Train checkpoints; ``reports pick`` names the file it would ship)."""
    from reports.contract import read_events, trial_states

    from _synthetic import model_bytes

    layout = Layout(exp)
    data = model_bytes()  # one real (tiny) model file for every trial: `pick` checks the file it names
    for tid, st in trial_states(read_events(layout.ledger)).items():
        if st.finished and st.status != "errored":
            layout.model_dir(tid).mkdir(parents=True, exist_ok=True)
            (layout.model_dir(tid) / MODEL_FILE).write_bytes(data)


def cli_times(exp: Path) -> dict[str, float]:
    """Seconds of ``reports build --no-plots``, ``show`` and ``pick --max-drop 10``, run in this
    process (what the commands do, without the interpreter's start and imports)."""
    from reports.__main__ import main as reports_main

    _stand_in_models(exp)
    out = {}
    for name, args in (("build", ["build", str(exp), "--no-plots"]), ("show", ["show", str(exp)]),
                       ("pick", ["pick", str(exp), "--max-drop", "10"])):
        t0 = time.perf_counter()
        with open(os.devnull, "w") as sink, contextlib.redirect_stdout(sink):
            rc = reports_main(args)
        out[name] = time.perf_counter() - t0 if rc == 0 else math.nan
    return out


def plot(table: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    n = [r["trials"] for r in table]
    for name, style in (("total", "-o"), *((c, "--.") for c in COMPONENTS)):
        ax.plot(n, [r["prunefront"][name][0] for r in table], style, label=f"{name} median")
    ax.plot(n, [r["prunefront"]["total"][1] for r in table], "-s", label="total p99")
    ax.plot(n, [r["moasha"]["total"][0] for r in table], "-^", label="MO-ASHA alone median")
    ax.plot(n, [r["asha"]["total"][0] for r in table], ":", color="grey", label="Ray ASHA alone median")
    ax.plot(n, [r["fifo"]["total"][0] for r in table], ":", color="k", label="floor: Ray FIFO median")
    ax.axhline(1.0, color="grey", lw=0.6), ax.axhline(10.0, color="grey", lw=0.6)
    ax.set(xscale="log", yscale="log", xlabel="trials in the search", ylabel="driver ms per result",
           title="Driver cost per trial result (MO-ASHA + ledger + monitor + report)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    _common.save_figure(fig, path)


def main(argv: list[str] | None = None) -> int:
    p = _common.parser(__doc__.splitlines()[0])
    p.add_argument("--sizes", type=int, nargs="+", default=[100, 1000, 10000])
    p.add_argument("--workers", type=int, default=64, help="trials running at once (simulated)")
    p.add_argument("--budget-s", type=float, default=900.0, help="stop a step after this many seconds")
    p.add_argument("--plot", default=str(Path(_common.ROOT) / "docs" / "img" / "driver_scale.png"))
    args = p.parse_args(argv)
    if args.smoke_test:
        args.sizes, args.workers, args.budget_s, args.plot = [10, 30], 4, 8.0, None
    _common.setup(args.threads)
    table = []
    with tempfile.TemporaryDirectory(prefix="driver_scale_") as tmp:
        for trials in args.sizes:
            errored = 0.01 if trials >= 10000 or (args.smoke_test and trials == args.sizes[-1]) else 0.0
            row: dict[str, Any] = {"trials": trials}
            for kind in ("fifo", "asha", "moasha", "prunefront"):
                root = Path(tmp) / f"{kind}{trials}"
                root.mkdir()
                run = run_step(trials, kind, root, workers=args.workers, errored=errored, seed=trials,
                               budget_s=args.budget_s)
                names = ("scheduler", *COMPONENTS[1:]) if kind == "prunefront" else ("scheduler",)
                row[kind] = summary(run["costs"], names)
                row[f"{kind}_results"], row[f"{kind}_partial"] = len(run["costs"]), run["partial"]
                row[f"{kind}_started"] = run["started"]
            row["cli"] = cli_times(run["dir"])
            table.append(row)
            _print_step(row)
    _print_table(table)
    if args.plot:
        plot(table, Path(args.plot))
        print(f"# plot: {args.plot}")
    return _verdicts(table)


def _print_step(row: dict[str, Any]) -> None:
    note = " (STOPPED at the time budget)" if row["prunefront_partial"] else ""
    print(f"\n## {row['trials']} trials: {row['prunefront_results']} results, "
          f"{row['prunefront_started']} trials started{note}")
    print(f"{'component':<22}{'median ms':>11}{'p99 ms':>10}{'max ms':>10}")
    for name, (med, p99, mx) in row["prunefront"].items():
        print(f"{name:<22}{med:>11.3f}{p99:>10.3f}{mx:>10.1f}")
    for kind, label in (("moasha", "MO-ASHA alone"), ("fifo", "floor: Ray FIFO"), ("asha", "Ray ASHA alone")):
        note = f" ({row[kind + '_results']} results{', STOPPED' if row[kind + '_partial'] else ''})"
        for what in ("total", "cpu"):
            med, p99, mx = row[kind][what]
            print(f"{label + (' CPU' if what == 'cpu' else ''):<22}{med:>11.4f}{p99:>10.4f}{mx:>10.2f}{note}")
    print("reports CLI s: " + ", ".join(f"{k} {v:.2f}" for k, v in row["cli"].items()))


def _print_table(table: list[dict[str, Any]]) -> None:
    print("\n| trials | results | median ms | p99 ms | max ms | x FIFO floor (median) | MO-ASHA in it, median / p99 ms | MO-ASHA alone, median / p99 ms "
          "| ledger | monitor | report (median / p99 ms) | build s | show s | pick s |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in table:
        pf, floor = r["prunefront"], r["fifo"]["total"][0]
        comp = " | ".join(f"{pf[c][0]:.3f} / {pf[c][1]:.2f}" for c in ("ledger", "monitor", "report"))
        print(f"| {r['trials']:,}{' (partial)' if r['prunefront_partial'] else ''} | {r['prunefront_results']:,} "
              f"| {pf['total'][0]:.3f} | {pf['total'][1]:.2f} | {pf['total'][2]:.0f} | {pf['total'][0] / floor:.0f} "
              f"| {pf['scheduler'][0]:.3f} / {pf['scheduler'][1]:.3f} "
              f"| {r['moasha']['total'][0]:.3f} / {r['moasha']['total'][1]:.3f} | {comp} "
              f"| {r['cli']['build']:.1f} | {r['cli']['show']:.1f} | {r['cli']['pick']:.1f} |")


def _verdicts(table: list[dict[str, Any]]) -> int:
    first, last = table[0], table[-1]
    n0, n1 = first["trials"], last["trials"]
    med, p99 = last["prunefront"]["total"][:2]
    ok = _common.verdict(f"driver_scale.median_ms_per_result_at_{n1}", med, 1.0, higher_is_better=False)
    ok &= _common.verdict(f"driver_scale.p99_ms_per_result_at_{n1}", p99, 10.0, higher_is_better=False)
    log_ratio = math.log(n1) / math.log(n0)
    for name in ("total", "scheduler"):
        growth = last["prunefront"][name][0] / first["prunefront"][name][0]
        ok &= _common.verdict(f"driver_scale.{name}_median_growth_{n0}_to_{n1}", growth, round(log_ratio, 3),
                              higher_is_better=False)
    mo_med, mo_p99 = last["moasha"]["total"][:2]
    _common.verdict(f"driver_scale.moasha_alone_median_ms_at_{n1}", mo_med, 1.0, higher_is_better=False)
    _common.verdict(f"driver_scale.moasha_alone_p99_ms_at_{n1}", mo_p99, 10.0, higher_is_better=False)
    _common.verdict(f"driver_scale.moasha_alone_cpu_p99_ms_at_{n1}", last["moasha"]["cpu"][1], 10.0,
                    higher_is_better=False)
    print(f"# same run, Ray's own ASHA alone: median {last['asha']['total'][0]:.3f} ms, p99 {last['asha']['total'][1]:.3f} ms "
          f"(CPU p99 {last['asha']['cpu'][1]:.3f} ms)")
    _common.verdict(f"driver_scale.moasha_alone_median_growth_{n0}_to_{n1}",
                    mo_med / first["moasha"]["total"][0], round(log_ratio, 3), higher_is_better=False)
    if last["prunefront_partial"]:
        print(f"RESULT driver_scale.complete_at_{n1} = 0 (target 1): MISSES target (stopped at the time budget)")
        ok = False
    return 0 if ok else 1


if __name__ == "__main__":
    rc = main()
    sys.exit(0 if "--smoke-test" in sys.argv else rc)
