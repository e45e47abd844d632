"""Resume after the driver is killed mid-search: no finished trial runs again, none is lost."""

from __future__ import annotations

import contextlib
import io
import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pandas as pd
import pytest
import yaml

pytestmark = [pytest.mark.ray, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
LRS = [0.05, 0.03, 0.02]


def _events(out: Path) -> list[dict]:
    path = out / "results.jsonl"
    if not path.is_file():
        return []
    lines = path.read_text().split("\n")
    return [json.loads(x) for x in lines[:-1] if x.strip()]  # the last piece may be torn


def test_resume_after_kill_9(ray_address: str, tmp_path: Path) -> None:
    from orchestrator import search

    cfg = {
        "name": "resume",
        "data": {"dataset": "digits"},
        "dense": {"epochs": 3, "optimizer": {"name": "sgd", "lr_schedule": "cosine"}},
        "search": {
            "algorithm": "grid", "num_samples": 1, "epochs": 3,
            "space": {"quantize": ["none"], "scope": ["global"], "criterion": ["magnitude"], "granularity": ["unstructured"], "schedule": ["one_shot"],
                      "amount": [0.5], "lr": LRS},
        },
        "scheduler": {"name": "fifo"},
        "metrics": {"latency_repeats": 1},
        "resources": {"workers": 1, "cpus_per_worker": 0.9, "driver_cpus": 0.1},
    }
    (tmp_path / "cfg.yaml").write_text(yaml.safe_dump(cfg))
    out = tmp_path / "exp"
    log = open(tmp_path / "driver.log", "w")
    # 1. A driver attached to the shared Ray, killed -9 once one trial has finished and
    # another is mid-way (it has reported an epoch, not its last).
    driver = subprocess.Popen(
        [sys.executable, str(ROOT / "orchestrator" / "search.py"), "--config", str(tmp_path / "cfg.yaml"),
         "--output", str(out), "--address", ray_address],
        stdout=log, stderr=subprocess.STDOUT, cwd=str(tmp_path),
    )
    deadline = time.time() + 400
    try:
        while time.time() < deadline and driver.poll() is None:
            events = _events(out)
            ended = {e["trial_id"] for e in events if e["type"] == "status"}
            midway = {e["trial_id"] for e in events if e["type"] == "result" and e["epoch"] < 3} - ended
            if ended and midway:
                break
            time.sleep(0.2)
        assert driver.poll() is None, (tmp_path / "driver.log").read_text()[-3000:]
        os.kill(driver.pid, signal.SIGKILL)
    finally:
        if driver.poll() is None:
            driver.kill()
        driver.wait()
        log.close()
    before = _events(out)
    done_before = {e["trial_id"] for e in before if e["type"] == "status"}
    assert len(done_before) >= 1
    rows_before = Counter((e["trial_id"], e["epoch"]) for e in before if e["type"] == "result")
    assert len({t for t, _ in rows_before}) < 3 or len(done_before) < 3  # it was really mid-search

    # 2. Resume (in this process, attached to the same Ray) and let it finish.
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        code = search.main(["--resume", str(out), "--address", ray_address])
    stdout = buf.getvalue()
    print(stdout)
    assert code == 0, stdout
    assert "restoring the Tune experiment" in stdout

    after = _events(out)
    rows = Counter((e["trial_id"], e["epoch"]) for e in after if e["type"] == "result")
    statuses = Counter(e["trial_id"] for e in after if e["type"] == "status")
    # Every trial finished, the grid was not sampled again: exactly the 3 trials.
    assert len(statuses) == 3 and {e["config"]["lr"] for e in after if e["type"] == "result"} == set(LRS)
    for tid in done_before:
        # Finished before the kill: not run again, so no line of it was written twice.
        assert statuses[tid] == 1
    # Interrupted ones continued after their last reported epoch (from its checkpoint): every
    # epoch of every trial is in the ledger exactly once.
    assert sorted(rows.items()) == sorted(((t, ep), 1) for t in statuses for ep in (1, 2, 3)), rows
    midway_before = {t for t, _ in rows_before} - done_before
    assert midway_before
    final = pd.read_parquet(out / "report" / "final.parquet")
    final = final[final["status"] != "reference"]  # dense, dense-int8
    assert sorted(final["trial_id"]) == sorted(statuses) and set(final["status"]) == {"completed"}
    assert json.loads((out / "experiment.json").read_text())["resumed_at"]
