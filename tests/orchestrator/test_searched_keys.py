"""A searched key is declared twice (its SpaceConfig field, its TrialSettings field) and
everything else follows: Tune's space, the trial's settings, the row's config, the reports."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

pytest.importorskip("ray")

from orchestrator.config import Choice, SearchConfig, SpaceConfig  # noqa: E402
from orchestrator.params import Searched  # noqa: E402
from orchestrator.space import TrialSettings, decode_trial, flat_space, grid_size  # noqa: E402
from orchestrator.tune_space import param_space  # noqa: E402
from reports import build_tables, read_experiment  # noqa: E402
from tests.reports.reports_fixtures import ExperimentWriter, metrics  # noqa: E402


class SpaceWithKey(SpaceConfig):
    #: The throwaway key: its name, default and documentation, once.
    throwaway: Searched = Choice((3, 5))


@dataclass(frozen=True)
class SettingsWithKey(TrialSettings):
    throwaway: int = 0  # how a trial reads it


def _config() -> SearchConfig:
    cfg = SearchConfig.from_dict({"search": {"space": {"criterion": ["magnitude"], "granularity": ["structured"],
                                                       "schedule": ["one_shot"], "quantize": ["none"]}}})
    space = SpaceWithKey(**cfg.search.space.model_dump())
    return cfg.model_copy(update={"search": cfg.search.model_copy(update={"space": space})})


def test_a_throwaway_key_reaches_tune_the_trial_the_row_and_the_report(tmp_path):
    cfg = _config()
    space = flat_space(cfg.search)
    assert space["throwaway"] == Choice((3, 5))
    assert param_space(cfg)["throwaway"].categories == [3, 5]  # a tune.choice
    assert grid_size(cfg.search) == 2 * grid_size(cfg.model_copy(update={"search": cfg.search.model_copy(
        update={"space": SpaceConfig(**cfg.search.space.model_dump(exclude={"throwaway"}))})}).search)
    sample = {k: (p.values[-1] if isinstance(p, Choice) else getattr(p, "value", getattr(p, "low", None)))
              for k, p in space.items()}
    trial = decode_trial(sample, SettingsWithKey)
    assert trial.throwaway == 5 and isinstance(trial.throwaway, int)
    record = trial.record()
    assert list(record)[list(record).index("quantize") + 1] == "throwaway"  # declaration order
    # A ledger row carrying that config: the report's config columns hold it, in that order.
    w = ExperimentWriter(tmp_path / "exp")
    w.result("t1", record, 1, **metrics(0.9, 0.5, 8832, 8832, 18370, 4522, 4522))
    w.status("t1", record, "completed", "max epochs reached")
    final = build_tables(read_experiment(w.root)).final
    cols = list(final.columns)
    assert cols.index("quantize") + 1 == cols.index("throwaway") < cols.index("val_accuracy")
    assert final.set_index("trial_id").at["t1", "throwaway"] == 5
    # A row recorded before the key existed still decodes (the field's default).
    old = {k: v for k, v in sample.items() if k != "throwaway"}
    assert decode_trial(old, SettingsWithKey).throwaway == 0
