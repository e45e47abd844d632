"""The search's state in Ray's metrics (what Prometheus and the dashboard's Grafana read) and its
progress lines.

The end-to-end test runs a tiny search on an embedded Ray whose metrics export port is known
(``--metrics-port``), scrapes that port over HTTP while it runs, as Prometheus would, and
checks every Prunefront series against the ledger and the report the search wrote.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import pandas as pd
import pytest
import yaml

from orchestrator import monitor
from orchestrator.monitor import METRICS, TRIAL_METRICS, format_duration, progress_line

ROOT = Path(__file__).resolve().parents[2]
# Labels Ray adds to every series (and its OpenTelemetry recorder's otel_scope_*); the rest are ours.
RAY_LABELS = {"SessionName", "NodeAddress", "WorkerId", "Component", "Version", "JobId", "instance"}


def test_progress_line_says_done_running_total_best_and_time_left() -> None:
    counts = {"completed": 3, "stopped": 1, "errored": 0, "running": 2, "pending": 6}
    line = progress_line(counts, 12, 125.0, "flops: knee t1 val 0.9500 at 1.2M, HV 0.40")
    assert line == ("prunefront: progress 4/12 done (2 running) | flops: knee t1 val 0.9500 at 1.2M, HV 0.40 | "
                    "elapsed 2 min 05 s, about 4 min 10 s left")
    assert progress_line({"completed": 12}, 12, 7200, None).endswith("| elapsed 2 h 00 min")
    assert format_duration(59.6) == "1 min 00 s"


def test_grafana_dashboard_queries_the_exported_metrics() -> None:
    dashboard = (ROOT / "cluster" / "grafana" / "prunefront_dashboard.json").read_text()
    for name in METRICS:
        assert f"ray_{name}" in dashboard, name


def _synthetic_search(tmp_path: Path, n: int):
    """A synthetic experiment's lines, replayed chunk by chunk as a search would append them:
    yields after each trial end (the ledger so far, the fake Tune trials)."""
    import types

    sys.path.insert(0, str(ROOT / "bench"))
    from _synthetic import trial_lines, write_experiment

    root = write_experiment(tmp_path / "exp", 1, 3)  # experiment.json, dense/
    events = trial_lines(n, 3, seed=3)
    trials: dict[str, types.SimpleNamespace] = {}
    with open(root / "results.jsonl", "w") as f:
        for ev in events:
            f.write(json.dumps(ev) + "\n")
            f.flush()
            t = trials.setdefault(ev["trial_id"], types.SimpleNamespace(
                trial_id=ev["trial_id"], status="RUNNING", config={"method": ev["config"]["criterion"]}))
            if ev["type"] == "status":
                t.status = "TERMINATED" if ev["status"] != "errored" else "ERROR"
            yield root, ev, t, list(trials.values())


# The dense model in int8: a quarter of the file, a little less accurate. It beats many
# trials on the size front, which moves the knee there (the report's rule: every reference
# competes).
DENSE_INT8 = {"val_accuracy": 0.9694, "test_accuracy": 0.9660, "val_loss": 0.1, "test_loss": 0.1,
              "flops": 34048, "flops_sparse": 34048, "params": 17226, "params_nonzero": 17226,
              "size_bytes": 18000, "latency_ms": 0.02, "sparsity": 0.0, "requested_sparsity": 0.0}


@pytest.mark.parametrize("int8", [False, True], ids=["dense", "dense+dense-int8"])
def test_the_monitor_follows_the_ledger_and_agrees_with_the_report(tmp_path: Path, int8: bool) -> None:
    """Read incrementally at each trial end, the counts, hypervolumes and knees are exactly
    what a report built from the whole ledger says, with or without the dense model in int8."""
    from reports.ledger import read_experiment
    from reports.tables import build_tables

    cb = None
    for root, ev, trial, trials in _synthetic_search(tmp_path, 150):
        if int8 and not (root / "dense" / "metrics-int8.json").exists():
            (root / "dense" / "metrics-int8.json").write_text(json.dumps(DENSE_INT8))
        cb = cb or monitor.MonitorCallback(root, "synthetic", 150, export=False, echo=False)
        if ev["type"] == "status":
            cb.on_trial_complete(0, trials, trial)
    counts = cb._states(trials)
    front_values, _ = cb._fronts()
    tables = build_tables(read_experiment(root))
    statuses = tables.final.set_index("trial_id")["status"]
    for state in ("completed", "stopped", "errored"):
        assert counts[state] == (statuses == state).sum() > 0
    got = {(name, tags["front"]): v for name, v, tags in front_values}
    final = tables.final.set_index("trial_id")
    assert ("dense-int8" in final.index) == int8
    for front, summary in tables.summaries.items():
        assert got[("prunefront_front_hypervolume", front)] == summary.hypervolume_normalized
        assert got[("prunefront_knee_val_accuracy", front)] == final.loc[summary.knee, "val_accuracy"], front


def test_per_trial_series_stay_bounded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Only running trials and front members keep per-trial series: once STALE_LIMIT others
    pile up, the per-trial exporter is replaced by one holding the live set. Every finished
    trial is counted in the histograms instead."""
    import types

    import ray

    actors: list[types.SimpleNamespace] = []

    class FakeExporter:
        @staticmethod
        def remote() -> types.SimpleNamespace:
            series: dict = {}
            observed: list = []
            a = types.SimpleNamespace(series=series, observed=observed, killed=False)
            a.set = types.SimpleNamespace(remote=lambda vs: series.update({(n, tuple(sorted(t.items()))): v for n, v, t in vs}))
            a.observe = types.SimpleNamespace(remote=lambda vs: observed.extend(vs))
            actors.append(a)
            return a

    monkeypatch.setattr(monitor, "_exporter_class", lambda: FakeExporter)
    monkeypatch.setattr(ray, "kill", lambda a: setattr(a, "killed", True))
    monkeypatch.setattr(ray, "wait", lambda refs, timeout=0: ([], refs))
    cb, peak, n = None, 0, 400
    for root, ev, trial, trials in _synthetic_search(tmp_path, n):
        cb = cb or monitor.MonitorCallback(root, "synthetic", n, echo=False)
        if ev["type"] == "result":
            cb.on_trial_result(0, trials, trial, {k: v for k, v in ev.items() if k != "config"})
        else:
            cb.on_trial_complete(0, trials, trial)
        live = {t.trial_id for t in trials if t.status == "RUNNING"} | (cb._tracker.members() if cb._tracker else set())
        series = {dict(k[1])["trial_id"] for a in actors if not a.killed for k in a.series if "trial_id" in dict(k[1])}
        assert len(series) <= len(live) + monitor.STALE_LIMIT
        peak = max(peak, len(series))
    assert sum(a.killed for a in actors) >= 2 and peak < n / 2
    observed = [v for a in actors for v in a.observed]
    ended = sum(1 for t in trials if t.status != "RUNNING")
    assert sum(1 for name, _, _ in observed if name == "prunefront_finished_val_accuracy") == ended


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _scrape(port: int) -> dict[tuple[str, tuple], float]:
    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
        text = r.read().decode()
    out = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name.startswith("ray_prunefront_"):
                labels = tuple(sorted((k, v) for k, v in sample.labels.items()
                                      if k not in RAY_LABELS and not k.startswith("otel_")))
                out[(sample.name, labels)] = sample.value
    return out


