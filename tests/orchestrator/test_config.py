"""Typed config: parsing, validation messages, round trips, and the space the Ray side samples."""

from __future__ import annotations

import itertools
import json
import os
import sys
from pathlib import Path

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

import pruners  # noqa: E402
from orchestrator.optim import restart_epochs, trial_optimizer  # noqa: E402
from orchestrator import config as C  # noqa: E402
from orchestrator.config import (  # noqa: E402
    Choice,
    ConfigError,
    Fixed,
    Range,
    SearchConfig,
    parse_param,
)
from orchestrator.loading import apply_overrides, json_schema, load_config, read_yaml  # noqa: E402
from orchestrator.space import decode_trial, flat_space, grid_size, parse_method, valid_methods  # noqa: E402
from orchestrator.steps import build_schedule  # noqa: E402
from reports.contract import METRIC_KEYS  # noqa: E402

CONFIGS = sorted((Path(ROOT) / "configs").glob("*.yaml"))


def make(**sections) -> SearchConfig:
    return SearchConfig.from_dict(sections)


# --------------------------------------------------------------------------------------
# Shipped configs and round trips
# --------------------------------------------------------------------------------------


def test_the_four_required_configs_ship():
    names = {p.name for p in CONFIGS}
    assert {"default.yaml", "fashion_mnist.yaml", "cifar10_resnet56.yaml", "imagenet_resnet50.yaml"} <= names


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_shipped_config_validates_and_round_trips_through_json(path):
    cfg = load_config(path)
    recorded = json.loads(json.dumps(cfg.to_dict()))  # experiment.json must hold it
    assert SearchConfig.from_dict(recorded) == cfg
    assert recorded == cfg.to_dict()


def test_default_config_file_equals_the_dataclass_defaults_where_the_schema_says_so():
    cfg = load_config(Path(ROOT) / "configs" / "default.yaml")
    assert cfg.data.dataset == "digits" and cfg.model.name == "small_cnn"
    assert cfg.scheduler == C.SchedulerConfig()
    assert cfg.search.space == C.SpaceConfig()
    assert cfg.search.schedule_params == SearchConfig().search.schedule_params


def test_every_key_in_default_yaml_is_a_real_field():
    raw = read_yaml(Path(ROOT) / "configs" / "default.yaml")
    # from_dict refuses unknown keys, so loading proves it; and the file lists every field.
    assert set(raw) == set(SearchConfig.model_fields)
    for section in ("data", "model", "dense", "search", "scheduler", "resources", "metrics", "report"):
        model = SearchConfig.model_fields[section].annotation
        assert set(raw[section]) == set(model.model_fields), section


def test_shipped_json_schema_is_the_generated_one_and_describes_every_key():
    shipped = json.loads((Path(ROOT) / "configs" / "schema.json").read_text())
    assert shipped == json_schema(), "regenerate: python orchestrator/search.py --schema > configs/schema.json"
    assert set(shipped["properties"]) == set(SearchConfig.model_fields)
    assert shipped["$defs"]["DataConfig"]["additionalProperties"] is False
    schedules = shipped["$defs"]["SearchSettings"]["properties"]["schedule_params"]["properties"]
    assert set(schedules) == set(pruners.list_schedules())
    assert set(schedules["gradual"]["properties"]) == {"start_epoch", "end_epoch", "interval_epochs", "initial"}


def test_round_trip_keeps_searched_values_of_every_kind():
    cfg = make(
        search={
            "algorithm": "random",
            "epochs": {"low": 1, "high": 4, "int": True},
            "space": {"amount": [0.2, 0.5], "lr": 0.01, "criterion": ["slimming", "magnitude"]},
            "schedule_params": {"gradual": {"end_epoch": {"low": 0.5, "high": 0.9}}},  # < 1 epoch
            "criterion_params": {"slimming": {"penalty": {"low": 1e-5, "high": 1e-3, "log": True}}},
        },
        resources={"cluster": {"nodes": 2, "cpus": 8, "gpus": 1}, "use_gpu": True},
        model={"name": "small_cnn", "kwargs": {"width": 8}},
    )
    assert cfg.search.epochs == Range(1, 4, integer=True)
    assert cfg.search.criterion_params["slimming"]["penalty"] == Range(1e-5, 1e-3, log=True)
    again = SearchConfig.from_dict(json.loads(json.dumps(cfg.to_dict())))
    assert again == cfg


