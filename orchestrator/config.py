"""The search configuration: pydantic models of the YAML file, validated before Ray starts.

``SearchConfig.from_dict(raw)`` validates a YAML-layout mapping into a frozen
:class:`SearchConfig` (``orchestrator.loading.load_config`` reads the file and applies
``--set``); every problem is a :class:`ConfigError` of one line,
``<key>: <what is wrong>; <what is allowed>``. Fields carry their constraints and ``Literal``
choices (``extra="forbid"``, strict types, no NaN); rules between fields are model
validators. ``configs/default.yaml`` documents every key; ``configs/schema.json``
(``--schema``) lets editors complete and check configs.

What lives elsewhere: searched values (``orchestrator.params``), the search-space compiler
(``orchestrator.space``), epoch-to-step conversion (each schedule's registry entry in
``pruners.schedules``), the result contract (``reports.contract``). Names (criteria,
schedules, ...) are checked against the ``pruners`` registries, imported lazily since they
bring torch.
"""

from __future__ import annotations

import importlib.util
import os
import re
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, ValidationError, field_validator, model_validator

from orchestrator.errors import ConfigError, fmt, one_line, typename
from orchestrator.limits import LIMITS
from orchestrator.optim import OptimizerSettings, check_restarts
from orchestrator.params import Choice, Fixed, Param, Range, Searched, SearchedNames, check_names, parse_param
from orchestrator.params import Section as _Model, values_of
from reports.contract import COST_METRICS, DECISION_METRICS, TEST_KEYS
from reports.layout import RESULTS_DIR

__all__ = [
    "Algorithm", "COST_METRICS", "SchedulerName", "Choice", "ClusterSpec", "ConfigError", "DataConfig",
    "DenseConfig", "Fixed", "MetricsConfig", "ModelConfig", "OptimizerSettings", "Range", "ReportConfig",
    "ResourcesConfig", "SchedulerConfig", "SearchConfig", "SearchSettings", "SpaceConfig", "default_output",
    "parse_param",
]

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
_URI_RE = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")

Mode = Literal["max", "min"]
#: Search algorithms and trial schedulers (the choices are the Literal's; no tuple beside it).
Algorithm = Literal["random", "grid", "optuna"]
SchedulerName = Literal["asha", "moasha", "fifo"]
Cost = Literal[COST_METRICS]  # type: ignore[valid-type]


def _absolute(path: str | None) -> str | None:
    """Resolve a local path against the current directory (Ray workers run elsewhere)."""
    return None if path is None else str(Path(path).expanduser().absolute())


def _pruners() -> Any:
    import pruners

    return pruners


def _datasets() -> Any:
    from orchestrator import datasets  # brings torch, like the pruners registries

    return datasets.DATASETS


def _dataset_choices(schema: dict[str, Any]) -> None:
    schema["enum"] = _datasets().names()  # read when the schema is made: every registered dataset


