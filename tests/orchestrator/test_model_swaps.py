"""models/<trial> is replaced atomically: the old copy goes only once the new one is in place,
a crash between the steps loses nothing, and two copies at once never share a temporary name."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest

from orchestrator import ledger
from orchestrator.ledger import copy_from_storage, recover_swaps


def _checkpoint(root: Path, name: str, model: bytes) -> Path:
    d = root / "storage" / name
    d.mkdir(parents=True)
    (d / "model.pt2").write_bytes(model)
    (d / "row.json").write_text("{}")
    (d / "state.pt").write_bytes(b"not copied")
    return d


def _copy(src: Path, dst: Path) -> None:
    copy_from_storage(None, str(src), dst, files=("model.pt2", "row.json"))


def test_a_new_copy_replaces_the_old_and_leaves_nothing_beside_it(tmp_path):
    dst = tmp_path / "exp" / "models" / "t1"
    _copy(_checkpoint(tmp_path, "c1", b"first"), dst)
    _copy(_checkpoint(tmp_path, "c2", b"second"), dst)
    assert (dst / "model.pt2").read_bytes() == b"second"
    assert sorted(p.name for p in dst.parent.iterdir()) == ["t1"]
    assert sorted(p.name for p in dst.iterdir()) == ["model.pt2", "row.json"]


@pytest.mark.parametrize("via", ["copy_from_storage", "ledger callback"])
def test_a_swap_that_fails_before_the_new_copy_is_in_place_keeps_the_old(tmp_path, monkeypatch, via):
    dst = tmp_path / "exp" / "models" / "t1"
    _copy(_checkpoint(tmp_path, "c1", b"first"), dst)
    real = os.replace if ledger.os.rename is os.rename else ledger.os.rename

    def failing(a, b, *args, **kw):
        if Path(a).name.endswith(".tmp") and Path(b).name == "t1":  # putting the new copy in place: the disk fails
            raise OSError(28, "No space left on device")
        return real(a, b, *args, **kw)

    monkeypatch.setattr(ledger.os, "rename", failing)
    monkeypatch.setattr(ledger.os, "replace", failing)
    src = _checkpoint(tmp_path, "c2", b"second")
    if via == "ledger callback":  # logs the failure and goes on with the search
        ledger.LedgerCallback(tmp_path / "exp")._copy_model("t1", str(src))
    else:
        with pytest.raises(OSError):
            _copy(src, dst)
    assert (dst / "model.pt2").read_bytes() == b"first"
    assert sorted(p.name for p in dst.parent.iterdir()) == ["t1"]


def test_a_crash_between_the_renames_is_recovered_on_resume(tmp_path):
    models = tmp_path / "exp" / "models"
    aside = models / ".t1.0123abcd.old"  # what replace_dir leaves if killed between renames
    aside.mkdir(parents=True)
    (aside / "model.pt2").write_bytes(b"first")
    (models / "t2").mkdir()
    (models / ".t2.4567cdef.old").mkdir()  # replaced already: only the removal was missed
    cb = ledger.LedgerCallback(tmp_path / "exp")
    cb.setup()
    assert (models / "t1" / "model.pt2").read_bytes() == b"first"
    assert sorted(p.name for p in models.iterdir()) == ["t1", "t2"]


def test_two_copies_at_once_leave_one_whole_copy(tmp_path):
    dst = tmp_path / "exp" / "models" / "t1"
    srcs = [_checkpoint(tmp_path, f"c{i}", bytes([i]) * 100_000) for i in range(6)]
    errors: list[BaseException] = []

    def run(src: Path) -> None:
        try:
            _copy(src, dst)
        except OSError as e:  # the other one won the rename: its copy stands, whole
            errors.append(e)

    threads = [threading.Thread(target=run, args=(s,)) for s in srcs]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    data = (dst / "model.pt2").read_bytes()
    assert len(data) == 100_000 and len(set(data)) == 1
    recover_swaps(dst.parent, stale_s=0)
    assert sorted(p.name for p in dst.parent.iterdir()) == ["t1"]
