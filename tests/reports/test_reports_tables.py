"""Ledger -> trials / final / fronts tables, on the hand-written fixture experiment."""

from __future__ import annotations

import json

import pandas as pd
import pytest
from reports_fixtures import DENSE, cfg, metrics, write_fixture_experiment

from reports.ledger import read_experiment
from reports.tables import build_tables

REQUIRED = ["trial_id", "status", "epoch", "val_accuracy", "flops", "flops_sparse", "params",
            "params_nonzero", "size_bytes", "latency_ms", "sparsity"]
FINISHED = ["a1b2c_00000", "a1b2c_00001", "a1b2c_00002", "a1b2c_00003", "a1b2c_00004",
            "a1b2c_00005", "a1b2c_00006"]


def _trials(df: pd.DataFrame) -> pd.DataFrame:
    return df[df["status"] != "reference"]


def test_trials_table_keeps_last_report_per_epoch_and_marks_running(experiment_dir):
    t = build_tables(read_experiment(experiment_dir)).trials
    assert set(REQUIRED) <= set(t.columns)
    assert t.iloc[0]["trial_id"] == "dense" and t.iloc[0]["status"] == "reference"
    assert t.iloc[0]["val_accuracy"] == DENSE["val_accuracy"] and pd.isna(t.iloc[0]["epoch"])
    rows = _trials(t)
    assert len(rows) == 17  # 18 result lines, one epoch re-reported twice
    again = rows[(rows["trial_id"] == "a1b2c_00002") & (rows["epoch"] == 2)]
    assert again["val_accuracy"].tolist() == [0.9583]  # the last line for that epoch
    status = rows.drop_duplicates("trial_id").set_index("trial_id")["status"].to_dict()
    assert status["a1b2c_00007"] == "running"
    assert status["a1b2c_00003"] == "stopped" and status["a1b2c_00006"] == "errored"
    assert "a1b2c_00008" not in status  # errored before reporting anything
    # Config values are their own columns; keys a trial lacks are missing, not 0.
    r = rows[rows["trial_id"] == "a1b2c_00004"].iloc[0]
    assert (r["criterion"], r["granularity"], r["schedule.rounds"]) == ("slimming", "structured", 3)
    assert pd.isna(rows[rows["trial_id"] == "a1b2c_00000"].iloc[0]["schedule.rounds"])


def test_final_table_picks_best_epoch_at_final_sparsity(experiment_dir):
    f = build_tables(read_experiment(experiment_dir)).final
    assert f["trial_id"].tolist() == ["dense", *FINISHED]
    by = f.set_index("trial_id")
    # Best of epochs 1-3 at one sparsity.
    assert (by.at["a1b2c_00000", "epoch"], by.at["a1b2c_00000", "last_epoch"]) == (2, 3)
    assert by.at["a1b2c_00000", "val_accuracy"] == 0.9694
    # Gradual: epoch 1 (sparsity 0.35) scored higher, but the result is at 0.8.
    assert (by.at["a1b2c_00001", "epoch"], by.at["a1b2c_00001", "sparsity"]) == (3, 0.8)
    # Tie between epochs 2 and 3 at the final sparsity: the earliest.
    assert by.at["a1b2c_00002", "epoch"] == 2
    # Iterative: only the last epoch reached 0.75.
    assert (by.at["a1b2c_00004", "epoch"], by.at["a1b2c_00004", "flops"]) == (3, 2344)
    assert by.at["a1b2c_00003", "reason"] == "ASHA: below the rung cutoff at epoch 1"
    assert by.at["a1b2c_00006", "status"] == "errored"
    assert by.at["a1b2c_00000", "model_dir"] == "models/a1b2c_00000"
    assert pd.isna(by.at["a1b2c_00003", "model_dir"])
    assert (by.at["a1b2c_00000", "time_total_s"], by.at["a1b2c_00000", "trial_time_s"]) == (5.0, 7.5)