# -------------------------------------------------------------------------------- sections
class DataConfig(_Model):
    """Which dataset, where it lives, how it is split and batched (``data:``)."""

    #: A name registered in ``orchestrator.datasets``, checked against the registry when validated
    #: (not a Literal frozen at import, which would refuse a dataset registered later).
    dataset: str = Field("digits", json_schema_extra=_dataset_choices)
    root: str | None = None
    download: bool = False
    batch_size: int = Field(64, ge=1, le=LIMITS["data.batch_size"])
    eval_batch_size: int = Field(256, ge=1, le=LIMITS["data.eval_batch_size"])
    train_subset: int | None = Field(None, ge=1)
    eval_subset: int | None = Field(None, ge=1)
    #: Validation split carved from the training data: a fraction in (0, 1) or a count.
    val_size: float | int = 0.2
    calibration_batches: int = Field(4, ge=1, le=LIMITS["data.calibration_batches"])
    num_workers: int = Field(0, ge=0, le=LIMITS["data.num_workers"])
    image_size: int | None = Field(None, ge=8, le=LIMITS["data.image_size"])
    augment: bool = True

    @field_validator("dataset")
    @classmethod
    def _dataset(cls, v: str) -> str:
        if v not in _datasets():
            raise ValueError(f"unknown value {fmt(v)}; valid choices: {', '.join(_datasets().names())}")
        return v

    @field_validator("root")
    @classmethod
    def _root(cls, v: str | None) -> str | None:
        if v is not None and not v:
            raise ValueError("got an empty string; expected a directory")
        return _absolute(v)

    @field_validator("val_size")
    @classmethod
    def _val_size(cls, v: float | int) -> float | int:
        if isinstance(v, int) and v >= 1 or isinstance(v, float) and 0 < v < 1:
            return v
        raise ValueError(f"{fmt(v)} is out of range; give a fraction in (0, 1) or a count >= 1 of training examples")

    @model_validator(mode="after")
    def _dataset_rules(self) -> DataConfig:
        from orchestrator.datasets import source

        source(self).check()  # e.g. imagefolder needs data.root
        return self


class ModelConfig(_Model):
    """The model to prune (``model:``): a registered name, a torchvision classifier,
    ``timm:<name>``, or ``package.module:factory``."""

    name: str = Field("small_cnn", min_length=1)
    kwargs: dict[str, Any] = Field(default_factory=dict)

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        from orchestrator.models import TIMM_PREFIX  # the model names' owner

        if ":" in v and not v.startswith(TIMM_PREFIX):
            module, _, attr = v.partition(":")
            if not module or not attr or not all(p.isidentifier() for p in module.split(".") + attr.split(".")):
                raise ValueError(f"{v!r} is not package.module:factory; write e.g. mypkg.models:build")
        return v

    @field_validator("kwargs")
    @classmethod
    def _kwargs(cls, v: dict[str, Any]) -> dict[str, Any]:
        for k in ("num_classes", "in_channels"):
            if k in v:
                raise ConfigError(f"model.kwargs.{k}: set by the dataset; remove it")
        return v


class DenseConfig(_Model):
    """The dense baseline every trial starts from (``dense:``)."""

    checkpoint: str | None = None
    epochs: int = Field(5, ge=0, le=LIMITS["dense.epochs"])
    lr: float = Field(0.05, gt=0.0)
    optimizer: OptimizerSettings = Field(default_factory=OptimizerSettings)

    @field_validator("checkpoint")
    @classmethod
    def _checkpoint(cls, v: str | None) -> str | None:
        return _absolute(v)


