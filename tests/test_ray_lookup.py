"""The guard on Ray's address lookup (tests/ray_lookup.py, used by tests/conftest.py): it reads
the file Ray reads, reports a test that leaves ``RAY_ADDRESS`` changed or
``ray_current_cluster`` naming a dead cluster (not one that names a live one), and puts both
back. No Ray is started."""

from __future__ import annotations

import os
import socket
import textwrap
from pathlib import Path

import pytest

import ray_lookup

pytest_plugins = ["pytester"]

TESTS = Path(__file__).resolve().parent


def _dead_address() -> str:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()  # nothing listens there any more, as at a killed cluster's GCS port
    return f"127.0.0.1:{port}"


@pytest.fixture
def own_ray_tmpdir(tmp_path, monkeypatch) -> Path:
    """This test's own ``ray_current_cluster`` (the machine's is never touched)."""
    monkeypatch.setenv("RAY_TMPDIR", str(tmp_path))
    (tmp_path / "ray").mkdir()
    return tmp_path / "ray" / "ray_current_cluster"


@pytest.mark.parametrize("tmpdir_env", [None, "/tmp/pf-elsewhere"])
def test_the_file_is_the_one_ray_reads(tmpdir_env, monkeypatch):
    from ray._common.utils import get_ray_address_file

    if tmpdir_env is None:
        monkeypatch.delenv("RAY_TMPDIR", raising=False)
    else:
        monkeypatch.setenv("RAY_TMPDIR", tmpdir_env)
    assert ray_lookup.current_cluster_file() == Path(get_ray_address_file(None))


def test_a_dead_cluster_left_in_the_file_is_reported_and_removed(own_ray_tmpdir):
    before = ray_lookup.snapshot()
    own_ray_tmpdir.write_text(_dead_address())
    (problem,) = ray_lookup.leaks(before, ray_lookup.snapshot())
    assert "where no Ray answers" in problem and str(own_ray_tmpdir) in problem
    ray_lookup.restore(before)
    assert not own_ray_tmpdir.exists()


def test_the_previous_address_comes_back(own_ray_tmpdir):
    own_ray_tmpdir.write_text("10.0.0.1:6379")
    before = ray_lookup.snapshot()
    own_ray_tmpdir.write_text(_dead_address())
    ray_lookup.restore(before)
    assert own_ray_tmpdir.read_text() == "10.0.0.1:6379"


def test_a_live_cluster_or_no_file_is_not_a_leak(own_ray_tmpdir):
    """Another process on the machine may `ray start` (a live address) or `ray stop` (no
    file) at any time: neither is the test's doing, and restore leaves both alone."""
    before = ray_lookup.snapshot()
    with socket.socket() as live:
        live.bind(("127.0.0.1", 0))
        live.listen()
        address = f"127.0.0.1:{live.getsockname()[1]}"
        own_ray_tmpdir.write_text(address)
        assert ray_lookup.leaks(before, ray_lookup.snapshot()) == []
        ray_lookup.restore(before)
        assert own_ray_tmpdir.read_text() == address
    own_ray_tmpdir.write_text(_dead_address())
    stale = ray_lookup.snapshot()
    own_ray_tmpdir.unlink()
    assert ray_lookup.leaks(stale, ray_lookup.snapshot()) == []


def test_a_changed_address_variable_is_reported_and_put_back(monkeypatch):
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    before = ray_lookup.snapshot()
    os.environ["RAY_ADDRESS"] = "127.0.0.1:1"
    assert ray_lookup.leaks(before, ray_lookup.snapshot()) == ["RAY_ADDRESS was None, is now '127.0.0.1:1'"]
    ray_lookup.restore(before)
    assert "RAY_ADDRESS" not in os.environ


def test_the_suite_errors_a_test_that_leaks(pytester, own_ray_tmpdir, monkeypatch):
    """tests/conftest.py's guard, run on three tests: the two that leave the lookup
    misdirected error at teardown and name what they did; the lookup is put back."""
    pytester.makeconftest((TESTS / "conftest.py").read_text())
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")]))
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    pytester.makepyfile(textwrap.dedent(f"""
        import os
        from pathlib import Path

        def test_sets_the_address():
            os.environ["RAY_ADDRESS"] = "127.0.0.1:1"

        def test_kills_its_cluster():
            Path({str(own_ray_tmpdir)!r}).write_text({_dead_address()!r})

        def test_leaves_nothing():
            pass
    """))
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(passed=3, errors=2)
    out = result.stdout.str()
    assert "ERROR at teardown of test_sets_the_address" in out and "RAY_ADDRESS was None" in out
    assert "ERROR at teardown of test_kills_its_cluster" in out and "where no Ray answers" in out
    assert not own_ray_tmpdir.exists()
