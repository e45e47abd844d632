"""Experiment directories written by hand, as the orchestrator writes them
(docs/design.md section 4), with values in the range a digits MLP produces.

A module of its own (not conftest.py) so tests import it by a name no other test
directory uses."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]

# Dense 64-128-64-10 MLP on 8x8 digits: MACs 17,024 -> 34,048 FLOPs, 17,226 params.
DENSE = {
    "val_accuracy": 0.9750,
    "val_loss": 0.0912,
    "test_accuracy": 0.9722,
    "test_loss": 0.0950,
    "train_loss": 0.0431,
    "sparsity": 0.0,
    "requested_sparsity": 0.0,
    "flops": 34048,
    "flops_sparse": 34048,
    "params": 17226,
    "params_nonzero": 17226,
    "size_bytes": 70845,
    "latency_ms": 0.052,
}


def search_config(name: str, **sections: Any) -> dict[str, Any]:
    """A config as experiment.json records it: one the schema accepts (``SearchConfig``),
    so the report reads what a search can write (``report.fronts``, cost objectives)."""
    from orchestrator.config import SearchConfig

    return SearchConfig.from_dict({"name": name, **sections}).to_dict()


class ExperimentWriter:
    """Writes an experiment directory line by line, like the orchestrator's callbacks.

    ``sections`` are config sections (``scheduler``, ``report``, ...) over the defaults.
    """

    def __init__(self, root: Path, name: str = "digits-mlp", dense: dict | None = DENSE, **sections: Any) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        sections.setdefault("scheduler", {"name": "asha"})
        info = {
            "name": name,
            "config": search_config(name, **sections),
            "versions": {"python": "3.11.9", "torch": "2.14.1", "ray": "2.60.0",
                         "torch_pruning": "1.6.1"},
            "started_at": "2026-11-22T07:50:00+00:00",
        }
        (root / "experiment.json").write_text(json.dumps(info, indent=2))
        if dense is not None:
            (root / "dense").mkdir(exist_ok=True)
            (root / "dense" / "metrics.json").write_text(json.dumps(dense))
        self.ledger = root / "results.jsonl"
        self.ledger.touch()

    def _append(self, obj: dict[str, Any]) -> None:
        with self.ledger.open("a") as f:
            f.write(json.dumps(obj) + "\n")

    def result(self, trial_id: str, config: dict[str, Any], epoch: int, **metrics: Any) -> None:
        row = {"type": "result", "trial_id": trial_id, "epoch": epoch}
        row.update(metrics)
        row.setdefault("time_total_s", 2.5 * epoch)
        row["config"] = config
        self._append(row)

    def status(self, trial_id: str, config: dict[str, Any], status: str, reason: str) -> None:
        self._append({"type": "status", "trial_id": trial_id, "status": status,
                      "reason": reason, "config": config})

    def save_model(self, trial_id: str) -> None:
        d = self.root / "models" / trial_id
        d.mkdir(parents=True, exist_ok=True)
        (d / "model.pt2").write_bytes(model_file_bytes())


_MODEL_BYTES: list[bytes] = []


def model_file_bytes() -> bytes:
    """A real ``pruners.save`` file of a tiny model (``reports pick`` checks what it names),
    exported once per test process."""
    if not _MODEL_BYTES:
        import tempfile

        import torch

        from pruners.io import save

        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "model.pt2"
            save(torch.nn.Linear(4, 2), path, torch.zeros(2, 4))
            _MODEL_BYTES.append(path.read_bytes())
    return _MODEL_BYTES[0]


def metrics(acc: float, sparsity: float, flops: int, flops_sparse: int, size: int,
            params: int, nonzero: int, requested: float | None = None) -> dict[str, Any]:
    return {
        "val_accuracy": acc,
        "val_loss": round(1.2 - acc, 4),
        "test_accuracy": round(acc - 0.004, 4),
        "test_loss": round(1.21 - acc, 4),
        "train_loss": round(1.1 - acc, 4),
        "sparsity": sparsity,
        "requested_sparsity": sparsity if requested is None else requested,
        "flops": flops,
        "flops_sparse": flops_sparse,
        "params": params,
        "params_nonzero": nonzero,
        "size_bytes": size,
        "latency_ms": round(0.02 + flops / 1e6, 4),
    }


def cfg(criterion: str, granularity: str, amount: float, schedule: str, **extra: Any) -> dict[str, Any]:
    out = {"criterion": criterion, "granularity": granularity, "scope": "global",
           "threshold_rule": "fraction", "amount": amount, "schedule": schedule,
           "lr": 0.01, "epochs": 3}
    out.update(extra)
    return out


# (trial_id, config, per-epoch metrics, final status or None, reason)
UNSTR_50 = dict(flops=34048, flops_sparse=17110, size=52210, params=17226, nonzero=8709)
TRIALS = [
    ("a1b2c_00000", cfg("magnitude", "unstructured", 0.5, "one_shot"),
     [metrics(0.9611, 0.5, **UNSTR_50), metrics(0.9694, 0.5, **UNSTR_50),
      metrics(0.9667, 0.5, **UNSTR_50)], "completed", "max epochs reached"),
    ("a1b2c_00001", cfg("magnitude", "unstructured", 0.8, "gradual", **{"schedule.interval": 30}),
     [metrics(0.9639, 0.35, 34048, 22230, 60200, 17226, 11300, 0.35),
      metrics(0.9556, 0.8, 34048, 6930, 28410, 17226, 3618, 0.8),
      metrics(0.9611, 0.8, 34048, 6930, 28410, 17226, 3618, 0.8)], "completed",
     "max epochs reached"),
    ("a1b2c_00002", cfg("taylor", "structured", 0.5, "one_shot"),
     [metrics(0.9472, 0.5, 8832, 8832, 18370, 4522, 4522), metrics(0.9583, 0.5, 8832, 8832, 18370,
                                                                  4522, 4522),
      metrics(0.9583, 0.5, 8832, 8832, 18370, 4522, 4522)], "completed", "max epochs reached"),
    ("a1b2c_00003", cfg("random", "structured", 0.5, "one_shot"),
     [metrics(0.8806, 0.5, 8832, 8832, 18370, 4522, 4522)], "stopped",
     "ASHA: below the rung cutoff at epoch 1"),
    ("a1b2c_00004", cfg("slimming", "structured", 0.75, "iterative", **{"schedule.rounds": 3}),
     [metrics(0.9194, 0.25, 19360, 19360, 39300, 9780, 9780, 0.25),
      metrics(0.9250, 0.5, 8832, 8832, 18370, 4522, 4522, 0.5),
      metrics(0.9306, 0.75, 2344, 2344, 5230, 1198, 1198, 0.75)], "completed",
     "max epochs reached"),
    ("a1b2c_00005", cfg("attention", "structured", 0.3, "one_shot"),
     [metrics(0.9667, 0.3, 17400, 17400, 35600, 8760, 8760),
      metrics(0.9722, 0.3, 17400, 17400, 35600, 8760, 8760)], "stopped",
     "MO-ASHA: dominated at rung 2"),
    ("a1b2c_00006", cfg("gradient", "unstructured", 0.9, "one_shot"),
     [metrics(0.7139, 0.9, 34048, 3520, 16100, 17226, 1840)], "errored",
     "RuntimeError: worker died (OOM)"),
    ("a1b2c_00007", cfg("l2_penalty", "structured", 0.6, "dynamic"),
     [metrics(0.9417, 0.6, 5710, 5710, 11950, 2930, 2930)], None, ""),
]


def write_fixture_experiment(root: Path, **sections: Any) -> ExperimentWriter:
    """The standard fixture: 9 trials, 6 finished with results (3 completed-with-best
    at the last epoch or not, 2 stopped, 1 errored), 1 running, 1 errored before any
    result, and a re-reported epoch after a resume. ``sections``: config sections (as
    :class:`ExperimentWriter`)."""
    w = ExperimentWriter(root, **sections)
    for trial_id, config, rows, status, reason in TRIALS:
        for epoch, row in enumerate(rows, start=1):
            w.result(trial_id, config, epoch, **row)
            if trial_id == "a1b2c_00002" and epoch == 2:
                # Resumed from a checkpoint: epoch 2 reported again, the later line wins.
                w.result(trial_id, config, 2, **{**row, "val_accuracy": 0.9556})
                w.result(trial_id, config, 2, **row)
        if status:
            w.status(trial_id, config, status, reason)
            if status == "completed":
                w.save_model(trial_id)
    w.status("a1b2c_00008", cfg("sensitivity", "unstructured", 0.4, "one_shot"), "errored",
             "ValueError: calibration batches missing")
    return w