class SpaceConfig(_Model):
    """What a trial's pruning method is drawn from (``search.space:``)."""

    criterion: SearchedNames = Choice(("magnitude", "taylor", "random"))
    granularity: SearchedNames = Choice(("unstructured", "structured"))
    scope: SearchedNames = Choice(("global", "layerwise"))
    threshold_rule: SearchedNames = Choice(("fraction",))
    amount: Searched = Range(0.3, 0.8)
    schedule: SearchedNames = Choice(("one_shot", "gradual"))
    lr: Searched = Range(0.001, 0.05, log=True)
    #: Weight of knowledge distillation from the dense model while fine-tuning (0: off).
    distill: Searched = Fixed(0.0)
    #: Fraction of its units every layer keeps (a global ranking cannot empty a layer).
    min_keep: Searched = Fixed(0.1)
    #: What ships after fine-tuning: none (float32), int8 (post-training) or int8_qat (QAT over
    #: the last search.qat_epochs); pruners.quantize (ONNX files, timed on ONNX Runtime).
    quantize: SearchedNames = Choice(("none", "int8"))

    @model_validator(mode="after")
    def _names_and_values(self) -> SpaceConfig:
        key = "search.space"
        if isinstance(self.amount, Range) and self.amount.integer:
            raise ConfigError(f"{key}.amount: must be a real number; drop int: true")
        for v in values_of(self.amount):
            if isinstance(v, bool) or not isinstance(v, (int, float)):
                raise ConfigError(f"{key}.amount: got {typename(v)} {fmt(v)}; expected a number")
        for v in values_of(self.lr):
            if isinstance(v, bool) or not isinstance(v, (int, float)):
                raise ConfigError(f"{key}.lr: got {typename(v)} {fmt(v)}; expected a number")
            if v < 0:  # lr 0 = prune without fine-tuning (a log range cannot start there)
                raise ConfigError(f"{key}.lr: {fmt(v)} is out of range; must be >= 0")
        for v in values_of(self.distill):
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 <= v < 1:
                raise ConfigError(f"{key}.distill: {fmt(v)} is out of range; must be a fraction in [0, 1)")
        from pruners.selection import min_keep_problem

        for v in values_of(self.min_keep):
            if (problem := min_keep_problem(v)) is not None:
                raise ConfigError(f"{key}.min_keep: {fmt(v)} is out of range; {problem}")
        p = _pruners()
        check_names(f"{key}.criterion", self.criterion, list(p.list_criteria()))
        check_names(f"{key}.granularity", self.granularity, list(p.GRANULARITIES))
        check_names(f"{key}.scope", self.scope, list(p.SCOPES))
        check_names(f"{key}.threshold_rule", self.threshold_rule, list(p.list_threshold_rules()))
        check_names(f"{key}.schedule", self.schedule, list(p.list_schedules()))
        from pruners.quantize import QUANTIZE_MODES

        check_names(f"{key}.quantize", self.quantize, list(QUANTIZE_MODES))
        from pruners.thresholds import get_threshold_rule

        for v in values_of(self.amount):
            for rule in values_of(self.threshold_rule):
                problem = get_threshold_rule(rule).check(float(v))
                if problem is not None:
                    raise ConfigError(f"{key}.amount: {fmt(v)} is invalid for threshold_rule {rule}; {problem}")
        return self


ParamTable = dict[str, dict[str, Searched]]


