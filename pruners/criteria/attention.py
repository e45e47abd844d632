"""Learned-attention criteria: ``attention``, ``adaptive_attention``, ``multilevel_attention``.

Every prunable Conv / Linear output channel gets a gate ``sigmoid(alpha_c)`` multiplied into
its output by a forward hook (no module is added to the model), and every self-attention
layer gets a gate per head on the heads' outputs (a forward pre-hook on the output
projection). Gates train with the task loss plus an L1 push ``l1 * mean(gate)``, so gates of
channels the task does not need fall; channels (heads) are scored by their gate value.
``detach`` folds the gates into the weights exactly (a gate on a layer's output scales that
layer's weight rows and bias; a head gate scales the output projection's columns) and
removes the hooks, so the exported model has no trace of them.

* ``attention``: gates train briefly (``gate_steps`` on the calibration batches when
  ``prune`` is called standalone, or during ``finetune``'s warm-up), then are frozen at the
  first pruning step; later rounds score with the frozen gates.
* ``adaptive_attention``: gates keep training during fine-tuning (the L1 push stays on) and
  every pruning step re-derives the mask from the current gates.
* ``multilevel_attention``: a per-layer gate ``sigmoid(beta_l)`` scales the whole layer on top
  of its channel gates. A channel scores ``sigmoid(beta_l) * sigmoid(alpha_c) / mean_l``
  (channel gate relative to its layer's mean), so under ``global`` scope the layer gates set
  how much of each layer is cut and the channel gates which channels.

References: attention-based channel pruning in the spirit of Hu et al. "Squeeze-and-
Excitation Networks" (CVPR 2018) gates and Yamamoto & Maeno "PCAS: Pruning Channels with
Attention Statistics" (2018); head gates as in Voita et al. "Analyzing Multi-Head
Self-Attention" (ACL 2019); L1-pushed scaling gates as in Huang & Wang "Data-Driven Sparse
Structure Selection" (ECCV 2018).
"""

from __future__ import annotations

import contextlib
import itertools
import math
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from pruners._attention import PrunableMultiheadAttention, convert_attention
from pruners._devices import device_of, move_to
from pruners._dist import all_reduce_mean_
from pruners.criteria.base import Batch, Criterion, eval_mode
from pruners.criteria.penalty import _classifier_guess
from pruners.criteria.registry import register


def _gateable(model: nn.Module) -> list[nn.Module]:
    """Conv / Linear layers whose output channels get a gate.

    Not the projections inside attention modules (their widths are heads / the residual
    stream, gated per head instead), not transposed convs, not the output layer (an L1 push
    on the logits would only shrink them; it is never pruned anyway).
    """
    inside_attention = set()
    for m in model.modules():
        if isinstance(m, PrunableMultiheadAttention):
            inside_attention.update(m.modules())
    classifier = _classifier_guess(model)
    return [
        m
        for m in model.modules()
        if isinstance(m, (nn.modules.conv._ConvNd, nn.Linear))
        and m not in inside_attention
        and m is not classifier
        and not getattr(m, "transposed", False)
    ]


def _rows_to_channel_view(gate: torch.Tensor, output: torch.Tensor, module: nn.Module) -> torch.Tensor:
    if isinstance(module, nn.Linear):
        return gate  # broadcasts over the last dim
    return gate.view(1, -1, *([1] * (output.dim() - 2)))


