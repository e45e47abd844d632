"""``taylor``: Molchanov et al.'s first-order Taylor importance.

Molchanov, Mallya, Tyree, Frosio, Kautz, "Importance Estimation for Neural Network
Pruning", CVPR 2019. Removing a set of parameters ``S`` changes the loss by about
``-sum_{s in S} g_s w_s`` (first order), so a *unit* (a channel, with every parameter that
goes with it, or an attention head) scores the square of that sum, accumulated over
calibration batches::

    I(unit) = mean_b ( sum_{theta in unit} theta * dL_b/dtheta )^2

The unit's parameters are all of its slices in the dependency group: the producing
layer's filter row and bias, the normalisation's scale and shift, every consumer's input
column (and, for a head, its rows of the q/k/v projections and biases and its columns of the
output projection). For unstructured pruning a unit is one weight and the score is the
per-parameter form ``mean_b |w * dL_b/dw|``.

The sum comes before the square: two weights whose contributions cancel (``+1`` and ``-1``)
make an unimportant channel even though each weight alone matters, which a sum of
``|w g|`` would rank the other way round.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

from pruners._attention import PrunableMultiheadAttention
from pruners._dist import all_gather_rows
from pruners.criteria._group import layer_slice_scores
from pruners.criteria.base import Batch
from pruners.criteria.gradient import _GradientCriterion, _SCORED, batch_gradients
from pruners.criteria.registry import register


def _bias_term(module: nn.Module, grads: dict[str, torch.Tensor]) -> torch.Tensor | None:
    bias = getattr(module, "bias", None)
    if not isinstance(bias, torch.Tensor) or "bias" not in grads:
        return None
    return (bias.detach().to("cpu", torch.float32) * grads["bias"]).to(torch.float64)


def _head_sums(attn: PrunableMultiheadAttention, products: dict[nn.Module, dict[str, torch.Tensor]]) -> torch.Tensor:
    """Signed sum of ``theta * g`` over each head's parameters (one batch)."""
    h, d = attn.num_heads, attn.head_dim
    total = torch.zeros(h, dtype=torch.float64)
    for proj in (attn.q_proj, attn.k_proj, attn.v_proj):
        p = products.get(proj, {})
        if "weight" in p:
            total += p["weight"].reshape(h, d, -1).sum(dim=(1, 2), dtype=torch.float64)
        if "bias" in p:
            total += p["bias"].reshape(h, d).sum(dim=1, dtype=torch.float64)
    p = products.get(attn.out_proj, {})
    if "weight" in p:
        w = p["weight"]
        total += w.reshape(w.shape[0], h, d).sum(dim=(0, 2), dtype=torch.float64)
    return total


