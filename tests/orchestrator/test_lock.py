"""One driver per output (orchestrator/lock.py): a second driver is refused with one line
naming the first; a dead driver's lock is taken over; experiment.json never replaced."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from orchestrator import lock

ROOT = Path(__file__).resolve().parents[2]
SEARCH = ROOT / "orchestrator" / "search.py"


def _env() -> dict[str, str]:
    e = dict(os.environ)
    e["PYTHONPATH"] = os.pathsep.join([str(ROOT), e.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    e.pop("RAY_ADDRESS", None)
    return e


def _holder_process(out: Path) -> subprocess.Popen:
    """A process that takes ``out``'s lock, says so, and sleeps (a driver mid-search)."""
    code = ("import sys, time; from orchestrator import lock; "
            f"h = lock.acquire({str(out)!r}); print('held', flush=True); time.sleep(300)")
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, env=_env(), stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_a_second_acquire_is_refused_naming_the_holder(tmp_path: Path) -> None:
    held = lock.acquire(tmp_path)
    try:
        with pytest.raises(lock.LockHeld) as e:
            lock.acquire(tmp_path)
        line = str(e.value)
        assert f"is in use by another driver (pid {os.getpid()} on host {socket.gethostname()}, started 20" in line
        assert "\n" not in line
    finally:
        held.release()
    again = lock.acquire(tmp_path)  # released: free again, nobody taken over
    assert again.took_over is None
    again.release()


def test_a_dead_drivers_lock_is_taken_over(tmp_path: Path) -> None:
    proc = _holder_process(tmp_path)
    try:
        with pytest.raises(lock.LockHeld, match=f"pid {proc.pid} on host"):
            lock.acquire(tmp_path)
        with pytest.raises(lock.LockHeld, match=f"pid {proc.pid} on host"):
            lock.live_holder(tmp_path)  # what parse checks (a record, no lock taken)
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    # Killed -9: its record is left behind, naming a process that is gone.
    assert lock.holder(tmp_path)["pid"] == proc.pid
    lock.live_holder(tmp_path)  # a dead driver blocks nothing
    held = lock.acquire(tmp_path)
    try:
        assert held.took_over is not None and held.took_over["pid"] == proc.pid
        assert held.note().startswith(f"took over the lock of a driver that is gone (pid {proc.pid} on host")
        assert lock.holder(tmp_path)["pid"] == os.getpid()
    finally:
        held.release()


def test_a_live_recorded_driver_is_refused_where_flock_is_not_enforced(tmp_path: Path) -> None:
    # A file system that ignores flock: the record still names a live process on this host.
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)"])
    try:
        record = {"pid": sleeper.pid, "pid_start": lock._proc_start(sleeper.pid), "host": socket.gethostname(),
                  "started_at": "2026-01-01T00:00:00+00:00"}
        (tmp_path / lock.LOCK_FILE).write_text(json.dumps(record))
        with pytest.raises(lock.LockHeld, match=f"pid {sleeper.pid} on host .*started 2026-01-01"):
            lock.acquire(tmp_path)
        # The same pid with another start time is a reused pid, not that driver: taken over.
        (tmp_path / lock.LOCK_FILE).write_text(json.dumps({**record, "pid_start": "1"}))
        held = lock.acquire(tmp_path)
        assert held.took_over["pid"] == sleeper.pid
        held.release()
    finally:
        sleeper.kill()
        sleeper.wait()


