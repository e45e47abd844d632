"""Property: random torn, duplicated and garbage lines appended to a ledger never make a
reader, the resume writer, ``reports build``, ``show`` or ``pick`` fail with a traceback, and
never turn a completed trial into anything else. Seeded loops (hypothesis is not installed):
a failure names its seed, and the same seed replays it."""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path

import pytest

from orchestrator.ledger import LedgerWriter
from reports.__main__ import main
from reports.contract import LedgerError
from reports.io import load
from reports.ledger import read_experiment
from tests.reports.reports_fixtures import write_fixture_experiment

SEEDS = range(24)


def _garbage(rng: random.Random, lines: list[bytes]) -> bytes:
    """One damaged line (no newline): each kind a reader or a disk could meet."""
    kind = rng.randrange(9)
    if kind == 0:
        return bytes(rng.randrange(256) for _ in range(rng.randrange(1, 60))).replace(b"\n", b"")
    if kind == 1:  # a prefix of a real line: a write cut short
        line = rng.choice(lines)
        return line[: rng.randrange(1, len(line))]
    if kind == 2:
        depth = rng.choice([10, 5000, 200_000])
        return b"[" * depth + b"]" * depth
    if kind == 3:
        return json.dumps(rng.choice([[1, 2], "text", 3.5, None, True])).encode()
    if kind == 4:
        return b'{"type": "status", "trial_id": "\xff\xfe", "status": "completed"}'
    if kind == 5:  # an event type no reader uses
        return json.dumps({"type": rng.choice(["note", "heartbeat"]), "x": rng.random()}).encode()
    if kind == 6:  # a real event with a value out of range
        ev = json.loads(rng.choice([ln for ln in lines if b'"result"' in ln]))
        ev[rng.choice(["val_accuracy", "flops", "sparsity", "size_bytes"])] = rng.choice([97.4, -5, 1e308 * 10])
        return json.dumps(ev).encode()
    if kind == 7:
        return b'{"type": "result", "trial_id": "x", "epoch": ' + b"9" * 5000 + b"}"
    return b""  # a blank line


def _damage(rng: random.Random, ledger: Path) -> None:
    lines = [ln for ln in ledger.read_bytes().split(b"\n") if ln]
    out = bytearray(ledger.read_bytes())
    for _ in range(rng.randrange(1, 6)):
        r = rng.random()
        if r < 0.45:  # a duplicated line, whole
            out += rng.choice(lines) + b"\n"
        elif r < 0.75:
            out += _garbage(rng, lines) + b"\n"
        else:  # a torn line: what follows glues onto it
            line = rng.choice(lines)
            out += line[: rng.randrange(1, len(line) + 1)]
    ledger.write_bytes(bytes(out))


def _completed(root: Path) -> set[str]:
    return {t for t, st in read_experiment(root).trials.items() if st.status == "completed"}


@pytest.fixture(scope="module")
def pristine(tmp_path_factory) -> tuple[Path, set[str]]:
    root = tmp_path_factory.mktemp("pristine") / "exp"
    write_fixture_experiment(root)
    return root, _completed(root)


@pytest.mark.parametrize("seed", SEEDS)
def test_random_damage_never_tracebacks_nor_loses_a_completed_trial(tmp_path, capsys, pristine, seed):
    source, completed = pristine
    assert completed  # the fixture has completed trials to lose
    rng = random.Random(seed)
    root = tmp_path / "exp"
    shutil.copytree(source, root)
    ledger = root / "results.jsonl"
    _damage(rng, ledger)

    try:
        readable = _completed(root) >= completed
        assert readable, f"seed {seed}: a completed trial was lost on reading"
    except LedgerError as e:
        readable = False
        assert "\n" not in str(e) and str(ledger) in str(e)
    for argv in (["show", root], ["build", root, "--no-plots"], ["pick", root, "--max-drop", "5"]):
        rc = main([str(a) for a in argv])
        out, err = capsys.readouterr()
        assert rc in (0, 2), (seed, argv, err)
        if rc == 2:
            assert err.count("\n") == 1 and err.startswith("python -m reports") and "Traceback" not in err
        elif argv[0] == "build":
            final = load(root / "report")["final"]
            assert completed <= set(final.loc[final["status"] == "completed", "trial_id"]), seed
        assert readable or rc == 2, (seed, argv)  # every command reads the same ledger

    # The resume writer's repair of the tail keeps what readers kept.
    LedgerWriter(ledger).append({"type": "status", "trial_id": "new", "status": "stopped", "reason": "x"})
    if readable:
        assert _completed(root) >= completed, f"seed {seed}: the writer's repair lost a completed trial"
