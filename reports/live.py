"""What a running search needs from its ledger, kept up to date at the cost of what arrived.

:class:`LedgerFollower` reads only the bytes appended since its last call and updates the
trials' states by the rules of ``reports.contract`` (the same as :func:`trial_states` over
the whole file). :class:`FrontTracker` keeps, per front, the finished trials no other
finished trial dominates: the hypervolume and the knee of the report (``reports.tables``)
depend on those alone, so both are computed over a few dozen points instead of every
trial. The monitor (``orchestrator/monitor.py``) calls them at every trial end.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from reports import pareto
from reports.contract import (
    FINISHED_STATUSES,
    LEDGER_FILE,
    RUNNING,
    SELECTION_METRIC,
    LedgerError,
    TrialState,
    kept_epoch,
    trial_states,
)


class LedgerFollower:
    """The trials of a ledger that is being appended to, read incrementally.

    Args:
        experiment_dir: The experiment directory (its ``results.jsonl`` is followed).
    """

    def __init__(self, experiment_dir: str | Path) -> None:
        self.path = Path(experiment_dir) / LEDGER_FILE
        self.states: dict[str, TrialState] = {}
        self._offset = 0
        self._line = 0

    def update(self) -> set[str]:
        """Read what was appended; returns the ids of the trials it touched.

        A last line without its newline is left for the next call (a write in progress).
        """
        if not self.path.is_file():
            return set()
        with open(self.path, "rb") as f:
            f.seek(self._offset)
            data = f.read()
        end = data.rfind(b"\n") + 1
        if end == 0:
            return set()
        events = []
        line = self._line
        for raw in data[:end].split(b"\n")[:-1]:
            line += 1
            if raw.strip():
                try:
                    obj = json.loads(raw)
                except json.JSONDecodeError:
                    raise LedgerError(f"{self.path}:{line}: not valid JSON; the ledger is damaged at this line") from None
                if not isinstance(obj, dict):
                    raise LedgerError(f"{self.path}:{line}: expected a JSON object per line")
                events.append((line, obj))
        touched = trial_states(events, where=str(self.path))
        self._offset, self._line = self._offset + end, line
        for tid, new in touched.items():
            self._merge(tid, new)
        return set(touched)

    def _merge(self, tid: str, new: TrialState) -> None:
        st = self.states.get(tid)
        if st is None:
            self.states[tid] = new
            return
        st.results.update(new.results)
        if new.config:
            st.config = new.config
        st._result_seq = max(st._result_seq, new._result_seq)
        if new._status_seq > st._status_seq:
            st._status_seq, st.status, st.reason = new._status_seq, new.status, new.reason
        # The contract's rule, over the whole history: results after the last status: running.
        if st._result_seq > st._status_seq:
            st.status, st.reason = RUNNING, None


def _float(value: Any) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


class FrontTracker:
    """Hypervolume and knee of each front as trials finish (what ``reports.tables`` gives).

    Args:
        fronts: ``{front name: cost column}`` (``reports.tables.fronts_for``).
        dense: The dense model's metrics (its cost is the reference; it competes).
        others: The other reference models' metrics (the dense model in int8), which
            compete as the report's reference rows do.
    """

    def __init__(self, fronts: Mapping[str, str], dense: Mapping[str, Any],
                 others: Sequence[Mapping[str, Any]] = ()) -> None:
        self.fronts = dict(fronts)
        self.dense = dict(dense)
        self.references = [self.dense, *(dict(o) for o in others)]
        self.rows: dict[str, Mapping[str, Any]] = {}  # finished trial -> its kept row
        self._archive: dict[str, dict[str, tuple[float, float]]] = {f: {} for f in self.fronts}

    def finish(self, trial_id: str, state: TrialState) -> None:
        """Record a trial's end (its kept row), or forget it when it runs again."""
        if state.status not in FINISHED_STATUSES or not state.results:
            if self.rows.pop(trial_id, None) is not None:  # retried: it may have left a front
                self._rebuild()
            return
        row = kept_epoch(state.results.values())
        changed = trial_id in self.rows
        self.rows[trial_id] = row
        if changed:
            self._rebuild()
        else:
            for front in self.fronts:
                self._insert(front, trial_id, row)

    def _rebuild(self) -> None:
        self._archive = {f: {} for f in self.fronts}
        for tid in sorted(self.rows):
            for front in self.fronts:
                self._insert(front, tid, self.rows[tid])

    def _insert(self, front: str, trial_id: str, row: Mapping[str, Any]) -> None:
        point = (_float(row.get(SELECTION_METRIC)), _float(row.get(self.fronts[front])))
        if not all(math.isfinite(v) for v in point):
            return
        archive = self._archive[front]
        if archive:
            pts = np.array(list(archive.values()))
            acc, cost = point
            # Dominated by a member (no worse in both, better in one): never on this front.
            if (((pts[:, 0] >= acc) & (pts[:, 1] <= cost)) & ((pts[:, 0] > acc) | (pts[:, 1] < cost))).any():
                return
            beaten = pareto.dominates(np.array(point), pts, ("max", "min"))
            for tid in [t for t, b in zip(list(archive), beaten) if b]:
                del archive[tid]
        archive[trial_id] = point

    def summary(self, front: str) -> tuple[float, str | None]:
        """``(normalised hypervolume, knee trial id or None)`` of ``front``."""
        cost = self.fronts[front]
        ref = (0.0, float(self.dense[cost]))
        archive = self._archive[front]
        if not archive:
            return 0.0, None
        ids = sorted(archive)
        pts = np.array([archive[t] for t in ids])
        hv = pareto.hypervolume_2d(pts, ref, ("max", "min"))
        box = (1.0 - ref[0]) * ref[1]
        refs = [(_float(r.get(SELECTION_METRIC)), _float(r.get(cost))) for r in self.references]
        k = pareto.knee_among(pts, [p for p in refs if all(math.isfinite(v) for v in p)], ("max", "min"))
        return (hv / box if box > 0 else math.nan), (None if k is None else ids[k])

    def members(self) -> set[str]:
        """Trials on some front (no other finished trial dominates them)."""
        return {t for archive in self._archive.values() for t in archive}