@pytest.mark.slow
def test_a_search_exports_its_state_as_ray_metrics(tmp_path: Path) -> None:
    cfg = {
        "name": "monitored",
        "data": {"dataset": "digits"},
        "dense": {"epochs": 2},
        "search": {"algorithm": "grid", "num_samples": 1, "epochs": 2,
                   "space": {"quantize": ["none"], "criterion": ["magnitude"], "granularity": ["unstructured", "structured"],
                             "schedule": ["one_shot"], "scope": ["layerwise"], "amount": [0.5], "lr": [0.05]}},
        "scheduler": {"name": "fifo"},
        "metrics": {"latency_repeats": 1},
    }
    (tmp_path / "cfg.yaml").write_text(yaml.safe_dump(cfg))
    out, port = tmp_path / "exp", _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env["RAY_metrics_report_interval_ms"] = "1000"
    proc = subprocess.Popen(
        [sys.executable, "orchestrator/search.py", "--config", str(tmp_path / "cfg.yaml"), "--output", str(out),
         "--metrics-port", str(port)],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    seen: dict[tuple[str, tuple], float] = {}

    def poll() -> None:
        while proc.poll() is None:
            try:
                seen.update(_scrape(port))
            except OSError:
                pass  # Ray not up yet, or shutting down
            time.sleep(0.5)

    scraper = threading.Thread(target=poll, daemon=True)
    scraper.start()
    stdout, _ = proc.communicate(timeout=600)
    scraper.join()
    assert proc.returncode == 0, stdout[-4000:]

    events = [json.loads(x) for x in (out / "results.jsonl").read_text().splitlines()]
    rows = [e for e in events if e["type"] == "result"]
    status = {e["trial_id"]: e["status"] for e in events if e["type"] == "status"}
    exp = ("experiment", "monitored")

    def value(name: str, **labels: str) -> float:
        key = (f"ray_{name}", tuple(sorted([exp, *labels.items()])))
        assert key in seen, (key, sorted(seen)[:20])
        return seen[key]

    # Trials by state: the final scrape has every trial where the ledger ends it.
    for state in ("completed", "stopped", "errored"):
        assert value("prunefront_trials", state=state) == sum(s == state for s in status.values())
    assert value("prunefront_trials", state="running") == 0 and value("prunefront_trials", state="pending") == 0
    assert value("prunefront_epochs_done") == len(rows) == 4
    # Per trial: its last row.
    for tid in status:
        last = [r for r in rows if r["trial_id"] == tid][-1]
        method = "/".join((last["config"]["criterion"], last["config"]["granularity"], last["config"]["schedule"]))
        for name, key in TRIAL_METRICS.items():
            assert value(name, trial_id=tid, method=method) == pytest.approx(last[key], rel=1e-12), name
    # Per front: what the report says.
    final = pd.read_parquet(out / "report" / "final.parquet").set_index("trial_id")
    import reports

    summaries = reports.read_metadata(out)["report"]["fronts"]
    assert summaries
    for front, summary in summaries.items():
        assert value("prunefront_front_hypervolume", front=front) == pytest.approx(summary["hypervolume_normalized"])
        if summary["knee"] is not None:
            knee_acc = final.loc[summary["knee"], "val_accuracy"]
            assert value("prunefront_knee_val_accuracy", front=front) == pytest.approx(knee_acc)
    # Every finished trial in the histograms (Ray exports <name>_bucket / _count / _sum).
    for name in monitor.HISTOGRAMS:
        assert value(f"{name}_count") == len(status), name
    # The log has a progress line per finished trial.
    progress = [ln for ln in stdout.splitlines() if ln.startswith("prunefront: progress ")]
    assert [ln.split(" done")[0] for ln in progress] == ["prunefront: progress 1/2", "prunefront: progress 2/2"]
