"""Ray Tune callback that keeps an experiment's report current during a search.

This is the only module of ``reports`` that imports Ray; ``import reports`` does
not import it (``reports.ReportCallback`` is resolved lazily on first access).

The report is rebuilt from the experiment directory (the ledger the
orchestrator's own callback appends), not from the Tune objects, so what is
watched during the search is exactly what ``python -m reports build`` gives
afterwards. Register it *after* the ledger callback so, at the end of the
experiment, the ledger's last status lines are written before the final build.

Every result passes through the driver's event loop, so a refresh during the search
runs off it: in a child process (``python -m reports build``), at most one at a time.
A result costs the driver a counter and a non-blocking poll of that process, however
long the ledger is; a refresh due while one runs waits for the next result after it
ended. The final build (``at_end``) runs in the driver, after any refresh in flight.
A refresh never publishes over a report built from a longer ledger
(``reports.build.write_report``), so a late child cannot undo the final build.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from ray.tune import Callback

from reports.build import build_report

logger = logging.getLogger(__name__)
_PACKAGE_ROOT = str(Path(__file__).resolve().parents[1])


class ReportCallback(Callback):
    """Rebuild ``<experiment_dir>/report`` every ``every`` results and at the end.

    A failed rebuild (for example a ledger line being written at that instant)
    is logged and retried at the next refresh; it never stops the search.

    Args:
        experiment_dir: The experiment directory (docs/design.md section 4).
        every: Rebuild after this many trial results (>= 1).
        report_dir: Where to write; default ``<experiment_dir>/report``.
        plots: Also redraw ``fronts.png`` / ``fronts.html`` at each refresh (the
            final build always draws them).
        at_end: Build the final report when the experiment ends. Off when the caller
            builds it itself after ``Tuner.fit`` (as ``orchestrator/search.py`` does,
            also after an interruption), so it is not built twice.
        background: Refresh in a child process (True), or in the driver, blocking it
            for the whole rebuild (False: for tests and tiny searches).
    """

    def __init__(
        self,
        experiment_dir: str | Path,
        every: int = 10,
        report_dir: str | Path | None = None,
        plots: bool = True,
        at_end: bool = True,
        background: bool = True,
    ) -> None:
        if isinstance(every, bool) or not isinstance(every, int) or every < 1:
            raise ValueError(f"every must be an integer >= 1, got {every!r}")
        self.experiment_dir = Path(experiment_dir)
        self.every = every
        self.report_dir = Path(report_dir) if report_dir is not None else None
        self.plots = plots
        self.at_end = at_end
        self.background = background
        self.builds = 0
        self.last_build_s: float | None = None
        self._pending = 0
        self._child: subprocess.Popen[bytes] | None = None
        self._child_started = 0.0

    def __getstate__(self) -> dict[str, Any]:  # Tune pickles callbacks; a process stays behind
        state = dict(self.__dict__)
        state["_child"] = None
        return state

    def _rebuild(self, plots: bool) -> bool:
        start = time.perf_counter()
        try:
            build_report(self.experiment_dir, self.report_dir, plots=plots)
        except Exception:  # a report problem must never kill a search
            logger.warning("report refresh of %s failed", self.experiment_dir, exc_info=True)
            return False
        self.last_build_s = time.perf_counter() - start
        self.builds += 1
        self._pending = 0
        return True

    def _start_child(self) -> None:
        cmd = [sys.executable, "-m", "reports", "build", str(self.experiment_dir), "--if-newer"]
        if self.report_dir is not None:
            cmd += ["--out", str(self.report_dir)]
        if not self.plots:
            cmd.append("--no-plots")
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (_PACKAGE_ROOT, os.environ.get("PYTHONPATH")) if p)}
        try:
            self._child = subprocess.Popen(cmd, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                           stderr=subprocess.PIPE)
        except OSError:
            logger.warning("report refresh of %s could not start", self.experiment_dir, exc_info=True)
            return
        self._child_started = time.perf_counter()
        self._pending = 0

    def _reap(self, block: bool) -> bool:
        """Collect the child's outcome; True when no refresh is in flight any more."""
        child = self._child
        if child is None:
            return True
        if block:
            _, err = child.communicate()
        elif child.poll() is None:
            return False
        else:
            err = child.stderr.read() if child.stderr is not None else b""
        self._child = None
        if child.returncode == 0:
            self.builds += 1
            self.last_build_s = time.perf_counter() - self._child_started
        else:
            logger.warning("report refresh of %s failed: %s", self.experiment_dir,
                           err.decode(errors="replace").strip()[-2000:] or f"exit status {child.returncode}")
        return True

    def wait(self) -> None:
        """Wait for the refresh in flight, if any."""
        self._reap(block=True)

    def on_trial_result(
        self, iteration: int, trials: list[Any], trial: Any, result: dict, **info: Any
    ) -> None:
        self._pending += 1
        if self._pending < self.every:
            return
        if not self.background:
            self._rebuild(self.plots)
        elif self._reap(block=False):
            self._start_child()

    def on_experiment_end(self, trials: list[Any], **info: Any) -> None:
        self.wait()
        if self.at_end:
            self._rebuild(plots=True)
