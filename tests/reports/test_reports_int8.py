"""The int8 side of a report: dense-int8 competes as a reference row, int8 trials ship ONNX files."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from reports import build_tables, read_experiment
from tests.reports.reports_fixtures import DENSE, REPO, ExperimentWriter, cfg, metrics

# The dense MLP in int8: as accurate within 0.1 point, a quarter of the file, 2.6x faster.
DENSE_INT8 = {**DENSE, "val_accuracy": 0.9740, "test_accuracy": 0.9711, "size_bytes": 20000,
              "latency_ms": 0.020, "latency_runtime": "onnxruntime", "latency_threads": 1,
              "float_val_accuracy": 0.9750, "int8_layers": 3, "float_layers": 0}


def _onnx_bytes(tmp: Path) -> bytes:
    from pruners.quantize import save_onnx

    save_onnx(torch.nn.Linear(4, 2), tmp / "m.onnx", torch.zeros(2, 4))
    return (tmp / "m.onnx").read_bytes()


@pytest.fixture(scope="module")
def experiment(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("int8") / "exp"
    w = ExperimentWriter(root)
    blob = _onnx_bytes(root.parent)
    (root / "dense" / "metrics-int8.json").write_text(json.dumps(DENSE_INT8))
    (root / "dense" / "model-int8.onnx").write_bytes(blob)
    # Beaten by dense-int8 on size (0.9700 < 0.9740 at 52 kB > 20 kB), not by dense (71 kB).
    unstr = cfg("magnitude", "unstructured", 0.5, "one_shot", quantize="none")
    w.result("t_float", unstr, 1, **metrics(0.9700, 0.5, 34048, 17110, 52210, 17226, 8709))
    w.status("t_float", unstr, "completed", "max epochs reached")
    w.save_model("t_float")
    # Pruned and quantized: smaller than dense-int8, less accurate: on the size front.
    both = cfg("taylor", "structured", 0.5, "one_shot", quantize="int8")
    w.result("t_int8", both, 1, **{**metrics(0.9600, 0.5, 8832, 8832, 9000, 4522, 4522),
                                   "latency_runtime": "onnxruntime"})
    w.status("t_int8", both, "completed", "max epochs reached")
    d = root / "models" / "t_int8"
    d.mkdir(parents=True)
    (d / "model.onnx").write_bytes(blob)
    return root


def test_dense_int8_is_a_reference_row_that_competes(experiment):
    tables = build_tables(read_experiment(experiment))
    refs = tables.final[tables.final["status"] == "reference"].set_index("trial_id")
    assert list(refs.index) == ["dense", "dense-int8"]
    assert refs.at["dense-int8", "method"] == "dense-int8"
    assert refs.at["dense-int8", "model_file"] == "dense/model-int8.onnx"
    final = tables.final.set_index("trial_id")
    assert final.at["t_int8", "model_file"] == "models/t_int8/model.onnx"  # what an int8 trial ships
    assert final.at["t_float", "model_file"] == "models/t_float/model.pt2"
    size = tables.fronts[tables.fronts["front"] == "accuracy_size"].set_index("trial_id")
    # dense-int8 dominates t_float: marked like a trial the dense model dominates, and named.
    assert bool(size.at["t_float", "dominated_by_dense"]) and size.at["t_float", "dominated_by"] == "dense-int8"
    assert size.at["t_float", "pareto_rank"] > 1
    assert size.at["dense-int8", "pareto_rank"] == 1 and size.at["t_int8", "pareto_rank"] == 1
    assert tables.summaries["accuracy_size"].n_dominated_by_dense == 1
    assert "accuracy_latency" in tables.front_costs  # the latency front is on by default
    methods = tables.methods[tables.methods["cost"] == "size_bytes"]
    assert "dense-int8" in set(methods["method"])  # the method table compares against it too


def _reports(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "reports", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=120, env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"})


def test_show_lists_dense_int8_and_pick_can_choose_it(experiment):
    show = _reports("show", str(experiment))
    assert show.returncode == 0, show.stderr
    assert any(line.lstrip().startswith("dense-int8") for line in show.stdout.splitlines())
    # Within 0.2 points of dense (0.975): only dense-int8 (0.974) qualifies; quantizing the
    # dense model is the answer, and pick prints how to run its ONNX file.
    pick = _reports("pick", str(experiment), "--max-drop", "0.2", "--by", "size_bytes")
    assert pick.returncode == 0, pick.stderr
    assert "dense-int8" in pick.stdout and "model-int8.onnx" in pick.stdout
    assert "import onnxruntime as ort" in pick.stdout and "torch.export.load" not in pick.stdout
    assert "timed on  onnxruntime, 1 thread(s)" in pick.stdout
