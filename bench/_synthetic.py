"""Synthetic experiment directories of any size, in the real ledger format.

``write_experiment(root, n_trials, epochs)`` writes what a search writes
(docs/design.md section 4): ``experiment.json``, ``dense/metrics.json`` and a
``results.jsonl`` whose result and status lines are the ones
``orchestrator.ledger.LedgerCallback`` appends (every metric key, the extras, the flat
trial config, ``time_total_s``), interleaved the way concurrent trials report. The
values are drawn from a seeded generator with the shape a digits MLP search has:
structured pruning cuts FLOPs, unstructured pruning sparse FLOPs and file size,
accuracy falls with sparsity; some trials are stopped early by the scheduler, some
error, the last few still run, one epoch is re-reported after a resume, and several
trials share their figures exactly (ties on a front).

Used by the reports tests and by ``bench/driver_scale.py`` / ``bench/report_scale.py``;
it imports neither Ray nor the orchestrator.

    python bench/_synthetic.py /tmp/exp10k --trials 10000 --epochs 10
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path
from typing import Any

import _common  # noqa: F401 - puts the repository root on sys.path (run as a script)

from reports.layout import MODEL_FILE, Layout

DENSE = {
    "val_accuracy": 0.9750, "val_loss": 0.0912, "test_accuracy": 0.9722, "test_loss": 0.0950,
    "train_loss": 0.0431, "sparsity": 0.0, "requested_sparsity": 0.0, "flops": 34048,
    "flops_sparse": 34048, "params": 17226, "params_nonzero": 17226, "size_bytes": 70845,
    "latency_ms": 0.052, "latency_iqr_ms": 0.003, "dense_latency_ms": 0.052, "speedup": 1.0,
}
CRITERIA = ("magnitude", "taylor", "random", "slimming", "attention", "gradient", "l2_penalty", "sensitivity")
SCHEDULES = ("one_shot", "gradual", "iterative")


def _config(rng: random.Random, epochs: int) -> dict[str, Any]:
    structured = rng.random() < 0.5
    return {
        "criterion": rng.choice(CRITERIA),
        "granularity": "structured" if structured else "unstructured",
        "scope": rng.choice(("global", "layerwise")),
        "threshold_rule": "fraction",
        # A coarse grid of amounts, so distinct trials often share their figures (ties).
        "amount": round(rng.choice(range(1, 20)) * 0.05, 2),
        "schedule": rng.choice(SCHEDULES),
        "lr": rng.choice((0.003, 0.01, 0.03)),
        "epochs": epochs,
        "distill": rng.random() < 0.3,
        "min_keep": 1,
    }


def _metrics(rng: random.Random, cfg: dict[str, Any], epoch: int, epochs: int) -> dict[str, Any]:
    ramp = 1.0 if cfg["schedule"] == "one_shot" else min(1.0, epoch / max(1, epochs // 2))
    sparsity = round(cfg["amount"] * ramp, 4)
    structured = cfg["granularity"] == "structured"
    keep = 1.0 - sparsity
    flops = int(round(34048 * (keep * keep if structured else 1.0)))
    params = int(round(17226 * (keep if structured else 1.0)))
    nonzero = int(round(17226 * keep))
    flops_sparse = flops if structured else int(round(34048 * keep))
    size = int(round(70845 * (keep if structured else 0.35 + 0.65 * keep)))
    # Rounded to the accuracy a 360-image validation split can have: ties are frequent.
    acc = 0.975 - 0.12 * sparsity ** 2 - (0.08 if cfg["criterion"] == "random" else 0.0) \
        - 0.02 / epoch + rng.gauss(0.0, 0.006)
    acc = round(min(0.999, max(0.05, acc)) * 360) / 360
    return {
        "epoch": epoch,
        "val_accuracy": acc, "val_loss": round(1.2 - acc, 4), "test_accuracy": round(acc - 0.004, 4),
        "test_loss": round(1.21 - acc, 4), "train_loss": round(1.1 - acc, 4),
        "sparsity": sparsity, "requested_sparsity": sparsity, "flops": flops, "flops_sparse": flops_sparse,
        "params": params, "params_nonzero": nonzero, "size_bytes": size,
        "latency_ms": round(0.02 + flops / 1e6, 4), "latency_iqr_ms": 0.002, "dense_latency_ms": 0.052,
        "speedup": round(0.052 / (0.02 + flops / 1e6), 4),
        "kept": False, "step": epoch * 12, "units_pruned": int(sparsity * 200), "pruning_stopped": ramp >= 1.0,
        "startup_s": 0.8, "dense_wait_s": 0.0, "node_id": f"node{rng.randrange(8)}", "host": "worker",
        "device": "cpu",
    }


def trial_lines(n_trials: int, epochs: int, seed: int = 0, running: int | None = None,
                stopped: float = 0.1) -> list[dict[str, Any]]:
    """The ledger's events, in the order a search with 64 concurrent trials writes them.

    Args:
        n_trials: Trials (ids ``t<seed>_<index>``).
        epochs: Epochs of a trial that runs to the end.
        seed: Seed of the values.
        running: Trials left without a status line at the end (default: 1 % of them, at least 1).
        stopped: Share of trials the scheduler stops early (4 % more error).
    """
    rng = random.Random(seed)
    running = max(1, n_trials // 100) if running is None else running
    plans = []
    for i in range(n_trials):
        cfg = _config(rng, epochs)
        r = rng.random()
        if r < 0.04:
            status, n_ep, reason = "errored", rng.randint(1, epochs), "RuntimeError: worker died (OOM)"
        elif r < 0.04 + stopped and epochs > 1:
            n_ep = rng.choice([e for e in (1, 2, 4, 8) if e < epochs] or [1])
            status, reason = "stopped", f"MO-ASHA: dominated at rung {n_ep}"
        else:
            status, n_ep, reason = "completed", epochs, f"ran all {epochs} epochs"
        if i >= n_trials - running:
            status = None
        plans.append((f"t{seed}_{i:05d}", cfg, n_ep, status, reason))
    events: list[dict[str, Any]] = []
    window: list[list[Any]] = []  # [plan, next epoch, kept rule state]
    pending = iter(plans)
    while True:
        while len(window) < 64:
            plan = next(pending, None)
            if plan is None:
                break
            window.append([plan, 1, None])
        if not window:
            break
        slot = window[rng.randrange(len(window))]
        (tid, cfg, n_ep, status, reason), epoch, best = slot
        if epoch <= n_ep:
            row = _metrics(rng, cfg, epoch, epochs)
            if tid.endswith("7") and epoch == n_ep and epoch > 1:
                # Figures shared exactly with another trial: a tie on every front.
                row.update({k: v for k, v in events[-1].items() if k in DENSE} if events[-1].get("type") == "result" else {})
            kept = best is None or abs(row["sparsity"] - best["sparsity"]) > 1e-6 or row["val_accuracy"] > best["val_accuracy"]
            row["kept"] = kept
            if kept:
                slot[2] = row
            events.append({"type": "result", "trial_id": tid, **row, "config": cfg,
                           "time_total_s": round(2.5 * epoch, 3)})
            if tid.endswith("13") and epoch == 2:  # resumed: epoch 2 reported again, the later line wins
                events.append({"type": "result", "trial_id": tid, **row, "config": cfg,
                               "time_total_s": round(2.5 * epoch + 0.5, 3)})
            slot[1] += 1
            continue
        if status is not None:
            events.append({"type": "status", "trial_id": tid, "status": status, "reason": reason, "config": cfg})
        window.remove(slot)
    return events


def write_experiment(root: str | Path, n_trials: int, epochs: int = 10, seed: int = 0,
                     running: int | None = None, name: str | None = None, stopped: float = 0.1) -> Path:
    """Write a synthetic experiment directory (see the module docstring); returns ``root``."""
    root = Path(root)
    (root / "dense").mkdir(parents=True, exist_ok=True)
    name = name or f"synthetic-{n_trials}x{epochs}"
    info = {
        "name": name,
        "config": {"name": name, "dataset": {"name": "digits"}, "model": {"name": "mlp", "hidden": [128, 64]},
                   "search": {"num_samples": n_trials, "scheduler": "moasha", "max_epochs": epochs}},
        "versions": {"python": "3.11.9", "torch": "2.14.1", "ray": "2.60.0"},
        "started_at": "2026-12-06T07:50:00+00:00",
    }
    layout = Layout(root)
    layout.experiment.write_text(json.dumps(info, indent=2))
    layout.dense_metrics.write_text(json.dumps(DENSE))
    model = model_bytes()
    with open(layout.ledger, "w", encoding="utf-8") as f:
        for ev in trial_lines(n_trials, epochs, seed, running, stopped):
            f.write(json.dumps(ev) + "\n")
            if ev["type"] == "status" and ev["status"] != "errored":
                # The ledger callback copies the kept model of every trial that has one.
                layout.model_dir(ev["trial_id"]).mkdir(parents=True, exist_ok=True)
                (layout.model_dir(ev["trial_id"]) / MODEL_FILE).write_bytes(model)
    return root


def model_bytes() -> bytes:
    """A real (tiny) ``pruners.save`` file: ``reports pick`` checks the file it names."""
    import tempfile

    import torch

    import pruners

    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / MODEL_FILE
        pruners.save(torch.nn.Linear(4, 2), path, torch.zeros(1, 4))
        return path.read_bytes()


def main() -> None:
    p = argparse.ArgumentParser(description="Write a synthetic experiment directory.")
    p.add_argument("root")
    p.add_argument("--trials", type=int, default=200)
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    write_experiment(args.root, args.trials, args.epochs, args.seed)
    print(args.root)


if __name__ == "__main__":
    main()
