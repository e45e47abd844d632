"""Reports of many trials: the page draws the fronts in full and the rest as a density,
and the tables equal a straightforward computation on a synthetic ledger."""

from __future__ import annotations

import json
import re
import sys

import pytest
from reports_fixtures import REPO

from reports import plots
from reports.build import build_report
from reports.io import load

sys.path.insert(0, str(REPO / "bench"))
from _synthetic import write_experiment  # noqa: E402


def test_a_page_past_max_markers_draws_fronts_in_full_and_the_rest_as_density(tmp_path, monkeypatch):
    """Past MAX_MARKERS trials, each panel has a marker (and a tooltip) for every front member
    and the knee, nothing else per trial, and the page says how many are aggregated."""
    monkeypatch.setattr(plots, "MAX_MARKERS", 10)
    root = write_experiment(tmp_path / "exp", 60, 3)
    build_report(root)
    page = (root / "report" / "fronts.html").read_text()
    fronts = load(root)["fronts"]
    info = json.loads(re.search(r'<script type="application/json" id="points">(.*?)</script>', page, re.S)
                      .group(1).replace("<\\/", "</"))
    for front in fronts["front"].unique():
        part = fronts[(fronts["front"] == front) & (fronts["status"] != "reference") & fronts["pareto_rank"].notna()]
        shown = part[(part["pareto_rank"] == 1) | part["is_knee"]]
        assert len(part) > 10 > 0 < len(shown) < len(part)
        want = {plots.point_id(front, t) for t in shown["trial_id"]}
        ids = set(re.findall(rf'<g id="({re.escape(plots.point_id(front, ""))}[^"]*)"', page))
        assert ids - {plots.point_id(front, "dense")} == want
        assert {k for k in info if k.startswith(plots.point_id(front, ""))} - {plots.point_id(front, "dense")} == want
        assert f"{len(part) - len(shown)} trials off the front drawn as a density" in page


@pytest.mark.parametrize("n", [120])
def test_kept_rows_of_a_synthetic_ledger(tmp_path, n):
    """The final table holds each finished trial's kept epoch, by the contract's rule applied
    to its ledger rows one by one (ties, re-reported epochs and running trials included)."""
    from reports.contract import kept_epoch, read_events, trial_states

    root = write_experiment(tmp_path / "exp", n, 10)
    build_report(root, plots=False)
    final = load(root)["final"].set_index("trial_id")
    states = trial_states(read_events(root / "results.jsonl"))
    finished = {t: st for t, st in states.items() if st.finished and st.results}
    assert set(final.index) - {"dense"} == set(finished)
    for tid, st in finished.items():
        kept = kept_epoch(st.rows())
        assert final.loc[tid, "epoch"] == kept["epoch"] and final.loc[tid, "val_accuracy"] == kept["val_accuracy"]
        assert final.loc[tid, "last_epoch"] == max(st.results)
