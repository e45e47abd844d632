"""What a search shows while it runs: Ray metrics for the dashboard, a progress line for the log.

:class:`MonitorCallback` is a Tune callback in the search driver. After every result and
every trial end it

* sets the search's gauges (:data:`METRICS`) through ``ray.util.metrics``: they live in a
  small actor (:class:`_Exporter`, no CPU), so Ray's metrics agent on its node exports
  them on the node's metrics export port (Prometheus text format, names prefixed
  ``ray_``), where a Prometheus scrape and the dashboard's Grafana panels find them
  (``cluster/grafana/prunefront_dashboard.json``, ``docs/monitoring.md``);
* at a trial end, prints one progress line: trials done / running / total, the knee of
  the first front so far, elapsed time and an estimate of the time left.

Trial states and fronts come from the experiment's ledger (``reports`` reads it), so
the dashboard counts exactly what the report will. Register it after the ledger
callback. A monitoring failure is logged and never stops the search.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ray.tune import Callback

__all__ = ["METRICS", "MonitorCallback", "TRIAL_METRICS", "format_duration", "linger_s", "progress_line"]

logger = logging.getLogger(__name__)

#: Gauge name (Prometheus adds Ray's ``ray_`` prefix) -> (description, tag keys).
METRICS: dict[str, tuple[str, tuple[str, ...]]] = {
    "prunefront_trials": ("Trials of the search by state (pending, running, completed, stopped, errored).",
                          ("experiment", "state")),
    "prunefront_epochs_done": ("Fine-tuning epochs reported by all trials so far.", ("experiment",)),
    "prunefront_trial_val_accuracy": ("Validation accuracy of a trial at its latest epoch.",
                                      ("experiment", "trial_id", "method")),
    "prunefront_trial_sparsity": ("Sparsity of a trial's model at its latest epoch.",
                                  ("experiment", "trial_id", "method")),
    "prunefront_trial_flops": ("Dense FLOPs per example of a trial's model at its latest epoch.",
                               ("experiment", "trial_id", "method")),
    "prunefront_trial_size_bytes": ("Bytes of the file a trial saved at its latest epoch.",
                                    ("experiment", "trial_id", "method")),
    "prunefront_trial_epoch": ("Latest epoch a trial reported.", ("experiment", "trial_id", "method")),
    "prunefront_front_hypervolume": ("Normalised hypervolume (0..1) of a Pareto front of the finished trials.",
                                     ("experiment", "front")),
    "prunefront_knee_val_accuracy": ("Validation accuracy of the knee of a Pareto front.", ("experiment", "front")),
}
#: Per-trial gauge -> the result key it shows.
TRIAL_METRICS = {
    "prunefront_trial_val_accuracy": "val_accuracy",
    "prunefront_trial_sparsity": "sparsity",
    "prunefront_trial_flops": "flops",
    "prunefront_trial_size_bytes": "size_bytes",
    "prunefront_trial_epoch": "epoch",
}
STATES = ("pending", "running", "completed", "stopped", "errored")


def linger_s() -> float:
    """How long the last values must stay up to be exported once: one metrics report
    period of Ray (``RAY_metrics_report_interval_ms``, 10 s by default) and a margin."""
    try:
        period = float(os.environ.get("RAY_metrics_report_interval_ms", "10000")) / 1000
    except ValueError:
        period = 10.0
    return period + 1.0


def format_duration(seconds: float) -> str:
    """``42 s``, ``3 min 05 s``, ``2 h 10 min``."""
    s = max(0, int(round(seconds)))
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min {s % 60:02d} s"
    return f"{s // 3600} h {s % 3600 // 60:02d} min"


def progress_line(counts: Mapping[str, int], total: int, elapsed_s: float, best: str | None) -> str:
    """``prunefront: progress 5/14 done (2 running) | <best> | elapsed 3 min 05 s, about 5 min left``.

    The time left extrapolates the rate at which trials finished so far (early stopping
    makes it pessimistic: later trials are more often stopped early).
    """
    done = sum(counts.get(s, 0) for s in ("completed", "stopped", "errored"))
    parts = [f"progress {done}/{total} done ({counts.get('running', 0)} running)"]
    if best:
        parts.append(best)
    eta = ""
    if 0 < done < total:
        eta = f", about {format_duration(elapsed_s / done * (total - done))} left"
    parts.append(f"elapsed {format_duration(elapsed_s)}{eta}")
    return "prunefront: " + " | ".join(parts)


def _exporter_class() -> Any:
    import ray

    @ray.remote(num_cpus=0)
    class _Exporter:
        """Holds the gauges in a live process, where Ray's metrics agent collects them."""

        def __init__(self) -> None:
            from ray.util.metrics import Gauge

            self.gauges = {name: Gauge(name, description=desc, tag_keys=keys)
                           for name, (desc, keys) in METRICS.items()}

        def set(self, values: list[tuple[str, float, dict[str, str]]]) -> None:
            for name, value, tags in values:
                self.gauges[name].set(float(value), tags=tags)

        def ready(self) -> bool:
            return True

    return _Exporter


