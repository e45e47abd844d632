"""Resource planning: will the trials fit, and how many may run at once without deadlock.

Pure functions of a :class:`~orchestrator.config.SearchConfig` and a :class:`Cluster`
description; no Ray import. The Ray side passes Ray's view of the cluster
(:meth:`Cluster.from_ray_nodes` over ``ray.nodes()``); ``--dry-run`` uses this machine.

Why this matters: a trial is a Tune function trainable (the "driver") that launches a Ray
Train worker group. The driver's resources are reserved by Tune, the workers' by Train, one
after the other. If the drivers of the running trials hold the CPUs their worker groups
wait for (e.g. two trials each holding a whole CPU on a 2-CPU machine), every trial waits
forever. So the plan (1) caps ``max_concurrent_trials`` at the number of worker groups that
fit side by side, and (2) gives each driver only a CPU fraction that fits in what those
worker groups leave over (``resources.driver_cpus`` is an upper bound; it may become 0, an
empty reservation, because the driver only waits on its workers).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

from orchestrator.config import SearchConfig
from orchestrator.errors import ConfigError
from orchestrator.space import grid_size

__all__ = ["Cluster", "NodeResources", "Plan", "available_cpus", "detect_gpus", "make_plan", "trial_count"]

_EPS = 1e-9
#: Smallest driver reservation: Tune refuses an empty request for a trial that has no
#: bundles of its own (the Train workers get their own placement group).
MIN_DRIVER_CPUS = 0.01


@dataclass(frozen=True)
class NodeResources:
    """CPUs and GPUs of one node (fractions allowed, as Ray reports them)."""

    cpus: float
    gpus: float = 0.0

    def __post_init__(self) -> None:
        if self.cpus < 0 or self.gpus < 0:
            raise ValueError(f"node resources must be >= 0, got cpus={self.cpus}, gpus={self.gpus}")


@dataclass(frozen=True)
class Cluster:
    """The nodes trials can be placed on."""

    nodes: tuple[NodeResources, ...]

    def __post_init__(self) -> None:
        object.__setattr__(self, "nodes", tuple(self.nodes))
        if not self.nodes:
            raise ValueError("a cluster needs at least one node")

    @property
    def cpus(self) -> float:
        return sum(n.cpus for n in self.nodes)

    @property
    def gpus(self) -> float:
        return sum(n.gpus for n in self.nodes)

    @classmethod
    def uniform(cls, nodes: int, cpus: float, gpus: float = 0.0) -> Cluster:
        """``nodes`` identical nodes of ``cpus`` CPUs and ``gpus`` GPUs each."""
        return cls(tuple(NodeResources(float(cpus), float(gpus)) for _ in range(nodes)))

    @classmethod
    def local(cls, cpus: float | None = None, gpus: float | None = None) -> Cluster:
        """This machine: usable CPUs (affinity and cgroup quota) and visible NVIDIA GPUs."""
        return cls((NodeResources(float(available_cpus() if cpus is None else cpus),
                                  float(detect_gpus() if gpus is None else gpus)),))

    @classmethod
    def from_ray_nodes(cls, nodes: Sequence[Mapping[str, Any]]) -> Cluster:
        """From ``ray.nodes()`` (alive nodes' ``Resources``; ``CPU``/``GPU`` keys)."""
        alive = [n for n in nodes if n.get("Alive", n.get("alive", True))]
        return cls(
            tuple(
                NodeResources(float(n.get("Resources", {}).get("CPU", 0.0)), float(n.get("Resources", {}).get("GPU", 0.0)))
                for n in alive
            )
        )

    def describe(self) -> str:
        shapes: dict[tuple[float, float], int] = {}
        for n in self.nodes:
            shapes[(n.cpus, n.gpus)] = shapes.get((n.cpus, n.gpus), 0) + 1
        parts = [f"{k} x ({c:g} CPU, {g:g} GPU)" for (c, g), k in shapes.items()]
        return f"{len(self.nodes)} node(s): " + ", ".join(parts) + f"; total {self.cpus:g} CPU, {self.gpus:g} GPU"


def available_cpus() -> float:
    """CPUs this process may use: its CPU affinity, capped by a cgroup v2 ``cpu.max`` quota."""
    try:
        n = float(len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        n = float(os.cpu_count() or 1)
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()[:2]
        if quota != "max":
            n = min(n, max(1.0, math.floor(int(quota) / int(period))))
    except (OSError, ValueError):
        pass
    return n


def detect_gpus() -> int:
    """NVIDIA GPUs visible to this process, without importing torch (0 when none)."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    try:
        n = len(os.listdir("/proc/driver/nvidia/gpus"))
    except OSError:
        return 0
    if visible is not None:
        ids = [v for v in visible.split(",") if v.strip() and v.strip() != "-1"]
        n = min(n, len(ids))
    return n


def trial_count(cfg: SearchConfig) -> int:
    """Trials the search runs: ``num_samples``, times the grid size under grid search."""
    s = cfg.search
    return s.num_samples * grid_size(s) if s.algorithm == "grid" else s.num_samples


@dataclass(frozen=True)
class Plan:
    """How the search uses the cluster.

    Attributes:
        trials: Trials the search runs.
        workers: Ray Train workers per trial.
        driver: Resources Tune reserves for each trial's function trainable
            (``{"CPU": 0.0}`` means an empty reservation).
        worker: Resources of each Train worker (``ScalingConfig.resources_per_worker``).
        max_concurrent_trials: Trials Tune may run at once (``TuneConfig``).
        dense: The dense-baseline job: ``{"workers": n, "worker": {...}}`` (one Train job
            run from the main script before the search; no driver reservation).
        cluster: The cluster planned for.
        notes: Decisions the user should know about (shrunk driver share, capped concurrency).
    """

    trials: int
    workers: int
    driver: dict[str, float]
    worker: dict[str, float]
    max_concurrent_trials: int
    dense: dict[str, Any]
    cluster: Cluster
    notes: tuple[str, ...] = field(default_factory=tuple)

    def bundles(self) -> list[dict[str, float]]:
        """Driver bundle followed by one bundle per worker (a placement group's shape)."""
        return [dict(self.driver)] + [dict(self.worker) for _ in range(self.workers)]

    def to_dict(self) -> dict[str, Any]:
        return {
            "trials": self.trials,
            "workers": self.workers,
            "driver": dict(self.driver),
            "worker": dict(self.worker),
            "max_concurrent_trials": self.max_concurrent_trials,
            "dense": {"workers": self.dense["workers"], "worker": dict(self.dense["worker"])},
            "cluster": [{"cpus": n.cpus, "gpus": n.gpus} for n in self.cluster.nodes],
            "notes": list(self.notes),
        }

    def describe(self) -> str:
        """Human-readable summary printed by ``--dry-run``."""

        def res(r: Mapping[str, float]) -> str:
            return ", ".join(f"{v:g} {k}" for k, v in r.items()) or "nothing"

        per_trial_cpu = self.driver.get("CPU", 0.0) + self.workers * self.worker.get("CPU", 0.0)
        per_trial_gpu = self.workers * self.worker.get("GPU", 0.0)
        lines = [
            f"cluster:     {self.cluster.describe()}",
            f"trials:      {self.trials}",
            f"per trial:   driver {res(self.driver)} + {self.workers} worker(s) x ({res(self.worker)})"
            f" = {per_trial_cpu:g} CPU, {per_trial_gpu:g} GPU",
            f"concurrency: max_concurrent_trials = {self.max_concurrent_trials}",
            f"dense job:   {self.dense['workers']} worker(s) x ({res(self.dense['worker'])})",
        ]
        lines += [f"note:        {n}" for n in self.notes]
        return "\n".join(lines)


def _slots(node: NodeResources, cpu: float, gpu: float) -> int:
    """Workers of (cpu, gpu) that fit on ``node``."""
    n = math.floor(node.cpus / cpu + _EPS) if cpu > 0 else 10**9
    if gpu > 0:
        n = min(n, math.floor(node.gpus / gpu + _EPS))
    return max(0, n)


def _driver_share(leftovers: list[float], count: int, wanted: float) -> float:
    """Largest CPU share <= ``wanted`` such that ``count`` drivers fit in ``leftovers``.

    Rounded down to 0.01 CPU; 0 when nothing is left.
    """
    if count <= 0 or wanted <= 0:
        return 0.0

    def fits(d: float) -> bool:
        return d <= 0 or sum(math.floor(x / d + _EPS) for x in leftovers) >= count

    if fits(wanted):
        return float(wanted)
    # The best share is some node's leftover split j ways.
    candidates = sorted({x / j for x in leftovers for j in range(1, count + 1) if x > 0}, reverse=True)
    for d in candidates:
        d = math.floor(d * 100 + _EPS) / 100
        if 0 < d <= wanted and fits(d):
            return d
    return 0.0


def _leftovers(cluster: Cluster, slots: list[int], k: int, workers: int, cpu: float) -> list[float]:
    """CPUs left on each node after placing ``k`` worker groups (biggest nodes first)."""
    remaining = list(slots)
    left = [n.cpus for n in cluster.nodes]
    for _ in range(k):
        need = workers
        for i in sorted(range(len(remaining)), key=lambda i: -remaining[i]):
            take = min(need, remaining[i])
            remaining[i] -= take
            left[i] -= take * cpu
            need -= take
            if need == 0:
                break
    return [max(0.0, x) for x in left]


def _cpu_word(n: float) -> str:
    return "CPU" if n == 1 else "CPUs"


def make_plan(cfg: SearchConfig, cluster: Cluster) -> Plan:
    """Check that trials fit on ``cluster`` and choose driver share and concurrency.

    Args:
        cfg: The validated search configuration.
        cluster: The nodes available (Ray's view, or this machine for ``--dry-run``).

    Returns:
        The :class:`Plan`.

    Raises:
        ConfigError: a trial can never be scheduled; the message says what fits.
    """
    r = cfg.resources
    cpu, gpu, workers = float(r.cpus_per_worker), float(r.gpus_per_worker or 0.0), r.workers
    notes: list[str] = []

    # 1. One worker must fit on one node (a bundle never spans nodes).
    if gpu > 0 and cluster.gpus <= 0:
        raise ConfigError(
            f"resources.use_gpu: workers need {gpu:g} GPU(s) but the cluster has no GPUs; "
            "set resources.use_gpu: false (or plan for a GPU cluster with --cluster-gpus)"
        )
    max_cpu = max(n.cpus for n in cluster.nodes)
    if not any(_slots(n, cpu, gpu) >= 1 for n in cluster.nodes):
        if cpu > max_cpu + _EPS:
            raise ConfigError(
                f"resources.cpus_per_worker={cpu:g} does not fit on any node (largest: {max_cpu:g} "
                f"{_cpu_word(max_cpu)}); at most {max_cpu:g} CPU(s) per worker fit"
            )
        max_gpu = max(n.gpus for n in cluster.nodes)
        raise ConfigError(
            f"resources.gpus_per_worker={gpu:g} does not fit on any node (largest: {max_gpu:g} GPU(s) "
            f"next to {cpu:g} CPU(s)); at most {max_gpu:g} GPU(s) per worker fit"
        )

    # 2. One trial's worker group must fit on the cluster (Train spreads bundles over nodes).
    slots = [_slots(n, cpu, gpu) for n in cluster.nodes]
    total_slots = sum(slots)
    if workers > total_slots:
        bound = "GPUs" if gpu > 0 and sum(math.floor(n.gpus / gpu + _EPS) for n in cluster.nodes) < sum(
            math.floor(n.cpus / cpu + _EPS) for n in cluster.nodes
        ) else "CPUs"
        if bound == "GPUs":
            need, have = f"{workers * gpu:g} GPUs", f"{cluster.gpus:g} GPUs"
            unit = f"{gpu:g} GPU"
        else:
            need, have = f"{workers * cpu:g} CPUs", f"{cluster.cpus:g} CPUs"
            unit = f"{cpu:g} CPU"
        raise ConfigError(
            f"resources.workers={workers} needs {need} per trial but the cluster has {have}; "
            f"at most {total_slots} worker(s) of {unit} fit"
        )

    # 3. How many worker groups fit side by side; never more than there are trials.
    trials = trial_count(cfg)
    fit = total_slots // workers
    wanted = min(fit, trials)
    if r.max_concurrent_trials is not None:
        if r.max_concurrent_trials > fit:
            notes.append(
                f"resources.max_concurrent_trials={r.max_concurrent_trials} lowered to {fit}: only {fit} "
                "worker group(s) fit at once, more would leave trials waiting on each other"
            )
        wanted = min(wanted, r.max_concurrent_trials)

    # 4. Each running trial's driver needs a CPU share (Tune cannot reserve nothing) next to
    #    all running worker groups; run fewer trials at once until the drivers fit too.
    driver_cap = float(r.driver_cpus)
    concurrent, driver = 0, 0.0
    for k in range(wanted, 0, -1):
        d = _driver_share(_leftovers(cluster, slots, k, workers, cpu), k, driver_cap)
        if d >= MIN_DRIVER_CPUS:
            concurrent, driver = k, d
            break
    if concurrent == 0:
        per_worker = math.floor((max_cpu - MIN_DRIVER_CPUS) / max(1, workers) * 100) / 100
        raise ConfigError(
            f"resources.workers={workers} x cpus_per_worker={cpu:g} leaves no CPU for the trial's driver "
            f"(>= {MIN_DRIVER_CPUS:g} CPU) on a cluster of {cluster.cpus:g} CPUs; "
            f"at most {max(0, workers - 1)} worker(s) of {cpu:g} CPU fit, or {workers} of <= {per_worker:g} CPU"
        )
    if concurrent < wanted:
        hint = ""
        x = math.floor((cluster.cpus / wanted - driver_cap) / workers * 100) / 100
        if x > 0 and gpu == 0 and len(cluster.nodes) == 1:
            hint = f"; cpus_per_worker: {x:g} would let {wanted} run"
        notes.append(
            f"{concurrent} trial(s) at once instead of {wanted}: each trial's driver "
            f"({driver_cap:g} CPU) must fit next to the running worker groups{hint}"
        )
    elif driver < r.driver_cpus:
        notes.append(
            f"resources.driver_cpus={r.driver_cpus:g} lowered to {driver:g} so that {concurrent} trial(s) fit "
            "at once (a driver only waits on its workers)"
        )

    worker_res = {"CPU": cpu}
    if gpu > 0:
        worker_res["GPU"] = gpu
    return Plan(
        trials=trials,
        workers=workers,
        driver={"CPU": driver},
        worker=worker_res,
        max_concurrent_trials=concurrent,
        dense={"workers": workers, "worker": dict(worker_res)},
        cluster=cluster,
        notes=tuple(notes),
    )
