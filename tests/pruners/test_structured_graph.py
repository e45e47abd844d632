"""The dependency-graph workarounds of ``pruners._graph`` on small hand-built models.

Each model isolates one pattern Torch-Pruning maps wrongly or not at all (a channel
shuffle, a chunk feeding a concatenation, a layer scale, a token attention module), and
each test checks the outcome that matters: the right layers keep their width, the pruned
model still runs, and channels made to contribute nothing are removed without changing
the outputs.
"""

from __future__ import annotations

import importlib

import pytest
import torch
import torch_pruning as tp
from torch import nn
from torch_pruning.dependency import graph as tp_graph

import pruners
from pruners import _graph, _removal

structured = importlib.import_module("pruners.structured")


def _prune(model: nn.Module, x: torch.Tensor, amount: float = 0.5, **kw):
    return pruners.prune(model, criterion="magnitude", granularity="structured", amount=amount,
                         example_inputs=x, **kw)


# ------------------------------------------------------------------------------ reshapes
@pytest.mark.parametrize(
    "in_shape,out_shape,channels,kind",
    [
        ([1, 8, 4, 4], [1, 128], 8, "torch_pruning"),  # flatten before a classifier
        ([1, 8, 1, 1], [1, 8], 8, "identity"),  # pooled flatten
        ([8], [1, 8, 1, 1], 8, "identity"),  # layer scale gamma.view(1, -1, 1, 1)
        ([1, 8, 4, 4], [1, 8, 16], 8, "identity"),  # ViT patches: (N, C, H, W) -> (N, C, HW)
        ([1, 14, 14, 8], [4, 7, 7, 8], 8, "identity"),  # window partition, channels last
        ([1, 8, 4, 4], [1, 2, 4, 4, 4], 8, "barrier"),  # channel shuffle, split
        ([1, 4, 2, 4, 4], [1, 8, 4, 4], 8, "barrier"),  # channel shuffle, merge
        ([1, 4, 4, 8], [1, 128], 8, "barrier"),  # channels-last flatten: c is not a run
        ([1, 8, 4, 4], [1, 128], None, "barrier"),  # channel count unknown
    ],
)
def test_reshapes_are_classified_from_their_shapes(in_shape, out_shape, channels, kind):
    assert _graph._classify_reshape(in_shape, out_shape, channels) == kind