def test_paths_are_made_absolute_because_ray_workers_run_elsewhere(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg = make(output="out", data={"dataset": "mnist", "root": "data"}, dense={"checkpoint": "dense.pt"})
    assert cfg.output == str(tmp_path / "out")
    assert cfg.data.root == str(tmp_path / "data")
    assert cfg.dense.checkpoint == str(tmp_path / "dense.pt")
    assert make(name="exp").output_dir == tmp_path / "prunefront-results" / "exp"


def test_optimizer_choices_are_pruners_own():
    from typing import get_args

    from pruners.spec import LR_SCHEDULES, OPTIMIZERS

    fields = C.OptimizerSettings.model_fields
    assert set(get_args(fields["name"].annotation)) == set(OPTIMIZERS)
    assert set(get_args(fields["lr_schedule"].annotation)) == set(LR_SCHEDULES)
    # Schedule parameters come from each schedule's registry entry: nothing to mirror.
    assert set(SearchConfig().search.schedule_params) == set(pruners.list_schedules())


def test_optimizer_settings_build_the_pruners_optimizer():
    cfg = make(search={"optimizer": {"name": "sgd", "nesterov": True, "lr_schedule": "cosine"}})
    opt = cfg.search.optimizer.build(0.02)
    assert opt == pruners.OptimizerConfig(
        name="sgd", lr=0.02, momentum=0.9, weight_decay=5e-4, nesterov=True, lr_schedule="cosine"
    )
    assert make(dense={"optimizer": "adam"}).dense.optimizer.name == "adam"


def test_cosine_restarts_default_to_the_rungs_the_scheduler_judges_at():
    cfg = make(search={"epochs": 8, "optimizer": {"lr_schedule": "cosine_restarts"}},
               scheduler={"name": "moasha", "grace_period": 1, "reduction_factor": 2})
    assert restart_epochs(cfg) == [1, 2, 4]
    # Each trial's cycles end at those epochs, as fractions of its own epochs.
    assert trial_optimizer(cfg, 0.03, 8).cycle_ends == (1 / 8, 2 / 8, 4 / 8)
    assert trial_optimizer(cfg, 0.03, 3) == pruners.OptimizerConfig(
        lr=0.03, momentum=0.9, weight_decay=5e-4, lr_schedule="cosine_restarts", cycle_ends=(1 / 3, 2 / 3))
    assert restart_epochs(make(search={"epochs": 9, "optimizer": {"lr_schedule": "cosine_restarts"}},
                scheduler={"name": "asha", "grace_period": 2, "reduction_factor": 1.5})) == [2, 3, 5, 7]
    explicit = make(search={"epochs": 8, "optimizer": {"lr_schedule": "cosine_restarts", "restart_epochs": [3]}},
                    scheduler={"name": "fifo"})
    assert restart_epochs(explicit) == [3]
    assert trial_optimizer(explicit, 0.1, 6).cycle_ends == (0.5,)
    assert trial_optimizer(make(), 0.1, 6).cycle_ends == ()  # constant: no cycles
    dense = make(dense={"epochs": 4, "optimizer": {"lr_schedule": "cosine_restarts", "restart_epochs": [1, 2]}})
    assert dense.dense.optimizer.build(dense.dense.lr, dense.dense.epochs).cycle_ends == (0.25, 0.5)


@pytest.mark.parametrize("sections, fragment", [
    ({"search": {"optimizer": {"lr_schedule": "cosine_restarts"}}, "scheduler": {"name": "fifo"}},
     "search.optimizer.restart_epochs: required with lr_schedule cosine_restarts and scheduler fifo"),
    ({"dense": {"optimizer": {"lr_schedule": "cosine_restarts"}}}, "dense.optimizer.restart_epochs: required"),
    ({"search": {"optimizer": {"lr_schedule": "cosine", "restart_epochs": [1]}}},
     "search.optimizer: restart_epochs: set for lr_schedule cosine; it needs cosine_restarts"),
    ({"search": {"optimizer": {"lr_schedule": "cosine_restarts", "restart_epochs": [2, 1]}}},
     r"restart_epochs: \[2, 1\] is invalid; give increasing epochs >= 1"),
])
def test_cosine_restarts_refused_without_restart_epochs(sections, fragment):
    with pytest.raises(ConfigError, match=fragment):
        make(**sections)


# --------------------------------------------------------------------------------------
# Overrides
# --------------------------------------------------------------------------------------


def test_set_values_are_yaml_and_create_sections():
    raw = apply_overrides(
        {"search": {"num_samples": 6}},
        [
            "search.num_samples=3",
            "search.space.criterion=[magnitude, taylor]",
            "search.space.amount={low: 0.1, high: 0.4}",
            "data.download=true",
            "storage=null",
            "name=x=y",
        ],
    )
    assert raw["search"]["num_samples"] == 3
    assert raw["search"]["space"]["criterion"] == ["magnitude", "taylor"]
    assert raw["search"]["space"]["amount"] == {"low": 0.1, "high": 0.4}
    assert raw["data"]["download"] is True
    assert raw["storage"] is None
    assert raw["name"] == "x=y"


def test_overrides_do_not_mutate_the_input():
    raw = {"search": {"num_samples": 6}}
    apply_overrides(raw, ["search.num_samples=1"])
    assert raw == {"search": {"num_samples": 6}}


@pytest.mark.parametrize(
    "item, fragment",
    [
        ("search.num_samples", "not KEY=VALUE"),
        ("=3", "not KEY=VALUE"),
        ("a..b=1", "not KEY=VALUE"),
        ("seed.x=1", "seed is an integer, not a section"),
        ("name=[unclosed", "not valid YAML"),
    ],
)
def test_bad_overrides(item, fragment):
    with pytest.raises(ConfigError, match=fragment):
        apply_overrides({"seed": 0}, [item])


# --------------------------------------------------------------------------------------
# Searched values
# --------------------------------------------------------------------------------------


def test_parse_param_kinds():
    assert parse_param([1, 2]) == Choice((1, 2))
    assert parse_param({"low": 1, "high": 2}) == Range(1.0, 2.0)
    assert parse_param({"low": 1, "high": 8, "int": True, "log": True}) == Range(1, 8, log=True, integer=True)
    assert parse_param(0.5) == Fixed(0.5)


@pytest.mark.parametrize(
    "raw, fragment",
    [
        ([], "the choice list is empty"),
        ([1, 1], "repeats a value"),
        ([[1]], "choice value \\[1\\] is not a plain value"),
        ({"low": 2, "high": 1}, "low 2 must be < high 1"),
        ({"low": 0, "high": 1, "log": True}, "a log range starts at 0; it needs low > 0"),
        ({"low": 0.5, "high": 2, "int": True}, "give integer low and high"),
        ({"low": 1}, r"a range is \{low, high, log\?, int\?\}"),
        ({"low": "a", "high": 2}, "low: got a string 'a'; expected a number"),
        (None, "missing value"),
    ],
)
def test_parse_param_errors(raw, fragment):
    with pytest.raises(ValueError, match=fragment):
        parse_param(raw)
    # Inside a config the message names the key.
    if raw is not None:
        with pytest.raises(ConfigError, match="^search.space.lr: .*" + fragment):
            make(search={"space": {"lr": raw}})


# --------------------------------------------------------------------------------------
# Validation messages (one line: key, what is wrong, what is allowed)
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "sections, message",
    [
        ({"bogus": 1}, "bogus: unknown key; allowed keys: name, seed, output, storage, data, model"),
        ({"data": {"batchsize": 3}}, "data.batchsize: unknown key; allowed keys: dataset, root,"),
        ({"data": {"dataset": "svhn"}}, "data.dataset: unknown value 'svhn'; valid choices: cifar10, cifar100, digits, fashion_mnist, imagefolder, mnist"),
        ({"data": {"batch_size": "64"}}, "data.batch_size: got a string '64'; expected an integer"),
        ({"data": {"batch_size": 0}}, "data.batch_size: 0 is too small; must be an integer >= 1"),
        ({"data": {"dataset": "imagefolder"}}, "data.root: imagefolder needs a root directory"),
        ({"dense": {"epochs": -1}}, "dense.epochs: -1 is too small; must be an integer >= 0"),
        ({"dense": {"optimizer": "rmsprop"}}, "dense.optimizer.name: unknown value 'rmsprop'; valid choices: sgd, adam, adamw"),
        ({"search": {"epochs": 0}}, "search.epochs: 0 is too small; must be an integer >= 1"),
        ({"search": {"algorithm": "bayes"}}, "search.algorithm: unknown value 'bayes'; valid choices: random, grid, optuna"),
        ({"search": {"space": {"criterion": ["magnitud"]}}}, "search.space.criterion: unknown value 'magnitud'; valid choices: adaptive_attention, attention,"),
        ({"search": {"space": {"scope": ["local"]}}}, "search.space.scope: unknown value 'local'; valid choices: global, layerwise"),
        ({"search": {"space": {"amount": {"low": 0.5, "high": 1.0}}}}, "search.space.amount: 1.0 is invalid for threshold_rule fraction; must be in [0, 1)"),
        ({"search": {"space": {"amount": [-0.1]}}}, "search.space.amount: -0.1 is invalid for threshold_rule fraction"),
        ({"search": {"space": {"lr": [0.0, -0.01]}}}, "search.space.lr: -0.01 is out of range; must be >= 0"),
        ({"search": {"space": {"lr": {"low": 0, "high": 0.05, "log": True}}}}, "search.space.lr: a log range starts at 0; it needs low > 0"),
        ({"search": {"space": {"criterion": {"low": 0, "high": 1}}}}, "search.space.criterion: a range needs numbers"),
        ({"search": {"space": {"granularity": []}}}, "search.space.granularity: the choice list is empty"),
        ({"search": {"schedule_params": {"gradual": {"ramp": 2}}}}, "search.schedule_params.gradual.ramp: unknown parameter; allowed: start_epoch, end_epoch, interval_epochs, initial"),
        ({"search": {"schedule_params": {"gradual": {"end_epoch": 5}}}}, "search.schedule_params.gradual: its ramp ends at end_epoch 5.0, not before fine-tuning ends (search.epochs 3); the target must be reached before the last epoch ends"),
        # Exactly at the end is too late as well: the target must be trained on.
        ({"search": {"schedule_params": {"gradual": {"end_epoch": 3}}}}, "search.schedule_params.gradual: its ramp ends at end_epoch 3.0, not before fine-tuning ends (search.epochs 3)"),
        # No rung may judge a model whose schedule has not reached its target.
        ({"search": {"schedule_params": {"gradual": {"end_epoch": 1.5}}}}, "scheduler.grace_period: the first rung judges trials after epoch 1, but schedule gradual reaches its target only then or later (its ramp ends at end_epoch 1.5)"),
        ({"scheduler": {"name": "asha"}, "search": {"space": {"schedule": ["iterative"]}, "schedule_params": {"iterative": {"rounds": 3, "interval_epochs": 0.5}}}},
         "scheduler.grace_period: the first rung judges trials after epoch 1, but schedule iterative reaches its target only then or later"),
        # Against the shortest searched epochs and the latest searched end.
        ({"search": {"epochs": [1, 3], "schedule_params": {"gradual": {"end_epoch": [0.5, 1.5]}}}}, "search.schedule_params.gradual: its ramp ends at end_epoch 1.5, not before fine-tuning ends (search.epochs 1)"),
        ({"search": {"space": {"schedule": ["iterative"]}, "schedule_params": {"iterative": {"rounds": 7, "interval_epochs": 0.5}}}},
         "search.schedule_params.iterative: its last round ((rounds 7 - 1) x interval_epochs 0.5) prunes at epoch 3.0, not before fine-tuning ends (search.epochs 3)"),
        ({"search": {"space": {"schedule": ["iterative"]}, "epochs": {"low": 1, "high": 3, "int": True}, "schedule_params": {"iterative": {"rounds": [2, 3], "interval_epochs": 0.5}}}},
         "search.schedule_params.iterative: its last round ((rounds 3 - 1) x interval_epochs 0.5) prunes at epoch 1.0, not before fine-tuning ends (search.epochs 1)"),
        ({"search": {"schedule_params": {"gradual": {"start_epoch": 0.5, "end_epoch": 0.5}}}}, "start_epoch 0.5 is not before end_epoch 0.5; start_epoch must be < end_epoch"),
        ({"search": {"schedule_params": {"iterative": {"rounds": 0}}}}, "search.schedule_params.iterative.rounds: 0 is too small"),
        ({"search": {"schedule_params": {"cubic": {}}}}, "search.schedule_params: unknown value 'cubic'; valid choices: dynamic, gradual, iterative, one_shot"),
        ({"search": {"criterion_params": {"slimming": {"lambda": 1}}}}, "search.criterion_params.slimming.lambda: unknown parameter; allowed: penalty, warmup_steps"),
        ({"search": {"criterion_params": {"slimming": {"penalty": [1e-4, -1]}}}}, "search.criterion_params.slimming.penalty: -1 is invalid; criterion 'slimming': penalty must be a number >= 0, got -1"),
        ({"search": {"criterion_params": {"slimming": {"warmup_steps": {"low": 0.5, "high": 3}}}}}, "search.criterion_params.slimming.warmup_steps: 0.5 is invalid; criterion 'slimming': warmup_steps must be an integer >= 0"),
        ({"scheduler": {"name": "hyperband"}}, "scheduler.name: unknown value 'hyperband'; valid choices: asha, moasha, fifo"),
        ({"scheduler": {"metric": "acc"}}, "scheduler.metric: unknown value 'acc'; valid choices: val_accuracy, val_loss,"),
        ({"scheduler": {"objectives": {"top5": "max"}}}, "scheduler.objectives: unknown value 'top5'; valid choices: val_accuracy,"),
        ({"scheduler": {"objectives": {"val_accuracy": "up"}}}, "scheduler.objectives.val_accuracy: unknown value 'up'; valid choices: max, min"),
        ({"scheduler": {"name": "moasha", "objectives": {"val_accuracy": "max"}}}, "moasha needs at least two objectives"),
        # The test split decides nothing; the old names say where they went.
        ({"scheduler": {"metric": "test_accuracy"}}, "scheduler.metric: test_accuracy is measured on the test split, which no decision may use; use val_accuracy"),
        ({"scheduler": {"objectives": {"accuracy": "max", "flops": "min"}}}, "scheduler.objectives: unknown value 'accuracy' (renamed: decisions use the validation split); use val_accuracy"),
        ({"data": {"val_size": 0}}, "data.val_size: 0 is out of range; give a fraction in (0, 1) or a count >= 1"),
        ({"report": {"fronts": ["speed"]}}, "report.fronts.0: unknown value 'speed'; valid choices: flops, flops_sparse"),
        ({"scheduler": {"grace_period": 4}}, "scheduler.grace_period: 4 exceeds search.epochs (3)"),
        ({"scheduler": {"reduction_factor": 1}}, "scheduler.reduction_factor: 1 is out of range; must be > 1"),
        ({"resources": {"workers": 0}}, "resources.workers: 0 is too small"),
        ({"resources": {"gpus_per_worker": 1}}, "resources.gpus_per_worker: 1 GPUs without use_gpu"),
        ({"resources": {"driver_cpus": 0}}, "resources.driver_cpus: 0 is out of range; must be >= 0.01"),
        ({"storage": "results/tune"}, "storage: 'results/tune' is relative; give an absolute path or a URI"),
        ({"name": "a/b"}, "name: 'a/b' is not usable as a directory name"),
        ({"model": {"name": "mod:"}}, "model.name: 'mod:' is not package.module:factory"),
        ({"model": {"kwargs": {"num_classes": 3}}}, "model.kwargs.num_classes: set by the dataset"),
        ({"data": []}, "data: got a list []; expected a mapping of keys"),
    ],
)
def test_validation_messages(sections, message):
    with pytest.raises(ConfigError) as e:
        SearchConfig.from_dict(sections)
    text = str(e.value)
    assert message in text
    assert "\n" not in text
    assert "; " in text  # what is wrong; what is allowed


