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

Trial states and fronts come from the experiment's ledger (``reports.live`` follows it:
each call reads only what was appended, and the fronts are kept as their non-dominated
members), so the dashboard counts exactly what the report will, at a cost per trial end
that does not grow with the search. Register it after the ledger callback. A monitoring
failure is logged and never stops the search.

Series stay few at 10,000 trials: the per-trial gauges (:data:`TRIAL_METRICS`) exist for
the running trials and the current front members only. A trial that leaves that set
keeps its last values until :data:`STALE_LIMIT` such trials pile up; then the per-trial
exporter is replaced by a new one holding the live set, and Ray's metrics agent drops
the old one's series. Every finished trial is counted in the histograms
(:data:`HISTOGRAMS`) of its kept epoch's validation accuracy, sparsity and FLOPs share.
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ray.tune import Callback

__all__ = ["HISTOGRAMS", "METRICS", "MonitorCallback", "STALE_LIMIT", "TRIAL_METRICS", "format_duration", "linger_s",
           "progress_line"]

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
#: Histogram name -> (description, bucket boundaries, the kept row's key); tag: experiment.
HISTOGRAMS: dict[str, tuple[str, list[float], str]] = {
    "prunefront_finished_val_accuracy": ("Validation accuracy of finished trials (their kept epoch).",
                                         [0.5, 0.7, 0.8, 0.85, 0.9, 0.925, 0.95, 0.96, 0.97, 0.98, 0.99], "val_accuracy"),
    "prunefront_finished_sparsity": ("Sparsity of finished trials (their kept epoch).",
                                     [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99], "sparsity"),
    "prunefront_finished_flops_share": ("FLOPs of finished trials as a share of the dense model's.",
                                        [0.01, 0.02, 0.05, 0.1, 0.2, 0.3, 0.5, 0.7, 0.9, 1.0], "flops_share"),
}
#: Trials that left the live set (running or on a front) before the per-trial series are reset.
STALE_LIMIT = 64
#: Seconds between two readings of which trials Tune runs (a reading visits every trial).
LIVE_REFRESH_S = 1.0


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
            from ray.util.metrics import Gauge, Histogram

            self.gauges = {name: Gauge(name, description=desc, tag_keys=keys)
                           for name, (desc, keys) in METRICS.items()}
            self.histograms = {name: Histogram(name, description=desc, boundaries=bounds, tag_keys=("experiment",))
                               for name, (desc, bounds, _) in HISTOGRAMS.items()}

        def set(self, values: list[tuple[str, float, dict[str, str]]]) -> None:
            for name, value, tags in values:
                self.gauges[name].set(float(value), tags=tags)

        def observe(self, values: list[tuple[str, float, dict[str, str]]]) -> None:
            for name, value, tags in values:
                self.histograms[name].observe(float(value), tags=tags)

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
        from reports.contract import TrialCounter

        self.experiment_dir = Path(experiment_dir)
        self.experiment = experiment
        self.total = int(total)
        self.export = export
        self.echo = echo
        self.started = time.time()
        self._actor: Any = None  # search gauges and histograms
        self._trial_actor: Any = None  # per-trial gauges of the live set (replaced to drop series)
        self._last: Any = None  # the last set() call, to notice a dead exporter
        self._values: dict[tuple[str, tuple[tuple[str, str], ...]], tuple[str, float, dict[str, str]]] = {}
        self._trial_values: dict[str, list[tuple[str, float, dict[str, str]]]] = {}
        self._stale: set[str] = set()
        self._epochs_done = 0
        self._epochs: dict[str, int] = {}
        self._methods: dict[str, str] = {}
        self._follower: Any = None
        self._tracker: Any = None
        self._counter = TrialCounter()  # the ledger's statuses, as the follower reads them
        self._live_ids: set[str] = set()
        self._live_at = -math.inf
        self.last_line: str | None = None

    def __getstate__(self) -> dict[str, Any]:  # Tune pickles callbacks; the actor handles stay
        state = dict(self.__dict__)
        state["_actor"] = state["_trial_actor"] = state["_last"] = None
        return state

    # -- exporting ----------------------------------------------------------------
    def _alive(self, actor: Any) -> Any:
        import ray

        if actor is not None and self._last is not None and ray.wait([self._last], timeout=0)[0]:
            try:
                ray.get(self._last)
            except ray.exceptions.RayActorError:  # killed (e.g. for memory): a new one
                return None
        return actor

    def _send(self, values: list[tuple[str, float, dict[str, str]]], trial: str | None = None,
              observe: list[tuple[str, float, dict[str, str]]] | None = None) -> None:
        """Set gauges (a trial's own when ``trial`` is given) and observe histogram values."""
        if not self.export or not (values or observe):
            return
        try:
            if trial is not None:
                self._trial_values[trial] = values
                self._stale.discard(trial)
                if self._trial_actor is None:  # a new exporter starts with the live set's values
                    self._trial_actor = _exporter_class().remote()
                    values = [v for vs in self._trial_values.values() for v in vs]
                self._trial_actor.set.remote(values)
                return
            self._actor = self._alive(self._actor)
            for name, value, tags in values:
                self._values[(name, tuple(sorted(tags.items())))] = (name, value, tags)
            if self._actor is None:  # a new exporter starts with every latest value
                self._actor = _exporter_class().remote()
                values = list(self._values.values())
            # Fire and forget: the search never waits on its monitoring.
            self._last = self._actor.set.remote(values)
            if observe:
                self._actor.observe.remote(observe)
        except Exception:  # noqa: BLE001 - monitoring must never stop a search
            logger.warning("could not export the search's metrics", exc_info=True)
            self.export = False

    def _prune_trial_series(self, live: set[str]) -> None:
        """Forget the series of trials outside ``live`` once :data:`STALE_LIMIT` of them are
        left: the per-trial exporter is replaced, its series go with it."""
        self._stale |= set(self._trial_values) - live
        if len(self._stale) < STALE_LIMIT or not self.export:
            return
        for tid in self._stale:
            self._trial_values.pop(tid, None)
        self._stale.clear()
        old, self._trial_actor = self._trial_actor, None
        try:
            import ray

            if old is not None:
                ray.kill(old)
            if self._trial_values:
                self._trial_actor = _exporter_class().remote()
                self._trial_actor.set.remote([v for vs in self._trial_values.values() for v in vs])
        except Exception:  # noqa: BLE001
            logger.warning("could not replace the per-trial metrics exporter", exc_info=True)

    def _tags(self, **tags: str) -> dict[str, str]:
        return {"experiment": self.experiment, **tags}

    def _method(self, trial: Any) -> str:
        tid = trial.trial_id
        if tid not in self._methods:
            cfg = dict(getattr(trial, "config", {}) or {})
            self._methods[tid] = str(cfg.get("method", "?")).replace("+", "/")
        return self._methods[tid]

    def _read(self) -> list[tuple[str, float, dict[str, str]]]:
        """Follow the ledger: new trial ends update the counts, fronts and histograms.
        Returns the histogram observations of the trials that ended."""
        from reports.live import LedgerFollower

        if self._follower is None:
            self._follower = LedgerFollower(self.experiment_dir)
        if self._tracker is None:
            self._tracker = _front_tracker(self.experiment_dir)
        observe = []
        for tid in self._follower.update():
            st = self._follower.states[tid]
            was = self._counter.statuses.get(tid)
            self._counter.set(tid, st.status)
            if self._tracker is not None:
                self._tracker.finish(tid, st)
            if st.finished and was != st.status and st.results:
                observe += self._observations(self._tracker.rows.get(tid) if self._tracker else None, st)
        return observe

    def _observations(self, row: Any, st: Any) -> list[tuple[str, float, dict[str, str]]]:
        from reports.contract import kept_epoch

        row = row if row is not None else kept_epoch(st.results.values())
        dense = self._tracker.dense if self._tracker is not None else {}
        values = dict(row)
        if isinstance(row.get("flops"), (int, float)) and isinstance(dense.get("flops"), (int, float)) and dense["flops"]:
            values["flops_share"] = row["flops"] / dense["flops"]
        return [(name, values[key], self._tags()) for name, (_, _, key) in HISTOGRAMS.items()
                if isinstance(values.get(key), (int, float)) and not isinstance(values.get(key), bool)]

    def _states(self, trials: list[Any]) -> dict[str, int]:
        """Trial counts per state: ``reports.contract.trial_counts`` (the one definition the
        search's last line and ``reports show`` use) of the statuses the ledger follower saw,
        Tune's running trials and the planned total."""
        counts = self._counter.counts(planned=self.total, live=self._live(trials)).to_dict()
        return {s: counts[s] for s in STATES}

    def _live(self, trials: list[Any], force: bool = False) -> set[str]:
        """Ids of the trials Tune runs now. Finding them reads every trial, so it is done at
        most every :data:`LIVE_REFRESH_S` seconds (gauges are scraped every few seconds);
        the search's last summary (``force``) reads them afresh."""
        now = time.monotonic()
        if force or now - self._live_at >= LIVE_REFRESH_S:
            self._live_ids = {t.trial_id for t in trials if str(t.status) == "RUNNING"}
            self._live_at = now
        return self._live_ids

    def _fronts(self) -> tuple[list[tuple[str, float, dict[str, str]]], str | None]:
        """Gauges of each front (hypervolume, knee accuracy) and a phrase saying them."""
        from reports.units import format_cost

        if self._tracker is None:
            self._tracker = _front_tracker(self.experiment_dir)
            if self._tracker is None:
                return [], None
            for tid, st in self._follower.states.items():
                self._tracker.finish(tid, st)
        values, phrases = [], []
        for name, cost in self._tracker.fronts.items():
            hv, knee = self._tracker.summary(name)
            tags = self._tags(front=name)
            values.append(("prunefront_front_hypervolume", hv, tags))
            if knee is None:
                continue
            row = self._tracker.rows[knee]
            acc = float(row["val_accuracy"])
            values.append(("prunefront_knee_val_accuracy", acc, tags))
            phrases.append(f"{cost}: knee {knee} val {acc:.4f} at {format_cost(float(row[cost]), cost)}, "
                           f"HV {hv:.2f}")
        return values, "; ".join(phrases) or None

    # -- Tune hooks ---------------------------------------------------------------
    def setup(self, **info: Any) -> None:
        self.started = time.time()

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
        if "epoch" not in result:
            return
        tid = trial.trial_id
        epoch = int(result["epoch"])
        if epoch > self._epochs.get(tid, 0):
            self._epochs_done += epoch - self._epochs.get(tid, 0)
            self._epochs[tid] = epoch
        tags = self._tags(trial_id=tid, method=self._method(trial))
        self._send([(name, result[key], tags) for name, key in TRIAL_METRICS.items()
                    if isinstance(result.get(key), (int, float))], trial=tid)
        running = len(self._live(trials))
        self._send([("prunefront_epochs_done", self._epochs_done, self._tags()),
                    ("prunefront_trials", running, self._tags(state="running"))])

    def _ended(self, trials: list, echo: bool = True, final: bool = False) -> None:
        try:
            observe = self._read()
            live = set(self._live(trials, force=final))
            counts = self._states(trials)
            values = [("prunefront_trials", n, self._tags(state=s)) for s, n in counts.items()]
            front_values, best = self._fronts()
            live |= self._tracker.members() if self._tracker is not None else set()
        except Exception:  # noqa: BLE001 - e.g. a ledger line being written; next time
            logger.warning("could not summarise the search for monitoring", exc_info=True)
            return
        self._send(values + front_values, observe=observe)
        self._prune_trial_series(live)
        self.last_line = progress_line(counts, self.total, time.time() - self.started, best)
        if self.echo and echo:
            print(self.last_line, flush=True)

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._ended(trials)

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._ended(trials)

    def on_experiment_end(self, trials: list, **info: Any) -> None:
        self._ended(trials, echo=False, final=True)  # the last trial's end printed it

    def close(self, wait: bool = True) -> None:
        """Let the last values be exported (:func:`linger_s`), then end the exporter."""
        actors = [a for a in (self._actor, self._trial_actor) if a is not None]
        if not actors:
            return
        import ray

        try:
            ray.get([a.ready.remote() for a in actors], timeout=30)  # every set() before it has run
            if wait:
                time.sleep(linger_s())
            for a in actors:
                ray.kill(a)
        except Exception:  # noqa: BLE001
            logger.debug("metrics exporter already gone", exc_info=True)
        self._actor = self._trial_actor = None


def _front_tracker(experiment_dir: Path) -> Any:
    """The fronts of the report's config, against the dense model; None until it is written."""
    import json

    from reports.layout import Layout
    from reports.live import FrontTracker
    from reports.tables import fronts_for

    layout = Layout(experiment_dir)
    try:
        dense = json.loads(layout.dense_metrics.read_text())
        info = json.loads(layout.experiment.read_text())
        # Written before metrics.json (orchestrator.dense), so present by now when made.
        others = [json.loads(layout.dense_int8_metrics.read_text())] if layout.dense_int8_metrics.is_file() else []
    except (OSError, ValueError):
        return None
    config = info.get("config") if isinstance(info, dict) else None
    return FrontTracker(fronts_for(config if isinstance(config, dict) else {}), dense, others)
