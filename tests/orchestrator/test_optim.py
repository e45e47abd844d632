"""orchestrator.optim: the config's optimizer sections apply pruners' own optimizer rules."""

from __future__ import annotations

import itertools

import pytest
from pydantic import ValidationError

import pruners
from orchestrator.optim import OptimizerSettings


@pytest.mark.parametrize(("name", "momentum", "nesterov"),
                         list(itertools.product(("sgd", "adam", "adamw"), (0.0, 0.9), (False, True))))
def test_the_config_refuses_exactly_the_nesterov_settings_pruners_refuses(name, momentum, nesterov):
    try:
        pruners.OptimizerConfig(name=name, momentum=momentum, nesterov=nesterov)
        refused = None
    except ValueError as e:
        refused = str(e)
    if refused is None:
        OptimizerSettings(name=name, momentum=momentum, nesterov=nesterov)  # accepted by both
    else:
        # Refused at config time, with pruners' words: a search cannot fail later in a trial.
        with pytest.raises(ValidationError, match=refused):
            OptimizerSettings(name=name, momentum=momentum, nesterov=nesterov)