def test_threshold_rules_bound_amount_by_their_own_units():
    # mean_std's k and absolute's score threshold are not fractions.
    assert make(search={"space": {"threshold_rule": ["mean_std"], "amount": {"low": 0.5, "high": 2.5}}})
    with pytest.raises(ConfigError, match="invalid for threshold_rule sensitivity"):
        make(search={"space": {"threshold_rule": ["mean_std", "sensitivity"], "amount": [2.0]}})


def test_storage_accepts_absolute_paths_and_uris():
    assert make(storage="s3://bucket/prunefront").storage == "s3://bucket/prunefront"
    assert make(storage="/tmp/x/../y").storage == "/tmp/y"
    assert make(storage="file:///tmp/tune").storage == "file:///tmp/tune"
    with pytest.raises(ConfigError, match="absolute file:// URI"):
        make(storage="file://tmp/tune")


def test_optuna_is_an_optional_extra():
    import importlib.util

    if importlib.util.find_spec("optuna") is None:
        with pytest.raises(ConfigError, match=r"optuna is not installed; pip install 'prunefront\[optuna\]'"):
            make(search={"algorithm": "optuna"})
    else:
        assert make(search={"algorithm": "optuna"}).search.algorithm == "optuna"


def test_grid_search_refuses_ranges_and_names_the_key():
    with pytest.raises(ConfigError, match="search.space.amount: grid search needs a list of values"):
        make(search={"algorithm": "grid", "space": {"lr": [0.01]}})
    with pytest.raises(ConfigError, match="search.schedule_params.gradual.end_epoch: grid search needs a list"):
        make(
            search={
                "algorithm": "grid",
                "space": {"amount": [0.5], "lr": [0.01]},
                "schedule_params": {"gradual": {"end_epoch": {"low": 0.5, "high": 0.9}}},  # < 1 epoch
            }
        )


