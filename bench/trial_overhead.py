"""Per-trial start-up: a Prunefront trial's ``startup_s`` / Ray's own floor (target <= 1.5).

Starting one trial costs 15-30 s on 2 cores before any training, and most of it is Ray's:
Tune's trial actor, a Train controller and its helper actors, a worker process. This
script separates what Prunefront adds (imports of torch, torch-pruning and the project in
the worker, the dataset, the model, DDP set-up) from what any Tune + Train trial pays:

* **floor**: a Tune function trainable whose ``TorchTrainer`` comes from the same
  ``orchestrator.trial.make_trainer`` as a real trial's (same resources, storage,
  ``TuneReportCallback``, checkpoint and failure configs, gloo), but whose loop only reports;
* **prunefront**: a real search on the same Ray (digits, small CNN, one epoch per trial,
  one trial at a time), read from each row's ``startup_s``.

Both are the seconds from the trainable building its ``TorchTrainer`` to the worker's
first line of work, one trial at a time. The first Prunefront trial starts beside the
dense job, so it is printed but left out of the median. The ratio's target says that what
Prunefront adds stays below half of what Ray itself costs.

    python bench/trial_overhead.py [--repeats 3]
"""

from __future__ import annotations

import os
import statistics
import tempfile
import time
from pathlib import Path

import _common
import yaml

TARGET = 1.5


def floor_loop(config: dict) -> None:
    import ray.train

    ray.train.report({"epoch": 1, "startup_s": time.time() - config["trainable_started"]})


def floor_trainable(config: dict) -> None:
    # Train's and Tune's modules are imported before the clock starts, as in run_trial.
    import ray.train.torch
    import ray.tune.integration.ray_train

    from orchestrator.trial import TrialContext, make_trainer

    ctx = TrialContext(search={}, dense_state=None, train_storage=config["storage"], workers=1,
                       worker_resources={"CPU": 0.9})
    trial_id = ray.tune.get_context().get_trial_id()
    make_trainer(floor_loop, {"trainable_started": time.time()}, trial_id, ctx).fit()


def run_floor(repeats: int, storage: str) -> list[float]:
    from ray import tune

    tuner = tune.Tuner(
        tune.with_resources(floor_trainable, {"CPU": 0.1}),
        param_space={"storage": storage, "i": tune.grid_search(list(range(repeats)))},
        tune_config=tune.TuneConfig(max_concurrent_trials=1),
        run_config=tune.RunConfig(storage_path=storage, name="floor", verbose=0),
    )
    results = tuner.fit()
    return [float(r.metrics["startup_s"]) for r in results]


def run_prunefront(trials: int, out: Path) -> list[float]:
    from orchestrator import search
    from reports.contract import LEDGER_FILE, read_events

    cfg = {
        "name": "bench-overhead",
        "dense": {"epochs": 1},
        "search": {"algorithm": "random", "num_samples": trials, "epochs": 1,
                   "space": {"quantize": ["none"], "criterion": ["magnitude"], "granularity": ["unstructured"],
                             "schedule": ["one_shot"], "amount": [0.5], "lr": [0.01]}},
        "scheduler": {"name": "fifo"},
        "metrics": {"latency_repeats": 1},
        "resources": {"workers": 1, "cpus_per_worker": 0.9, "driver_cpus": 0.1, "max_concurrent_trials": 1},
    }
    path = out / "bench.yaml"
    path.write_text(yaml.safe_dump(cfg))
    code = search.main(["--config", str(path), "--output", str(out / "exp")])
    if code != 0:
        raise SystemExit(f"the Prunefront search failed (exit {code})")
    started: dict[str, float] = {}  # in the order the trials first reported (one at a time)
    for _, ev in read_events(out / "exp" / LEDGER_FILE):
        if ev.get("type") == "result":
            started.setdefault(ev["trial_id"], float(ev["startup_s"]))
    return list(started.values())


def main() -> None:
    p = _common.parser(__doc__.splitlines()[0])
    args = p.parse_args()
    _common.setup(args.threads)
    repeats = args.repeats or (1 if args.smoke_test else 3)

    from orchestrator import ray_runtime

    ray_runtime.init(None, num_cpus=os.cpu_count() or 2)
    with tempfile.TemporaryDirectory(prefix="prunefront-bench-") as tmp:
        t0 = time.time()
        floor = run_floor(repeats, str(Path(tmp, "tune")))
        t1 = time.time()
        ours = run_prunefront(repeats + 1, Path(tmp))
        t2 = time.time()
    import ray

    ray.shutdown()
    first, rest = ours[0], ours[1:]  # the first trial starts beside the dense job
    floor_s, ours_s = statistics.median(floor), statistics.median(rest)
    print(f"floor (Tune trial + Train run, empty loop): {', '.join(f'{s:.1f}' for s in floor)} s "
          f"-> median {floor_s:.1f} s ({t1 - t0:.0f} s for {repeats} trials)")
    print(f"prunefront trial (digits, small CNN):       {', '.join(f'{s:.1f}' for s in rest)} s "
          f"-> median {ours_s:.1f} s; the first, beside the dense job: {first:.1f} s "
          f"({t2 - t1:.0f} s for the search)")
    print(f"prunefront's own share: {ours_s - floor_s:.1f} s per trial")
    _common.verdict("trial_startup_ratio", ours_s / floor_s, TARGET, higher_is_better=False)


if __name__ == "__main__":
    main()