class SearchSettings(_Model):
    """The search (``search:``): algorithm, space, schedule and criterion parameters.

    ``schedule_params`` holds every schedule's parameters, in epochs of fine-tuning, with
    the defaults its registry entry declares filled in; ``criterion_params`` only what the
    config sets (criteria have their own defaults in ``pruners``).
    """

    num_samples: int = Field(6, ge=1, le=LIMITS["search.num_samples"])
    algorithm: Algorithm = "random"
    space: SpaceConfig = Field(default_factory=SpaceConfig)
    schedule_params: ParamTable = Field(default_factory=dict, validate_default=True)
    criterion_params: ParamTable = Field(default_factory=dict)
    epochs: Searched = Fixed(3)
    optimizer: OptimizerSettings = Field(default_factory=OptimizerSettings)
    #: Temperature of the distillation term (``space.distill`` > 0).
    distill_temperature: float = Field(4.0, gt=0.0)
    #: Training examples int8 calibrates on (never validation or test ones); QAT epochs of int8_qat.
    quantize_calibration: int = Field(512, ge=1, le=LIMITS["search.quantize_calibration"])
    qat_epochs: int = Field(1, ge=1, le=LIMITS["search.epochs"])

    @field_validator("epochs")
    @classmethod
    def _epochs(cls, p: Param) -> Param:
        if isinstance(p, Range) and not p.integer:
            raise ValueError("a range of real numbers; epochs need int: true")
        for v in values_of(p):
            if isinstance(v, bool) or not isinstance(v, int):
                raise ValueError(f"got {typename(v)} {fmt(v)}; expected an integer")
            if v < 1:
                raise ValueError(f"{v} is too small; must be an integer >= 1")
            if v > LIMITS["search.epochs"]:
                raise ValueError(f"{v} is too large; must be <= {LIMITS['search.epochs']} (bounds: orchestrator/limits.py)")
        return p

    @field_validator("schedule_params", mode="before")
    @classmethod
    def _schedule_params(cls, table: Any) -> ParamTable:
        from orchestrator.steps import complete_schedule_params

        if table is None:
            table = {}
        if not isinstance(table, dict):
            raise ConfigError(f"search.schedule_params: got {typename(table)}; expected a mapping of "
                              "schedule -> {param: value}")
        return complete_schedule_params(table)

    @field_validator("criterion_params")
    @classmethod
    def _criterion_params(cls, table: ParamTable) -> ParamTable:
        key = "search.criterion_params"
        p = _pruners()
        from pruners.criteria import CRITERIA

        names = list(p.list_criteria())
        for crit, params in table.items():
            if crit not in names:
                raise ConfigError(f"{key}: unknown value {fmt(crit)}; valid choices: {', '.join(names)}")
            allowed = sorted(CRITERIA.get(crit).param_defaults)
            for name, param in params.items():
                if name not in allowed:
                    raise ConfigError(f"{key}.{crit}.{name}: unknown parameter; allowed: {', '.join(allowed) or 'none'}")
                for v in values_of(param):  # each value the search may draw (a range: both ends)
                    try:
                        p.make_criterion(crit, **{name: v})
                    except (TypeError, ValueError) as e:
                        msg = str(e).strip().splitlines()[0] if str(e).strip() else e.__class__.__name__
                        raise ConfigError(f"{key}.{crit}.{name}: {fmt(v)} is invalid; {msg}") from None
        return table

    @property
    def max_epochs(self) -> int:
        """The most fine-tune epochs any trial runs (ASHA's ``max_t``)."""
        return int(max(values_of(self.epochs)))

    @property
    def min_epochs(self) -> int:
        return int(min(values_of(self.epochs)))

    @model_validator(mode="after")
    def _space_fits(self) -> SearchSettings:
        from orchestrator.space import check_grid, valid_methods
        from orchestrator.steps import check_qat_fits, check_schedules_fit

        methods = valid_methods(self)  # raises when the space has no valid combination
        # Only the schedules the space can sample must fit (the others keep their defaults).
        check_schedules_fit(self.schedule_params, sorted({m[2] for m in methods}), self.min_epochs)
        check_qat_fits(self, sorted({m[2] for m in methods}))
        if self.algorithm == "grid":
            check_grid(self, methods)
        if self.algorithm == "optuna" and importlib.util.find_spec("optuna") is None:
            raise ConfigError("search.algorithm: optuna is not installed; pip install 'prunefront[optuna]' "
                              "(or optuna), or use random | grid")
        return self


def _metric_hint(key: str, metric: str) -> None:
    if metric in TEST_KEYS:
        raise ConfigError(f"{key}: {metric} is measured on the test split, which no decision may use; "
                          f"use val_{metric.removeprefix('test_')} (the validation split)")
    if metric in ("accuracy", "loss"):
        raise ConfigError(f"{key}: unknown value {metric!r} (renamed: decisions use the validation split); "
                          f"use val_{metric}")