def test_fronts_ranks_hypervolume_and_knee(experiment_dir):
    tables = build_tables(read_experiment(experiment_dir))
    fr = tables.fronts
    assert fr["front"].unique().tolist() == ["accuracy_flops", "accuracy_flops_sparse",
                                             "accuracy_size", "accuracy_latency"]
    flops = fr[fr["front"] == "accuracy_flops"].set_index("trial_id")
    # The dense model competes: it is on the front, and it dominates the unstructured trials
    # (same FLOPs, lower accuracy).
    assert flops.at["dense", "status"] == "reference" and flops.at["dense", "pareto_rank"] == 1
    ranks = flops.drop("dense")["pareto_rank"].to_dict()
    assert ranks == {"a1b2c_00004": 1, "a1b2c_00002": 1, "a1b2c_00005": 1, "a1b2c_00003": 2,
                     "a1b2c_00000": 2, "a1b2c_00001": 3, "a1b2c_00006": 4}
    assert set(flops.index[flops["dominated_by_dense"]]) == {"a1b2c_00000", "a1b2c_00001", "a1b2c_00006"}
    assert flops.drop("dense")["rank_among_trials"].to_dict() == ranks  # no trial here needs dense to lose
    assert flops.index[flops["is_knee"]].tolist() == ["a1b2c_00002"]
    # Vertical slabs under the staircase, reference (0, dense FLOPs 34048).
    hv = 0.9722 * (34048 - 17400) + 0.9583 * (17400 - 8832) + 0.9306 * (8832 - 2344)
    s = tables.summaries["accuracy_flops"]
    assert s.hypervolume == pytest.approx(hv, rel=1e-12)
    assert s.hypervolume_normalized == pytest.approx(hv / 34048, rel=1e-12)
    assert (s.reference, s.n_trials, s.n_front, s.knee) == ((0.0, 34048.0), 7, 3, "a1b2c_00002")
    assert s.n_dominated_by_dense == 3
    # Each member owns the rectangle between its neighbours on the staircase.
    contrib = flops.drop("dense")["hv_contribution"]
    assert contrib["a1b2c_00004"] == pytest.approx(0.9306 * (8832 - 2344), rel=1e-12)
    assert contrib["a1b2c_00002"] == pytest.approx((0.9583 - 0.9306) * (17400 - 8832), rel=1e-12)
    assert contrib["a1b2c_00005"] == pytest.approx((0.9722 - 0.9583) * (34048 - 17400), rel=1e-12)
    assert (contrib[["a1b2c_00000", "a1b2c_00001", "a1b2c_00003", "a1b2c_00006"]] == 0).all()
    # Unstructured pruning removes no dense FLOPs but does cut sparse FLOPs.
    sparse = fr[(fr["front"] == "accuracy_flops_sparse") & (fr["pareto_rank"] == 1)]
    assert set(sparse["trial_id"]) == {"a1b2c_00004", "a1b2c_00001", "a1b2c_00000", "a1b2c_00005", "dense"}
    size = fr[(fr["front"] == "accuracy_size") & (fr["pareto_rank"] == 1)]
    assert set(size["trial_id"]) == {"a1b2c_00004", "a1b2c_00002", "a1b2c_00001", "a1b2c_00005", "dense"}
    assert tables.summaries["accuracy_size"].reference == (0.0, 70845.0)


def test_a_trial_the_dense_model_dominates_is_not_on_the_front(make_experiment):
    """An unstructured trial keeps the dense FLOPs; below the dense accuracy it is no result,
    though among trials alone it would be on the front."""
    w = make_experiment("dominated")
    unstr = cfg("magnitude", "unstructured", 0.5, "one_shot")
    struct = cfg("taylor", "structured", 0.5, "one_shot")
    w.result("u", unstr, 1, **metrics(0.97, 0.5, 34048, 17000, 40000, 17226, 8600))
    w.status("u", unstr, "completed", "done")
    w.result("s", struct, 1, **metrics(0.95, 0.5, 8832, 8832, 18370, 4522, 4522))
    w.status("s", struct, "completed", "done")
    fr = build_tables(read_experiment(w.root)).fronts
    flops = fr[fr["front"] == "accuracy_flops"].set_index("trial_id")
    assert flops.at["u", "rank_among_trials"] == 1  # trials alone: on the front
    assert flops.at["u", "pareto_rank"] == 2 and flops.at["u", "dominated_by_dense"]
    assert flops.at["s", "pareto_rank"] == 1 and flops.at["dense", "pareto_rank"] == 1
    assert not flops.at["u", "is_knee"]
    # On sparse FLOPs and size the unstructured trial is cheaper than dense: on the front.
    sparse = fr[fr["front"] == "accuracy_flops_sparse"].set_index("trial_id")
    assert sparse.at["u", "pareto_rank"] == 1