# ------------------------------------------------------------------------------ shuffle
def channel_shuffle(x: torch.Tensor, groups: int) -> torch.Tensor:
    n, c, h, w = x.shape
    return x.view(n, groups, c // groups, h, w).transpose(1, 2).reshape(n, c, h, w)


class ShuffleBlock(nn.Module):
    """ShuffleNet-V2's stride-1 unit: half the channels pass, half go through a branch."""

    def __init__(self, c: int, mid: int) -> None:
        super().__init__()
        half = c // 2
        self.branch = nn.Sequential(
            nn.Conv2d(half, mid, 1, bias=False), nn.BatchNorm2d(mid), nn.ReLU(),
            nn.Conv2d(mid, mid, 3, padding=1, groups=mid, bias=False), nn.BatchNorm2d(mid),
            nn.Conv2d(mid, half, 1, bias=False), nn.BatchNorm2d(half), nn.ReLU(),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x1, x2 = x.chunk(2, dim=1)
        return channel_shuffle(torch.cat((x1, self.branch(x2)), dim=1), 2)


class ShuffleNetLike(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU())
        self.blocks = nn.Sequential(ShuffleBlock(16, 12), ShuffleBlock(16, 12))
        self.head = nn.Sequential(nn.Conv2d(16, 32, 1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.fc = nn.Linear(32, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.head(self.blocks(self.stem(x))))


def test_torch_pruning_alone_fails_on_shufflenet():
    """The reason for the workaround (if Torch-Pruning learns shuffles, this can go)."""
    import torchvision

    model = torchvision.models.shufflenet_v2_x0_5().eval()
    with pytest.raises(ZeroDivisionError):
        tp.DependencyGraph().build_dependency(model, example_inputs=torch.randn(1, 3, 32, 32), verbose=False)


def test_channel_shuffle_keeps_the_shuffled_width_and_prunes_the_rest():
    model = ShuffleNetLike().eval()
    x = torch.randn(2, 3, 8, 8)
    report = _prune(model, x[:1])
    assert model(x).shape == (2, 5)
    # The stream through the chunks and shuffles (stem, each branch's last conv) is left
    # alone; the branches' inner width and the head conv are pruned.
    assert len(report.layers) == 3
    assert model.stem[0].out_channels == 16
    assert all(b.branch[5].out_channels == 8 for b in model.blocks)
    assert all(b.branch[0].out_channels < 12 for b in model.blocks)
    assert model.head[0].out_channels < 32
    assert report.achieved == pytest.approx(0.5, abs=0.02)


# ------------------------------------------------------------------------------ chunk -> cat
class ChunkCat(nn.Module):
    """A chunk whose first half goes straight into a concatenation (split sizes guessed wrong)."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Sequential(nn.Conv2d(3, 8, 1, bias=False), nn.BatchNorm2d(8), nn.ReLU())
        self.b = nn.Sequential(nn.Conv2d(4, 6, 3, padding=1, bias=False), nn.BatchNorm2d(6), nn.ReLU())
        self.c = nn.Sequential(nn.Conv2d(10, 12, 1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.fc = nn.Linear(12, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x1, x2 = self.a(x).chunk(2, dim=1)
        return self.fc(self.c(torch.cat((x1, self.b(x2)), dim=1)))


@torch.no_grad()
def test_a_chunk_keeps_its_input_and_the_concat_after_it_maps_exactly():
    """The chunk's parts are the model code's (halves of the current width): `a` stays.
    `b` reaches the concatenation behind the chunk's first half, whose width Torch-Pruning
    would infer as `a`'s (8, not 4): it must remove b's channels at offset 4."""
    model = ChunkCat().eval()
    x = torch.randn(2, 3, 6, 6)
    model.b[0].weight[3] = 0  # silence b's channel 3 everywhere
    model.b[1].weight[3] = model.b[1].bias[3] = 0
    model.c[0].weight[:, 4 + 3] = 0  # b's channel 3 is the concat's channel 4 + 3
    before = model(x)
    report = _prune(model, x[:1], amount=1e-12, threshold_rule="absolute")
    assert report.units_before - report.units_after == 1
    assert {layer.name for layer in report.layers} == {"b.0", "c.0"}  # not a.0
    assert (model.a[0].out_channels, model.b[0].out_channels, model.c[0].in_channels) == (8, 5, 9)
    torch.testing.assert_close(model(x), before)
    report = _prune(model, x[:1], amount=0.5)
    assert model.a[0].out_channels == 8 and model(x).shape == (2, 3)


# ------------------------------------------------------------------------------ layer scale
class LayerScaleNet(nn.Module):
    """ConvNeXt's layer scale on a residual stream: a free parameter reshaped to (1, C, 1, 1)."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8))
        self.body = nn.Sequential(nn.Conv2d(8, 16, 1), nn.ReLU(), nn.Conv2d(16, 8, 1))
        self.gamma = nn.Parameter(torch.rand(8) + 0.5)
        self.fc = nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        x = x + self.body(x) * self.gamma.view(1, -1, 1, 1)
        return self.fc(x.mean((2, 3)))


@torch.no_grad()
def test_layer_scale_loses_the_channels_of_its_stream():
    model = LayerScaleNet().eval()
    x = torch.randn(2, 3, 5, 5)
    c = 5  # a stream channel, silenced everywhere
    model.stem[0].weight[c] = 0
    model.stem[1].weight[c] = model.stem[1].bias[c] = 0
    model.body[0].weight[:, c] = 0
    model.body[2].weight[c] = model.body[2].bias[c] = 0
    model.gamma[c] = 0
    model.fc.weight[:, c] = 0
    before = model(x)
    report = _prune(model, x[:1], amount=1e-12, threshold_rule="absolute")
    assert report.units_before - report.units_after == 1
    assert model.gamma.shape == (7,) and model.stem[0].out_channels == 7
    torch.testing.assert_close(model(x), before)


# ------------------------------------------------------------------------------ attention
class WindowAttention(nn.Module):
    """Multi-head attention written out (as Swin / timm do), with a relative position table."""

    def __init__(self, dim: int, num_heads: int, tokens: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.relative_position_bias_table = nn.Parameter(torch.randn(num_heads, tokens, tokens) * 0.02)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.num_heads, c // self.num_heads).permute(2, 0, 3, 1, 4).unbind(0)
        attn = (q @ k.transpose(-2, -1)) * (c // self.num_heads) ** -0.5 + self.relative_position_bias_table
        return self.proj((attn.softmax(-1) @ v).transpose(1, 2).reshape(b, n, c))


class TinyTransformer(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Conv2d(3, 16, 2, stride=2)
        self.norm1 = nn.LayerNorm(16)
        self.attn = WindowAttention(16, 4, 9)
        self.norm2 = nn.LayerNorm(16)
        self.mlp = nn.Sequential(nn.Linear(16, 64), nn.GELU(), nn.Linear(64, 16))
        self.fc = nn.Linear(16, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.embed(x).flatten(2).transpose(1, 2)
        x = x + self.attn(self.norm1(x))
        x = x + self.mlp(self.norm2(x))
        return self.fc(x.mean(1))


def test_token_attention_is_found_innermost_and_by_its_heads():
    class Outer(nn.Module):  # holds an attention module and an MLP: not a leaf itself
        def __init__(self) -> None:
            super().__init__()
            self.n_heads = 2
            self.attn = WindowAttention(8, 2, 4)
            self.mlp = nn.Linear(8, 8)

    class ChannelAttention(nn.Module):  # squeeze-excitation: no heads, stays traced
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Conv2d(8, 8, 1)

    model = nn.Sequential(Outer(), ChannelAttention(), nn.MultiheadAttention(8, 2))
    assert _graph.token_attention_types(model, (nn.MultiheadAttention,)) == [WindowAttention]


@torch.no_grad()
def test_token_attention_is_one_node_left_whole_and_its_mlp_is_pruned():
    model = TinyTransformer().eval()
    x = torch.randn(2, 3, 6, 6)
    y = model(x)
    dg = structured.build_dependency_graph(model, x[:1])
    # One node for the whole attention module: nothing inside it was traced.
    assert model.attn in dg.module2node and model.attn in dg.fixed
    assert [n.module for n in dg.module2node[model.attn].inputs] == [model.norm1]
    assert not any(isinstance(m, tp.ops._UnbindOp) for m in dg.module2node)
    assert "forward" not in vars(model.attn)  # the tracing forward is gone again
    torch.testing.assert_close(model(x), y)

    report = _prune(model, x[:1])
    assert [layer.name for layer in report.layers] == ["mlp.0"]
    assert model.mlp[0].out_features == 32 and model.attn.qkv.out_features == 48
    assert model.attn.relative_position_bias_table.shape == (4, 9, 9)
    assert model(x).shape == (2, 3)


# ------------------------------------------------------------------------------ speed
def test_mappings_are_frozen_only_while_groups_are_collected():
    model = ChunkCat().eval()
    dg = structured.build_dependency_graph(model, torch.randn(1, 3, 4, 4))
    original = tp_graph.index_mapping
    groups = _graph.collect_groups(dg, [], [nn.Conv2d, nn.Linear])
    first = next(groups)
    assert dg.mappings_frozen and tp_graph.index_mapping is original  # swapped per call only
    rest = list(groups)
    assert not dg.mappings_frozen and tp_graph.index_mapping is original
    assert len([first, *rest]) == 4  # a, b, c, fc


def test_groups_without_root_indices_go_through_torch_pruning_one_by_one(monkeypatch):
    model = ShuffleNetLike().eval()
    x = torch.randn(1, 3, 8, 8)
    reference = ShuffleNetLike().eval()
    reference.load_state_dict(model.state_dict())
    calls = []
    real = _removal._remove_one_by_one

    def spy(dg, plans):
        calls.append(len(plans))
        return real(dg, plans)

    monkeypatch.setattr(_removal, "_has_plain_roots", lambda group: False)
    monkeypatch.setattr(_removal, "_remove_one_by_one", spy)
    report = _prune(model, x)
    assert calls == [3] and model(x).shape == (1, 5)
    monkeypatch.undo()
    # Same choices, same result as cutting every layer once.
    assert _prune(reference, x).to_dict() == report.to_dict()
    for a, b in zip(model.state_dict().values(), reference.state_dict().values()):
        torch.testing.assert_close(a, b)
