"""The criterion protocol: how a pruning criterion scores units and hooks into training.

A criterion answers one question, "how important is each unit?", for the granularities it
supports. ``pruners.prune`` turns scores into removals (through a threshold rule) and
``pruners.finetune`` drives the optional training hooks. Criteria are registered under the
strings Ray Tune searches over (see ``pruners.criteria.CRITERIA``).

Life cycle inside ``pruners.finetune``::

    crit = make_criterion(name, **params)
    crit.attach(model)                     # gates / hooks (attention family); no-op otherwise
    optimizer built AFTER attach, over model params + crit.trainable_parameters()
    for the first crit.warmup_steps steps:  loss += crit.penalty(model); train
    at each pruning step:                   pruners.prune(model, criterion=crit, ...)
                                            (prune calls crit.prepare and crit.after_prune)
    every training step:                    loss += crit.penalty(model)  (None -> nothing)
    at the end:                             crit.detach(model)  # fold gates, remove hooks

Standalone ``pruners.prune(model, criterion="taylor", calibration=batches, ...)`` builds the
criterion, calls ``crit.prepare(model, calibration)`` (gradient statistics, or attaching and
briefly training gates for the attention family), scores, removes, and detaches. After a
structural change ``prune`` calls ``crit.after_prune(model, removed)``; parameters are
replaced, so rebuild the optimizer from ``model.parameters()`` and
``crit.trainable_parameters()`` (gates are replaced too).

Extension point. Most criteria only define :meth:`Criterion.elementwise`: a score per entry
of a parameter (``|w|``, ``|dL/dw|``...). The base class turns it into per-weight scores
(unstructured) and per-channel scores of a Torch-Pruning dependency group (structured: the
channel's slices of every coupled layer, summed per layer, averaged over the layers), and
per-head scores of attention layers. Criteria whose unit is a channel by nature (gates, BN
scales) override :meth:`group_scores` / :meth:`head_scores` instead.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any, ClassVar

import torch
from torch import nn

Batch = tuple[torch.Tensor, torch.Tensor]


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[None]:
    """``model.eval()`` inside the block, and every submodule's own flag restored after.

    ``model.train(was_training)`` would not do: it sets one flag on every submodule, so a
    BatchNorm the user froze in eval mode inside a training model would start updating its
    statistics again after a pruning step.
    """
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield
    finally:
        for m, training in modes:
            m.training = training

#: Normalisations of a dependency group's channel scores before global ranking.
NORMALIZERS = ("mean", "none")


class Criterion:
    """Base class. Subclasses set the class attributes and override what they support.

    Class attributes:
        name: Registry key.
        granularities: Granularities supported, a subset of ("unstructured", "structured").
        needs_calibration: ``prepare`` needs batches (gradient-based criteria, gate training).
        param_defaults: Accepted keyword parameters and their defaults. Unknown keywords
            raise ``ValueError`` listing these.
    """

    name: ClassVar[str] = ""
    granularities: ClassVar[tuple[str, ...]] = ("unstructured", "structured")
    needs_calibration: ClassVar[bool] = False
    param_defaults: ClassVar[Mapping[str, Any]] = {}

    def __init__(self, **params: Any) -> None:
        unknown = sorted(set(params) - set(self.param_defaults))
        if unknown:
            allowed = ", ".join(sorted(self.param_defaults)) or "none"
            raise ValueError(
                f"criterion {self.name!r} got unknown parameter(s) {', '.join(unknown)}; "
                f"allowed: {allowed}"
            )
        self.params: dict[str, Any] = {**self.param_defaults, **params}
        warmup = self.params.get("warmup_steps", 0)
        if isinstance(warmup, bool) or not isinstance(warmup, int) or warmup < 0:
            raise ValueError(f"criterion {self.name!r}: warmup_steps must be an integer >= 0, got {warmup!r}")
        self.warmup_steps: int = warmup
        normalizer = self.params.get("normalizer", "none")
        if normalizer not in NORMALIZERS:
            raise ValueError(
                f"criterion {self.name!r}: unknown normalizer {normalizer!r}; "
                f"valid choices: {', '.join(NORMALIZERS)}"
            )
        self.normalizer: str = normalizer

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in sorted(self.params.items()))
        return f"{type(self).__name__}({args})"

    # -- statistics ---------------------------------------------------------------
    def prepare(self, model: nn.Module, calibration: Iterable[Batch] | None) -> None:
        """Collect what scoring needs (gradients over batches, short gate training).

        Called by ``prune`` before every scoring. Data-derived statistics must be
        all-reduced when ``torch.distributed`` is initialised, so every rank scores
        identically.
        """

    # -- scoring -------------------------------------------------------------------
    def elementwise(self, module: nn.Module, name: str) -> torch.Tensor | None:
        """Non-negative score per entry of ``module``'s parameter ``name`` (same shape).

        ``name`` is ``"weight"`` (or ``"bias"``); ``None`` means "no opinion" and the layer
        is left out of a group's average. Criteria that score weights override this.
        """
        raise NotImplementedError(f"criterion {self.name!r} does not score weights")

    def weight_scores(self, module: nn.Module, weight: torch.Tensor) -> torch.Tensor:
        """Per-weight scores (same shape as ``weight``) for unstructured pruning.

        ``weight`` is the tensor to score: the effective (masked) weight, or the dense
        ``weight_orig`` when masks are re-derived (dynamic schedule).
        """
        if "unstructured" not in self.granularities:
            raise NotImplementedError(f"criterion {self.name!r} does not support unstructured")
        scores = self._elementwise_for(module, weight)
        if scores is None:
            raise ValueError(f"criterion {self.name!r} has no scores for {type(module).__name__}")
        return scores

    def _elementwise_for(self, module: nn.Module, weight: torch.Tensor) -> torch.Tensor | None:
        """Hook for criteria whose weight score depends on the tensor being scored."""
        return self.elementwise(module, "weight")

    def group_scores(self, group: Any) -> torch.Tensor | None:
        """Per-channel scores for a Torch-Pruning dependency ``Group`` (structured).

        Default: for every coupled layer, sum :meth:`elementwise` over the channel's slice
        (rows for outputs, columns for inputs, the entry for norms), average over layers,
        then normalise (``normalizer`` parameter). ``None`` means the criterion cannot
        score this group (e.g. ``slimming`` without a BatchNorm): ``prune`` leaves it alone.
        """
        if "structured" not in self.granularities:
            raise NotImplementedError(f"criterion {self.name!r} does not support structured")
        from pruners.criteria._group import coupled_channel_scores

        scores = coupled_channel_scores(group, self.elementwise)
        return None if scores is None else self.normalize(scores)

    def __call__(self, group: Any) -> torch.Tensor | None:
        """A criterion is a Torch-Pruning importance too (``Group -> Tensor``), so it can be
        handed to ``torch_pruning.pruner.BasePruner(importance=...)`` directly."""
        return self.group_scores(group)

    def head_scores(self, module: nn.Module) -> torch.Tensor | None:
        """Per-head scores of an attention layer (a ``pruners`` attention module).

        Default: :meth:`elementwise` summed over each head's rows of the q/k/v projections
        and its columns of the output projection, then normalised per layer. ``None``: the
        criterion cannot score heads and they are left alone.
        """
        from pruners.criteria._group import head_slice_scores

        return self.normalize(head_slice_scores(module, self.elementwise))

    def normalize(self, scores: torch.Tensor) -> torch.Tensor:
        """Apply ``self.normalizer`` to one layer's / group's scores.

        ``mean`` divides by the mean (Torch-Pruning's default), so layers of different fan-in
        compete fairly in a global ranking; ``none`` keeps raw values (comparable already).
        """
        scores = scores.detach().to(torch.float64)
        if self.normalizer == "mean":
            mean = scores.mean()
            if mean > 0:
                scores = scores / mean
        return scores

    # -- training hooks (no-ops unless the criterion trains something) ----------------
    def attach(self, model: nn.Module) -> None:
        """Insert gates / hooks before training. Build the optimizer after this.

        ``prepare`` on an unattached criterion attaches what it needs itself (standalone
        ``prune``); ``finetune`` calls ``attach`` so that it can train the gates.
        """

    @contextlib.contextmanager
    def suspended(self) -> Iterator[None]:
        """Hooks act as identity inside the block (``prune`` traces the graph in it)."""
        yield

    def trainable_parameters(self) -> list[nn.Parameter]:
        """Extra parameters (gates) the fine-tuning optimizer must train."""
        return []

    def penalty(self, model: nn.Module) -> torch.Tensor | None:
        """Term added to the training loss at every step (L1 on BN scales, group lasso...)."""
        return None

    def after_prune(
        self, model: nn.Module, removed: Mapping[nn.Module, Sequence[int]] | None = None
    ) -> None:
        """Called by ``prune`` after each structural change.

        Args:
            model: The pruned model.
            removed: For every module whose outputs changed, the output-channel indices
                (or, for attention modules, head indices) removed, in the numbering before
                the change. Gates use it to follow their channels.
        """

    def state_dict(self, model: nn.Module) -> dict[str, Any]:
        """What this criterion carries between pruning steps (gates, counters), keyed by
        module names of ``model``: :class:`pruners.Pruner` saves it mid-schedule. Statistics
        recomputed at every scoring are not state."""
        return {}

    def load_state_dict(self, model: nn.Module, state: Mapping[str, Any]) -> None:
        """Restore :meth:`state_dict` on an attached criterion whose model has the same structure."""
        if state:
            raise ValueError(f"criterion {self.name!r} has no state, got keys {sorted(state)}")

    def detach(self, model: nn.Module, fold: bool = True) -> None:
        """Fold gates into the weights and remove every hook: no gate survives export.

        ``fold=False`` drops the gates instead (the weights stay as they are): what a failed
        standalone ``prune`` does, so an error leaves no half-trained gate in the model.
        """
