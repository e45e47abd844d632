"""Fine-tuning optimizer settings (``dense.optimizer``, ``search.optimizer``) and the
learning-rate restarts of ``cosine_restarts``, which default to the scheduler's rungs."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

from pydantic import Field, model_validator

from orchestrator.errors import ConfigError
from orchestrator.params import Section
from orchestrator.steps import rung_epochs

__all__ = ["OptimizerSettings", "check_restarts", "restart_epochs", "trial_optimizer"]


class OptimizerSettings(Section):
    """``pruners.OptimizerConfig`` without the learning rate (configured or searched apart).
    A bare name (``sgd``) means its defaults."""

    name: Literal["sgd", "adam", "adamw"] = "sgd"
    momentum: float = Field(0.9, ge=0.0, lt=1.0)
    weight_decay: float = Field(5e-4, ge=0.0)
    nesterov: bool = False
    lr_schedule: Literal["constant", "cosine", "cosine_restarts"] = "constant"
    warmup: float = Field(0.0, ge=0.0, lt=1.0)
    #: ``cosine_restarts``: epochs after which the learning rate restarts at ``lr``. Unset in
    #: ``search.optimizer`` under asha / moasha: the scheduler's rungs, so every model a rung
    #: judges ends an annealing cycle.
    restart_epochs: list[int] | None = None

    @model_validator(mode="before")
    @classmethod
    def _bare_name(cls, raw: Any) -> Any:
        return {"name": raw} if isinstance(raw, str) else raw

    @model_validator(mode="after")
    def _consistent(self) -> OptimizerSettings:
        from pruners.spec import check_nesterov

        check_nesterov(self.name, self.momentum, self.nesterov)  # the rule pruners.OptimizerConfig applies
        if self.restart_epochs is not None:
            if self.lr_schedule != "cosine_restarts":
                raise ValueError(f"restart_epochs: set for lr_schedule {self.lr_schedule}; it needs cosine_restarts")
            e = self.restart_epochs
            if not e or e[0] < 1 or any(b <= a for a, b in zip(e, e[1:])):
                raise ValueError(f"restart_epochs: {e} is invalid; give increasing epochs >= 1, e.g. [1, 2, 4]")
        return self

    def build(self, lr: float, epochs: int | None = None, restart_epochs: Sequence[int] | None = None) -> Any:
        """The ``pruners.OptimizerConfig`` for ``epochs`` epochs at learning rate ``lr``
        (``cosine_restarts``: restarting after each of ``restart_epochs``, default this
        section's own, that falls before ``epochs``)."""
        kwargs = self.model_dump(exclude={"restart_epochs"})
        if self.lr_schedule == "cosine_restarts":
            if epochs is None:
                raise ValueError("cosine_restarts needs the number of epochs its cycles divide")
            ends = restart_epochs if restart_epochs is not None else (self.restart_epochs or ())
            kwargs["cycle_ends"] = tuple(e / epochs for e in sorted(set(ends)) if 0 < e < epochs) if epochs else ()
        from pruners.spec import OptimizerConfig

        return OptimizerConfig(lr=float(lr), **kwargs)


def restart_epochs(cfg: Any) -> list[int]:
    """Epochs after which a trial's ``cosine_restarts`` learning rate restarts: those set in
    ``search.optimizer``, else the epochs the scheduler's rungs judge trials at."""
    if cfg.search.optimizer.restart_epochs is not None:
        return list(cfg.search.optimizer.restart_epochs)
    if cfg.scheduler.name == "fifo":
        return []
    return rung_epochs(cfg.scheduler.grace_period, cfg.scheduler.reduction_factor, cfg.search.max_epochs)


def trial_optimizer(cfg: Any, lr: float, epochs: int) -> Any:
    """The ``pruners.OptimizerConfig`` a trial of ``epochs`` fine-tuning epochs at learning rate
    ``lr`` trains with (``cosine_restarts``: cycles ending at :func:`restart_epochs`)."""
    return cfg.search.optimizer.build(lr, epochs, restart_epochs(cfg))


def check_restarts(cfg: Any) -> None:
    """Refuse ``cosine_restarts`` where nothing says when to restart."""
    if cfg.dense.optimizer.lr_schedule == "cosine_restarts" and cfg.dense.optimizer.restart_epochs is None:
        raise ConfigError("dense.optimizer.restart_epochs: required with lr_schedule cosine_restarts; "
                          "give the epochs after which the learning rate restarts, e.g. [1, 2, 4]")
    opt = cfg.search.optimizer
    if opt.lr_schedule == "cosine_restarts" and opt.restart_epochs is None and cfg.scheduler.name == "fifo":
        raise ConfigError("search.optimizer.restart_epochs: required with lr_schedule cosine_restarts and "
                          "scheduler fifo (with asha or moasha the restarts default to the rungs), e.g. [1, 2, 4]")
