"""``--resume`` reads the ledger once: the driver's list of finished trials and the ledger
callback's setup share one read while the file is unchanged (seconds each at 10,000 trials)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from orchestrator import ledger


def test_resume_reads_the_ledger_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "results.jsonl"
    lines = [
        {"type": "result", "trial_id": "a", "epoch": 1, "val_accuracy": 0.9, "config": {}},
        {"type": "status", "trial_id": "a", "status": "completed", "reason": "done", "config": {}},
        {"type": "result", "trial_id": "b", "epoch": 1, "val_accuracy": 0.8, "config": {}},
    ]
    path.write_text("".join(json.dumps(x) + "\n" for x in lines))
    reads = []
    real = ledger.read_events
    monkeypatch.setattr(ledger, "read_events", lambda p: reads.append(p) or real(p))
    finished = ledger.finished_trials(path)  # orchestrator/search.py, on --resume
    cb = ledger.LedgerCallback(tmp_path)
    cb.setup()  # Tune, when the restored search starts
    assert len(reads) == 1
    assert set(finished) == {"a"} and cb.skip == {"a"} and cb._written == {("a", 1), ("b", 1)}
    with path.open("a") as f:  # a changed ledger is read again
        f.write(json.dumps({"type": "status", "trial_id": "b", "status": "stopped", "reason": "x", "config": {}}) + "\n")
    assert set(ledger.finished_trials(path)) == {"a", "b"} and len(reads) == 2