def test_experiment_json_is_created_exclusively(tmp_path: Path) -> None:
    path = tmp_path / "experiment.json"
    lock.create_exclusive(path, {"name": "first"})
    with pytest.raises(FileExistsError):
        lock.create_exclusive(path, {"name": "second"})
    assert json.loads(path.read_text()) == {"name": "first"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["experiment.json"]  # no temporary left


@pytest.mark.parametrize("resume", [False, True], ids=["search", "resume"])
def test_the_command_line_refuses_a_locked_output_before_ray(tmp_path: Path, resume: bool) -> None:
    out = tmp_path / "exp"
    out.mkdir()
    if resume:  # an experiment that has started (its record is all --resume reads first)
        cfg = {"name": "locked", "search": {"num_samples": 1}}
        (out / "experiment.json").write_text(json.dumps({"name": "locked", "config": cfg}))
    proc = _holder_process(out)
    try:
        args = ["--resume", str(out)] if resume else ["--output", str(out)]
        code = ("import runpy, sys; sys.argv = ['search.py'] + sys.argv[1:]\n"
                "try:\n"
                f"    runpy.run_path({str(SEARCH)!r}, run_name='__main__')\n"
                "except SystemExit as e:\n"
                "    print('ray' in sys.modules, e.code)\n")
        run = subprocess.run([sys.executable, "-c", code, *args], cwd=tmp_path, env=_env(),
                             capture_output=True, text=True, timeout=120)
    finally:
        proc.kill()
        proc.wait()
    assert run.stdout.strip() == "False 2", (run.stdout, run.stderr)
    assert run.stderr.splitlines() == [
        f"error: output: {str(out)!r} is in use by another driver (pid {proc.pid} on host {socket.gethostname()}, "
        f"started {lock.holder(out)['started_at']}); wait for it to finish (or stop it) before running or "
        "resuming this experiment, or choose a new --output"
    ]
    assert sorted(p.name for p in out.iterdir()) == sorted([lock.LOCK_FILE] + (["experiment.json"] if resume else []))


@pytest.mark.ray
@pytest.mark.slow
def test_two_real_drivers_on_one_output(ray_address: str, tmp_path: Path) -> None:
    """Two searches started together on one output, then a --resume while the winner runs:
    one experiment, every (trial, epoch) logged once, the others refused naming the winner."""
    import yaml

    cfg = {
        "name": "twice",
        "data": {"dataset": "digits", "train_subset": 300},
        "dense": {"epochs": 1},
        "search": {"algorithm": "grid", "num_samples": 1, "epochs": 2,
                   "space": {"quantize": ["none"], "scope": ["global"], "criterion": ["magnitude"], "granularity": ["unstructured"],
                             "schedule": ["one_shot"], "amount": [0.5], "lr": [0.05, 0.02]}},
        "scheduler": {"name": "fifo"},
        "metrics": {"latency_repeats": 1},
        "resources": {"workers": 1, "cpus_per_worker": 0.9, "driver_cpus": 0.1},
    }
    (tmp_path / "cfg.yaml").write_text(yaml.safe_dump(cfg))
    out = tmp_path / "exp"
    cmd = [sys.executable, str(SEARCH), "--config", str(tmp_path / "cfg.yaml"), "--output", str(out),
           "--address", ray_address]
    env = _env()
    drivers = [subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True) for _ in range(2)]
    resumed = None
    try:
        deadline = time.time() + 300
        while time.time() < deadline and not (out / "experiment.json").is_file():
            time.sleep(0.2)
        assert (out / "experiment.json").is_file()
        resumed = subprocess.run([sys.executable, str(SEARCH), "--resume", str(out), "--address", ray_address],
                                 cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
        outputs = [d.communicate(timeout=400) for d in drivers]
    finally:
        for d in drivers:
            if d.poll() is None:
                d.kill()
                d.wait()
    codes = sorted(d.returncode for d in drivers)
    assert codes == [0, 2], outputs
    winner = next(d for d in drivers if d.returncode == 0)
    loser_err = next(err for d, (_, err) in zip(drivers, outputs) if d.returncode == 2)
    expected = f"error: output: {str(out)!r} is in use by another driver (pid {winner.pid} on host"
    assert loser_err.splitlines()[0].startswith(expected) and len(loser_err.splitlines()) == 1, loser_err
    assert resumed.returncode == 2 and resumed.stderr.startswith(expected), resumed.stderr
    assert len(resumed.stderr.splitlines()) == 1

    events = [json.loads(x) for x in (out / "results.jsonl").read_text().splitlines() if x.strip()]
    rows = [(e["trial_id"], e["epoch"]) for e in events if e["type"] == "result"]
    assert len(rows) == len(set(rows)) == 4, rows  # 2 trials x 2 epochs, each once
    assert len({e["trial_id"] for e in events if e["type"] == "status"}) == 2
    record = json.loads((out / "experiment.json").read_text())
    assert record["name"] == "twice" and "resumed_at" not in record
    assert lock.holder(out) is None  # released at exit