# --------------------------------------------------------------------------------------
# Valid combinations and the flat space
# --------------------------------------------------------------------------------------


def test_methods_pair_criteria_only_with_granularities_they_support():
    cfg = make(
        search={
            "space": {
                "criterion": ["magnitude", "slimming"],
                "granularity": ["unstructured", "structured"],
                "schedule": ["one_shot", "dynamic"],
            }
        }
    )
    methods = set(valid_methods(cfg.search))
    assert methods == {
        ("magnitude", "unstructured", "one_shot"),
        ("magnitude", "unstructured", "dynamic"),
        ("magnitude", "structured", "one_shot"),
        ("slimming", "structured", "one_shot"),
    }
    # Every one of them is something pruners accepts.
    for crit, gran, sched in methods:
        assert gran in pruners.criterion_granularities(crit)
        assert gran in pruners.make_schedule(sched, target=0.5).granularities


def test_a_value_that_pairs_with_nothing_is_an_error_not_silently_dropped():
    with pytest.raises(ConfigError) as e:
        make(search={"space": {"criterion": ["magnitude", "slimming"], "granularity": ["unstructured"]}})
    assert str(e.value) == (
        "search.space.criterion: slimming supports structured only but granularity is ['unstructured']; "
        "add structured to granularity or remove slimming"
    )
    with pytest.raises(ConfigError, match="search.space.schedule: dynamic supports unstructured only"):
        make(search={"space": {"granularity": ["structured"], "schedule": ["one_shot", "dynamic"]}})
    with pytest.raises(ConfigError, match=r"search.space.granularity: unstructured is supported by no criterion in \['slimming'\]"):
        make(search={"space": {"criterion": ["slimming"]}})


