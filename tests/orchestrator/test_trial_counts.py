"""Trial counts by state have one definition (``reports.contract.trial_counts``): the
search's last line (``ledger.status_summary``), ``reports show`` and the monitor's gauges
count the same experiment the same way, a trial that errored before its first result
included (it has a status line and no result row)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import SimpleNamespace

ROOT = Path(__file__).resolve().parents[2]


def _fixtures():
    spec = importlib.util.spec_from_file_location("reports_fixtures", ROOT / "tests" / "reports" / "reports_fixtures.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("reports_fixtures", module)
    spec.loader.exec_module(module)
    return module


def test_the_search_reports_show_and_the_monitor_count_alike(tmp_path):
    import reports
    from orchestrator.ledger import status_summary
    from orchestrator.monitor import MonitorCallback
    from reports.layout import Layout
    from reports.text import format_show

    root = tmp_path / "exp"
    _fixtures().write_fixture_experiment(root)  # 9 trials; a1b2c_00008 errored before any result
    planned = 12
    expected = {"completed": 4, "stopped": 2, "errored": 2, "running": 1, "pending": 3}

    # The search's last line.
    search = status_summary(Layout(root).ledger, planned=planned)
    assert search.to_dict() == expected

    # reports show (the headline of the report it reads).
    reports.build_report(root)
    frames, meta, title = reports.open_report(root)
    headline = format_show(frames, meta, title).splitlines()[0]
    assert "9 trials: 4 completed, 2 stopped, 2 errored, 1 running" in headline

    # The monitor's gauges (Tune's view: the running trial, nothing else live).
    monitor = MonitorCallback(root, "exp", planned, export=False, echo=False)
    live = [SimpleNamespace(trial_id="a1b2c_00007", status="RUNNING")]
    monitor._read()  # follow the ledger, as on each result
    counts = monitor._states(live)
    assert counts == expected


def test_the_exit_code_comes_from_the_counts_and_errors_exit():
    from orchestrator.errors import EXIT
    from orchestrator.search import exit_code
    from reports.contract import TrialCounts

    assert exit_code(TrialCounts(completed=3, errored=1), planned=4, dense_failed=False) == EXIT["ok"] == 0
    assert exit_code(TrialCounts(errored=4), planned=4, dense_failed=False) == EXIT["failed"] == 1
    assert exit_code(TrialCounts(completed=4), planned=4, dense_failed=True) == EXIT["failed"]
    assert exit_code(TrialCounts(completed=2, running=1), planned=4, dense_failed=False) == EXIT["interrupted"] == 130