class MonitorCallback(Callback):
    """Export the search's state as Ray metrics and print progress lines as trials end.

    Args:
        experiment_dir: The experiment directory (its ledger is read).
        experiment: The experiment's name (the ``experiment`` tag of every series).
        total: Trials the search will run (for pending counts and the time left).
        export: Export Ray metrics (False: progress lines only).
        echo: Print the progress line at each trial end.
    """

    def __init__(self, experiment_dir: str | os.PathLike[str], experiment: str, total: int, *,
                 export: bool = True, echo: bool = True) -> None:
        self.experiment_dir = Path(experiment_dir)
        self.experiment = experiment
        self.total = int(total)
        self.export = export
        self.echo = echo
        self.started = time.time()
        self._actor: Any = None
        self._last: Any = None  # the last set() call, to notice a dead exporter
        self._values: dict[tuple[str, tuple[tuple[str, str], ...]], tuple[str, float, dict[str, str]]] = {}
        self._epochs: dict[str, int] = {}
        self._methods: dict[str, str] = {}
        self.last_line: str | None = None

    def __getstate__(self) -> dict[str, Any]:  # Tune pickles callbacks; the actor handle stays
        state = dict(self.__dict__)
        state["_actor"] = state["_last"] = None
        return state

    # -- exporting ----------------------------------------------------------------
    def _send(self, values: list[tuple[str, float, dict[str, str]]]) -> None:
        if not self.export or not values:
            return
        try:
            import ray

            if self._last is not None and ray.wait([self._last], timeout=0)[0]:
                try:
                    ray.get(self._last)
                except ray.exceptions.RayActorError:  # killed (e.g. for memory): a new one
                    self._actor = None
            for name, value, tags in values:
                self._values[(name, tuple(sorted(tags.items())))] = (name, value, tags)
            if self._actor is None:  # a new exporter starts with every latest value
                self._actor = _exporter_class().remote()
                values = list(self._values.values())
            # Fire and forget: the search never waits on its monitoring.
            self._last = self._actor.set.remote(values)
        except Exception:  # noqa: BLE001 - monitoring must never stop a search
            logger.warning("could not export the search's metrics", exc_info=True)
            self.export = False

    def _tags(self, **tags: str) -> dict[str, str]:
        return {"experiment": self.experiment, **tags}

    def _method(self, trial: Any) -> str:
        tid = trial.trial_id
        if tid not in self._methods:
            cfg = dict(getattr(trial, "config", {}) or {})
            self._methods[tid] = str(cfg.get("method", "?")).replace("+", "/")
        return self._methods[tid]

    def _states(self, trials: list[Any]) -> tuple[dict[str, int], Any]:
        """Trial counts per state (ended ones from the ledger) and the experiment read."""
        from reports.ledger import read_experiment

        from reports.contract import ledger_counts

        exp = read_experiment(self.experiment_dir)
        live = [t.trial_id for t in trials if str(t.status) == "RUNNING"]
        counts = ledger_counts(exp.trials, planned=self.total, live=live).to_dict()
        return {s: counts[s] for s in STATES}, exp

    def _fronts(self, exp: Any) -> tuple[list[tuple[str, float, dict[str, str]]], str | None]:
        """Gauges of each front (hypervolume, knee accuracy) and a phrase saying them."""
        from reports.tables import build_tables
        from reports.units import format_cost

        tables = build_tables(exp)
        values, phrases = [], []
        final = tables.final.set_index("trial_id") if "trial_id" in tables.final.columns else None
        for name, summary in tables.summaries.items():
            tags = self._tags(front=name)
            values.append(("prunefront_front_hypervolume", summary.hypervolume_normalized, tags))
            if summary.knee is None or final is None or summary.knee not in final.index:
                continue
            knee = final.loc[summary.knee]
            acc = float(knee["val_accuracy"])
            values.append(("prunefront_knee_val_accuracy", acc, tags))
            cost = summary.cost
            phrases.append(f"{cost}: knee {summary.knee} val {acc:.4f} at {format_cost(float(knee[cost]), cost)}, "
                           f"HV {summary.hypervolume_normalized:.2f}")
        return values, "; ".join(phrases) or None

    # -- Tune hooks ---------------------------------------------------------------
    def setup(self, **info: Any) -> None:
        self.started = time.time()

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
        if "epoch" not in result:
            return
        tid = trial.trial_id
        self._epochs[tid] = max(self._epochs.get(tid, 0), int(result["epoch"]))
        tags = self._tags(trial_id=tid, method=self._method(trial))
        values = [(name, result[key], tags) for name, key in TRIAL_METRICS.items()
                  if isinstance(result.get(key), (int, float))]
        values.append(("prunefront_epochs_done", sum(self._epochs.values()), self._tags()))
        running = sum(1 for t in trials if str(t.status) == "RUNNING")
        values.append(("prunefront_trials", running, self._tags(state="running")))
        self._send(values)

    def _ended(self, trials: list, echo: bool = True) -> None:
        try:
            counts, exp = self._states(trials)
            values = [("prunefront_trials", n, self._tags(state=s)) for s, n in counts.items()]
            front_values, best = self._fronts(exp)
        except Exception:  # noqa: BLE001 - e.g. a ledger line being written; next time
            logger.warning("could not summarise the search for monitoring", exc_info=True)
            return
        self._send(values + front_values)
        self.last_line = progress_line(counts, self.total, time.time() - self.started, best)
        if self.echo and echo:
            print(self.last_line, flush=True)

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._ended(trials)

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._ended(trials)

    def on_experiment_end(self, trials: list, **info: Any) -> None:
        self._ended(trials, echo=False)  # the last trial's end printed it

    def close(self, wait: bool = True) -> None:
        """Let the last values be exported (:func:`linger_s`), then end the exporter."""
        if self._actor is None:
            return
        import ray

        try:
            ray.get(self._actor.ready.remote(), timeout=30)  # every set() before it has run
            if wait:
                time.sleep(linger_s())
            ray.kill(self._actor)
        except Exception:  # noqa: BLE001
            logger.debug("metrics exporter already gone", exc_info=True)
        self._actor = None