class SchedulerConfig(_Model):
    """Trial scheduler (``scheduler:``): ``moasha`` stops trials on the Pareto rank of
    ``objectives``, ``asha`` on one ``metric``, ``fifo`` runs every trial to the end."""

    name: SchedulerName = "moasha"
    metric: str = "val_accuracy"
    mode: Mode = "max"
    objectives: dict[str, Mode] = Field(default_factory=lambda: {"val_accuracy": "max", "size_bytes": "min"})
    grace_period: int = Field(1, ge=1, le=LIMITS["scheduler.grace_period"])
    reduction_factor: float = Field(2.0, gt=1.0)

    @field_validator("metric")
    @classmethod
    def _metric(cls, v: str) -> str:
        _metric_hint("scheduler.metric", v)
        if v not in DECISION_METRICS:
            raise ConfigError(f"scheduler.metric: unknown value {fmt(v)}; valid choices: {', '.join(DECISION_METRICS)}")
        return v

    @model_validator(mode="before")
    @classmethod
    def _objective_names(cls, raw: Any) -> Any:
        objectives = raw.get("objectives") if isinstance(raw, dict) else None
        if isinstance(objectives, dict):
            for metric in objectives:
                _metric_hint("scheduler.objectives", str(metric))
                if metric not in DECISION_METRICS:
                    raise ConfigError(f"scheduler.objectives: unknown value {fmt(metric)}; valid choices: "
                                      f"{', '.join(DECISION_METRICS)}")
        elif objectives is not None or (isinstance(raw, dict) and "objectives" in raw):
            raise ConfigError("scheduler.objectives: expected a mapping metric -> max|min, "
                              "e.g. {val_accuracy: max, size_bytes: min}")
        return raw

    @model_validator(mode="after")
    def _enough_objectives(self) -> SchedulerConfig:
        if not self.objectives:
            raise ConfigError("scheduler.objectives: expected a mapping metric -> max|min, "
                              "e.g. {val_accuracy: max, size_bytes: min}")
        if self.name == "moasha" and len(self.objectives) < 2:
            raise ConfigError("scheduler.objectives: moasha needs at least two objectives; use asha for one metric")
        return self


class ClusterSpec(_Model):
    """The cluster ``--dry-run`` plans for when it cannot ask Ray (per node)."""

    nodes: int = Field(1, ge=1, le=LIMITS["resources.cluster.nodes"])
    cpus: float = Field(1.0, gt=0.0)
    gpus: float = Field(0.0, ge=0.0)


class ResourcesConfig(_Model):
    """What one trial needs (``resources:``): a driver (``driver_cpus``) and a Train job of
    ``workers`` DDP workers. ``gpus_per_worker`` defaults to 1 with ``use_gpu``."""

    workers: int = Field(1, ge=1, le=LIMITS["resources.workers"])
    use_gpu: bool = False
    cpus_per_worker: float = Field(1.0, gt=0.0)
    gpus_per_worker: float | None = Field(None, ge=0.0)
    driver_cpus: float = Field(0.1, ge=0.01)
    max_concurrent_trials: int | None = Field(None, ge=1, le=LIMITS["resources.max_concurrent_trials"])
    #: Retries of a trial after a failure outside its code (a lost worker or node, a process
    #: killed for memory), each from the trial's last finished epoch.
    max_failures: int = Field(2, ge=0, le=LIMITS["resources.max_failures"])
    #: Train under bfloat16 autocast / in channels-last memory format (GPU speed-ups;
    #: validation and measurements stay float32, on the saved model).
    bf16: bool = False
    channels_last: bool = False
    cluster: ClusterSpec | None = None

    @model_validator(mode="after")
    def _gpus(self) -> ResourcesConfig:
        gpus = self.gpus_per_worker if self.gpus_per_worker is not None else (1.0 if self.use_gpu else 0.0)
        if not self.use_gpu and gpus > 0:
            raise ConfigError(f"resources.gpus_per_worker: {gpus:g} GPUs without use_gpu; "
                              "set use_gpu: true or gpus_per_worker: 0")
        if self.use_gpu and gpus <= 0:
            raise ConfigError("resources.gpus_per_worker: 0 with use_gpu: true; use_gpu needs gpus_per_worker > 0")
        object.__setattr__(self, "gpus_per_worker", float(gpus))
        return self


class MetricsConfig(_Model):
    """How latency is measured (``metrics:``): the saved file, loaded back and timed."""

    latency_batch_size: int = Field(1, ge=1, le=LIMITS["metrics.latency_batch_size"])
    latency_repeats: int = Field(50, ge=1, le=LIMITS["metrics.latency_repeats"])
    latency_threads: int = Field(1, ge=1, le=LIMITS["metrics.latency_threads"])