def test_flat_space_keys_and_decoding_cover_every_method():
    cfg = make(
        search={
            "space": {"criterion": ["taylor", "slimming"], "schedule": ["iterative", "gradual"]},
            "criterion_params": {"slimming": {"penalty": [1e-4, 1e-3]}},
        }
    )
    space = flat_space(cfg.search)
    assert set(space) == {
        "method", "scope", "threshold_rule", "amount", "lr", "epochs", "distill", "min_keep", "quantize",
        "schedule.iterative.rounds", "schedule.iterative.interval_epochs",
        "schedule.gradual.start_epoch", "schedule.gradual.end_epoch",
        "schedule.gradual.interval_epochs", "schedule.gradual.initial",
        "criterion.slimming.penalty",
    }
    assert space["threshold_rule"] == Fixed("fraction")  # a one-value list is not searched
    assert isinstance(space["method"], Choice) and len(space["method"].values) == 6
    for method in space["method"].values:
        sample = {k: (p.values[-1] if isinstance(p, Choice) else p.low if isinstance(p, Range) else p.value)
                  for k, p in space.items()}
        sample["method"] = method
        t = decode_trial(sample)
        crit, gran, sched = parse_method(method)
        assert (t.criterion, t.granularity, t.schedule) == (crit, gran, sched)
        assert set(t.schedule_params) == set(pruners.schedules.SCHEDULES.get(sched).epoch_params)
        assert t.criterion_params == ({"penalty": 1e-3} if crit == "slimming" else {})
        row = t.record()
        for key in ("criterion", "granularity", "scope", "threshold_rule", "amount", "schedule", "lr", "epochs"):
            assert key in row
        assert not set(row) & set(METRIC_KEYS)  # config keys never collide with metrics


