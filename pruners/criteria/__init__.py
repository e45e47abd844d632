"""Pruning criteria, one module per family, registered by the names Ray Tune searches over.

=====================  ============================  =====================================
name                   granularities                 score
=====================  ============================  =====================================
random                 unstructured, structured      uniform random (seed shared by ranks)
magnitude              unstructured, structured      ``|w|``; channel ``||w||_p`` (p=1, 2)
layer_norm             unstructured, structured      the layer's mean ``|w|`` (whole layers)
gradient               unstructured, structured      mean ``|dL/dw|`` over calibration
taylor                 unstructured, structured      ``(sum_unit w * dL/dw)^2`` over batches (Molchanov)
sensitivity            unstructured, structured      ``|dL/dw| / sum |dL/dw|`` (network-wide)
attention              structured                    learned sigmoid gate per channel/head
adaptive_attention     structured                    gates keep training in fine-tuning
multilevel_attention   structured                    per-layer + per-channel gates
slimming               structured                    BatchNorm ``|gamma|`` after L1 penalty
l2_penalty             structured                    channel L2 norm after group lasso
=====================  ============================  =====================================

Gates, BatchNorm scales and group-lasso norms exist only per channel, so those criteria are
structured-only; asking for them unstructured raises ``ValueError``.
"""

from __future__ import annotations

from typing import Any

from pruners.criteria import attention, baseline, gradient, magnitude, penalty, taylor  # noqa: F401  (registers)
from pruners.criteria.base import Criterion
from pruners.criteria.registry import CRITERIA, register


def list_criteria() -> list[str]:
    """Names of the registered criteria."""
    return CRITERIA.names()


def make_criterion(name: str, **params: Any) -> Criterion:
    """Build criterion ``name`` with its keyword parameters (unknown ones raise)."""
    return CRITERIA.get(name)(**params)


def criterion_granularities(name: str) -> tuple[str, ...]:
    """Granularities criterion ``name`` supports."""
    return tuple(CRITERIA.get(name).granularities)


__all__ = [
    "CRITERIA",
    "Criterion",
    "criterion_granularities",
    "list_criteria",
    "make_criterion",
    "register",
]
