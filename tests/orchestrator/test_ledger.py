"""The ledger callback, driven with fake Tune trials (no cluster): what lands in
results.jsonl, how trial ends are classified, torn lines, resume skips, model copies."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest

from orchestrator.ledger import LedgerCallback, LedgerWriter, finished_trials, status_summary
from reports.contract import TrialCounts
from reports import contract
from reports.ledger import read_experiment


def read_events(path: Path) -> list[dict]:
    """The ledger's events (the contract's reader, line numbers dropped)."""
    return [event for _, event in contract.read_events(path)]

CONFIG = {  # a sampled flat Tune config (keys of config.flat_space)
    "method": "taylor+structured+gradual", "scope": "global", "threshold_rule": "fraction",
    "amount": 0.5, "lr": 0.01, "epochs": 3,
    "schedule.gradual.start_epoch": 0.0, "schedule.gradual.end_epoch": 0.8,
    "schedule.gradual.interval_epochs": 0.2, "schedule.gradual.initial": 0.0,
    "schedule.one_shot.unused": 1,
}


def trial(tid: str, error_file: str | None = None) -> SimpleNamespace:
    return SimpleNamespace(trial_id=tid, config=dict(CONFIG), last_result={}, error_file=error_file)


def result(epoch: int, **extra) -> dict:
    row = {"epoch": epoch, "val_accuracy": 0.9, "val_loss": 0.3, "train_loss": 0.4, "sparsity": 0.5,
           "requested_sparsity": 0.5, "flops": 100, "flops_sparse": 50.0, "params": 10, "params_nonzero": 5,
           "size_bytes": 40, "latency_ms": 0.1, "step": 10 * epoch, "units_pruned": 0.5, "startup_s": 12.0,
           "dense_wait_s": 3.0, "node_id": "ab12", "host": "w1", "device": "cpu"}
    # What Tune adds around the trial's own keys; none of it belongs in the ledger.
    return {**row, "training_iteration": epoch, "time_total_s": 5.0 * epoch, "config": dict(CONFIG),
            "trial_id": "x", "done": False, "hostname": "h", **extra}


class FakeScheduler:
    def stop_reason(self, trial_id: str) -> str | None:
        return "asha: below the cutoff" if trial_id == "b" else None


def test_result_and_status_lines(tmp_path: Path) -> None:
    cb = LedgerCallback(tmp_path, scheduler=FakeScheduler(), max_epochs=3)
    cb.setup()
    a, b = trial("a"), trial("b")
    for ep in (1, 2, 3):
        cb.on_trial_result(0, [], a, result(ep))
    cb.on_trial_complete(0, [], a)
    cb.on_trial_result(0, [], b, result(1))
    cb.on_trial_complete(0, [], b)
    events = read_events(tmp_path / "results.jsonl")
    assert [(e["type"], e["trial_id"]) for e in events] == [
        ("result", "a"), ("result", "a"), ("result", "a"), ("status", "a"), ("result", "b"), ("status", "b")]
    first = events[0]
    # Metrics, extras and the decoded config (only the chosen schedule's parameters).
    assert first["config"] == {"criterion": "taylor", "granularity": "structured", "scope": "global",
                               "threshold_rule": "fraction", "amount": 0.5, "schedule": "gradual", "lr": 0.01,
                               "epochs": 3, "distill": 0.0, "min_keep": 0.0, "quantize": "none",
                               "schedule.start_epoch": 0.0, "schedule.end_epoch": 0.8,
                               "schedule.interval_epochs": 0.2, "schedule.initial": 0.0}
    assert first["startup_s"] == 12.0 and first["dense_wait_s"] == 3.0 and first["time_total_s"] == 5.0
    assert (first["node_id"], first["host"], first["device"]) == ("ab12", "w1", "cpu")
    assert not {"training_iteration", "done", "hostname"} & set(first)
    assert events[3] == {"type": "status", "trial_id": "a", "status": "completed", "reason": "ran all 3 epochs",
                         "config": first["config"]}
    assert events[5]["status"] == "stopped" and events[5]["reason"] == "asha: below the cutoff"
    # The reports read it as it is.
    exp = read_experiment(tmp_path)
    assert len(exp.results) == 4 and {t: st.status for t, st in exp.trials.items()} == {
        "a": "completed", "b": "stopped"}


def test_the_console_line_shows_the_kept_epoch_whose_file_ships(tmp_path: Path, capsys) -> None:
    """A trial whose last epoch ties the best one keeps the earlier epoch (its model is the one
    copied to models/); the line printed when it ends must show that epoch's figures, not the
    last epoch's (it printed the last epoch's size, which no shipped file had)."""
    cb = LedgerCallback(tmp_path, max_epochs=3, echo=True)
    cb.setup()
    a = trial("a")
    # As the trial reports it: "kept" marks the epochs that became the kept one.
    for ep, acc, size, kept in ((1, 0.90, 40, 1), (2, 0.95, 41, 1), (3, 0.95, 42, 0)):
        a.last_result = result(ep, val_accuracy=acc, size_bytes=size, kept=kept)
        cb.on_trial_result(0, [], a, a.last_result)
    cb.on_trial_complete(0, [], a)
    line = capsys.readouterr().out.strip().splitlines()[-1]
    assert "kept epoch 2," in line and "val accuracy 0.9500" in line and "41 B file" in line, line


def test_errored_trial_keeps_the_exception_line(tmp_path: Path) -> None:
    err = tmp_path / "error.txt"
    err.write_text("Traceback (most recent call last):\n  File \"x.py\", line 1\n"
                   "ray.exceptions.RayTaskError: boom\nValueError: schedule 'iterative' does not fit\n")
    cb = LedgerCallback(tmp_path)
    cb.setup()
    cb.on_trial_error(0, [], trial("e", error_file=str(err)))
    (status,) = read_events(tmp_path / "results.jsonl")
    assert status["status"] == "errored" and status["reason"] == "ValueError: schedule 'iterative' does not fit"


def test_torn_last_line_is_cut_before_appending(tmp_path: Path) -> None:
    path = tmp_path / "results.jsonl"
    path.write_text(json.dumps({"type": "status", "trial_id": "a", "status": "completed"}) + "\n" + '{"type": "res')
    LedgerWriter(path).append({"type": "status", "trial_id": "b", "status": "stopped"})
    assert [e["trial_id"] for e in read_events(path)] == ["a", "b"]
    assert path.read_text().endswith("\n") and path.read_text().count("\n") == 2


def test_a_complete_last_line_without_newline_is_completed_not_cut(tmp_path: Path) -> None:
    """The issue's case: 2 completed, 2 stopped, the last status line lost its newline (an
    editor, a disk full at the last byte). Readers count it, so the resumed run skips that
    trial; the writer must keep it too, or the trial shows as running forever."""
    first = LedgerCallback(tmp_path, max_epochs=1)
    first.setup()
    for tid in ("a", "b", "c", "d"):
        first.on_trial_result(0, [], trial(tid), result(1))
    first._status(trial("a"), "completed", "")
    first._status(trial("c"), "stopped", "asha")
    first._status(trial("d"), "stopped", "asha")
    first._status(trial("b"), "completed", "")  # the last line, which loses its newline
    ledger = tmp_path / "results.jsonl"
    ledger.write_bytes(ledger.read_bytes().rstrip(b"\n"))
    assert status_summary(ledger) == TrialCounts(completed=2, stopped=2)

    again = LedgerCallback(tmp_path, max_epochs=1)
    again.setup()
    assert again.skip == {"a", "b", "c", "d"}
    again.on_trial_result(0, [], trial("e"), result(1))  # the first append repairs the tail
    assert status_summary(ledger) == TrialCounts(completed=2, stopped=2, running=1)
    assert ledger.read_bytes().count(b"\n") == len(read_events(ledger))  # every line whole


def test_torn_tail_is_one_rule_for_readers_and_writer() -> None:
    line = b'{"type": "status", "trial_id": "a", "status": "completed"}'
    assert contract.torn_tail(b"") == (0, False)
    assert contract.torn_tail(line + b"\n") == (len(line) + 1, False)
    assert contract.torn_tail(line + b"\n" + line) == (len(line) + 1, True)    # lost its newline
    assert contract.torn_tail(line + b"\n" + line[:-1]) == (len(line) + 1, False)  # write in progress
    assert contract.torn_tail(line + b"\n[1, 2]") == (len(line) + 1, False)    # not an event
    assert contract.torn_tail(b"\n\xff\xfe") == (1, False)


def test_resume_skips_finished_trials_only(tmp_path: Path) -> None:
    first = LedgerCallback(tmp_path, max_epochs=3)
    first.setup()
    done, cut, retried = trial("done"), trial("cut"), trial("retried")
    for ep in (1, 2, 3):
        first.on_trial_result(0, [], done, result(ep))
    first.on_trial_complete(0, [], done)
    first.on_trial_result(0, [], cut, result(1))  # running when the driver died
    first.on_trial_error(0, [], retried)           # errored before any result
    assert set(finished_trials(tmp_path / "results.jsonl")) == {"done", "retried"}

    again = LedgerCallback(tmp_path, max_epochs=3)
    again.setup()
    assert again.skip == {"done"}  # finished with results: replayed, never written again
    again.on_trial_result(0, [], done, result(3))
    again.on_trial_complete(0, [], done)
    for ep in (1, 2, 3):
        again.on_trial_result(0, [], cut, result(ep))
    again.on_trial_complete(0, [], cut)
    events = read_events(tmp_path / "results.jsonl")
    assert sum(e["trial_id"] == "done" for e in events) == 4  # 3 results + 1 status, as before
    # Its epoch 1 came again (the retry reports its last checkpointed epoch): written once.
    assert [e["epoch"] for e in events if e["trial_id"] == "cut" and e["type"] == "result"] == [1, 2, 3]
    exp = read_experiment(tmp_path)
    assert exp.trials["cut"].status == "completed"


def test_kept_epochs_checkpoint_is_copied_to_models(tmp_path: Path) -> None:
    """Every epoch checkpoints (the state to resume from); only a kept epoch's checkpoint
    carries the model, and only that one is copied."""
    def checkpoint(name: str, model: bytes | None) -> Path:
        d = tmp_path / "storage" / name
        d.mkdir(parents=True)
        (d / "state.pt").write_bytes(b"state")
        if model is not None:
            (d / "model.pt2").write_bytes(model)
            (d / "row.json").write_text("{}")
        return d

    cb = LedgerCallback(tmp_path / "exp", max_epochs=3)
    cb.setup()
    t = trial("m")
    kept = tmp_path / "exp" / "models" / "m" / "model.pt2"
    cb.on_trial_result(0, [], t, result(1, checkpoint_path=str(checkpoint("c1", b"first")), kept=1))
    assert kept.read_bytes() == b"first"
    cb.on_trial_result(0, [], t, result(2, checkpoint_path=str(checkpoint("c2", None)), kept=0))
    assert kept.read_bytes() == b"first"  # not kept: the kept model stays
    cb.on_trial_result(0, [], t, result(3, checkpoint_path=str(checkpoint("c3", b"better")), kept=1))
    assert kept.read_bytes() == b"better" and sorted(p.name for p in kept.parent.iterdir()) == ["model.pt2", "row.json"]


def test_callback_survives_pickling_without_its_open_file(tmp_path: Path) -> None:
    import pickle

    cb = LedgerCallback(tmp_path)
    cb.setup()
    cb.on_trial_result(0, [], trial("p"), result(1))
    clone = pickle.loads(pickle.dumps(cb))  # Tune pickles callbacks into tuner.pkl
    clone.setup()
    clone.on_trial_result(0, [], trial("p"), result(2))
    assert [e["epoch"] for e in read_events(tmp_path / "results.jsonl")] == [1, 2]


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_non_finite_metrics_become_null(tmp_path: Path, value: float) -> None:
    cb = LedgerCallback(tmp_path)
    cb.setup()
    cb.on_trial_result(0, [], trial("n"), result(1, val_loss=value))
    (event,) = read_events(tmp_path / "results.jsonl")
    assert event["val_loss"] is None


def test_a_trial_failing_in_its_own_code_is_errored_with_its_line(tmp_path: Path) -> None:
    """orchestrator.trial ends such a trial with a ``trial_error`` result instead of letting
    Ray retry it: the ledger keeps its epochs, writes it errored with that line, and no row."""
    cb = LedgerCallback(tmp_path, max_epochs=3)
    cb.setup()
    a = trial("a")
    cb.on_trial_result(0, [], a, result(1))
    cb.on_trial_result(0, [], a, {"trial_error": "ValueError: criterion 'slimming' needs BatchNorm layers",
                                  "training_iteration": 2, "config": dict(CONFIG)})
    cb.on_trial_complete(0, [], a)
    events = read_events(tmp_path / "results.jsonl")
    assert [(e["type"], e.get("epoch"), e.get("status")) for e in events] == [
        ("result", 1, None), ("status", None, "errored")]
    assert events[1]["reason"] == "ValueError: criterion 'slimming' needs BatchNorm layers"


def test_only_faults_outside_the_trial_are_retried() -> None:
    import torch

    from orchestrator.trial import is_transient

    assert is_transient(RuntimeError("[../gloo/transport/tcp/pair.cc:534] Connection closed by peer"))
    assert is_transient(torch.OutOfMemoryError("CUDA out of memory"))
    assert is_transient(OSError("No space left on device"))
    assert not is_transient(ValueError("schedule 'iterative' does not fit"))
    assert not is_transient(RuntimeError("mat1 and mat2 shapes cannot be multiplied (4x10 and 12x3)"))
    assert not is_transient(KeyError("weight"))


def test_an_epoch_reported_again_by_a_retried_trial_is_written_once(tmp_path: Path) -> None:
    """A retried trial reports its last checkpointed epoch again (the driver may have died
    before that result reached the ledger); the ledger has every epoch once, across resumes."""
    cb = LedgerCallback(tmp_path, max_epochs=3)
    cb.setup()
    a = trial("a")
    cb.on_trial_result(0, [], a, result(1))
    cb.on_trial_result(0, [], a, result(2))
    cb.on_trial_result(0, [], a, result(2))  # retried in this run
    resumed = LedgerCallback(tmp_path, max_epochs=3)
    resumed.setup()  # a --resume: the driver died after epoch 2
    resumed.on_trial_result(0, [], a, result(2))
    resumed.on_trial_result(0, [], a, result(3))
    epochs = [e["epoch"] for e in read_events(tmp_path / "results.jsonl") if e["type"] == "result"]
    assert epochs == [1, 2, 3]


def test_a_trial_end_is_durable_with_every_line_before_it_without_an_fsync_per_result(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A trial's end returns only once the file is fsynced whole (its results with it, so a
    finished trial survives a machine failure); its results are written to the OS (a killed
    driver loses nothing) but not fsynced one by one: that fsync was most of the driver's
    cost per result (issue 20)."""
    import os

    from orchestrator import ledger as ledger_mod

    path = tmp_path / "results.jsonl"
    synced_at: list[int] = []  # the file's size at each fsync
    real_fsync = os.fsync
    monkeypatch.setattr(ledger_mod.os, "fsync", lambda fd: (synced_at.append(os.fstat(fd).st_size), real_fsync(fd)))
    cb = LedgerCallback(tmp_path, scheduler=FakeScheduler(), max_epochs=3)
    cb.setup()
    a = trial("a")
    cb.on_trial_result(0, [], a, result(1))
    first = len(synced_at)  # the first line may sync (nothing synced yet)
    for ep in (2, 3):
        cb.on_trial_result(0, [], a, result(ep))
        assert len(read_events(path)) == ep  # readable at once, by another process too
    assert len(synced_at) == first
    cb.on_trial_complete(0, [], a)
    assert synced_at[-1] == path.stat().st_size  # the end and all three results durable
    cb.on_trial_result(0, [], trial("b"), result(1))
    cb.on_experiment_end([])
    assert synced_at[-1] == path.stat().st_size  # closing leaves nothing unsynced
