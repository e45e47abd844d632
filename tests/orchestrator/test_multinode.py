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
import time
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
        yield info["address"], info["head"], info["workers"], env, proc
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
    address, head, workers, env, _ = sim_cluster
    cfg = {
        "name": "multinode",
        "data": {"dataset": "digits"},
        "dense": {"epochs": 2},
        "search": {"algorithm": "grid", "num_samples": 1, "epochs": 1,
                   "space": {"quantize": ["none"], "scope": ["global"], "criterion": ["magnitude"], "granularity": ["unstructured", "structured"],
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
    assert sorted(final["status"]) == ["completed", "completed", "reference", "reference"]  # dense, dense-int8
    dense = final[final["trial_id"] == "dense"].iloc[0]
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


RELAYS = """
import json, sys
import ray
from orchestrator.dense import start_relay
ray.init(address=sys.argv[1])
relays = [start_relay() for _ in range(6)]
where = ray.get([r.__ray_call__.remote(lambda self: ray.get_runtime_context().get_node_id()) for r in relays])
print(json.dumps({"driver": ray.get_runtime_context().get_node_id(), "relays": where}))
"""


def test_the_dense_weights_live_on_the_drivers_node(sim_cluster) -> None:
    """The relay that hands every trial its dense weights (objects Ray cannot rebuild) runs
    on the driver's node, never on a worker node whose loss would take the weights with it
    (a trial retried after its node died failed with ObjectReconstructionFailedError)."""
    address, head, workers, env, _ = sim_cluster
    proc = subprocess.run([sys.executable, "-c", RELAYS, address], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    assert got["driver"] == head  # a driver attaches to the head, as `ray job submit`'s does
    assert got["relays"] == [head] * 6


def _ledger(out: Path) -> list[dict]:
    path = out / "results.jsonl"
    if not path.is_file():
        return []
    return [json.loads(x) for x in path.read_text().split("\n")[:-1] if x.strip()]


def test_a_trial_whose_node_dies_continues_from_its_last_epoch(sim_cluster, tmp_path: Path) -> None:
    """The node running a trial's Train worker is killed mid-trial: Ray retries (Train's and
    Tune's FailureConfig), the trial continues after its last checkpointed epoch on the other
    node, every epoch is in the ledger once, and it ends exactly as an uninterrupted run."""
    address, head, workers, env, cluster = sim_cluster
    epochs = 6
    cfg = {
        "name": "nodeloss",
        "data": {"dataset": "digits"},
        "dense": {"epochs": 2},
        "search": {"algorithm": "grid", "num_samples": 1, "epochs": epochs,
                   "space": {"quantize": ["none"], "criterion": ["magnitude"], "granularity": ["unstructured"],
                             "schedule": ["gradual"], "scope": ["layerwise"], "amount": [0.8],
                             "lr": [0.05]}},
        "scheduler": {"name": "fifo"},
        "metrics": {"latency_repeats": 1},
        "resources": {"workers": 1, "cpus_per_worker": 0.9, "driver_cpus": 0.1, "max_failures": 2},
    }

    def search(name: str, extra: dict) -> subprocess.Popen:
        (tmp_path / f"{name}.yaml").write_text(yaml.safe_dump({**cfg, **extra}))
        return subprocess.Popen(
            [sys.executable, "orchestrator/search.py", "--config", str(tmp_path / f"{name}.yaml"),
             "--output", str(tmp_path / name), "--address", address],
            cwd=ROOT, env=env, stdout=open(tmp_path / f"{name}.log", "w"), stderr=subprocess.STDOUT,
        )

    # 1. Uninterrupted.
    plain = search("plain", {})
    assert plain.wait(timeout=600) == 0, (tmp_path / "plain.log").read_text()[-4000:]
    expected = [e for e in _ledger(tmp_path / "plain") if e["type"] == "result"]
    assert [e["epoch"] for e in expected] == list(range(1, epochs + 1))

    # 2. The same trial from the same dense weights; its worker's node dies at epoch 2.
    dense = str(tmp_path / "plain" / "dense" / "state_dict.pt")
    run = search("lost", {"dense": {"epochs": 2, "checkpoint": dense}})
    killed = None
    deadline = time.time() + 600
    while time.time() < deadline and run.poll() is None:
        rows = [e for e in _ledger(tmp_path / "lost") if e["type"] == "result"]
        if rows and rows[-1]["epoch"] >= 2:
            killed = rows[-1]["node_id"]
            cluster.stdin.write(f"remove {killed}\nadd\n")
            cluster.stdin.flush()
            assert json.loads(cluster.stdout.readline()) == {"removed": killed}
            assert "added" in json.loads(cluster.stdout.readline())
            break
        time.sleep(0.1)
    assert killed is not None, (tmp_path / "lost.log").read_text()[-4000:]
    assert run.wait(timeout=600) == 0, (tmp_path / "lost.log").read_text()[-4000:]

    events = _ledger(tmp_path / "lost")
    rows = [e for e in events if e["type"] == "result"]
    log = (tmp_path / "lost.log").read_text()
    # Each epoch once: the retry started after the last epoch that had reported, not at 1.
    assert [e["epoch"] for e in rows] == list(range(1, epochs + 1)), log[-4000:]
    assert rows[-1]["node_id"] != killed  # the rest ran elsewhere
    assert [e["status"] for e in events if e["type"] == "status"] == ["completed"]
    # Exactly where the uninterrupted run went: same weights, data order, masks, optimizer.
    for got, want in zip(rows, expected, strict=True):
        for key in ("val_accuracy", "val_loss", "train_loss", "sparsity", "flops", "size_bytes"):
            assert got[key] == want[key], (got["epoch"], key, got[key], want[key])
