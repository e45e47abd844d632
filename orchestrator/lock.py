"""One driver per output: an exclusive lock on ``<output>`` held for the driver's lifetime.

A search (fresh or ``--resume``) takes the lock before it writes anything to its output;
a second driver on the same output is refused with one line naming the first (pid, host,
start time) before Ray starts::

    held = lock.acquire(cfg.output_dir)   # raises LockHeld (a ConfigError) when taken
    try:
        ...                                # the search
    finally:
        held.release()

How: ``fcntl.flock`` on ``<output>/.lock``, plus a JSON record in that file of who holds it
(pid, the pid's start time, host, start time). The kernel drops a flock when its process
dies, however it dies (``kill -9`` too), so a dead driver's lock is free at once; its record
stays and is reported as taken over. Where flock is not enforced but the record names a
live process on this host (``/proc`` says so, start time included, so a reused pid does not
count), the output is refused all the same.

Limits: flock is advisory (only prunefront drivers honour it) and weak on shared storage.
On NFS, Linux emulates it with POSIX byte-range locks (NFSv4, or NFSv3 with a working lock
daemon); mounted with ``nolock``/``local_lock`` it only excludes drivers on the same
machine, and some FUSE / object-store mounts ignore it. Drivers on two machines sharing an
output directory are then not excluded: give each search its own ``--output``.

The experiment record ``experiment.json`` of a fresh search is created exclusively
(:func:`create_exclusive`): it exists complete or not at all, and never replaces another.
"""

from __future__ import annotations

import datetime as _dt
import errno
import fcntl
import json
import os
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from orchestrator.errors import ConfigError

__all__ = ["LOCK_FILE", "Held", "LockHeld", "acquire", "create_exclusive", "holder", "live_holder"]

#: The lock file inside an experiment directory.
LOCK_FILE = ".lock"


class LockHeld(ConfigError):
    """Another driver holds the output's lock (the message names it)."""


def _proc_start(pid: int) -> str | None:
    """Start time of process ``pid`` in clock ticks since boot (``/proc``), None if gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # Field 22; the command name (field 2) may hold spaces and parentheses.
    return stat.rpartition(")")[2].split()[19]


def _alive(record: dict[str, Any]) -> bool | None:
    """Is the process ``record`` names alive? None when that cannot be told from here
    (another host, or no ``/proc``)."""
    if record.get("host") != socket.gethostname() or not Path("/proc/self/stat").exists():
        return None
    pid = record.get("pid")
    if not isinstance(pid, int) or pid <= 0:
        return False
    start = _proc_start(pid)
    return start is not None and start == str(record.get("pid_start"))


def _describe(record: dict[str, Any]) -> str:
    return (f"pid {record.get('pid', '?')} on host {record.get('host', '?')}, "
            f"started {record.get('started_at', '?')}")


def _read(path: Path) -> dict[str, Any]:
    try:
        record = json.loads(path.read_text(encoding="utf-8") or "{}")
    except (OSError, ValueError, UnicodeDecodeError):
        return {}
    return record if isinstance(record, dict) else {}


def _refusal(out: Path, record: dict[str, Any]) -> LockHeld:
    return LockHeld(f"output: {str(out)!r} is in use by another driver ({_describe(record)}); "
                    "wait for it to finish (or stop it) before running or resuming this experiment, "
                    "or choose a new --output")


def holder(out: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The lock record of ``out`` (who holds or last held it), or None when there is none."""
    record = _read(Path(out) / LOCK_FILE)
    return record or None


def live_holder(out: str | os.PathLike[str]) -> None:
    """Raise :class:`LockHeld` when ``out``'s record names a live driver on this host.

    Reads the record only, takes no lock (a dry run must not block a real driver); a driver
    on another host is found by :func:`acquire`'s flock.
    """
    record = holder(out)
    if record is not None and record.get("pid") != os.getpid() and _alive(record):
        raise _refusal(Path(out), record)


@dataclass
class Held:
    """A held output lock; :meth:`release` (idempotent) frees it."""

    path: Path
    fd: int | None
    #: The record of a dead driver whose lock this one took over, else None.
    took_over: dict[str, Any] | None = None

    def note(self) -> str | None:
        """One line about a lock taken over from a dead driver, else None."""
        if self.took_over is None:
            return None
        return f"took over the lock of a driver that is gone ({_describe(self.took_over)})"

    def release(self) -> None:
        if self.fd is None:
            return
        try:
            os.ftruncate(self.fd, 0)  # no record: nobody holds it
        except OSError:
            pass
        os.close(self.fd)  # closing the last descriptor drops the flock
        self.fd = None


def acquire(out: str | os.PathLike[str]) -> Held:
    """Take ``out``'s lock (creating ``out``), or raise :class:`LockHeld` naming its holder.

    Raises:
        LockHeld: another driver holds it.
        ConfigError: the lock file cannot be created.
    """
    out = Path(out)
    path = out / LOCK_FILE
    try:
        out.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as e:
        raise ConfigError(f"output: cannot create the lock {str(path)!r} ({e.strerror or e}); "
                          "choose a writable --output") from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            if e.errno not in (errno.EWOULDBLOCK, errno.EACCES, errno.EAGAIN):
                raise ConfigError(f"output: cannot lock {str(path)!r} ({e.strerror or e}); "
                                  "the file system must support flock") from None
            raise _refusal(out, _read(path)) from None
        previous = _read(path)
        took_over = None
        if previous:
            if previous.get("pid") != os.getpid() and _alive(previous):
                # flock granted, yet the recorded driver lives: flock is not enforced here.
                raise _refusal(out, previous)
            took_over = previous
        record = {
            "pid": os.getpid(), "pid_start": _proc_start(os.getpid()), "host": socket.gethostname(),
            "started_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        }
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(record) + "\n").encode(), 0)
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        raise
    return Held(path=path, fd=fd, took_over=took_over)


def create_exclusive(path: str | os.PathLike[str], obj: Any) -> None:
    """Write JSON ``obj`` to a new file ``path``: complete or absent, never replacing one.

    The content is written and fsynced under a temporary name, then hard-linked to ``path``
    (``link`` fails when ``path`` exists, as ``O_EXCL`` does, and the file appears whole);
    where hard links are not supported, ``O_CREAT | O_EXCL`` creates it directly.

    Raises:
        FileExistsError: ``path`` exists.
    """
    path = Path(path)
    data = (json.dumps(obj, indent=2, default=str) + "\n").encode()
    tmp = path.with_name(f".{path.name}.{os.getpid()}.new")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    try:
        os.link(tmp, path)
    except FileExistsError:
        raise
    except OSError:  # no hard links here (some FUSE / SMB mounts)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
    finally:
        tmp.unlink(missing_ok=True)
