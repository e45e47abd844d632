"""The dense job runs beside the search: its start gate, its failure, and its stopper.

Driven with small Ray tasks standing in for the Train job (the real job runs in the
end-to-end, resume and job-submit tests), on the shared local Ray.
"""

from __future__ import annotations

import json
import pickle
import time

import pytest

from orchestrator import dense

pytestmark = pytest.mark.ray


def _relay():
    import ray

    return ray.remote(num_cpus=0)(dense.DenseRelay).remote()


def test_the_gate_opens_once_the_job_signals_not_at_its_end(ray_session):
    ray = ray_session
    relay = _relay()

    @ray.remote(num_cpus=0)
    def job(relay):
        ray.get(relay.placed.remote())
        time.sleep(30)  # still "training" after the signal
        return {}

    output = job.remote(relay)
    gate = relay.wait_placed.remote()
    # What a trial's driver does before starting its Train run (orchestrator.trial.run_trial).
    ready, _ = ray.wait([gate], num_returns=1, timeout=20, fetch_local=False)
    assert ready == [gate]  # released by the signal, not by the job's end
    ray.cancel(output, force=True)


def test_a_gate_and_weights_never_posted_are_released_when_the_job_ends(ray_session, tmp_path):
    """Trials waiting on the gate or the weights of a job that failed first go on (their
    workers then fail on the missing weights) instead of waiting forever."""
    ray = ray_session

    @ray.remote(num_cpus=0, max_retries=0)
    def job():
        raise ValueError("no such model")

    relay = _relay()
    dj = dense.DenseJob(state=relay.weights.remote(), output=job.remote(), gate=relay.wait_placed.remote(),
                        relay=relay)
    with pytest.raises(dense.DenseJobError):
        dj.store(tmp_path)
    ready, _ = ray.wait([dj.gate, dj.state], num_returns=2, timeout=30, fetch_local=False)
    assert len(ready) == 2
    with pytest.raises(ray.exceptions.RayActorError):
        ray.get(dj.state)


def test_store_writes_the_dense_directory_last_file_metrics(ray_session, tmp_path):
    ray = ray_session
    files = {"model.pt2": b"program", "state_dict.pt": b"weights", "metrics.json": b"{}"}
    output = ray.put({"metrics": {"val_accuracy": 0.9, "flops": 10.0, "params": 3}, "files": files})
    metrics = dense.DenseJob(state=ray.put(b"weights"), output=output).store(tmp_path)
    assert metrics["val_accuracy"] == 0.9
    assert (tmp_path / "dense" / "state_dict.pt").read_bytes() == b"weights"
    assert json.loads((tmp_path / "dense" / "metrics.json").read_text())["params"] == 3
    assert dense.load_dense(tmp_path) == (metrics, b"weights")


def test_a_failed_job_is_one_line_and_leaves_no_dense_directory(ray_session, tmp_path):
    ray = ray_session

    @ray.remote(num_cpus=0, max_retries=0)
    def job():
        raise RuntimeError("Training failed.\nworker 0: CUDA out of memory")

    with pytest.raises(dense.DenseJobError) as err:
        dense.DenseJob(state=None, output=job.remote()).store(tmp_path)
    assert "\n" not in str(err.value)
    assert str(err.value) == "the dense job failed: RuntimeError: worker 0: CUDA out of memory"
    assert dense.load_dense(tmp_path) is None and not (tmp_path / "dense").exists()


def test_dense_watch_stops_the_search_when_the_job_fails_and_pickles_inert(ray_session, tmp_path):
    from orchestrator.tune_space import DenseWatch

    ray = ray_session

    @ray.remote(num_cpus=0, max_retries=0)
    def job():
        raise ValueError("bad data")

    done = []
    watch = DenseWatch(dense.DenseJob(state=None, output=job.remote()), tmp_path, lambda m, s: done.append(m))
    assert watch.wait(timeout=60)
    assert watch.stop_all() and watch.error == "the dense job failed: ValueError: bad data"
    assert not done and not watch("trial", {})
    # Tune pickles its stopper with the experiment state: a restored search never stops.
    restored = pickle.loads(pickle.dumps(watch))
    assert not restored.stop_all() and not restored("trial", {})


def test_dense_watch_reports_the_metrics_when_the_job_succeeds(ray_session, tmp_path):
    from orchestrator.tune_space import DenseWatch

    ray = ray_session
    files = {"model.pt2": b"p", "state_dict.pt": b"w", "metrics.json": b"{}"}
    output = ray.put({"metrics": {"val_accuracy": 0.5}, "files": files})
    done = []
    watch = DenseWatch(dense.DenseJob(state=ray.put(b"w"), output=output), tmp_path, lambda m, s: done.append(m))
    assert watch.wait(timeout=60) and watch.error is None and not watch.stop_all()
    assert done == [{"val_accuracy": 0.5}] and (tmp_path / "dense" / "metrics.json").is_file()


@pytest.mark.slow
def test_real_dense_job_stores_its_files_and_leaves_no_train_actors(ray_session, exact_ray_address, tmp_path):
    """The whole path the search takes: start, gate, store; Train's controller (which
    ``fit()`` pins through a SIGINT handler) must not outlive the job in the pooled task
    process. The actors are listed on the shared Ray by its address: given none, the state
    API asks whatever cluster /tmp/ray/ray_current_cluster names (a dead one once made this
    test time out waiting for its GCS)."""
    from ray.util.state import list_actors

    from orchestrator.config import SearchConfig

    def train_actors() -> set[str]:
        return {a.actor_id for a in list_actors(address=exact_ray_address, filters=[("state", "=", "ALIVE")])
                if a.class_name in ("TrainController", "DatasetManager")}

    before = train_actors()  # other tests' Train runs, if any, are not this job's
    cfg = SearchConfig.from_dict({"data": {"train_subset": 256, "eval_subset": 128}, "dense": {"epochs": 1},
                                  "metrics": {"latency_repeats": 2}})
    job = dense.start_dense(cfg, train_storage=str(tmp_path / "train"), workers=1,
                            worker_resources={"CPU": 0.9}, use_gpu=False)
    metrics = job.store(tmp_path)
    assert metrics["epoch"] == 1 and 0.0 <= metrics["val_accuracy"] <= 1.0 and metrics["params"] > 0
    assert 0.0 <= metrics["test_accuracy"] <= 1.0 and metrics["speedup"] == 1.0
    stored = dense.load_dense(tmp_path)
    assert stored is not None and stored[1] == ray_session.get(job.state)
    deadline = time.time() + 30
    while True:
        left = train_actors() - before
        if not left or time.time() > deadline:
            break
        time.sleep(1)
    assert left == set()
