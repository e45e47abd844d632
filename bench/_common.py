"""Shared helpers of the benchmark scripts: machine state, threads, interleaved timing."""

from __future__ import annotations

import argparse
import contextlib
import importlib
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:  # run as `python bench/x.py` from anywhere, no install needed
    sys.path.insert(0, ROOT)


def parser(description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1,
                   help="torch intra-op threads (default: all cores)")
    p.add_argument("--repeats", type=int, default=None, help="timed repetitions (default per script)")
    p.add_argument("--smoke-test", action="store_true", help="tiny sizes, just check it runs")
    return p


def setup(threads: int) -> None:
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    load = os.getloadavg() if hasattr(os, "getloadavg") else (float("nan"),) * 3
    print(
        f"# torch {torch.__version__} | {platform.processor() or platform.machine()} | "
        f"{os.cpu_count()} cores | threads {torch.get_num_threads()} | "
        f"load avg {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}"
    )
    if load[0] > (os.cpu_count() or 1) * 0.5:
        print("# WARNING: the machine is busy; timings are noisy (compare ratios, rerun when quiet)")


def median_ms(fn: Callable[[], object], repeats: int, warmup: int = 2) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def interleaved_ms(
    fns: dict[str, Callable[[], object]], repeats: int, warmup: int = 2
) -> dict[str, float]:
    """Median time of each function, measured round-robin so load drift hits all alike."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            times[name].append((time.perf_counter() - t0) * 1e3)
    return {k: statistics.median(v) for k, v in times.items()}


def verdict(name: str, value: float, target: float, higher_is_better: bool) -> bool:
    ok = value >= target if higher_is_better else value <= target
    op = ">=" if higher_is_better else "<="
    print(f"RESULT {name} = {value:.3f} (target {op} {target}): {'MEETS' if ok else 'MISSES'} target")
    return ok


def save_figure(fig: object, path: str | os.PathLike) -> None:
    """Write a matplotlib figure to ``path`` (its folder made if missing) and free it."""
    import matplotlib.pyplot as plt

    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)  # type: ignore[attr-defined]
    plt.close(fig)  # type: ignore[arg-type]


#: The two forward passes inside ``pruners.prune``'s structured path, as (module, name) where
#: prune looks them up when it runs: the classifier search and Torch-Pruning's traced graph.
PRUNE_PASSES = {"classifier forward": ("pruners.prune", "find_classifier"),
                "graph trace": ("pruners.structured", "build_graph")}


@contextlib.contextmanager
def timed_prune_passes() -> Iterator[tuple[dict[str, float], dict[str, float]]]:
    """Time ``pruners.prune``'s two forward passes apart from the rest (a bench-only patch of
    the helpers, restored on exit). Yields ``(wall, cpu)``: seconds per pass, accumulated
    until cleared; "scoring + removal" is a prune's total minus their sum. Raises if a helper
    moved, so a refactor of ``pruners`` cannot turn the measurement into a silent zero."""
    wall: dict[str, float] = {}
    cpu: dict[str, float] = {}
    saved = []
    for label, (module_name, attr) in PRUNE_PASSES.items():
        module = importlib.import_module(module_name)
        fn = getattr(module, attr, None)
        if not callable(fn):
            raise RuntimeError(f"{module_name}.{attr} is gone: update bench/_common.PRUNE_PASSES to where "
                               "pruners.prune calls its forward passes now")

        def wrapper(*a, _fn=fn, _label=label, **kw):
            t0, c0 = time.perf_counter(), time.process_time()
            try:
                return _fn(*a, **kw)
            finally:
                wall[_label] = wall.get(_label, 0.0) + time.perf_counter() - t0
                cpu[_label] = cpu.get(_label, 0.0) + time.process_time() - c0

        saved.append((module, attr, fn))
        setattr(module, attr, wrapper)
    try:
        yield wall, cpu
    finally:
        for module, attr, fn in saved:
            setattr(module, attr, fn)
