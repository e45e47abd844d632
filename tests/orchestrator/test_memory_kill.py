"""Memory pressure is a fault like a lost node: Ray's memory monitor kills a trial's process,
Ray retries it from its last epoch, and the search completes.

The pressure comes from outside Ray, as in the field (another process on the node takes the
memory): the search runs on its own embedded Ray whose memory monitor threshold sits a few
GiB above what the machine uses at the start, and once a trial has reported its third epoch
a separate process grows past that threshold until the raylet reports a kill, then exits.
"""

from __future__ import annotations

import json
import os
import re
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
import os, sys, time
import numpy as np
# Up to argv[1] bytes at once (below Ray's threshold), then, once the file argv[2] exists,
# 256 MiB more at a time up to argv[3] bytes (each step touched: resident). The test kills
# it as soon as the raylet reports a kill, so the pressure ends just past Ray's threshold
# however Ray counts the node's memory.
chunks, step = [], 256 * 2**20
while len(chunks) * step < int(sys.argv[1]):
    chunks.append(np.ones(step, dtype=np.uint8))
while not os.path.exists(sys.argv[2]):
    time.sleep(0.05)
while len(chunks) * step < int(sys.argv[3]):
    chunks.append(np.ones(step, dtype=np.uint8))
    time.sleep(0.05)
time.sleep(60)
"""
#: What the raylet logs when its memory monitor kills workers (Ray 2.60).
KILL_LINE = re.compile(r"Killing \d+ worker\(s\), kill details: Memory on the node")


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


def _kills(ray_tmp: str) -> list[str]:
    """The memory monitor's kill reports in the raylet's log, with the workers it chose."""
    text = "".join(p.read_text(errors="replace") for p in Path(ray_tmp).rglob("raylet.out"))
    lines = text.splitlines()
    out = []
    for i, line in enumerate(lines):
        if KILL_LINE.search(line):
            out.append(line[:160])
            out.extend(ln[:200] for ln in lines[i + 1:i + 40] if ln.startswith("Selected to kill"))
    return out


def test_search_survives_the_memory_monitor_killing_a_trial(tmp_path: Path) -> None:
    total, used = _meminfo()
    if total < 12 * GIB:
        pytest.skip("needs a machine with 12 GiB of memory or more")
    # Room for the search's own processes (a dozen Ray processes of ~0.35 GB each, and
    # margin), far below the machine's limit.
    threshold = min(0.9, (used + 7 * GIB) / total)
    epochs = 10
    cfg = {
        "name": "oom",
        "data": {"dataset": "digits"},
        "dense": {"epochs": 2},
        "search": {"algorithm": "grid", "num_samples": 1, "epochs": epochs,
                   "space": {"quantize": ["none"], "criterion": ["magnitude"], "granularity": ["unstructured"], "schedule": ["one_shot"],
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
    hog, hogged, go = None, False, tmp_path / "go"
    deadline = time.time() + 600
    try:
        while time.time() < deadline and search.poll() is None:
            events = _events(out)
            if hog is None and any(e["type"] == "result" for e in events):
                # A trial is training: come within 1 GiB of the threshold now (fast), ...
                _, now = _meminfo()
                below, past = int(threshold * total - now - 1 * GIB), int(threshold * total - now + 4 * GIB)
                hog = subprocess.Popen([sys.executable, "-c", HOG, str(max(below, 0)), str(go), str(past)])
            if hog is not None and not hogged and any(e["type"] == "result" and e["epoch"] >= 3 for e in events):
                # ... and once a trial has finished its third epoch, go past it until the
                # raylet kills something (at most 30 s), then release the memory at once.
                go.touch()
                until = time.time() + 30
                while time.time() < until and hog.poll() is None and not _kills(ray_tmp):
                    time.sleep(0.1)
                hog.kill()
                hog.wait()
                hogged = True
            time.sleep(0.2)
        try:
            code = search.wait(timeout=max(1.0, deadline - time.time()))
        except subprocess.TimeoutExpired:
            log.flush()
            pytest.fail("the search did not end in 600 s; its log ends:\n"
                        + (tmp_path / "search.log").read_text()[-4000:])
    finally:
        if hog is not None and hog.poll() is None:
            hog.kill()
            hog.wait()
        if search.poll() is None:
            search.kill()
            search.wait()
        log.close()
    text = (tmp_path / "search.log").read_text()
    assert hogged, text[-4000:]
    assert code == 0, text[-4000:]

    # Ray's memory monitor did kill something of the search (its raylet says so) ...
    kills = _kills(ray_tmp)
    assert kills, "the memory monitor killed nothing: the test did not test anything"
    print("\n".join(kills))
    # ... and the search went on: every trial completed, each epoch in the ledger once.
    events = _events(out)
    statuses = [e["status"] for e in events if e["type"] == "status"]
    assert statuses == ["completed", "completed"], text[-4000:]
    rows = Counter((e["trial_id"], e["epoch"]) for e in events if e["type"] == "result")
    assert set(rows.values()) == {1} and len(rows) == 2 * epochs
