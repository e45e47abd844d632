"""Where Ray's address lookup points, so a test that moves it is caught (tests/conftest.py).

A Ray call given no address (``ray.init()``, the state API, ``JobSubmissionClient``) finds
"the" cluster on its own (``ray._private.services.get_ray_address_from_environment`` and
``ray.dashboard.utils.get_address_for_submission_client``, Ray 2.60):

1. ``RAY_API_SERVER_ADDRESS`` (state and job clients) or ``RAY_ADDRESS``; both also override
   an address the caller passes to those clients;
2. else ``<Ray's default temp dir>/ray_current_cluster``, which ``ray start`` writes (in its
   ``--temp-dir``) and ``ray.cluster_utils.Cluster`` writes in the *default* temp dir,
   whatever ``temp_dir`` its nodes get; each removes it only on a clean shutdown, so a
   cluster killed first leaves it naming a GCS that never answers again;
3. else the one GCS process running on the machine.

:func:`snapshot` records 1 and 2, :func:`leaks` says what a test changed for the worse, and
:func:`restore` puts it back. No Ray import: the guard runs around every test.
"""

from __future__ import annotations

import os
import socket
import sys
from dataclasses import dataclass
from pathlib import Path

#: Variables that override every lookup, and an address given to the state and job clients.
OVERRIDE_ENV = ("RAY_ADDRESS", "RAY_API_SERVER_ADDRESS")
#: Variables the lookup reads: those, and the one that moves the ``ray_current_cluster`` file.
LOOKUP_ENV = (*OVERRIDE_ENV, "RAY_TMPDIR")


def current_cluster_file() -> Path:
    """``ray._common.utils.get_ray_address_file(None)``: the file a lookup with no address reads."""
    if "RAY_TMPDIR" in os.environ:
        base = os.environ["RAY_TMPDIR"]
    elif sys.platform.startswith("linux") and "TMPDIR" in os.environ:
        base = os.environ["TMPDIR"]
    else:
        base = "/tmp"
    return Path(base, "ray", "ray_current_cluster")


@dataclass(frozen=True)
class Lookup:
    """What Ray's address lookup reads, at one moment."""

    env: tuple[tuple[str, str | None], ...]
    file: Path
    current_cluster: str | None  # the file's content; None: no file


def snapshot() -> Lookup:
    path = current_cluster_file()
    try:
        content: str | None = path.read_text()
    except (FileNotFoundError, NotADirectoryError):
        content = None
    return Lookup(env=tuple((name, os.environ.get(name)) for name in LOOKUP_ENV), file=path, current_cluster=content)


def answers(address: str, timeout: float = 1.0) -> bool:
    """True when something accepts a TCP connection at ``host:port`` (a GCS that is up)."""
    host, _, port = address.strip().rpartition(":")
    try:
        with socket.create_connection((host.strip("[]") or "127.0.0.1", int(port)), timeout=timeout):
            return True
    except (OSError, ValueError):
        return False


def _dead_pointer(before: Lookup, after: Lookup) -> bool:
    now = after.current_cluster
    return after.file == before.file and now is not None and now != before.current_cluster and not answers(now)


def leaks(before: Lookup, after: Lookup) -> list[str]:
    """What changed from ``before`` to ``after`` that misdirects later lookups, one line each.

    Any change of an :data:`LOOKUP_ENV` variable (this process's own state, so the test's
    doing), and a ``ray_current_cluster`` that now names a GCS where nothing answers. A file
    that now names a live cluster, or that is gone, is not reported: another process on the
    machine (``ray start``, ``ray stop``) may do that legitimately.
    """
    found = [f"{name} was {was!r}, is now {now!r}"
             for (name, was), (_, now) in zip(before.env, after.env, strict=True) if was != now]
    if _dead_pointer(before, after):
        found.append(f"{after.file} now names {after.current_cluster.strip()!r}, where no Ray answers "
                     f"(it held {before.current_cluster!r}): a cluster started here was not shut down "
                     "cleanly, and every later lookup without an address goes there")
    return found


def restore(before: Lookup) -> None:
    """Undo what :func:`leaks` reports: the variables as ``before`` had them, and the
    ``ray_current_cluster`` file as it was if it now names a dead GCS (else left alone)."""
    for name, value in before.env:
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value
    if not _dead_pointer(before, snapshot()):
        return
    if before.current_cluster is None:
        before.file.unlink(missing_ok=True)
    else:
        before.file.write_text(before.current_cluster)