def test_grid_size_counts_every_searched_choice():
    cfg = make(
        search={
            "algorithm": "grid",
            "space": {
                "criterion": ["magnitude", "random"],
                "granularity": ["unstructured"],
                "scope": ["global"],
                "schedule": ["one_shot", "iterative"],
                "amount": [0.3, 0.6, 0.9],
                "lr": [0.01, 0.1],
            },
            "schedule_params": {"iterative": {"rounds": [2, 4]}},
        }
    )
    # 4 methods x 3 amounts x 2 lrs x 2 rounds x 2 quantize (none, int8: the default).
    assert grid_size(cfg.search) == 96


@pytest.mark.parametrize("name", pruners.list_schedules())
def test_epoch_parameters_build_the_pruners_schedule(name):
    cfg = make()
    params = {p: v.value for p, v in cfg.search.schedule_params[name].items()}
    sched = build_schedule(name, params, target=0.6, steps_per_epoch=10, epochs=3)
    assert sched.sparsity_at(29) == pytest.approx(0.6)
    expected = {
        "one_shot": pruners.make_schedule("one_shot", target=0.6),
        "iterative": pruners.make_schedule("iterative", target=0.6, rounds=3, interval=3),
        "gradual": pruners.make_schedule("gradual", target=0.6, start_step=0, end_step=8, interval=2, initial=0.0),
        "dynamic": pruners.make_schedule("dynamic", target=0.6, interval=2, regrow_fraction=0.1, end_step=30),
    }[name]
    assert sched == expected


