"""The command users run: a pruning search on Ray Tune, each trial a Ray Train job.

    python orchestrator/search.py                                  # default: digits, embedded Ray
    python orchestrator/search.py --config configs/fashion_mnist.yaml --set search.num_samples=8
    ray job submit --working-dir . -- python orchestrator/search.py --config ... --output /shared/exp
    python orchestrator/search.py --resume prunefront-results/digits-default

``run`` is the steps of docs/design.md's "One search, step by step", one function each:
1. ``main``: parse and validate the command line (errors are one line, exit 2, before Ray is
imported); 2. :func:`start_ray`: start or attach to Ray and plan the trials on it;
3. :func:`record_experiment`: ``experiment.json``; 4. :func:`start_dense`: the dense
baseline, a Train job beside the search (or the stored one); 5. :func:`make_tuner`: the
Tuner, or on ``--resume`` the interrupted one restored; 6-8. :func:`fit_with_restores`: the
trials run and the callbacks write the ledger, models and progress (SIGTERM stops it like
Ctrl-C; a Ray fault restores it); 9. :func:`finish`: the report (also when interrupted), and
:func:`exit_code` from ``errors.EXIT``.
"""

from __future__ import annotations

import os
import sys

if __package__ in (None, ""):
    # Run as `python orchestrator/search.py`: sys.path[0] is orchestrator/, where
    # `import orchestrator` cannot resolve (and whose modules would shadow top-level
    # names); the repository root is what the imports need.
    _here = os.path.dirname(os.path.abspath(__file__))
    sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != _here]
    sys.path.insert(0, os.path.dirname(_here))

import signal
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from orchestrator.errors import EXIT
from reports.contract import TrialCounts
from reports.layout import REPORT_FILES, TRAIN_DIR, TUNE_DIR, Layout, write_json

__all__ = ["main", "run"]


def _say(msg: str) -> None:
    print(f"prunefront: {msg}", flush=True)