@register
class TaylorCriterion(_GradientCriterion):
    """First-order Taylor importance (Molchanov et al., CVPR 2019): see the module docstring.

    Structured: a unit scores ``mean_b (sum over its parameters of theta * dL_b/dtheta)^2``,
    the sum running over every coupled layer's slice. Unstructured: ``mean_b |w * dL_b/dw|``.
    For re-derived masks (dynamic schedule) the dense weight is scored, so a masked weight
    scores what it would cost to keep it removed.

    Params:
        normalizer: ``mean`` (default) divides a group's scores by their mean before a global
            ranking; ``none`` keeps raw values.
    """

    name = "taylor"

    def __init__(self, **params) -> None:
        super().__init__(**params)
        self._out: dict[nn.Module, torch.Tensor] = {}  # [batches, output channels]
        self._in: dict[nn.Module, torch.Tensor] = {}  # [batches, input channels]
        self._heads: dict[nn.Module, torch.Tensor] = {}  # [batches, heads]

    def prepare(self, model: nn.Module, calibration: Iterable[Batch] | None) -> None:
        if calibration is None:
            if self._abs and self._fresh(model):
                return
            raise ValueError(f"criterion {self.name!r} needs calibration batches (calibration=...)")
        calibration = list(calibration)
        super().prepare(model, calibration)  # mean |g| per weight: the unstructured score
        modules = [m for m in model.modules() if isinstance(m, _SCORED) and getattr(m, "weight", None) is not None]
        attns = [m for m in model.modules() if isinstance(m, PrunableMultiheadAttention)]
        out: dict[nn.Module, list[torch.Tensor]] = {m: [] for m in modules}
        inp: dict[nn.Module, list[torch.Tensor]] = {m: [] for m in modules}
        heads: dict[nn.Module, list[torch.Tensor]] = {m: [] for m in attns}
        for grads in batch_gradients(model, calibration, self.name, modules):
            products: dict[nn.Module, dict[str, torch.Tensor]] = {}
            for m, g in grads.items():
                prod = {"weight": m.weight.detach().to("cpu", torch.float32) * g["weight"]}
                if "bias" in g and getattr(m, "bias", None) is not None:
                    prod["bias"] = m.bias.detach().to("cpu", torch.float32) * g["bias"]
                products[m] = prod

                def elementwise(layer: nn.Module, name: str, prod: dict = prod) -> torch.Tensor | None:
                    return prod.get(name)

                rows = layer_slice_scores(m, True, elementwise)
                if rows is not None:
                    bias = _bias_term(m, g)
                    out[m].append(rows + bias if bias is not None and bias.shape == rows.shape else rows)
                if isinstance(m, (nn.modules.conv._ConvNd, nn.Linear)):
                    cols = layer_slice_scores(m, False, elementwise)
                    if cols is not None:
                        inp[m].append(cols)
            for a in attns:
                heads[a].append(_head_sums(a, products))
        self._out, self._in, self._heads = self._gather(out), self._gather(inp), self._gather(heads)

    @staticmethod
    def _gather(per_batch: dict[nn.Module, list[torch.Tensor]]) -> dict[nn.Module, torch.Tensor]:
        """Stack each module's per-batch sums and collect every rank's batches (one collective)."""
        keys = [m for m, v in per_batch.items() if v]
        if not keys:
            all_gather_rows(torch.zeros((0, 0), dtype=torch.float64))  # every rank joins the collective
            return {}
        stacked = [torch.stack(per_batch[m]) for m in keys]
        widths = [t.shape[1] for t in stacked]
        everything = all_gather_rows(torch.cat(stacked, dim=1))
        return dict(zip(keys, torch.split(everything, widths, dim=1)))

    def group_scores(self, group) -> torch.Tensor | None:
        dg = group._DG
        n = len(group[0].idxs)
        total: torch.Tensor | None = None
        for item in group:
            layer = item.dep.target.module
            root_idxs = getattr(item, "root_idxs", None)
            if not isinstance(layer, nn.Module) or root_idxs is None or any(r is None for r in root_idxs):
                continue
            table = self._out if dg.is_out_channel_pruning_fn(item.dep.handler) else self._in
            sums = table.get(layer)
            if sums is None or sums.shape[1] <= max(item.idxs, default=-1):
                continue
            if total is None:
                total = torch.zeros(sums.shape[0], n, dtype=torch.float64)
            local = sums[:, torch.as_tensor(item.idxs, dtype=torch.long)]
            total.index_add_(1, torch.as_tensor(root_idxs, dtype=torch.long), local)
        if total is None:
            return None
        return self.normalize(total.pow(2).mean(dim=0))

    def head_scores(self, module: nn.Module) -> torch.Tensor | None:
        sums = self._heads.get(module)
        if sums is None or sums.shape[1] != module.num_heads:
            return None
        return self.normalize(sums.pow(2).mean(dim=0))

    def elementwise(self, module: nn.Module, name: str) -> torch.Tensor | None:
        if name != "weight":
            return None
        g = self._stat(module, self._abs)
        return None if g is None else g * module.weight.detach().to("cpu", torch.float32).abs()

    def _elementwise_for(self, module: nn.Module, weight: torch.Tensor) -> torch.Tensor | None:
        g = self._stat(module, self._abs)
        return None if g is None else g * weight.detach().to("cpu", torch.float32).abs()