class ReportConfig(_Model):
    """Which fronts the report builds (``report:``): validation accuracy against each cost
    listed; null = flops, flops_sparse, size_bytes, latency_ms + the scheduler's cost objectives."""

    fronts: list[Cost] | None = Field(None, min_length=1)


def default_output(name: str) -> str:
    """Where an experiment goes without ``output``/``--output``: ./prunefront-results/<name>."""
    return str(Path(RESULTS_DIR, name).absolute())


class SearchConfig(_Model):
    """A validated search configuration (the whole YAML file)."""

    name: str = "digits-default"
    seed: int = Field(0, ge=0, le=LIMITS["seed"])
    output: str | None = None
    storage: str | None = None
    data: DataConfig = Field(default_factory=DataConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    dense: DenseConfig = Field(default_factory=DenseConfig)
    scheduler: SchedulerConfig = Field(default_factory=SchedulerConfig)
    resources: ResourcesConfig = Field(default_factory=ResourcesConfig)
    metrics: MetricsConfig = Field(default_factory=MetricsConfig)
    report: ReportConfig = Field(default_factory=ReportConfig)
    search: SearchSettings = Field(default_factory=SearchSettings)

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not _NAME_RE.match(v):
            raise ValueError(f"{v!r} is not usable as a directory name; use letters, digits, '.', '_' and '-'")
        return v

    @field_validator("output")
    @classmethod
    def _output(cls, v: str | None) -> str | None:
        if v is not None and not v:
            raise ValueError("got an empty string; expected a directory")
        return _absolute(v)

    @field_validator("storage")
    @classmethod
    def _storage(cls, v: str | None) -> str | None:
        if v is None:
            return None
        if _URI_RE.match(v):
            if v.startswith("file://") and not v[len("file://"):].startswith("/"):
                raise ValueError(f"{v!r} is not an absolute file:// URI; write file:///abs/path")
            return v
        if not os.path.isabs(os.path.expanduser(v)):
            raise ValueError(f"{v!r} is relative; give an absolute path or a URI (s3://..., gs://..., file:///...)")
        return os.path.normpath(os.path.expanduser(v))

    @model_validator(mode="after")
    def _rungs(self) -> SearchConfig:
        from orchestrator.steps import check_rungs_after_targets

        if self.scheduler.name != "fifo":
            if self.scheduler.grace_period > self.search.max_epochs:
                raise ConfigError(
                    f"scheduler.grace_period: {self.scheduler.grace_period} exceeds search.epochs "
                    f"({self.search.max_epochs}); must be <= the fine-tune epochs"
                )
            check_rungs_after_targets(self)
        check_restarts(self)
        return self

    # -- derived -----------------------------------------------------------------------
    @property
    def output_dir(self) -> Path:
        """Local directory of the experiment (``output`` or ./prunefront-results/<name>)."""
        return Path(self.output if self.output is not None else default_output(self.name))

    @property
    def storage_path(self) -> str:
        """Tune's ``storage_path``: ``storage`` when set, else the experiment directory."""
        return self.storage if self.storage is not None else str(self.output_dir)

    # -- (de)serialisation ---------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """Every value, JSON-safe, in the YAML layout (``from_dict`` reads it back)."""
        return self.model_dump(mode="json")

    @classmethod
    def from_dict(cls, raw: Any) -> SearchConfig:
        """Validate a YAML-layout mapping (missing keys take their defaults).

        Raises:
            ConfigError: one line naming the offending key.
        """
        if raw is None:
            raw = {}
        if not isinstance(raw, dict):
            raise ConfigError(f"the top level is {typename(raw)}; it must be a mapping of keys (see configs/default.yaml)")
        try:
            return cls.model_validate(raw)
        except ValidationError as e:
            raise ConfigError(one_line(e, cls)) from None
