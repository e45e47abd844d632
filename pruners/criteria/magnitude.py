"""Weight-magnitude criteria: ``magnitude`` and ``layer_norm``.

Magnitude pruning is the threshold-pruning baseline (Han et al., "Learning both Weights and
Connections for Efficient Neural Networks", NeurIPS 2015); the filter norm variant is Li et
al., "Pruning Filters for Efficient ConvNets", ICLR 2017.
"""

from __future__ import annotations

import torch
from torch import nn

from pruners.criteria._group import coupled_channel_scores, head_slice_scores
from pruners.criteria.base import Criterion
from pruners.criteria.registry import register


def _weight(module: nn.Module, name: str) -> torch.Tensor | None:
    w = getattr(module, name, None)
    return None if w is None else w.detach()


@register
class MagnitudeCriterion(Criterion):
    """``|w|`` per weight; a channel's ``||w||_p`` (averaged over its coupled layers).

    Params:
        p: Norm of a channel's weights, 1 or 2 (default 2).
        normalizer: ``mean`` (default) divides each group's scores by their mean so layers
            of different fan-in compete fairly in global ranking; ``none`` keeps raw norms.
    """

    name = "magnitude"
    param_defaults = {"p": 2, "normalizer": "mean"}

    def __init__(self, **params) -> None:
        super().__init__(**params)
        if self.params["p"] not in (1, 2):
            raise ValueError(f"criterion 'magnitude': p must be 1 or 2, got {self.params['p']!r}")
        self.p = int(self.params["p"])

    def elementwise(self, module: nn.Module, name: str) -> torch.Tensor | None:
        w = _weight(module, name)
        if w is None:
            return None
        return w.abs() if self.p == 1 else w * w

    def _elementwise_for(self, module: nn.Module, weight: torch.Tensor) -> torch.Tensor:
        return weight.detach().abs()

    def group_scores(self, group) -> torch.Tensor | None:
        scores = coupled_channel_scores(group, self.elementwise, power=self.p)
        return None if scores is None else self.normalize(scores)

    def head_scores(self, module: nn.Module) -> torch.Tensor:
        # The p-th root first, then the normaliser, as for channels: heads of different
        # layers then compete on norms divided by their layer's mean norm.
        return self.normalize(head_slice_scores(module, self.elementwise) ** (1.0 / self.p))


# Relative weight of the within-layer tie-break: small enough that whole layers are ordered
# by their mean first (layer means within 0.1% are effectively equal anyway), large enough
# to survive float32 per-weight scores.
_TIE = 1e-3


@register
class LayerNormCriterion(Criterion):
    """Layer-wise pruning of the survey: every unit scores its layer's mean ``|w|``.

    Units of the layer with the lowest mean magnitude are removed first, so with ``global``
    scope whole layers empty out in order of their mean ``|w|``; inside the layer being
    partly cut, the smallest weights / channels go first (a ``1e-3`` relative tie-break).
    With ``layerwise`` scope it reduces to magnitude pruning inside each layer.
    """

    name = "layer_norm"
    param_defaults: dict = {}

    def _elementwise_for(self, module: nn.Module, weight: torch.Tensor) -> torch.Tensor:
        w = weight.detach().abs()
        mean = w.mean(dtype=torch.float64)
        top = w.max()
        rel = w / top if top > 0 else torch.zeros_like(w)
        return float(mean) * (1 + _TIE * rel)

    def elementwise(self, module: nn.Module, name: str) -> torch.Tensor | None:
        w = _weight(module, name)
        return None if w is None else w.abs()

    def group_scores(self, group) -> torch.Tensor:
        root = group[0].dep.target.module
        w = _weight(root, "weight")
        if w is None:
            raise ValueError(f"layer_norm cannot score {type(root).__name__}")
        mean = w.abs().mean(dtype=torch.float64)
        channel = coupled_channel_scores(group, self.elementwise)
        if channel is None:
            return None
        top = channel.max()
        rel = channel / top if top > 0 else torch.zeros_like(channel)
        return mean * (1 + _TIE * rel)

    def head_scores(self, module: nn.Module) -> torch.Tensor:
        ws = [module.q_proj.weight, module.k_proj.weight, module.v_proj.weight, module.out_proj.weight]
        mean = torch.cat([w.detach().abs().flatten() for w in ws]).mean(dtype=torch.float64)
        heads = super().head_scores(module)
        top = heads.max()
        rel = heads / top if top > 0 else torch.zeros_like(heads)
        return mean * (1 + _TIE * rel)
