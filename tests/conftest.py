"""Shared test setup: the repository on ``sys.path`` and ONE small local Ray per session.

Tests that need Ray are marked ``@pytest.mark.ray``; the first of them starts the local
Ray (lazily: a run of only non-Ray tests never starts it), every later one reuses it, and
it is shut down at the end of the session. It is started the way the search starts its
embedded Ray (``orchestrator.ray_runtime.init``: same worker environment, 2 CPUs), so a
search run in-process by a test (``search.main([...])``) simply uses it. Its address is
the ``ray_address`` fixture, for drivers started in subprocesses (``--address``) and for
the state API (``list_actors(address=...)``, with ``exact_ray_address``).

No test may move Ray's own address lookup (``ray_lookup``): a test that leaves
``RAY_ADDRESS`` changed, or ``/tmp/ray/ray_current_cluster`` naming a cluster it killed, errors
at teardown (and the lookup is put back), instead of misdirecting some later test's call.
"""

from __future__ import annotations

import os
import sys

import pytest

import ray_lookup

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

#: CPUs of the shared Ray: what the machines this suite runs on have (2 cores).
RAY_CPUS = 2


@pytest.fixture(scope="session")
def ray_session():
    """The session's local Ray (started on first use, shut down at the end)."""
    import ray

    from orchestrator import ray_runtime

    ray_runtime.init(None, num_cpus=RAY_CPUS)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def ray_address(ray_session) -> str:
    """GCS address of the shared Ray, for ``--address`` in subprocess drivers."""
    return ray_session.get_runtime_context().gcs_address


@pytest.fixture
def no_address_override(monkeypatch) -> None:
    """Unset ``RAY_ADDRESS`` / ``RAY_API_SERVER_ADDRESS`` for the test: the state-API and
    job-API clients take them over the address they are given
    (``ray.dashboard.utils.get_address_for_submission_client``)."""
    for name in ray_lookup.OVERRIDE_ENV:
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def exact_ray_address(ray_address, no_address_override) -> str:
    """``ray_address``, for a state-API or job-API call that must reach the shared Ray
    (``list_actors(address=exact_ray_address)``): nothing in the environment overrides it."""
    return ray_address


@pytest.fixture(autouse=True)
def _ray_lookup_unchanged():
    """Error a test that leaves Ray's address lookup misdirected (see ``ray_lookup``)."""
    before = ray_lookup.snapshot()
    yield
    problems = ray_lookup.leaks(before, ray_lookup.snapshot())
    if problems:
        ray_lookup.restore(before)
        pytest.fail("this test left Ray's address lookup misdirected (now put back): " + "; ".join(problems),
                    pytrace=False)


@pytest.fixture(autouse=True)
def _ray_for_marked_tests(request):
    """Start (or reuse) the shared Ray for tests marked ``ray``."""
    if request.node.get_closest_marker("ray") is not None:
        request.getfixturevalue("ray_session")
    yield


_LAST_RAY_TEST: list[str] = []


def pytest_collection_modifyitems(config, items):
    ray_items = [item.nodeid for item in items if item.get_closest_marker("ray") is not None]
    _LAST_RAY_TEST[:] = ray_items[-1:]


def pytest_runtest_teardown(item, nextitem):
    # The shared Ray idles on the 2 cores (raylet, GCS, dashboard) for the rest of the
    # session otherwise: stop it once the last test that needs it is done.
    if _LAST_RAY_TEST and item.nodeid == _LAST_RAY_TEST[0] and "ray" in sys.modules:
        import ray

        if ray.is_initialized():
            ray.shutdown()
