"""The validated config's search space and scheduler, as Ray Tune objects.

``orchestrator.space.flat_space`` describes what a trial is drawn from as typed
:class:`~orchestrator.config.Choice` / :class:`~orchestrator.config.Range` /
:class:`~orchestrator.config.Fixed` entries under flat keys (``method`` is the combined
criterion+granularity+schedule choice, so only valid combinations are ever sampled). This
module maps them onto Tune domains, builds the search algorithm (random, grid, Optuna
multi-objective) and the trial scheduler (ASHA, MO-ASHA, FIFO).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ray import tune
from ray.tune.schedulers import AsyncHyperBandScheduler, FIFOScheduler, TrialScheduler
from ray.tune.stopper import Stopper

from orchestrator.config import SearchConfig
from orchestrator.params import Choice, Fixed, Param, Range
from orchestrator.space import flat_space
from orchestrator.moasha import MultiObjectiveASHA

__all__ = ["DenseWatch", "RecordingASHA", "make_scheduler", "make_search_alg", "param_space", "to_domain"]

logger = logging.getLogger(__name__)


def to_domain(param: Param, *, grid: bool) -> Any:
    """One searched entry as a Tune domain (or a plain value when fixed).

    Choice -> ``tune.choice`` (``tune.grid_search`` under grid search); Range ->
    ``tune.uniform`` / ``tune.loguniform`` / ``tune.randint`` / ``tune.lograndint``
    (integer ranges include ``high``); Fixed -> the value.
    """
    if isinstance(param, Fixed):
        return param.value
    if isinstance(param, Choice):
        values = list(param.values)
        return tune.grid_search(values) if grid else tune.choice(values)
    if isinstance(param, Range):
        if grid:
            raise ValueError("grid search cannot sample a range; list the grid points")
        if param.integer:
            lo, hi = int(param.low), int(param.high) + 1
            return tune.lograndint(lo, hi) if param.log else tune.randint(lo, hi)
        return tune.loguniform(param.low, param.high) if param.log else tune.uniform(param.low, param.high)
    raise TypeError(f"not a search-space entry: {param!r}")


def param_space(cfg: SearchConfig) -> dict[str, Any]:
    """Tune's ``param_space``: the flat keys of ``space.flat_space`` mapped to domains."""
    grid = cfg.search.algorithm == "grid"
    return {key: to_domain(p, grid=grid) for key, p in flat_space(cfg.search).items()}


def make_search_alg(cfg: SearchConfig, max_concurrent: int) -> Any:
    """The search algorithm: random / grid (Tune's variant generator) or Optuna.

    Optuna is multi-objective over ``scheduler.objectives`` (its default sampler for
    several objectives is NSGA-II); it sees each trial's last result.
    """
    algo = cfg.search.algorithm
    if algo in ("random", "grid"):
        from ray.tune.search.basic_variant import BasicVariantGenerator

        # Seeded, so the same config samples the same trials.
        return BasicVariantGenerator(random_state=cfg.seed, max_concurrent=max_concurrent)
    if algo == "optuna":
        from ray.tune.search.optuna import OptunaSearch

        objectives = cfg.scheduler.objectives
        return OptunaSearch(metric=list(objectives), mode=list(objectives.values()), seed=cfg.seed)
    raise ValueError(f"unknown search algorithm {algo!r}; valid choices: random, grid, optuna")


class RecordingASHA(AsyncHyperBandScheduler):
    """Ray's ASHA, remembering why it stopped a trial early (for the ledger).

    Same arguments as :class:`ray.tune.schedulers.AsyncHyperBandScheduler`.
    """

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.stop_reasons: dict[str, str] = {}

    def on_trial_result(self, tune_controller: Any, trial: Any, result: dict) -> str:
        action = super().on_trial_result(tune_controller, trial, result)
        t = result.get(self._time_attr)
        if action == TrialScheduler.STOP and t is not None and t < self._max_t:
            value = result.get(self._metric)
            shown = f"{value:.4g}" if isinstance(value, (int, float)) else repr(value)
            self.stop_reasons[trial.trial_id] = (
                f"asha: stopped at epoch {t:g}: {self._metric} {shown} was below the rung's cutoff "
                f"(the best 1/{self._reduction_factor:g} of the trials there continue, {self._mode} is better)"
            )
        return action

    def stop_reason(self, trial_id: str) -> str | None:
        return self.stop_reasons.get(trial_id)


