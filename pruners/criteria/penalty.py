"""Penalty-trained criteria: ``slimming`` (L1 on BatchNorm scales) and ``l2_penalty``
(group lasso on output channels).

Both add a sparsity-inducing term to the training loss (``penalty``), so that after some
fine-tuning the unimportant channels have near-zero scale / norm, then score channels by
that scale / norm with raw values (one global threshold, as in the papers). Channels are
their natural unit, so both are structured-only.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from pruners.criteria._group import coupled_channel_scores
from pruners.criteria.base import Criterion
from pruners.criteria.registry import register


def _check_penalty(name: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
        raise ValueError(f"criterion {name!r}: penalty must be a number >= 0, got {value!r}")
    return float(value)


class _PenaltyCriterion(Criterion):
    """Structured-only criteria trained with a sparsity penalty of weight ``penalty``."""

    granularities = ("structured",)
    param_defaults = {"penalty": 1e-4, "warmup_steps": 0}

    def __init__(self, **params) -> None:
        super().__init__(**params)
        self.lam = _check_penalty(self.name, self.params["penalty"])


@register
class SlimmingCriterion(_PenaltyCriterion):
    """Network slimming: BatchNorm scale ``|gamma|`` after training with ``lambda sum |gamma|``.

    Liu et al., "Learning Efficient Convolutional Networks through Network Slimming", ICCV
    2017. A channel's score is the mean ``|gamma|`` of the BatchNorms in its dependency group;
    groups with no BatchNorm (and attention heads) are not scored, so they are kept.

    Params:
        penalty: ``lambda`` of the L1 term (default 1e-4; the paper uses 1e-4 to 1e-5).
        warmup_steps: Steps of penalty-only training before the first pruning step.
    """

    name = "slimming"

    def penalty(self, model: nn.Module) -> torch.Tensor | None:
        gammas = [m.weight for m in model.modules() if isinstance(m, _BatchNorm) and m.weight is not None]
        if not gammas or self.lam == 0:
            return None
        return self.lam * sum(g.abs().sum() for g in gammas)

    def elementwise(self, module: nn.Module, name: str) -> torch.Tensor | None:
        if not isinstance(module, _BatchNorm) or name != "weight" or module.weight is None:
            return None
        return module.weight.detach().abs()

    def group_scores(self, group) -> torch.Tensor | None:
        return coupled_channel_scores(group, self.elementwise)

    def head_scores(self, module: nn.Module) -> torch.Tensor | None:
        return None


def _classifier_guess(model: nn.Module) -> nn.Module | None:
    # The penalty has no example input to trace with; the last Conv / Linear registered is
    # the output layer in every common architecture (prune() itself traces to be sure).
    last = None
    for m in model.modules():
        if isinstance(m, (nn.modules.conv._ConvNd, nn.Linear)):
            last = m
    return last


@register
class L2PenaltyCriterion(_PenaltyCriterion):
    """Group lasso ``lambda sum_layers sum_c ||W_c||_2`` on output channels; score ``||W_c||_2``.

    Wen et al., "Learning Structured Sparsity in Deep Neural Networks", NeurIPS 2016: the
    group-L2 penalty drives whole output channels to zero; channels are then scored by the
    L2 norm of their output weights (averaged over coupled producers, e.g. both sides of a
    residual add). The output layer is not penalised.

    Params:
        penalty: ``lambda`` (default 1e-4).
        warmup_steps: Steps of penalty-only training before the first pruning step.
    """

    name = "l2_penalty"

    def penalty(self, model: nn.Module) -> torch.Tensor | None:
        if self.lam == 0:
            return None
        skip = _classifier_guess(model)
        terms = []
        for m in model.modules():
            if isinstance(m, (nn.modules.conv._ConvNd, nn.Linear)) and m is not skip:
                w = m.weight
                if getattr(m, "transposed", False):
                    w = w.transpose(0, 1)
                # eps keeps the gradient finite at an all-zero channel
                terms.append((w.flatten(1).pow(2).sum(1) + 1e-12).sqrt().sum())
        return self.lam * sum(terms) if terms else None

    def elementwise(self, module: nn.Module, name: str) -> torch.Tensor | None:
        if not isinstance(module, (nn.modules.conv._ConvNd, nn.Linear)) or name != "weight":
            return None
        w = module.weight.detach()
        return w * w

    def group_scores(self, group) -> torch.Tensor | None:
        return coupled_channel_scores(group, self.elementwise, power=2, outputs_only=True)

    def head_scores(self, module: nn.Module) -> torch.Tensor | None:
        return super().head_scores(module).sqrt()
