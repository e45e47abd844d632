"""Start or attach to Ray, so a search behaves the same standalone and under ``ray job submit``.

* No ``--address`` / ``RAY_ADDRESS``: an embedded local Ray just for this run
  (``address="local"``, so a ``ray start`` cluster on the same machine is never joined by
  accident), sized to the CPUs this process may use.
* ``--address`` or ``RAY_ADDRESS`` (which ``ray job submit`` sets for the job's driver):
  attach to that cluster. Token authentication (on by default since Ray 2.5x) needs the
  cluster's token on the client: ``~/.ray/auth_token`` or ``RAY_AUTH_TOKEN``; a submitted
  job inherits it.

Workers (Tune trials, Train controllers and workers) must import ``pruners`` and
``orchestrator``: when they are not pip-installed, the repository root goes on the
workers' ``PYTHONPATH`` (local Ray: inherited environment; a cluster: ``py_modules``
unless the job's ``working_dir`` already ships the code).

A few Ray Train settings trim the fixed cost of each trial's Train run (see
:data:`TRAIN_ENV`); a value the user set in the environment always wins.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = [
    "LOCAL_RAY_ENV", "RayRuntime", "TRAIN_ENV", "cluster_resources", "code_is_installed", "init", "pin_cluster_address",
    "repo_root",
]

logger = logging.getLogger(__name__)

#: Ray Train / Tune settings for many short Train runs. Each value is only a default.
TRAIN_ENV: dict[str, str] = {
    # The controller polls its workers at this period; every report, and noticing that
    # training ended, waits for a poll (default 2 s).
    "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.5",
    # An extra actor per run watching for node preemption, useless for short local runs.
    "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER": "0",
    # Train's Prometheus metrics callbacks: unused here, and not free per run.
    "RAY_TRAIN_METRICS_ENABLED": "0",
    # Tune's experiment-state snapshot period (default: adaptive, >= 10 s): a short one
    # loses less progress when the driver dies (the ledger guards finished trials anyway).
    "TUNE_GLOBAL_CHECKPOINT_S": "2",
}
#: Settings of the embedded local Ray's own processes (its raylet reads them at start). On a
#: cluster they are the operator's: cluster/README.md says how to set them on each node.
LOCAL_RAY_ENV: dict[str, str] = {
    # Ray >= 2.56's memory monitor may kill several workers at once, chosen by how long
    # their task has run: that takes Train's own actors (placement-group cleaner, autoscaling
    # coordinator, synchronisation actor) with a trial's worker, the killed run's CPUs are
    # never released and its retry waits for them until it times out. The group policy kills
    # one worker at a time, from the newest group of retriable ones: Train restarts that
    # worker from its last epoch (tests/orchestrator/test_memory_kill.py).
    "RAY_worker_killing_policy_by_group": "true",
}
_JOB_CONFIG_ENV = "RAY_JOB_CONFIG_JSON_ENV_VAR"


def repo_root() -> Path:
    """The directory holding the ``pruners`` and ``orchestrator`` packages."""
    return Path(__file__).resolve().parent.parent


def code_is_installed() -> bool:
    """True when the packages come from site-packages (a regular, non-editable install)."""
    here = str(repo_root())
    return "site-packages" in here or "dist-packages" in here


def _job_runtime_env() -> dict[str, Any]:
    """The runtime env of the ``ray job submit`` job this driver runs in ({} otherwise)."""
    raw = os.environ.get(_JOB_CONFIG_ENV)
    if not raw:
        return {}
    try:
        return dict(json.loads(raw).get("runtime_env") or {})
    except (ValueError, AttributeError):
        return {}


@dataclass(frozen=True)
class RayRuntime:
    """How this run reached Ray."""

    address: str | None  # None: the embedded local instance
    local: bool
    in_job: bool
    dashboard_url: str | None
    owned: bool = False  # this call connected (or started) Ray, so the run may shut it down

    def describe(self) -> str:
        where = "embedded local Ray" if self.local else f"Ray cluster at {self.address}"
        if self.in_job:
            where += " (as a submitted job)"
        if self.dashboard_url:
            where += f", dashboard http://{self.dashboard_url}"
        return where


def _local_env() -> None:
    """Environment every process of an embedded Ray inherits (set before ray.init)."""
    for key, value in {**TRAIN_ENV, **LOCAL_RAY_ENV}.items():
        os.environ.setdefault(key, value)
    if not code_is_installed():
        root = str(repo_root())
        parts = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
        if root not in parts:
            os.environ["PYTHONPATH"] = os.pathsep.join([root, *parts])


def _cluster_runtime_env() -> dict[str, Any]:
    """runtime_env for ``ray.init`` when attaching (merged into a submitted job's own)."""
    job = _job_runtime_env()
    job_vars = dict(job.get("env_vars") or {})
    env_vars = {k: os.environ.get(k, v) for k, v in TRAIN_ENV.items() if k not in job_vars}
    # The driver process itself reads the Tune settings from its own environment.
    for key, value in env_vars.items():
        os.environ.setdefault(key, value)
    runtime_env: dict[str, Any] = {"env_vars": env_vars} if env_vars else {}
    ships_code = bool(job.get("working_dir")) or bool(job.get("py_modules"))
    if not code_is_installed() and not ships_code:
        import orchestrator
        import pruners
        import reports

        runtime_env["py_modules"] = [
            str(Path(m.__file__).parent) for m in (pruners, orchestrator, reports)
        ]
    return runtime_env


def init(address: str | None, *, num_cpus: float | None = None, quiet: bool = True,
         metrics_port: int | None = None) -> RayRuntime:
    """Start an embedded Ray (``address`` None) or attach to a cluster.

    Args:
        address: ``None`` for an embedded local Ray; otherwise a cluster address
            (``auto``, ``host:port``, ``ray://host:port``).
        num_cpus: CPUs of the embedded instance (default: what this process may use).
        quiet: Keep worker log lines (every Train report) off the console.
        metrics_port: The embedded Ray's metrics export port (Prometheus text format);
            None: a port Ray picks.

    Returns:
        A :class:`RayRuntime` describing the connection.
    """
    in_job = bool(os.environ.get(_JOB_CONFIG_ENV))
    if address:
        runtime_env = _cluster_runtime_env()
    else:
        _local_env()
        runtime_env = {}

    import ray

    if ray.is_initialized():
        # A caller (e.g. a test or notebook) already connected; use that session.
        ctx = None
    elif address:
        ctx = ray.init(address=address, runtime_env=runtime_env or None, log_to_driver=not quiet,
                       logging_level=logging.WARNING)
    else:
        if num_cpus is None:
            from orchestrator.plan import available_cpus

            num_cpus = available_cpus()
        ctx = ray.init(
            address="local",
            num_cpus=int(num_cpus),
            log_to_driver=not quiet,
            logging_level=logging.WARNING,
            configure_logging=True,
            **({"_metrics_export_port": int(metrics_port)} if metrics_port else {}),
        )
    dashboard = getattr(ctx, "dashboard_url", None) if ctx is not None else None
    return RayRuntime(address=address or None, local=not address, in_job=in_job, dashboard_url=dashboard or None,
                      owned=ctx is not None)


def pin_cluster_address() -> None:
    """Make the Train job started from this process find *its* cluster, whatever else runs.

    Call in a connected process before building a ``TorchTrainer``. Train's controller
    starts a detached ``PlacementGroupCleaner`` that frees a run's worker placement group
    when the controller dies (which is how an ASHA-stopped trial ends). The cleaner finds
    the cluster through ``RAY_ADDRESS`` or by scanning the machine; with two Ray instances
    on one machine (two searches, or a search beside a test cluster) the scan fails, the
    cleaner dies, the stopped trial's placement group is never freed, and later trials
    wait for CPUs forever. Setting ``RAY_ADDRESS`` and adding it to the variables Train
    propagates to its controller (whose children inherit them) makes the lookup exact.
    """
    import ray

    os.environ["RAY_ADDRESS"] = ray.get_runtime_context().gcs_address
    try:  # a private set in Ray 2.60; without it the cleaner scans as before
        from ray.train.v2._internal import constants

        constants.ENV_VARS_TO_PROPAGATE.add("RAY_ADDRESS")
    except (ImportError, AttributeError):
        logger.debug("cannot propagate RAY_ADDRESS to Ray Train's controller")


def cluster_resources() -> Any:
    """Ray's view of the cluster as a ``plan.Cluster`` (alive nodes only)."""
    import ray

    from orchestrator.plan import Cluster

    return Cluster.from_ray_nodes(ray.nodes())

