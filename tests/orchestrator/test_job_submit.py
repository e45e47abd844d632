"""``ray job submit`` path: a search submitted with ``JobSubmissionClient`` to a
``ray start --head`` cluster with token authentication reaches SUCCEEDED and leaves its
report. The cluster is this test's own (own ports, own temp dir, own token), so it never
touches the session's shared Ray or anyone else's."""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml

pytestmark = [pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
TERMINAL = ("SUCCEEDED", "FAILED", "STOPPED")


def _free_ports(n: int) -> list[int]:
    socks, ports = [], []
    for _ in range(n):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        socks.append(s)
        ports.append(s.getsockname()[1])
    for s in socks:
        s.close()
    return ports


@pytest.fixture
def head_cluster(no_address_override):
    """A 2-CPU ``ray start --head --block`` with token auth; yields (dashboard URL, token).

    ``no_address_override``: JobSubmissionClient would take ``RAY_ADDRESS`` over the URL."""
    token = secrets.token_hex(16)
    # Short: Ray's socket paths live under it and must stay below ~107 characters.
    temp_dir = tempfile.mkdtemp(prefix="pfray", dir="/tmp")
    gcs, dash, agent, client, agent_grpc, metrics, env_agent = _free_ports(7)
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_") and k != "PYTHONPATH"}
    env.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=token)
    log = open(os.path.join(temp_dir, "ray-start.log"), "w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "ray.scripts.scripts", "start", "--head", "--block", "--num-cpus=2",
         f"--port={gcs}", f"--dashboard-port={dash}", "--dashboard-host=127.0.0.1",
         f"--dashboard-agent-listen-port={agent}", f"--dashboard-agent-grpc-port={agent_grpc}",
         f"--ray-client-server-port={client}", f"--metrics-export-port={metrics}",
         f"--runtime-env-agent-port={env_agent}", f"--temp-dir={temp_dir}", "--include-dashboard=true"],
        env=env, stdout=log, stderr=subprocess.STDOUT,
        start_new_session=True,  # its own process group: stopped below by that group's id
    )
    url = f"http://127.0.0.1:{dash}"
    try:
        from ray.job_submission import JobSubmissionClient

        deadline = time.time() + 120
        while True:
            assert proc.poll() is None, Path(log.name).read_text()[-3000:]
            try:
                JobSubmissionClient(url, headers={"Authorization": f"Bearer {token}"}).list_jobs()
                break
            except Exception:
                if time.time() > deadline:
                    raise
                time.sleep(1)
        yield url, token
    finally:
        # Stop only what this fixture started: its process group (the session created for
        # `ray start`, holding the cluster's processes): SIGTERM, a short grace, SIGKILL.
        for sig in (signal.SIGTERM, signal.SIGKILL):
            try:
                os.killpg(proc.pid, sig)
            except ProcessLookupError:
                break
            deadline = time.time() + 5
            while time.time() < deadline and proc.poll() is None:
                time.sleep(0.2)
        proc.wait()
        log.close()
        shutil.rmtree(temp_dir, ignore_errors=True)


def test_submitted_job_succeeds_and_leaves_its_report(head_cluster, tmp_path: Path) -> None:
    from ray.job_submission import JobSubmissionClient

    url, token = head_cluster
    # Token auth is on: a wrong token is refused.
    with pytest.raises(Exception):
        JobSubmissionClient(url, headers={"Authorization": f"Bearer {secrets.token_hex(16)}"}).list_jobs()

    cfg = {
        "name": "submitted",
        "data": {"dataset": "digits"},
        "dense": {"epochs": 2},
        "search": {"algorithm": "random", "num_samples": 2, "epochs": 1,
                   "space": {"quantize": ["none"], "scope": ["global"], "criterion": ["magnitude"], "granularity": ["structured"], "schedule": ["one_shot"],
                             "amount": {"low": 0.3, "high": 0.6}, "lr": 0.02}},
        "scheduler": {"name": "fifo"},
        "metrics": {"latency_repeats": 1},
        "resources": {"workers": 1, "cpus_per_worker": 0.9, "driver_cpus": 0.1},
    }
    (tmp_path / "cfg.yaml").write_text(yaml.safe_dump(cfg))
    out = tmp_path / "exp"  # absolute: the driver runs in the job's unpacked working dir
    client = JobSubmissionClient(url, headers={"Authorization": f"Bearer {token}"})
    job = client.submit_job(
        entrypoint=f"{sys.executable} orchestrator/search.py --config {tmp_path / 'cfg.yaml'} --output {out}",
        runtime_env={"working_dir": str(ROOT), "excludes": [".git", "prunefront-results", "*.pt2"]},
    )
    deadline = time.time() + 480
    status = None
    while time.time() < deadline:
        status = str(client.get_job_status(job))
        if any(status.endswith(t) for t in TERMINAL):
            break
        time.sleep(2)
    logs = client.get_job_logs(job)
    assert status is not None and status.endswith("SUCCEEDED"), logs[-4000:]
    assert "as a submitted job" in logs and f"report:  {out / 'report'}" in logs
    for name in ("trials.parquet", "final.parquet", "fronts.parquet", "fronts.png", "fronts.html"):
        assert (out / "report" / name).is_file(), name
    final = pd.read_parquet(out / "report" / "final.parquet")
    assert sorted(final["status"]) == ["completed", "completed", "reference", "reference"]  # dense, dense-int8