def make_scheduler(cfg: SearchConfig) -> TrialScheduler:
    """ASHA (one metric), MO-ASHA (Pareto rank of the objectives) or FIFO.

    Progress is measured in ``epoch`` (not ``training_iteration``, which restarts when a
    trial is restored); ``max_t`` is the most fine-tune epochs any trial runs.
    """
    s = cfg.scheduler
    return scheduler_for(s.name, metric=s.metric, mode=s.mode, objectives=s.objectives, max_t=cfg.search.max_epochs,
                         grace_period=s.grace_period, reduction_factor=s.reduction_factor)


def scheduler_for(name: str, *, metric: str, mode: str, objectives: dict[str, str], max_t: int, grace_period: int,
                  reduction_factor: float) -> TrialScheduler:
    """The one factory of the search's schedulers (the search and bench/replay.py use it):
    ``asha`` on ``metric`` / ``mode``, ``moasha`` on ``objectives``, or ``fifo``; all on
    ``time_attr="epoch"``."""
    if name == "asha":
        return RecordingASHA(time_attr="epoch", metric=metric, mode=mode, max_t=max_t,
                             grace_period=grace_period, reduction_factor=reduction_factor)
    if name == "moasha":
        return MultiObjectiveASHA(dict(objectives), time_attr="epoch", max_t=max_t,
                                  grace_period=grace_period, reduction_factor=reduction_factor)
    if name == "fifo":
        return FIFOScheduler()
    raise ValueError(f"unknown scheduler {name!r}; valid choices: asha, moasha, fifo")


class _NeverStop(Stopper):
    """What a :class:`DenseWatch` becomes when Tune pickles its experiment state."""

    def __call__(self, trial_id: str, result: dict) -> bool:
        return False

    def stop_all(self) -> bool:
        return False


class DenseWatch(Stopper):
    """Stores the dense job's files the moment it ends, on a thread beside the search.

    As the search's ``tune.Stopper`` it ends the search when the dense job failed (every
    trial would wait for weights that never come). Tune pickles its stopper with the
    experiment state; a restored search gets one that never stops.

    Args:
        job: The running :class:`orchestrator.dense.DenseJob`.
        out_dir: The experiment directory (``dense/`` goes there).
        on_done: Called on the thread with the metrics and the job's seconds.
    """

    def __init__(self, job: Any, out_dir: str | Path, on_done: Callable[[dict[str, Any], float], None]) -> None:
        self.metrics: dict[str, Any] | None = None
        self.error: str | None = None
        self._thread = threading.Thread(target=self._run, args=(job, Path(out_dir), on_done, time.time()),
                                        name="prunefront-dense", daemon=True)
        self._thread.start()

    def _run(self, job: Any, out_dir: Path, on_done: Callable[[dict[str, Any], float], None], t0: float) -> None:
        try:
            self.metrics = job.store(out_dir)
        except Exception as e:  # DenseJobError (one line) or an unexpected storage error
            self.error = str(e) or e.__class__.__name__
            return
        on_done(self.metrics, time.time() - t0)

    def __call__(self, trial_id: str, result: dict) -> bool:
        return False

    def stop_all(self) -> bool:
        return self.error is not None

    def wait(self, timeout: float | None = None) -> bool:
        """True once the dense job has ended (stored or failed: see ``error``)."""
        self._thread.join(timeout)
        return not self._thread.is_alive()

    def __reduce__(self) -> tuple[Any, tuple[()]]:
        return _NeverStop, ()
