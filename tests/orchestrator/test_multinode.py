"""A search on several nodes: ``ray.cluster_utils.Cluster`` simulates a cluster whose head
has no CPUs and whose two worker nodes have one CPU each (token auth on), and the search's
driver attaches to it with ``--address``.

What a multi-node run needs and a single node never checks: trials placed on different
nodes at once (the plan reads each node's resources, not the total), the dense weights
reaching a trial on another node than the dense job's (through the object store, not a
local file), and every row saying which node and device measured it.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import pandas as pd
import pytest
import yaml

pytestmark = [pytest.mark.slow]

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]


@pytest.fixture
def sim_cluster():
    """``(address, head node id, [worker node ids], env)`` of a running simulated cluster."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_") and k != "PYTHONPATH"}
    env.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=secrets.token_hex(16))
    temp_dir = tempfile.mkdtemp(prefix="pfmn", dir="/tmp")  # short: Ray's socket paths
    log = open(os.path.join(temp_dir, "cluster.log"), "w")
    proc = subprocess.Popen(
        [sys.executable, str(HERE / "_sim_cluster.py"), temp_dir], env=env, stdin=subprocess.PIPE,
        stdout=subprocess.PIPE, stderr=log, text=True, start_new_session=True,
    )
    try:
        line = proc.stdout.readline()
        assert line, Path(log.name).read_text()[-3000:]
        info = json.loads(line)
        yield info["address"], info["head"], info["workers"], env
    finally:
        proc.stdin.close()  # the helper shuts its cluster down
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        log.close()
        shutil.rmtree(temp_dir, ignore_errors=True)


def test_trials_run_on_two_nodes_and_rows_say_where(sim_cluster, tmp_path: Path) -> None:
    address, head, workers, env = sim_cluster
    cfg = {
        "name": "multinode",
        "data": {"dataset": "digits"},
        "dense": {"epochs": 2},
        "search": {"algorithm": "grid", "num_samples": 1, "epochs": 1,
                   "space": {"criterion": ["magnitude"], "granularity": ["unstructured", "structured"],
                             "schedule": ["one_shot"], "amount": [0.5], "lr": [0.02]}},
        "scheduler": {"name": "fifo"},
        "metrics": {"latency_repeats": 1},
        # 0.9 + 0.1 = one trial per 1-CPU node: two at once only if they go to two nodes.
        "resources": {"workers": 1, "cpus_per_worker": 0.9, "driver_cpus": 0.1},
    }
    (tmp_path / "cfg.yaml").write_text(yaml.safe_dump(cfg))
    out = tmp_path / "exp"
    proc = subprocess.run(
        [sys.executable, "orchestrator/search.py", "--config", str(tmp_path / "cfg.yaml"),
         "--output", str(out), "--address", address],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    # The plan saw two 1-CPU nodes (not a 2-CPU machine) and still runs two trials at once.
    assert "2 trial(s), up to 2 at once" in proc.stdout, proc.stdout

    final = pd.read_parquet(out / "report" / "final.parquet")
    assert sorted(final["status"]) == ["completed", "completed", "reference"]
    dense = final[final["status"] == "reference"].iloc[0]
    trials = final[final["status"] == "completed"]
    # Nothing ran on the head (it has no CPUs); the two trials ran on the two worker nodes,
    # so one of them got the dense weights on another node than the dense job's.
    assert dense["node_id"] in workers
    assert sorted(trials["node_id"]) == sorted(workers)
    assert head not in set(final["node_id"])
    assert set(final["device"]) == {"cpu"} and final["host"].notna().all()
    assert (trials["val_accuracy"] > 0.5).all()

    rows = pd.read_parquet(out / "report" / "trials.parquet")
    assert rows["node_id"].notna().all() and set(rows["node_id"]) <= set(workers)