class _GateCriterion(Criterion):
    """Shared gate machinery of the attention family."""

    granularities = ("structured",)
    needs_calibration = True
    param_defaults = {
        "gate_steps": 50,
        "gate_lr": 0.05,
        "l1": 1e-2,
        "gate_init": 3.0,
        "heads": True,
        "warmup_steps": 0,
    }
    #: Gates keep training after the first pruning step.
    adaptive = False
    #: Per-layer gates on top of the channel gates.
    multilevel = False

    def __init__(self, **params) -> None:
        super().__init__(**params)
        p = self.params
        if isinstance(p["gate_steps"], bool) or not isinstance(p["gate_steps"], int) or p["gate_steps"] < 0:
            raise ValueError(f"criterion {self.name!r}: gate_steps must be an integer >= 0")
        for key in ("gate_lr", "l1"):
            if isinstance(p[key], bool) or not isinstance(p[key], (int, float)) or not 0 <= p[key] < math.inf:
                raise ValueError(f"criterion {self.name!r}: {key} must be a number >= 0, got {p[key]!r}")
        if isinstance(p["gate_init"], bool) or not isinstance(p["gate_init"], (int, float)) or not math.isfinite(p["gate_init"]):
            raise ValueError(f"criterion {self.name!r}: gate_init must be a finite number, got {p['gate_init']!r}")
        if not isinstance(p["heads"], bool):
            raise ValueError(f"criterion {self.name!r}: heads must be true or false, got {p['heads']!r}")
        self.channel_gates: dict[nn.Module, nn.Parameter] = {}
        self.layer_gates: dict[nn.Module, nn.Parameter] = {}
        self.head_gates: dict[nn.Module, nn.Parameter] = {}
        self._handles: list = []
        self._active = True
        self._frozen = False

    # -- gates --------------------------------------------------------------------------
    @property
    def attached(self) -> bool:
        return bool(self._handles)

    def attach(self, model: nn.Module) -> None:
        """Add a gate per output channel (and head, and layer for multilevel) via hooks.

        Self-attention ``nn.MultiheadAttention`` layers are first converted (same function)
        to head-prunable modules so their heads can be gated: build the optimizer after.
        """
        if self.attached:
            raise ValueError(f"criterion {self.name!r} is already attached; detach it first")
        convert_attention(model)
        init = float(self.params["gate_init"])
        for m in _gateable(model):
            dev = m.weight.device
            n = m.out_channels if isinstance(m, nn.modules.conv._ConvNd) else m.out_features
            self.channel_gates[m] = nn.Parameter(torch.full((n,), init, device=dev))
            if self.multilevel:
                self.layer_gates[m] = nn.Parameter(torch.full((1,), init, device=dev))
            self._handles.append(m.register_forward_hook(self._channel_hook))
        if self.params["heads"]:
            for m in model.modules():
                if isinstance(m, PrunableMultiheadAttention):
                    dev = m.out_proj.weight.device
                    self.head_gates[m] = nn.Parameter(torch.full((m.num_heads,), init, device=dev))
                    self._handles.append(m.out_proj.register_forward_pre_hook(self._make_head_hook(m)))

    def _gate_value(self, module: nn.Module) -> torch.Tensor:
        g = torch.sigmoid(self.channel_gates[module])
        if self.multilevel:
            g = g * torch.sigmoid(self.layer_gates[module])
        return g

    def _channel_hook(self, module: nn.Module, inputs, output):
        if not self._active or module not in self.channel_gates:
            return output
        g = self._gate_value(module).to(output.dtype)
        return output * _rows_to_channel_view(g, output, module)

    def _make_head_hook(self, attn: PrunableMultiheadAttention):
        def hook(out_proj: nn.Module, inputs):
            if not self._active or attn not in self.head_gates:
                return None
            (x,) = inputs[:1]
            g = torch.sigmoid(self.head_gates[attn]).to(x.dtype).repeat_interleave(attn.head_dim)
            return (x * g,) + tuple(inputs[1:])

        return hook

    @contextlib.contextmanager
    def suspended(self) -> Iterator[None]:
        """Gates off (identity) inside the block, e.g. while Torch-Pruning traces the graph."""
        previous, self._active = self._active, False
        try:
            yield
        finally:
            self._active = previous

    def _all_gates(self) -> list[nn.Parameter]:
        return [*self.channel_gates.values(), *self.layer_gates.values(), *self.head_gates.values()]

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [] if self._frozen else self._all_gates()

    def penalty(self, model: nn.Module) -> torch.Tensor | None:
        """``l1 * mean(gate)`` per gate family (channel, layer, head): the push to zero."""
        if self._frozen or not self.attached or self.params["l1"] == 0:
            return None
        terms = []
        for family in (self.channel_gates, self.layer_gates, self.head_gates):
            if family:
                terms.append(torch.cat([torch.sigmoid(a).flatten() for a in family.values()]).mean())
        return float(self.params["l1"]) * sum(terms) if terms else None

    # -- statistics ---------------------------------------------------------------------
    def prepare(self, model: nn.Module, calibration: Iterable[Batch] | None) -> None:
        """Unattached (standalone ``prune``): attach and train the gates on ``calibration``.

        Attached (``finetune`` owns the gates and trains them): nothing to do, unless the
        gates never moved from their initial value (no warm-up before the first pruning
        step), in which case every score would tie; then they get the short training too.
        """
        if self.attached:
            if calibration is not None and not self._frozen and self._untrained():
                self._train_gates(model, calibration)
            return
        if calibration is None:
            raise ValueError(f"criterion {self.name!r} needs calibration batches to train its gates")
        self.attach(model)
        self._train_gates(model, calibration)

    def _untrained(self) -> bool:
        init = float(self.params["gate_init"])
        return all(bool((g.detach() == init).all()) for g in self._all_gates())

    def _train_gates(self, model: nn.Module, calibration: Iterable[Batch]) -> None:
        steps = int(self.params["gate_steps"])
        batches = list(calibration)
        if not batches:
            raise ValueError(f"criterion {self.name!r}: calibration yielded no batch")
        gates = self._all_gates()
        if steps == 0 or not gates:
            return
        opt = torch.optim.Adam(gates, lr=float(self.params["gate_lr"]))
        weights = [p for p in model.parameters() if p.requires_grad]
        device = device_of(model)
        # Only the gates learn here; eval mode keeps BatchNorm statistics untouched.
        with eval_mode(model):
            try:
                for p in weights:
                    p.requires_grad_(False)
                for _, batch in zip(range(steps), itertools.cycle(batches)):
                    x, y = move_to(batch[0], device), move_to(batch[1], device)
                    with torch.enable_grad():
                        loss = F.cross_entropy(model(x), y)
                        extra = self.penalty(model)
                        if extra is not None:
                            loss = loss + extra
                        opt.zero_grad(set_to_none=True)
                        loss.backward()
                    # Identical gates on every rank: average their gradients.
                    all_reduce_mean_([g.grad for g in gates if g.grad is not None])
                    opt.step()
            finally:
                for p in weights:
                    p.requires_grad_(True)

    # -- scoring ------------------------------------------------------------------------
    def _module_channel_scores(self, module: nn.Module) -> torch.Tensor | None:
        if module not in self.channel_gates:
            return None
        g = torch.sigmoid(self.channel_gates[module].detach()).to("cpu", torch.float64)
        if self.multilevel:
            layer = torch.sigmoid(self.layer_gates[module].detach()).to("cpu", torch.float64)
            mean = g.mean()
            g = layer * (g / mean if mean > 0 else g)
        return g

    def group_scores(self, group) -> torch.Tensor | None:
        """Mean gate of the group's gated producers (e.g. both sides of a residual add)."""
        if not self.attached:
            raise ValueError(f"criterion {self.name!r} has no gates: call prepare (or attach) first")
        dg = group._DG
        n = len(group[0].idxs)
        total = torch.zeros(n, dtype=torch.float64)
        count = 0
        for item in group:
            mod = item.dep.target.module
            if not isinstance(mod, nn.Module) or not dg.is_out_channel_pruning_fn(item.dep.handler):
                continue
            scores = self._module_channel_scores(mod)
            root_idxs = getattr(item, "root_idxs", None)
            if scores is None or root_idxs is None or any(r is None for r in root_idxs):
                continue
            total.scatter_add_(
                0, torch.as_tensor(root_idxs, dtype=torch.long), scores[torch.as_tensor(item.idxs, dtype=torch.long)]
            )
            count += 1
        return total / count if count else None

    def head_scores(self, module: nn.Module) -> torch.Tensor | None:
        gate = self.head_gates.get(module)
        return None if gate is None else torch.sigmoid(gate.detach()).to("cpu", torch.float64)

    # -- structure changes ----------------------------------------------------------------
    def after_prune(
        self, model: nn.Module, removed: Mapping[nn.Module, Sequence[int]] | None = None
    ) -> None:
        """Gates follow their channels / heads; ``attention`` freezes its gates here."""
        for module, idxs in (removed or {}).items():
            for family in (self.channel_gates, self.head_gates):
                if module in family:
                    old = family[module]
                    drop = set(int(i) for i in idxs)
                    keep = torch.tensor([i for i in range(old.numel()) if i not in drop], dtype=torch.long)
                    family[module] = nn.Parameter(old.detach()[keep.to(old.device)].clone())
        if not self.adaptive:
            self._frozen = True
            for g in self._all_gates():
                g.requires_grad_(False)

    def state_dict(self, model: nn.Module) -> dict[str, Any]:
        names = {m: n for n, m in model.named_modules()}
        return {
            "frozen": self._frozen,
            **{f"{kind}.{names[m]}": g.detach().cpu().clone()
               for kind, family in (("channel", self.channel_gates), ("layer", self.layer_gates),
                                    ("head", self.head_gates))
               for m, g in family.items()},
        }

    def load_state_dict(self, model: nn.Module, state: Mapping[str, Any]) -> None:
        if not self.attached:
            raise ValueError(f"criterion {self.name!r}: attach before load_state_dict")
        names = {m: n for n, m in model.named_modules()}
        for kind, family in (("channel", self.channel_gates), ("layer", self.layer_gates), ("head", self.head_gates)):
            for m in list(family):
                value = state[f"{kind}.{names[m]}"]
                family[m] = nn.Parameter(value.to(family[m].device).clone())
        self._frozen = bool(state.get("frozen", False))
        for g in self._all_gates():
            g.requires_grad_(not self._frozen)

    @torch.no_grad()
    def fold(self) -> None:
        """Multiply the current gate values into the weights (gates become 1)."""
        for module in list(self.channel_gates):
            g = self._gate_value(module).detach().to(module.weight.dtype)
            weight = getattr(module, "weight_orig", module.weight)
            weight.mul_(g.view(-1, *([1] * (weight.dim() - 1))))
            if module.bias is not None:
                module.bias.mul_(g)
        for attn, gate in self.head_gates.items():
            g = torch.sigmoid(gate).to(attn.out_proj.weight.dtype).repeat_interleave(attn.head_dim)
            attn.out_proj.weight.mul_(g.view(1, -1))

    def detach(self, model: nn.Module, fold: bool = True) -> None:
        """Fold the gates into the weights (exact: same outputs) and remove every hook.

        ``fold=False`` drops the gates, leaving the weights untouched.
        """
        if not self.attached:
            return
        if fold:
            self.fold()
        for h in self._handles:
            h.remove()
        self._handles = []
        self.channel_gates.clear()
        self.layer_gates.clear()
        self.head_gates.clear()
        self._frozen = False


@register
class AttentionCriterion(_GateCriterion):
    """Channel (and head) gates trained briefly with an L1 push, then frozen; lowest gates go.

    Params:
        gate_steps: Gate-training steps on the calibration batches in standalone ``prune``.
        gate_lr: Adam learning rate of that training.
        l1: Weight of the L1 push ``l1 * mean(sigmoid(alpha))`` (also the ``penalty``).
        gate_init: Initial ``alpha`` (sigmoid(3) = 0.95: the network starts nearly as is).
        heads: Gate and score attention heads too.
        warmup_steps: Gate-training steps ``finetune`` runs before the first pruning step.
    """

    name = "attention"


@register
class AdaptiveAttentionCriterion(_GateCriterion):
    """As ``attention``, but gates keep training during fine-tuning and every pruning step
    re-derives the mask from the current gates."""

    name = "adaptive_attention"
    adaptive = True


@register
class MultilevelAttentionCriterion(_GateCriterion):
    """Layer gates decide how much of each layer to cut, channel gates which channels."""

    name = "multilevel_attention"
    multilevel = True