@pytest.mark.parametrize(
    ("name", "params", "steps_per_epoch"),
    [
        # Just inside one epoch; rounding to the nearest step would put the last pruning
        # step at the very end (step 4 of 4, step 10 of 10), which pruners.finetune refuses.
        ("iterative", {"rounds": 3, "interval_epochs": 0.45}, 4),
        ("gradual", {"start_epoch": 0.0, "end_epoch": 0.95, "interval_epochs": 0.2, "initial": 0.0}, 10),
    ],
)
def test_a_schedule_the_config_accepts_reaches_its_target_before_training_ends(name, params, steps_per_epoch):
    cfg = make(search={"epochs": 1, "space": {"schedule": [name]}, "schedule_params": {name: params}},
               scheduler={"name": "fifo"})
    fixed = {p: v.value for p, v in cfg.search.schedule_params[name].items()}
    sched = build_schedule(name, fixed, target=0.6, steps_per_epoch=steps_per_epoch, epochs=1)
    # The target is scheduled by the last step, so the last pruning step is not after it.
    assert sched.sparsity_at(steps_per_epoch - 1) == pytest.approx(0.6)


def test_an_unused_schedule_need_not_fit():
    # 3 rounds every 0.5 epochs prune last at epoch 1.0: that does not fit in 1 epoch ...
    params = {"iterative": {"rounds": 3, "interval_epochs": 0.5}}
    with pytest.raises(ConfigError, match=r"schedule_params\.iterative: its last round"):
        make(search={"epochs": 1, "space": {"schedule": ["iterative"]}, "schedule_params": params})
    # ... but a space that never samples iterative is not held to it.
    cfg = make(search={"epochs": 1, "space": {"schedule": ["one_shot"]}, "schedule_params": params})
    assert cfg.search.max_epochs == 1