def test_partial_experiment_holds_exactly_its_finished_trials(make_experiment):
    w = make_experiment("partial")
    c1, c2, c3 = (cfg("magnitude", "unstructured", a, "one_shot") for a in (0.25, 0.5, 0.75))
    m = dict(flops=34048, size=50000, params=17226)
    w.result("t1", c1, 1, **metrics(0.96875, 0.25, flops_sparse=25536, nonzero=13000, **m))
    w.result("t1", c1, 2, **metrics(0.96875, 0.25, flops_sparse=25536, nonzero=13000, **m))
    w.status("t1", c1, "completed", "max epochs reached")
    w.result("t2", c2, 1, **metrics(0.9375, 0.5, flops_sparse=17024, nonzero=8700, **m))
    w.result("t3", c3, 1, **metrics(0.875, 0.75, flops_sparse=8512, nonzero=4400, **m))
    w.status("t3", c3, "stopped", "ASHA")
    # A line torn by a writer still at work: skipped, not an error.
    with w.ledger.open("a") as f:
        f.write('{"type": "result", "trial_id": "t2", "epoch": 2, "accur')
    tables = build_tables(read_experiment(w.root))
    assert _trials(tables.final)["trial_id"].tolist() == ["t1", "t3"]
    for front in ("accuracy_flops", "accuracy_flops_sparse", "accuracy_size"):
        part = _trials(tables.fronts[tables.fronts["front"] == front])
        assert sorted(part["trial_id"]) == ["t1", "t3"]
    assert _trials(tables.trials)["trial_id"].tolist() == ["t1", "t1", "t2", "t3"]
    sp = tables.summaries["accuracy_flops_sparse"]
    assert sp.hypervolume == pytest.approx(0.96875 * (34048 - 25536) + 0.875 * (25536 - 8512))


def test_a_retried_trial_is_running_again(make_experiment):
    w = make_experiment("retry")
    c = cfg("taylor", "structured", 0.5, "one_shot")
    row = metrics(0.9, 0.5, 8832, 8832, 18370, 4522, 4522)
    w.result("t1", c, 1, **row)
    w.status("t1", c, "errored", "worker died")
    w.result("t1", c, 1, **{**row, "val_accuracy": 0.91})  # restored and re-reported
    exp = read_experiment(w.root)
    tables = build_tables(exp)
    assert tables.trials.set_index("trial_id").at["t1", "status"] == "running"
    assert _trials(tables.final).empty
    w.status("t1", c, "completed", "max epochs reached")
    final = _trials(build_tables(read_experiment(w.root)).final)
    assert final[["trial_id", "status", "val_accuracy"]].values.tolist() == [["t1", "completed", 0.91]]


def test_config_key_colliding_with_a_metric_is_rejected(make_experiment):
    w = make_experiment("clash")
    w.result("t1", {"criterion": "magnitude", "val_accuracy": 0.5}, 1,
             **metrics(0.9, 0.5, 8832, 8832, 18370, 4522, 4522))
    with pytest.raises(ValueError, match="config key 'val_accuracy' collides"):
        read_experiment(w.root)


def test_malformed_ledger_line_names_file_and_line(make_experiment):
    w = make_experiment("broken")
    with w.ledger.open("a") as f:
        f.write("not json\n")
        f.write(json.dumps({"type": "status", "trial_id": "x", "status": "done"}) + "\n")
    with pytest.raises(ValueError, match=r"results\.jsonl:1: not valid JSON"):
        read_experiment(w.root)
    w.ledger.write_text(json.dumps({"type": "status", "trial_id": "x", "status": "done"}) + "\n")
    with pytest.raises(ValueError, match="unknown status 'done'; valid choices: completed, "
                                         "stopped, errored"):
        read_experiment(w.root)


