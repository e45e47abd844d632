"""cluster/grafana/prunefront_dashboard.json queries only Prunefront's metrics and is built like
the dashboards Ray generates (same fields, ``${datasource}`` variable, SessionName / Cluster
filters on every query). Ray's own dashboards come from the installed Ray's generator
(``ray.dashboard.modules.metrics.grafana_dashboard_factory``, the code that writes
``<temp dir>/session_latest/metrics/grafana/dashboards/*.json``); no Ray instance is started.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from orchestrator.monitor import HISTOGRAMS as MONITOR_HISTOGRAMS
from orchestrator.monitor import METRICS as MONITOR_METRICS

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "cluster" / "grafana" / "prunefront_dashboard.json"

# The metrics Prunefront exports with ray.util.metrics, as Prometheus sees them (Ray prefixes
# "ray_"), with their tag keys: taken from the exporter.
METRICS: dict[str, set[str]] = {f"ray_{name}": set(tags) for name, (_, tags) in MONITOR_METRICS.items()}
# Histograms: Prometheus reads their buckets (label "le").
METRICS |= {f"ray_{name}_bucket": {"experiment", "le"} for name in MONITOR_HISTOGRAMS}
# Labels Ray (SessionName, ...) and KubeRay's PodMonitor (ray_io_cluster) add to every series.
RAY_LABELS = {"SessionName", "ray_io_cluster", "NodeAddress", "WorkerId", "Component", "Version", "instance"}
PROMQL_WORDS = {
    "sum", "max", "min", "avg", "count", "by", "without", "topk", "bottomk", "last_over_time",
    "max_over_time", "label_values", "query_result", "histogram_quantile", "le",
}
FILTERS = ('SessionName=~"$SessionName"', 'ray_io_cluster=~"$Cluster"', 'experiment=~"$Experiment"')


@pytest.fixture(scope="module")
def dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text())


@pytest.fixture(scope="module")
def ray_dashboards() -> dict[str, dict[str, Any]]:
    from ray.dashboard.modules.metrics import grafana_dashboard_factory as factory

    out = {}
    for name in ("default", "train", "data", "serve"):
        content, uid = getattr(factory, f"generate_{name}_grafana_dashboard")()
        out[uid] = json.loads(content)
    return out


def graph_panels(d: dict[str, Any]) -> list[dict[str, Any]]:
    panels = []
    for p in d["panels"]:
        panels.extend(p.get("panels", []))  # panels of collapsed rows
        if p["type"] != "row":
            panels.append(p)
    return panels


def metric_names(expr: str) -> set[str]:
    """The metric names an expression selects (label matchers, ``by (...)`` and words removed)."""
    bare = re.sub(r'"(?:[^"\\]|\\.)*"', "", expr)
    bare = re.sub(r"label_values\(([^,]*),\s*[A-Za-z_][A-Za-z0-9_]*\s*\)", r"\1", bare)  # (series, label)
    bare = re.sub(r"\{[^}]*\}", "", bare)
    bare = re.sub(r"\b(by|without)\s*\([^)]*\)", "", bare)
    bare = re.sub(r"\[[^\]]*\]", "", bare)  # range selectors
    words = set(re.findall(r"[A-Za-z_:][A-Za-z0-9_:]*", bare))
    return words - PROMQL_WORDS


def test_has_the_fields_of_rays_own_dashboards(dashboard, ray_dashboards) -> None:
    common = set.intersection(*(set(d) for d in ray_dashboards.values()))
    assert common <= set(dashboard), common - set(dashboard)
    assert dashboard["uid"] == "prunefrontDashboard" and dashboard["uid"] not in ray_dashboards
    assert dashboard["title"] and isinstance(dashboard["version"], int)
    ray = next(iter(ray_dashboards.values()))
    assert dashboard["schemaVersion"] == ray["schemaVersion"]
    assert any(t.startswith("rayVersion:") for t in dashboard["tags"])  # Ray tags its dashboards so
    ray_graph = next(p for d in ray_dashboards.values() for p in graph_panels(d) if p["type"] == "graph")
    ray_target = ray_graph["targets"][0]
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    for p in graph_panels(dashboard):
        assert p["type"] == "graph"  # the panel type Ray's generated dashboards use
        assert set(ray_graph) <= set(p), (p["title"], set(ray_graph) - set(p))
        for t in p["targets"]:
            assert set(ray_target) <= set(t), (p["title"], set(ray_target) - set(t))


def test_datasource_and_filter_variables_follow_ray(dashboard, ray_dashboards) -> None:
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    ray_vars = {v["name"]: v for d in ray_dashboards.values() for v in d["templating"]["list"]}
    assert variables["datasource"]["type"] == ray_vars["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == ray_vars["datasource"]["query"] == "prometheus"
    for name in ("SessionName", "Cluster"):  # Ray's own filter variables, same keys and choices
        assert set(ray_vars[name]) <= set(variables[name]), name
        assert variables[name]["allValue"] in (".*", ".+") and variables[name]["includeAll"]
    assert "label_values(" in variables["Cluster"]["definition"] and "ray_io_cluster)" in variables["Cluster"]["definition"]
    for v in variables.values():
        if v["type"] == "query":
            assert v["datasource"] == "${datasource}"
            names = metric_names(v["definition"])
            assert names and names <= set(METRICS), (v["name"], names)


def test_every_query_selects_only_prunefront_metrics_with_the_filters(dashboard) -> None:
    seen: set[str] = set()
    for p in graph_panels(dashboard):
        assert p["datasource"] == "${datasource}", p["title"]
        for t in p["targets"]:
            expr = t["expr"]
            names = metric_names(expr)
            assert names and names <= set(METRICS), (p["title"], names - set(METRICS))
            for selector in re.findall(r"[A-Za-z_:][A-Za-z0-9_:]*\{[^}]*\}", expr):
                for f in FILTERS:
                    assert f in selector, (p["title"], f)
            for name in names:
                groups = re.findall(r"\b(?:by|without)\s*\(([^)]*)\)", expr)
                labels = {x.strip() for g in groups for x in g.split(",") if x.strip()}
                assert labels <= METRICS[name] | RAY_LABELS, (p["title"], labels - METRICS[name])
            seen |= names
    assert seen == set(METRICS), set(METRICS) - seen  # a panel for every metric


def test_the_panels_the_issue_asks_for(dashboard) -> None:
    by_metric: dict[str, list[dict[str, Any]]] = {}
    for p in graph_panels(dashboard):
        for t in p["targets"]:
            for name in metric_names(t["expr"]):
                by_metric.setdefault(name, []).append((p, t))
    (states, states_target), = by_metric["ray_prunefront_trials"]
    assert states["stack"] is True and "{{state}}" in states_target["legendFormat"]
    for name in METRICS:
        for p, t in by_metric[name]:
            if "trial_id" in METRICS[name]:
                assert "{{trial_id}}" in t["legendFormat"] and "{{method}}" in t["legendFormat"], p["title"]
                assert p["stack"] is False, p["title"]  # one line per trial, not a sum
            if "front" in METRICS[name]:
                assert "{{front}}" in t["legendFormat"], p["title"]
    units = {name: by_metric[name][0][0]["yaxes"][0]["format"] for name in METRICS}
    assert units["ray_prunefront_trial_val_accuracy"] == units["ray_prunefront_knee_val_accuracy"] == "percentunit"
    assert units["ray_prunefront_trial_size_bytes"] == "bytes"


def test_query_check_rejects_a_foreign_metric() -> None:
    assert metric_names('sum by (state) (max by (experiment, state) (ray_prunefront_trials{SessionName=~"$SessionName"}))') == {"ray_prunefront_trials"}
    assert metric_names("rate(ray_tasks{State=\"RUNNING\"}[5m])") == {"rate", "ray_tasks"}
    assert metric_names('label_values(ray_prunefront_trials{SessionName=~"$SessionName"}, experiment)') == {"ray_prunefront_trials"}
    assert not metric_names("max by (experiment) (prunefront_trials{})") <= set(METRICS)  # no ray_ prefix
