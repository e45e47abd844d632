"""Memory pressure is a fault like a lost node: Ray's memory monitor kills a trial's process,
Ray retries it from its last epoch, and the search completes.

The pressure comes from outside Ray, as in the field (another process on the node takes the
memory): the search runs on its own embedded Ray whose memory monitor threshold sits a few
GiB above what the machine uses at the start, and once a trial has reported an epoch a
separate process allocates past that threshold for a second, then exits.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import pytest
import yaml

pytestmark = [pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
GIB = 2**30
HOG = """
import sys, time
import numpy as np
a = np.ones(int(sys.argv[1]), dtype=np.uint8)  # touched: resident
time.sleep(float(sys.argv[2]))
"""


def _meminfo() -> tuple[int, int]:
    """(total, used) bytes as Ray's memory monitor sees a machine without a cgroup limit."""
    info = {}
    for line in Path("/proc/meminfo").read_text().splitlines():
        key, value = line.split(":", 1)
        info[key] = int(value.split()[0]) * 1024
    return info["MemTotal"], info["MemTotal"] - info["MemAvailable"]


def _events(out: Path) -> list[dict]:
    path = out / "results.jsonl"
    if not path.is_file():
        return []
    return [json.loads(x) for x in path.read_text().split("\n")[:-1] if x.strip()]


def test_search_survives_the_memory_monitor_killing_a_trial(tmp_path: Path) -> None:
    total, used = _meminfo()
    if total < 12 * GIB:
        pytest.skip("needs a machine with 12 GiB of memory or more")
    # Room for the search's own processes (a dozen Ray processes of ~0.35 GB each, and
    # margin), far below the machine's limit.
    threshold = min(0.9, (used + 7 * GIB) / total)
    epochs = 6
    cfg = {
        "name": "oom",
        "data": {"dataset": "digits"},
        "dense": {"epochs": 2},
        "search": {"algorithm": "grid", "num_samples": 1, "epochs": epochs,
                   "space": {"criterion": ["magnitude"], "granularity": ["unstructured"], "schedule": ["one_shot"],
                             "scope": ["layerwise"], "amount": [0.5, 0.8], "lr": [0.05]}},
        "scheduler": {"name": "fifo"},
        "metrics": {"latency_repeats": 1},
        "resources": {"workers": 1, "cpus_per_worker": 0.9, "driver_cpus": 0.1, "max_failures": 3},
    }
    (tmp_path / "cfg.yaml").write_text(yaml.safe_dump(cfg))
    out = tmp_path / "exp"
    ray_tmp = tempfile.mkdtemp(prefix="pfoom", dir="/tmp")  # short: Ray's socket paths
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env.update(RAY_TMPDIR=ray_tmp, RAY_memory_usage_threshold=f"{threshold:.4f}", RAY_memory_monitor_refresh_ms="100")
    log = open(tmp_path / "search.log", "w")
    search = subprocess.Popen([sys.executable, "orchestrator/search.py", "--config", str(tmp_path / "cfg.yaml"),
                               "--output", str(out)], cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    hogged = False
    deadline = time.time() + 600
    try:
        while time.time() < deadline and search.poll() is None:
            if not hogged and any(e["type"] == "result" and e["epoch"] >= 2 for e in _events(out)):
                _, now = _meminfo()
                size = int(threshold * total - now + 1 * GIB)  # past the threshold by 1 GiB
                hog = subprocess.run([sys.executable, "-c", HOG, str(max(size, GIB)), "1.5"], timeout=120)
                assert hog.returncode == 0
                hogged = True
            time.sleep(0.2)
        try:
            code = search.wait(timeout=max(1.0, deadline - time.time()))
        except subprocess.TimeoutExpired:
            log.flush()
            pytest.fail("the search did not end in 600 s; its log ends:\n"
                        + (tmp_path / "search.log").read_text()[-4000:])
    finally:
        if search.poll() is None:
            search.kill()
            search.wait()
        log.close()
    text = (tmp_path / "search.log").read_text()
    assert hogged, text[-4000:]
    assert code == 0, text[-4000:]

    # Ray's memory monitor did kill something of the search (its raylet says so) ...
    raylet_logs = "".join(p.read_text(errors="replace") for p in Path(ray_tmp).rglob("raylet*.out"))
    assert "memory" in raylet_logs.lower() and "kill" in raylet_logs.lower()
    kills = [ln for ln in raylet_logs.splitlines() if "memory" in ln.lower() and "kill" in ln.lower()]
    print("\n".join(kills[:10]))
    # ... and the search went on: every trial completed, each epoch in the ledger once.
    events = _events(out)
    statuses = [e["status"] for e in events if e["type"] == "status"]
    assert statuses == ["completed", "completed"], text[-4000:]
    rows = Counter((e["trial_id"], e["epoch"]) for e in events if e["type"] == "result")
    assert set(rows.values()) == {1} and len(rows) == 2 * epochs
