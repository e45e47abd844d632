"""Shared helpers of the benchmark scripts: machine state, threads, interleaved timing."""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
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