def test_missing_dense_baseline_needs_an_explicit_reference(make_experiment):
    w = make_experiment("nodense", dense=None)
    c = cfg("taylor", "structured", 0.5, "one_shot")
    w.result("t1", c, 1, **metrics(0.875, 0.5, 8832, 8832, 18370, 4522, 4522))
    w.status("t1", c, "completed", "max epochs reached")
    exp = read_experiment(w.root)
    with pytest.raises(ValueError, match="no hypervolume reference for 'flops'"):
        build_tables(exp)
    ref = {"flops": 16384.0, "flops_sparse": 16384.0, "size_bytes": 32768.0, "latency_ms": 1.0}
    tables = build_tables(exp, reference=ref)
    assert tables.final["trial_id"].tolist() == ["t1"]  # no reference row without a baseline
    assert tables.summaries["accuracy_flops"].hypervolume == 0.875 * (16384 - 8832)


def test_config_values_of_any_json_kind_become_typed_columns(make_experiment):
    w = make_experiment("kinds")
    row = metrics(0.875, 0.5, 8832, 8832, 18370, 4522, 4522)
    w.result("t1", {"criterion": "magnitude", "ignore": ["fc3"], "optimizer": {"name": "sgd"},
                    "amount": 1, "penalty": True}, 1, **row)
    w.result("t2", {"criterion": "taylor", "ignore": [], "optimizer": {"name": "adam"},
                    "amount": 0.5, "penalty": False}, 1, **row)
    t = _trials(build_tables(read_experiment(w.root)).trials).set_index("trial_id")
    assert t["ignore"].tolist() == ['["fc3"]', "[]"]  # lists as JSON text
    assert t["optimizer.name"].tolist() == ["sgd", "adam"]  # nested dicts flattened
    assert t["amount"].dtype == "float64" and t["amount"].tolist() == [1.0, 0.5]
    assert t["penalty"].tolist() == [True, False] and t["penalty"].dtype == "boolean"


def test_non_numeric_metric_is_named(make_experiment):
    w = make_experiment("badmetric")
    row = {**metrics(0.875, 0.5, 8832, 8832, 18370, 4522, 4522), "val_accuracy": "high"}
    w.result("t1", cfg("taylor", "structured", 0.5, "one_shot"), 1, **row)
    with pytest.raises(ValueError, match=r"results.jsonl:1: 'val_accuracy' is 'high'; expected a number in \[0, 1\]"):
        build_tables(read_experiment(w.root))


def _front_trials(tables, front):
    return set(tables.fronts.loc[tables.fronts["front"] == front, "trial_id"])


FINISHED_WITH_RESULTS = {"dense", "a1b2c_00000", "a1b2c_00001", "a1b2c_00002", "a1b2c_00003", "a1b2c_00004",
                         "a1b2c_00005", "a1b2c_00006"}


def test_report_fronts_chooses_the_fronts(tmp_path):
    """A config's ``report.fronts`` (as the schema writes it) replaces the default fronts."""
    root = tmp_path / "exp"
    write_fixture_experiment(root, report={"fronts": ["size_bytes", "params_nonzero"]})
    tables = build_tables(read_experiment(root))
    assert tables.front_costs == {"accuracy_size": "size_bytes", "accuracy_params_nonzero": "params_nonzero"}
    assert tables.fronts["front"].unique().tolist() == ["accuracy_size", "accuracy_params_nonzero"]
    assert _front_trials(tables, "accuracy_params_nonzero") == FINISHED_WITH_RESULTS
    # params_nonzero: the structured 75% trial (1198) is the cheapest; nothing beats it there.
    front = tables.fronts[tables.fronts["front"] == "accuracy_params_nonzero"].set_index("trial_id")
    assert front.at["a1b2c_00004", "pareto_rank"] == 1 and front.at["dense", "pareto_rank"] == 1


def test_a_cost_objective_of_the_scheduler_adds_its_front(tmp_path):
    """Without ``report.fronts``: the default fronts plus each cost the scheduler minimised."""
    root = tmp_path / "exp"
    write_fixture_experiment(root, scheduler={"name": "moasha",
                                              "objectives": {"val_accuracy": "max", "params_nonzero": "min"}})
    tables = build_tables(read_experiment(root))
    assert tables.front_costs == {"accuracy_flops": "flops", "accuracy_flops_sparse": "flops_sparse",
                                  "accuracy_size": "size_bytes", "accuracy_latency": "latency_ms",
                                  "accuracy_params_nonzero": "params_nonzero"}
    assert _front_trials(tables, "accuracy_params_nonzero") == FINISHED_WITH_RESULTS
