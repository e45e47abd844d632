"""Ray Tune callback that keeps an experiment's report current during a search.

This is the only module of ``reports`` that imports Ray; ``import reports`` does
not import it (``reports.ReportCallback`` is resolved lazily on first access).

The report is rebuilt from the experiment directory (the ledger the
orchestrator's own callback appends), not from the Tune objects, so what is
watched during the search is exactly what ``python -m reports build`` gives
afterwards. Register it *after* the ledger callback so, at the end of the
experiment, the ledger's last status lines are written before the final build.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

from ray.tune import Callback

from reports.build import build_report

logger = logging.getLogger(__name__)


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
    """

    def __init__(
        self,
        experiment_dir: str | Path,
        every: int = 10,
        report_dir: str | Path | None = None,
        plots: bool = True,
        at_end: bool = True,
    ) -> None:
        if isinstance(every, bool) or not isinstance(every, int) or every < 1:
            raise ValueError(f"every must be an integer >= 1, got {every!r}")
        self.experiment_dir = Path(experiment_dir)
        self.every = every
        self.report_dir = Path(report_dir) if report_dir is not None else None
        self.plots = plots
        self.at_end = at_end
        self.builds = 0
        self.last_build_s: float | None = None
        self._pending = 0

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

    def on_trial_result(
        self, iteration: int, trials: list[Any], trial: Any, result: dict, **info: Any
    ) -> None:
        self._pending += 1
        if self._pending >= self.every:
            self._rebuild(self.plots)

    def on_experiment_end(self, trials: list[Any], **info: Any) -> None:
        if self.at_end:
            self._rebuild(plots=True)