class _Preload:
    """Import modules on a thread (a failure is left for the real import to report)."""

    def __init__(self, *modules: str) -> None:
        import importlib

        def run() -> None:
            for name in modules:
                try:
                    importlib.import_module(name)
                except Exception:  # noqa: BLE001 - the import below raises it properly
                    return

        self._thread = threading.Thread(target=run, name="prunefront-preload", daemon=True)
        self._thread.start()

    def join(self) -> None:
        self._thread.join()


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python orchestrator/search.py`` and ``prunefront-search``."""
    from orchestrator import cli

    # 1. Parse and validate; nothing below runs on a bad command line.
    try:
        cfg, args = cli.parse(argv, prog="python orchestrator/search.py")
    except cli.ErrorExit as e:
        return int(e.code)
    if args.schema:
        import json

        from orchestrator.loading import json_schema

        print(json.dumps(json_schema(), indent=2))
        return EXIT["ok"]
    if args.dry_run:
        print(cli.describe(cfg, args))
        return EXIT["ok"]
    # One driver per output, from before its first write to its exit (orchestrator/lock.py).
    try:
        held = cli.lock_output(cfg)
    except cli.ErrorExit as e:
        return int(e.code)
    try:
        if held.note() is not None:
            _say(f"note: {held.note()}")
        return run(cfg, args)
    except cli.ErrorExit as e:
        return int(e.code)
    finally:
        held.release()


def _ray_fault(error: BaseException) -> str | None:
    """The Ray fault (a process killed for memory, a lost actor or node) behind ``error``,
    as one line, or None when the error has another cause."""
    from ray import exceptions

    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, (exceptions.OutOfMemoryError, exceptions.RayActorError, exceptions.NodeDiedError,
                              exceptions.ObjectLostError, exceptions.WorkerCrashedError)):
            return " ".join(f"{type(error).__name__}: {error}".split())[:300]
        error = error.__cause__ or error.__context__
    return None


def _experiment_info(cfg: Any, args: Any, plan: Any, tune_path: str, runtime: Any) -> dict[str, Any]:
    from orchestrator.ledger import now_iso, package_versions

    return {
        "name": cfg.name,
        "config": cfg.to_dict(),
        "versions": package_versions(),
        "started_at": now_iso(),
        "argv": list(sys.argv),
        "plan": plan.to_dict(),
        "tune_path": tune_path,
        "ray": runtime.describe(),
    }


def record_experiment(out: Layout, info: dict[str, Any], resuming: bool) -> None:
    """Step 3: ``experiment.json`` (kept, with a resume time added, on ``--resume``)."""
    import json

    from orchestrator.ledger import now_iso

    out.root.mkdir(parents=True, exist_ok=True)
    path = out.experiment
    if resuming and path.is_file():
        old = json.loads(path.read_text(encoding="utf-8"))
        old.setdefault("resumed_at", []).append(now_iso())
        write_json(path, old)
    else:
        from orchestrator.lock import create_exclusive

        try:
            create_exclusive(path, info)  # never replaces another search's record
        except FileExistsError:
            from orchestrator.errors import fail

            fail(f"output: {str(out.root)!r} already holds an experiment; continue it with --resume {out.root}")


@dataclass(frozen=True)
class _Where:
    """Where this search's files go: the experiment directory and Tune's storage."""

    out: Layout
    tune_name: str
    storage: str
    tune_path: str
    train_storage: str

    @classmethod
    def of(cls, cfg: Any) -> _Where:
        tune_name = TUNE_DIR if cfg.storage is None else cfg.name
        storage = cfg.storage_path
        tune_path = f"{storage.rstrip('/')}/{tune_name}"
        return cls(Layout(cfg.output_dir), tune_name, storage, tune_path, f"{tune_path}/{TRAIN_DIR}")


@dataclass
class _Dense:
    """The dense baseline every trial starts from: its weights (an object ref), the gate
    trials wait on before their Train runs (None: stored), and the watch on a running job."""

    state: Any
    gate: Any = None
    watch: Any = None

    def failed(self, interrupted: bool) -> bool:
        """True when the dense job failed (waits for it unless the search was interrupted)."""
        return (self.watch is not None and self.watch.wait(timeout=0 if interrupted else None)
                and self.watch.error is not None)


@dataclass
class _Search:
    """The Tuner and what restoring it needs."""

    tuner: Any
    trainable: Any
    monitor: Any
    replays: dict[str, dict[str, Any]]
    signal: str | None = None  # what interrupted the search, if anything


def run(cfg: Any, args: Any) -> int:
    """Run the search for a validated config (``cli.parse``'s output): steps 2-9 of
    docs/design.md's "One search, step by step"."""
    t0 = time.time()
    _say(f"experiment {cfg.name!r} -> {cfg.output_dir}" + (" (resuming)" if args.resuming else ""))
    runtime, plan = start_ray(cfg, args, t0)                           # 2
    where = _Where.of(cfg)
    record_experiment(where.out, _experiment_info(cfg, args, plan, where.tune_path, runtime), args.resuming)  # 3
    dense = start_dense(cfg, args, plan, where)                         # 4
    search = make_tuner(cfg, args, plan, where, dense)                  # 5 (6-8: the trials and callbacks)
    t_search = time.time()
    try:
        fit_with_restores(search, cfg, where, dense)
    finally:
        counts, dense_failed = finish(cfg, args, plan, runtime, where, search, dense, t0, t_search)  # 9
    return exit_code(counts, plan.trials, dense_failed)


def start_ray(cfg: Any, args: Any, t0: float) -> tuple[Any, Any]:
    """Step 2: an embedded Ray or the cluster's, and the plan of the trials on it."""
    from orchestrator import cli, ray_runtime
    from orchestrator.config import ConfigError

    # Starting Ray is mostly waiting for its processes: the driver's own imports go on meanwhile.
    preload = _Preload("ray.tune", "reports", "orchestrator.tune_space", "orchestrator.dense")
    runtime = ray_runtime.init(args.address, metrics_port=getattr(args, "metrics_port", None))
    preload.join()
    _say(f"using the {runtime.describe()} ({time.time() - t0:.1f} s)")
    if runtime.in_job and Path(cfg.output_dir).resolve().is_relative_to(Path.cwd().resolve()):
        # A submitted job's driver runs in a temporary copy of the working directory.
        _say("warning: the output is inside the job's temporary working directory; pass an absolute --output")
    plan = args.plan
    if plan is None:
        from orchestrator.plan import make_plan

        try:
            plan = make_plan(cfg, ray_runtime.cluster_resources())
        except ConfigError as e:
            cli.fail(str(e))
    worker = ", ".join(f"{v:g} {k}" for k, v in plan.worker.items())
    _say(f"{plan.trials} trial(s), up to {plan.max_concurrent_trials} at once; each: a driver of "
         f"{plan.driver.get('CPU', 0):g} CPU + {plan.workers} Train worker(s) x ({worker})")
    for note in plan.notes:
        _say(f"note: {note}")
    return runtime, plan


def start_dense(cfg: Any, args: Any, plan: Any, where: _Where) -> _Dense:
    """Step 4: the dense baseline, stored with the experiment, the start of every trial. A
    new one trains beside the search: trials start at once, begin their Train runs once its
    workers hold their resources, and their workers wait for its weights."""
    import ray

    from orchestrator import cli, dense, tune_space

    stored = dense.load_dense(where.out.root)
    if stored is not None:
        return _Dense(state=ray.put(stored[1]))
    initial = None
    if cfg.dense.checkpoint is not None:
        try:
            initial = ray.put(dense.load_checkpoint_state(cfg.dense.checkpoint, cfg))
        except ValueError as e:
            cli.fail(str(e))
    what = "evaluating dense.checkpoint" if initial is not None else f"training the dense model ({cfg.dense.epochs} epochs)"
    _say(f"{what} as a Ray Train job; the trials start beside it and wait for its weights ...")
    job = dense.start_dense(
        cfg, train_storage=where.train_storage, workers=plan.dense["workers"],
        worker_resources=plan.dense["worker"], use_gpu=cfg.resources.use_gpu, initial_state=initial,
    )

    def done(metrics: dict[str, Any], seconds: float) -> None:
        _say(f"dense baseline: validation accuracy {metrics['val_accuracy']:.4f} (test {metrics['test_accuracy']:.4f}), "
             f"{metrics['flops']:.3g} FLOPs, {metrics['size_bytes'] / 1024:.1f} KiB file ({seconds:.1f} s)")

    watch = tune_space.DenseWatch(job, where.out.root, done)
    if args.resuming:
        # A restored Tuner keeps its original stopper: settle the dense job first.
        watch.wait()
        if watch.error:
            cli.fail(watch.error, code=EXIT["failed"])
    return _Dense(state=job.state, gate=job.gate, watch=watch)


def make_tuner(cfg: Any, args: Any, plan: Any, where: _Where, dense: _Dense) -> _Search:
    """Step 5: a fresh Tuner, or on ``--resume`` the interrupted one restored. Trials the
    ledger records as finished replay their last result instead of running again."""
    from ray import tune

    from orchestrator.ledger import replayed_trials
    from orchestrator.monitor import MonitorCallback
    from orchestrator.trial import TrialContext, run_trial

    replays = replayed_trials(where.out.ledger)
    ctx = TrialContext(
        search=cfg, dense_state=dense.state, train_storage=where.train_storage,
        workers=plan.workers, worker_resources=dict(plan.worker), use_gpu=cfg.resources.use_gpu,
        finished=replays, dense_gate=dense.gate, max_failures=cfg.resources.max_failures,
    )
    trainable = tune.with_resources(tune.with_parameters(run_trial, ctx=ctx), resources=dict(plan.driver))
    # Progress lines and the dashboard's metrics (after the ledger, which it reads).
    monitor = MonitorCallback(where.out.root, cfg.name, plan.trials)
    if args.resuming and tune.Tuner.can_restore(where.tune_path):
        _say(f"restoring the Tune experiment at {where.tune_path}; {len(replays)} finished trial(s) will not run again")
        return _Search(_restore(where, trainable), trainable, monitor, replays)
    return _Search(_new_tuner(cfg, plan, where, dense, trainable, monitor), trainable, monitor, replays)


def _new_tuner(cfg: Any, plan: Any, where: _Where, dense: _Dense, trainable: Any, monitor: Any) -> Any:
    from ray import tune

    import reports
    from orchestrator import tune_space
    from orchestrator.ledger import LedgerCallback

    scheduler = tune_space.make_scheduler(cfg)
    callbacks = [
        LedgerCallback(where.out.root, scheduler=scheduler, storage=cfg.storage, max_epochs=cfg.search.max_epochs,
                       echo=True),
        monitor,
        # Refreshes during the search; the final report is built by finish() (also after
        # an interruption), not twice.
        reports.ReportCallback(where.out.root, every=max(5, plan.trials // 2), plots=False, at_end=False),
    ]
    return tune.Tuner(
        trainable,
        param_space=tune_space.param_space(cfg),
        tune_config=tune.TuneConfig(
            search_alg=tune_space.make_search_alg(cfg, plan.max_concurrent_trials),
            scheduler=scheduler,
            num_samples=cfg.search.num_samples,
            # Tune's own variant generator takes the limit itself (make_search_alg).
            max_concurrent_trials=None if cfg.search.algorithm in ("random", "grid") else plan.max_concurrent_trials,
        ),
        run_config=tune.RunConfig(
            # Progress: one line per finished trial from the ledger, not Tune's tables.
            name=where.tune_name, storage_path=where.storage, callbacks=callbacks, verbose=0,
            # A trial whose driver was lost (its node died) is retried; its Train run,
            # named after the trial, resumes from its last checkpoint.
            failure_config=tune.FailureConfig(max_failures=cfg.resources.max_failures), stop=dense.watch,
        ),
    )


def _restore(where: _Where, trainable: Any) -> Any:
    # Errored trials are retried too: a trial killed with the driver's cluster (a lost node,
    # a process killed for memory) continues from its last checkpoint.
    from ray import tune

    return tune.Tuner.restore(where.tune_path, trainable, resume_unfinished=True, resume_errored=True,
                              restart_errored=False)


def fit_with_restores(search: _Search, cfg: Any, where: _Where, dense: _Dense) -> None:
    """Steps 6-8 run inside ``fit``. SIGTERM (``ray job stop``, a cluster scheduler) stops the
    search like Ctrl-C: Tune stops the trials and saves its state (``search.signal`` says
    which). A Ray fault that stops Tune's controller restores the search in place, up to
    ``resources.max_failures`` times."""

    def on_sigterm(signum: int, frame: Any) -> None:
        search.signal = "SIGTERM"
        signal.raise_signal(signal.SIGINT)

    previous = signal.getsignal(signal.SIGTERM)
    signal.signal(signal.SIGTERM, on_sigterm)
    try:
        restores = 0
        while True:
            try:
                search.tuner.fit()
                return
            except Exception as e:  # noqa: BLE001 - only Ray faults are retried
                # Tune's controller itself gives up when Ray kills a trial's own process for
                # memory ("Caught unexpected exception: ... killed due to the node running
                # low on memory"): restore the search from its saved state, as --resume
                # would, so the killed trials continue from their last epochs.
                fault = _ray_fault(e)
                if fault is None or restores >= cfg.resources.max_failures:
                    raise
                restores += 1
                _say(f"the search stopped on a Ray fault ({fault}); restoring it "
                     f"({restores} of resources.max_failures={cfg.resources.max_failures}) ...")
                if dense.watch is not None:
                    dense.watch.wait()
                search.tuner = _restore(where, search.trainable)
    except KeyboardInterrupt:
        search.signal = search.signal or "SIGINT"
    finally:
        signal.signal(signal.SIGTERM, previous)


def finish(cfg: Any, args: Any, plan: Any, runtime: Any, where: _Where, search: _Search, dense: _Dense,
           t0: float, t_search: float) -> tuple[TrialCounts, bool]:
    """Step 9: the report, from the ledger (also after an interruption), Ray shut down, and
    where everything is. Returns what the exit code comes from: the trial counts and
    whether the dense job failed."""
    import ray

    from orchestrator.ledger import status_summary

    # The dense files before the report (its reference row); not after an interruption.
    dense_failed = dense.failed(interrupted=search.signal is not None)
    # The report needs no Ray: a Ray this run started shuts down meanwhile (mostly waiting
    # for its processes to exit), and the final values reach Prometheus once more.
    builder = _ReportBuilder(where.out.root)
    search.monitor.close(wait=not runtime.owned or bool(getattr(args, "metrics_port", None)))
    if runtime.owned:
        ray.shutdown()
    builder.join()
    counts = status_summary(where.out.ledger, planned=plan.trials)
    _say(f"trials: {counts.completed} completed, {counts.stopped} stopped early, "
         f"{counts.errored} errored, {plan.trials - counts.finished} not finished; "
         f"search {time.time() - t_search:.0f} s, wall time {time.time() - t0:.0f} s")
    _say(f"results: {where.out.ledger}")
    _say(f"report:  {where.out.report} ({', '.join(REPORT_FILES)})")
    _say(f"models:  {where.out.models}   dense: {where.out.dense}   tune: {where.tune_path}")
    # Tune returns normally after Ctrl-C / SIGTERM; unfinished trials tell it was cut short.
    if dense_failed:
        print(f"error: {dense.watch.error}", file=sys.stderr, flush=True)
    elif counts.finished < plan.trials:
        _say(f"the search was interrupted; continue it with: python orchestrator/search.py --resume {where.out.root}")
    return counts, dense_failed


class _ReportBuilder:
    """Builds ``report/`` on a thread; a failure is a warning (the ledger is intact)."""

    def __init__(self, out: Path) -> None:
        self.out = out
        self.error: Exception | None = None
        self._thread = threading.Thread(target=self._build, name="prunefront-report")
        self._thread.start()

    def _build(self) -> None:
        import reports

        try:
            reports.build_report(self.out)
        except Exception as e:  # noqa: BLE001 - reported by join()
            self.error = e

    def join(self) -> None:
        self._thread.join()
        if self.error is not None:  # `python -m reports build` can retry
            _say(f"warning: could not build the report ({self.error.__class__.__name__}: {self.error}); "
                 f"retry with: python -m reports build {self.out}")


def exit_code(counts: TrialCounts, planned: int, dense_failed: bool) -> int:
    """``errors.EXIT``: failed when the dense job failed or every finished trial errored;
    interrupted when trials are left (continue with ``--resume``); else ok."""
    if dense_failed:
        return EXIT["failed"]
    if counts.finished < planned:
        return EXIT["interrupted"]
    return EXIT["failed"] if counts.finished and counts.errored == counts.finished else EXIT["ok"]


if __name__ == "__main__":
    # Run the module's own copy (`orchestrator.search`), not `__main__`, so everything Ray
    # pickles refers to importable names.
    from orchestrator.search import main as _main

    sys.exit(_main())
