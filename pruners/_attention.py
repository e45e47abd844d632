"""Multi-head attention whose heads can be removed.

``nn.MultiheadAttention`` ties its inner width to ``embed_dim`` (``head_dim = embed_dim //
num_heads`` and ``F.multi_head_attention_forward`` checks it), so a head cannot be removed
from it, and Torch-Pruning 1.6 only shrinks its ``embed_dim`` (every head by the same number
of dims), never ``num_heads``. Structured pruning therefore swaps each self-attention
``nn.MultiheadAttention`` for :class:`PrunableMultiheadAttention`, which computes exactly the
same function with separate q/k/v projections of width ``num_heads * head_dim``, so removing
a head just slices those projections and the output projection's columns.

The module is a leaf for Torch-Pruning (a customized pruner below), which keeps the
dependency graph from tracing through the per-head reshapes.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch_pruning.pruner.function import BasePruningFunc


class PrunableMultiheadAttention(nn.Module):
    """Drop-in for ``nn.MultiheadAttention`` (no bias_k/v, no zero-attn, kdim=vdim=embed)."""

    # nn.TransformerEncoderLayer reads these to pick its fused fast path (which needs the
    # packed in_proj weights); these values make it take the regular path through forward().
    _qkv_same_embed_dim = False
    in_proj_weight = None
    in_proj_bias = None

    def __init__(
        self,
        embed_dim: int,
        num_heads: int,
        head_dim: int,
        *,
        bias: bool = True,
        batch_first: bool = False,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        self.embed_dim = embed_dim
        self.num_heads = num_heads
        self.head_dim = head_dim
        self.batch_first = batch_first
        self.dropout = dropout
        inner = num_heads * head_dim
        self.q_proj = nn.Linear(embed_dim, inner, bias=bias)
        self.k_proj = nn.Linear(embed_dim, inner, bias=bias)
        self.v_proj = nn.Linear(embed_dim, inner, bias=bias)
        self.out_proj = nn.Linear(inner, embed_dim, bias=bias)

    @classmethod
    def convertible(cls, mha: nn.MultiheadAttention) -> bool:
        return (
            mha._qkv_same_embed_dim
            and mha.bias_k is None
            and mha.bias_v is None
            and not mha.add_zero_attn
            and mha.in_proj_weight is not None
        )

    @classmethod
    @torch.no_grad()
    def from_mha(cls, mha: nn.MultiheadAttention) -> "PrunableMultiheadAttention":
        """An exact copy of ``mha`` (same outputs) as a head-prunable module."""
        e = mha.embed_dim
        has_bias = mha.in_proj_bias is not None
        new = cls(
            e,
            mha.num_heads,
            mha.head_dim,
            bias=has_bias,
            batch_first=mha.batch_first,
            dropout=mha.dropout,
        )
        w = mha.in_proj_weight
        new = new.to(device=w.device, dtype=w.dtype)
        for i, proj in enumerate((new.q_proj, new.k_proj, new.v_proj)):
            proj.weight.copy_(w[i * e : (i + 1) * e])
            if has_bias:
                proj.bias.copy_(mha.in_proj_bias[i * e : (i + 1) * e])
        new.out_proj.weight.copy_(mha.out_proj.weight)
        if new.out_proj.bias is not None:
            new.out_proj.bias.copy_(mha.out_proj.bias)
        new.train(mha.training)
        return new

    def forward(
        self,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        key_padding_mask: torch.Tensor | None = None,
        need_weights: bool = True,
        attn_mask: torch.Tensor | None = None,
        average_attn_weights: bool = True,
        is_causal: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        batched = query.dim() == 3
        if not batched:
            # (L, E) -> (1, L, E)
            query, key, value = query.unsqueeze(0), key.unsqueeze(0), value.unsqueeze(0)
            if key_padding_mask is not None:
                key_padding_mask = key_padding_mask.unsqueeze(0)
        elif not self.batch_first:
            # (L, N, E) -> (N, L, E)
            query, key, value = query.transpose(0, 1), key.transpose(0, 1), value.transpose(0, 1)
        n, lq, _ = query.shape
        lk = key.shape[1]
        h, d = self.num_heads, self.head_dim
        q = self.q_proj(query).view(n, lq, h, d).transpose(1, 2)
        k = self.k_proj(key).view(n, lk, h, d).transpose(1, 2)
        v = self.v_proj(value).view(n, lk, h, d).transpose(1, 2)
        mask = _merge_masks(attn_mask, key_padding_mask, q.dtype, n, h, lq, lk)
        p = self.dropout if self.training else 0.0
        if need_weights:
            scores = q @ k.transpose(-2, -1) / (d**0.5)
            if is_causal and mask is None:
                causal = torch.ones(lq, lk, dtype=torch.bool, device=q.device).tril()
                scores = scores.masked_fill(~causal, float("-inf"))
            if mask is not None:
                scores = scores + mask
            attn = scores.softmax(-1)
            weights = attn
            if p > 0:
                attn = F.dropout(attn, p)
            out = attn @ v
        else:
            out = F.scaled_dot_product_attention(
                q, k, v, attn_mask=mask, dropout_p=p, is_causal=is_causal and mask is None
            )
            weights = None
        out = out.transpose(1, 2).reshape(n, lq, h * d)
        out = self.out_proj(out)
        if not batched:
            out = out.squeeze(0)
        elif not self.batch_first:
            out = out.transpose(0, 1)
        if weights is not None:
            if average_attn_weights:
                weights = weights.mean(1)
            if not batched:
                weights = weights.squeeze(0)
        return out, weights

    @torch.no_grad()
    def remove_heads(self, heads: Sequence[int]) -> None:
        """Physically remove ``heads`` (indices into the current heads)."""
        drop = set(int(i) for i in heads)
        keep = [i for i in range(self.num_heads) if i not in drop]
        if not keep:
            raise ValueError("cannot remove every head of an attention layer")
        d = self.head_dim
        rows = torch.cat([torch.arange(i * d, (i + 1) * d) for i in keep])
        for proj in (self.q_proj, self.k_proj, self.v_proj):
            proj.weight = nn.Parameter(proj.weight[rows].clone())
            if proj.bias is not None:
                proj.bias = nn.Parameter(proj.bias[rows].clone())
            proj.out_features = len(rows)
        self.out_proj.weight = nn.Parameter(self.out_proj.weight[:, rows].clone())
        self.out_proj.in_features = len(rows)
        self.num_heads = len(keep)


def _merge_masks(attn_mask, key_padding_mask, dtype, n, h, lq, lk):
    """Additive float mask of shape broadcastable to (n, h, lq, lk), or None."""
    mask = None
    if attn_mask is not None:
        m = attn_mask
        if m.dtype == torch.bool:
            m = torch.zeros_like(m, dtype=dtype).masked_fill(m, float("-inf"))
        m = m.to(dtype)
        if m.dim() == 3:  # (n*h, lq, lk)
            m = m.view(n, h, lq, lk)
        mask = m
    if key_padding_mask is not None:
        k = key_padding_mask
        if k.dtype == torch.bool:
            k = torch.zeros_like(k, dtype=dtype).masked_fill(k, float("-inf"))
        k = k.to(dtype).view(n, 1, 1, lk)
        mask = k if mask is None else mask + k
    return mask


class PrunableMultiheadAttentionPruner(BasePruningFunc):
    """Torch-Pruning handler: the embedding width (inputs of q/k/v, outputs of out_proj).

    Like Torch-Pruning's own MHA handler, inputs and outputs are one axis (the residual
    stream), so pruning one prunes the other.
    """

    def prune_out_channels(self, layer: PrunableMultiheadAttention, idxs: Sequence[int]):
        keep = sorted(set(range(layer.embed_dim)) - set(int(i) for i in idxs))
        for proj in (layer.q_proj, layer.k_proj, layer.v_proj):
            proj.weight = self._prune_parameter_and_grad(proj.weight, keep, 1)
            proj.in_features = len(keep)
        out = layer.out_proj
        out.weight = self._prune_parameter_and_grad(out.weight, keep, 0)
        if out.bias is not None:
            out.bias = self._prune_parameter_and_grad(out.bias, keep, 0)
        out.out_features = len(keep)
        layer.embed_dim = len(keep)
        return layer

    prune_in_channels = prune_out_channels

    def get_out_channels(self, layer: PrunableMultiheadAttention) -> int:
        return layer.embed_dim

    def get_in_channels(self, layer: PrunableMultiheadAttention) -> int:
        return layer.embed_dim


def convert_attention(model: nn.Module) -> list[str]:
    """Replace every convertible ``nn.MultiheadAttention`` in ``model``; return their names."""
    converted = []
    for name, module in list(model.named_modules()):
        for child_name, child in list(module.named_children()):
            if isinstance(child, nn.MultiheadAttention) and PrunableMultiheadAttention.convertible(
                child
            ):
                setattr(module, child_name, PrunableMultiheadAttention.from_mha(child))
                converted.append(f"{name}.{child_name}" if name else child_name)
    return converted
