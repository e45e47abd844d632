"""The command users run: a pruning search on Ray Tune, each trial a Ray Train job.

    python orchestrator/search.py                                  # default: digits, embedded Ray
    python orchestrator/search.py --config configs/fashion_mnist.yaml --set search.num_samples=8
    ray job submit --working-dir . -- python orchestrator/search.py --config ... --output /shared/exp
    python orchestrator/search.py --resume prunefront-results/digits-default

Steps (each numbered below): 1. parse and validate the command line (errors are one line,
exit 2, before Ray is imported); 2. start or attach to Ray and check that the trials fit;
3. record the experiment; 4. train (or load) the dense baseline as a Train job; 5. run the
Tune search (or restore it on ``--resume``) with the ledger and report callbacks; 6. build
the report, also when interrupted (Ctrl-C, SIGTERM), and print where everything is.
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
from pathlib import Path
from typing import Any

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
        return 0
    if args.dry_run:
        print(cli.describe(cfg, args))
        return 0
    try:
        return run(cfg, args)
    except cli.ErrorExit as e:
        return int(e.code)


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


def _record_experiment(out: Path, info: dict[str, Any], resuming: bool) -> None:
    import json

    from orchestrator.ledger import now_iso
    from reports.layout import Layout, write_json

    path = Layout(out).experiment
    if resuming and path.is_file():
        old = json.loads(path.read_text(encoding="utf-8"))
        old.setdefault("resumed_at", []).append(now_iso())
        write_json(path, old)
    else:
        write_json(path, info)


def run(cfg: Any, args: Any) -> int:
    """Run the search for a validated config (``cli.parse``'s output)."""
    from orchestrator import cli, ray_runtime
    from orchestrator.config import ConfigError

    t0 = time.time()
    out = cfg.output_dir
    _say(f"experiment {cfg.name!r} -> {out}" + (" (resuming)" if args.resuming else ""))

    # 2. Ray: embedded or attached; check that trials fit this cluster. Starting Ray is
    # mostly waiting for its processes: the driver's own imports go on meanwhile.
    preload = _Preload("ray.tune", "reports", "orchestrator.tune_space", "orchestrator.dense")
    runtime = ray_runtime.init(args.address, metrics_port=getattr(args, "metrics_port", None))
    preload.join()
    _say(f"using the {runtime.describe()} ({time.time() - t0:.1f} s)")
    if runtime.in_job and Path(out).resolve().is_relative_to(Path.cwd().resolve()):
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

    import ray
    from ray import tune

    import reports
    from orchestrator import dense, tune_space
    from orchestrator.ledger import LEDGER_FILE, LedgerCallback, finished_trials, status_summary
    from orchestrator.monitor import MonitorCallback
    from orchestrator.trial import TrialContext, run_trial
    from reports.layout import REPORT_FILES, TRAIN_DIR, TUNE_DIR, Layout

    tune_name = TUNE_DIR if cfg.storage is None else cfg.name
    storage = cfg.storage_path
    tune_path = f"{storage.rstrip('/')}/{tune_name}"
    train_storage = f"{tune_path}/{TRAIN_DIR}"

    # 3. The experiment record (kept, with a resume time added, on --resume).
    out.mkdir(parents=True, exist_ok=True)
    _record_experiment(out, _experiment_info(cfg, args, plan, tune_path, runtime), args.resuming)

    # 4. The dense baseline: stored with the experiment, the start of every trial. A new one
    # trains beside the search: trials start at once, begin their Train runs once its
    # workers hold their resources, and their workers wait for its weights.
    watch = None
    stored = dense.load_dense(out)
    if stored is None:
        initial = None
        if cfg.dense.checkpoint is not None:
            try:
                initial = ray.put(dense.load_checkpoint_state(cfg.dense.checkpoint, cfg))
            except ValueError as e:
                cli.fail(str(e))
        what = "evaluating dense.checkpoint" if initial is not None else f"training the dense model ({cfg.dense.epochs} epochs)"
        _say(f"{what} as a Ray Train job; the trials start beside it and wait for its weights ...")
        job = dense.start_dense(
            cfg, train_storage=train_storage, workers=plan.dense["workers"],
            worker_resources=plan.dense["worker"], use_gpu=cfg.resources.use_gpu, initial_state=initial,
        )
        dense_state, dense_gate = job.state, job.gate

        def dense_done(metrics: dict[str, Any], seconds: float) -> None:
            _say(f"dense baseline: validation accuracy {metrics['val_accuracy']:.4f} (test {metrics['test_accuracy']:.4f}), "
                 f"{metrics['flops']:.3g} FLOPs, {metrics['size_bytes'] / 1024:.1f} KiB file ({seconds:.1f} s)")

        watch = tune_space.DenseWatch(job, out, dense_done)
        if args.resuming:
            # A restored Tuner keeps its original stopper: settle the dense job first.
            watch.wait()
            if watch.error:
                cli.fail(watch.error, code=1)
    else:
        dense_state, dense_gate = ray.put(stored[1]), None

    # 5. The search (a fresh Tuner, or the interrupted one restored).
    ledger_path = out / LEDGER_FILE
    # Errored trials are not among them: a restored search retries them from their last epoch.
    finished = {tid: v["result"] for tid, v in finished_trials(ledger_path).items()
                if v["result"] is not None and v["status"] != "errored"}
    ctx = TrialContext(
        search=cfg, dense_state=dense_state, train_storage=train_storage,
        workers=plan.workers, worker_resources=dict(plan.worker), use_gpu=cfg.resources.use_gpu,
        finished=finished, dense_gate=dense_gate, max_failures=cfg.resources.max_failures,
    )
    trainable = tune.with_resources(tune.with_parameters(run_trial, ctx=ctx), resources=dict(plan.driver))

    # Progress lines and the dashboard's metrics (after the ledger, which it reads).
    monitor = MonitorCallback(out, cfg.name, plan.trials)
    if args.resuming and tune.Tuner.can_restore(tune_path):
        _say(f"restoring the Tune experiment at {tune_path}; {len(finished)} finished trial(s) will not run again")
        # Errored trials are retried too: a trial killed with the driver's cluster (a lost node,
        # a process killed for memory) continues from its last checkpoint.
        tuner = tune.Tuner.restore(tune_path, trainable, resume_unfinished=True, resume_errored=True,
                                   restart_errored=False)
    else:
        scheduler = tune_space.make_scheduler(cfg)
        callbacks = [
            LedgerCallback(out, scheduler=scheduler, storage=cfg.storage, max_epochs=cfg.search.max_epochs,
                           echo=True),
            monitor,
            # Refreshes during the search; the final report is built below (also after
            # an interruption), not twice.
            reports.ReportCallback(out, every=max(5, plan.trials // 2), plots=False, at_end=False),
        ]
        tuner = tune.Tuner(
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
                name=tune_name, storage_path=storage, callbacks=callbacks, verbose=0,
                # A trial whose driver was lost (its node died) is retried; its Train run,
                # named after the trial, resumes from its last checkpoint.
                failure_config=tune.FailureConfig(max_failures=cfg.resources.max_failures), stop=watch,
            ),
        )

    # SIGTERM (e.g. `ray job stop`, a cluster scheduler) stops the search like Ctrl-C does:
    # Tune stops the trials, saves its state, and the report below is still built.
    stop = {"signal": None}

    def on_sigterm(signum: int, frame: Any) -> None:
        stop["signal"] = "SIGTERM"
        signal.raise_signal(signal.SIGINT)

    previous = signal.getsignal(signal.SIGTERM)
    signal.signal(signal.SIGTERM, on_sigterm)
    t_search = time.time()
    try:
        restores = 0
        while True:
            try:
                tuner.fit()
                break
            except Exception as e:  # noqa: BLE001 - only Ray faults are retried
                # Tune's controller itself gives up when Ray kills a trial's own process for
                # memory ("Caught unexpected exception: ... killed due to the node running
                # low on memory"): restore the search from its saved state, as --resume
                # would, so the killed trials continue from their last epochs.
                if _ray_fault(e) is None or restores >= cfg.resources.max_failures:
                    raise
                restores += 1
                _say(f"the search stopped on a Ray fault ({_ray_fault(e)}); restoring it "
                     f"({restores} of resources.max_failures={cfg.resources.max_failures}) ...")
                if watch is not None:
                    watch.wait()
                tuner = tune.Tuner.restore(tune_path, trainable, resume_unfinished=True, resume_errored=True,
                                           restart_errored=False)
    except KeyboardInterrupt:
        stop["signal"] = stop["signal"] or "SIGINT"
    finally:
        signal.signal(signal.SIGTERM, previous)
        # The dense files before the report (its reference row); not after an interruption.
        dense_failed = (watch is not None and watch.wait(timeout=None if stop["signal"] is None else 0)
                        and watch.error is not None)
        # 6. The report, from the ledger (also after an interruption). It needs no Ray: a Ray
        # this run started shuts down meanwhile (mostly waiting for its processes to exit).
        report_dir = Layout(out).report
        report_error: list[Exception] = []

        def build() -> None:
            try:
                reports.build_report(out)
            except Exception as e:  # noqa: BLE001 - reported below
                report_error.append(e)

        builder = threading.Thread(target=build, name="prunefront-report")
        builder.start()
        # The final values reach Prometheus once more (a cluster's, or --metrics-port's),
        # while the report is built.
        monitor.close(wait=not runtime.owned or bool(getattr(args, "metrics_port", None)))
        if runtime.owned:
            ray.shutdown()
        builder.join()
        if report_error:  # the ledger is intact; `python -m reports build` can retry
            e = report_error[0]
            _say(f"warning: could not build the report ({e.__class__.__name__}: {e}); "
                 f"retry with: python -m reports build {out}")
        counts = status_summary(ledger_path)
        finished = counts.finished
        wall = time.time() - t0
        _say(f"trials: {counts.completed} completed, {counts.stopped} stopped early, "
             f"{counts.errored} errored, {plan.trials - finished} not finished; "
             f"search {time.time() - t_search:.0f} s, wall time {wall:.0f} s")
        _say(f"results: {ledger_path}")

        _say(f"report:  {report_dir} ({', '.join(REPORT_FILES)})")
        _say(f"models:  {Layout(out).models}   dense: {Layout(out).dense}   tune: {tune_path}")
        # Tune returns normally after Ctrl-C / SIGTERM; unfinished trials tell it was cut short.
        if dense_failed:
            print(f"error: {watch.error}", file=sys.stderr, flush=True)
        elif finished < plan.trials:
            _say(f"the search was interrupted; continue it with: python orchestrator/search.py --resume {out}")
    if dense_failed:
        return 1
    if finished < plan.trials:
        return 130
    return 1 if finished and counts.errored == finished else 0


if __name__ == "__main__":
    # Run the module's own copy (`orchestrator.search`), not `__main__`, so everything Ray
    # pickles refers to importable names.
    from orchestrator.search import main as _main

    sys.exit(_main())