def test_learning_rate_zero_means_prune_without_fine_tuning():
    cfg = make(search={"space": {"lr": [0, 0.01]}})
    assert flat_space(cfg.search)["lr"] == C.Choice((0, 0.01))
    fixed = make(search={"space": {"lr": 0}})
    assert flat_space(fixed.search)["lr"] == C.Fixed(0)
    # A uniform (not log) range may start at 0.
    assert make(search={"space": {"lr": {"low": 0, "high": 0.05}}}).search.space.lr == C.Range(0.0, 0.05)
    assert cfg.search.optimizer.build(0).lr == 0.0


def test_epoch_conversion_keeps_intervals_at_least_one_step():
    sched = build_schedule(
        "gradual",
        {"start_epoch": 0.0, "end_epoch": 0.01, "interval_epochs": 0.001, "initial": 0.0},
        target=0.5, steps_per_epoch=3, epochs=1,
    )
    assert sched.interval == 1 and sched.end_step == 1


def test_every_criterion_and_schedule_pair_has_a_method_for_the_full_space():
    cfg = make(
        search={
            "space": {
                "criterion": pruners.list_criteria(),
                "granularity": list(pruners.GRANULARITIES),
                "schedule": pruners.list_schedules(),
            }
        }
    )
    expected = {
        (c, g, s)
        for c, g, s in itertools.product(pruners.list_criteria(), pruners.GRANULARITIES, pruners.list_schedules())
        if g in pruners.criterion_granularities(c) and not (s == "dynamic" and g == "structured")
    }
    assert set(valid_methods(cfg.search)) == expected
