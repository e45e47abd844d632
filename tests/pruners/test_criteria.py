"""Contract tests over the criterion registry: every criterion x granularity it supports.

A new criterion registered in ``pruners.criteria`` is tested here for free (timm-style).
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

import pruners
from pruners.criteria import CRITERIA, Criterion, make_criterion
from tests.pruners.models import (
    MLP,
    ResidualCNN,
    TinyTransformer,
    cnn_batch,
    mlp_batch,
    transformer_batch,
)

MODELS = {
    "cnn": (ResidualCNN, cnn_batch),
    "mlp": (MLP, mlp_batch),
}
# Keep gate training short in tests; the contract does not depend on its length.
FAST = {"attention": {"gate_steps": 3}, "adaptive_attention": {"gate_steps": 3}, "multilevel_attention": {"gate_steps": 3}}

CASES = [
    (name, gran, model)
    for name in pruners.list_criteria()
    for gran in pruners.criterion_granularities(name)
    for model in sorted(MODELS)
]


def _crit(name: str) -> Criterion:
    return make_criterion(name, **FAST.get(name, {}))


def _calibration(batch, n=2):
    return [batch(seed=i) for i in range(n)]


def _params(m: nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


def test_registry_lists_every_method_of_the_spec():
    assert set(pruners.list_criteria()) >= {
        "adaptive_attention",
        "attention",
        "gradient",
        "l2_penalty",
        "layer_norm",
        "magnitude",
        "multilevel_attention",
        "random",
        "sensitivity",
        "slimming",
        "taylor",
    }


def test_granularities_say_which_are_structured_only():
    structured_only = {n for n in pruners.list_criteria() if pruners.criterion_granularities(n) == ("structured",)}
    assert structured_only == {"adaptive_attention", "attention", "multilevel_attention", "slimming", "l2_penalty"}
    for n in set(pruners.list_criteria()) - structured_only:
        assert pruners.criterion_granularities(n) == ("unstructured", "structured")


@pytest.mark.parametrize("name,gran,model", CASES)
def test_scores_are_finite_and_sized(name, gran, model):
    build, batch = MODELS[model]
    m = build()
    x, _ = batch()
    scores = pruners.score(m, criterion=_crit(name), granularity=gran, example_inputs=x, calibration=_calibration(batch))
    assert scores
    for layer, s in scores.items():
        assert s.dim() == 1 and s.numel() > 0, layer
        assert torch.isfinite(s).all(), layer
    if gran == "unstructured":
        modules = dict(m.named_modules())
        assert sum(s.numel() for s in scores.values()) == sum(modules[n].weight.numel() for n in scores)


@pytest.mark.parametrize("name,gran,model", CASES)
def test_prune_reaches_the_requested_amount(name, gran, model):
    build, batch = MODELS[model]
    m = build()
    x, _ = batch()
    out_shape = m(x).shape
    params = _params(m)
    dense = pruners.measure(m, x[:1], latency_repeats=1, warmup=0)
    shapes = {n: mod.weight.shape for n, mod in m.named_modules() if isinstance(mod, (nn.Conv2d, nn.Linear))}
    crit = _crit(name)
    r = pruners.prune(
        m,
        criterion=crit,
        granularity=gran,
        amount=0.5,
        example_inputs=x,
        calibration=_calibration(batch),
    )
    removed = r.units_before - r.units_after
    requested = round(0.5 * r.units_before)
    assert r.requested_fraction == pytest.approx(requested / r.units_before)
    # Within one unit; a layer the ranking would empty keeps its best unit, one more each.
    kept_alive = sum(1 for layer in r.layers if layer.units_after == 1)
    assert abs(removed - requested) <= max(1, kept_alive), (removed, requested)
    assert r.achieved == pytest.approx(removed / r.units_before)
    assert sum(layer.units_before - layer.units_after for layer in r.layers) == removed

    y = m(x)
    assert y.shape == out_shape and torch.isfinite(y).all()
    if gran == "structured":
        assert _params(m) < params
        now = {n: mod.weight.shape for n, mod in m.named_modules() if isinstance(mod, (nn.Conv2d, nn.Linear))}
        assert any(now[n] != shapes[n] for n in shapes)
    else:
        masked = [mod for mod in m.modules() if hasattr(mod, "weight_mask")]
        assert masked
        zeros = sum(int((mod.weight == 0).sum()) for mod in masked)
        assert zeros == removed
        now = {n: mod.weight.shape for n, mod in m.named_modules() if isinstance(mod, (nn.Conv2d, nn.Linear))}
        assert now == shapes
    # an instance stays attached (finetune owns it); detaching leaves only torch's masks
    crit.detach(m)
    assert m(x).shape == out_shape
    for mod in m.modules():
        assert not mod._forward_hooks
        assert all(type(h).__module__.startswith("torch.nn.utils.prune") for h in mod._forward_pre_hooks.values())

    # What the pruning buys, as the trials measure it.
    after = pruners.measure(m, x[:1], latency_repeats=1, warmup=0)
    if gran == "structured":
        assert after.flops < dense.flops and after.params < dense.params
    else:
        assert after.flops == dense.flops and after.params == dense.params
        assert after.flops_sparse < dense.flops_sparse and after.size_bytes < dense.size_bytes
        assert after.params_nonzero == dense.params_nonzero - removed


@pytest.mark.parametrize(
    "name",
    [n for n in pruners.list_criteria() if "unstructured" not in pruners.criterion_granularities(n)],
)
def test_structured_only_criteria_refuse_unstructured(name):
    m = MLP()
    x, _ = mlp_batch()
    with pytest.raises(ValueError, match="does not support unstructured"):
        pruners.prune(m, criterion=name, granularity="unstructured", amount=0.5, example_inputs=x, calibration=[mlp_batch()])


@pytest.mark.parametrize("name", [n for n in pruners.list_criteria() if CRITERIA.get(n).needs_calibration])
def test_data_driven_criteria_need_calibration(name):
    m = MLP()
    x, _ = mlp_batch()
    with pytest.raises(ValueError, match="calibration"):
        pruners.prune(m, criterion=name, granularity="structured", amount=0.5, example_inputs=x)


def test_unknown_parameter_lists_allowed():
    with pytest.raises(ValueError, match="allowed: normalizer, p"):
        make_criterion("magnitude", q=3)
    with pytest.raises(ValueError, match="p must be 1 or 2"):
        make_criterion("magnitude", p=3)
    with pytest.raises(ValueError, match="valid choices"):
        make_criterion("magnitudes")


@pytest.mark.parametrize(
    "name,params,match",
    [
        ("slimming", {"warmup_steps": 2.5}, "warmup_steps must be an integer >= 0, got 2.5"),
        ("l2_penalty", {"warmup_steps": -1}, "warmup_steps must be an integer >= 0"),
        ("attention", {"gate_init": "high"}, "gate_init must be a finite number"),
        ("attention", {"heads": "yes"}, "heads must be true or false"),
        ("adaptive_attention", {"gate_lr": float("nan")}, "gate_lr must be a number >= 0"),
        ("multilevel_attention", {"gate_steps": 1.5}, "gate_steps must be an integer >= 0"),
        ("slimming", {"penalty": -1}, "penalty must be a number >= 0"),
    ],
)
def test_bad_parameter_values_say_what_is_allowed(name, params, match):
    with pytest.raises(ValueError, match=match):
        make_criterion(name, **params)


def test_magnitude_unstructured_removes_the_smallest_weights():
    m = MLP()
    x, _ = mlp_batch()
    dense = {n: mod.weight.detach().clone() for n, mod in m.named_modules() if isinstance(mod, nn.Linear)}
    pruners.prune(m, criterion="magnitude", granularity="unstructured", amount=0.3, example_inputs=x)
    kept = torch.cat([dense[n][mod.weight_mask.bool()].abs() for n, mod in m.named_modules() if hasattr(mod, "weight_mask")])
    gone = torch.cat([dense[n][~mod.weight_mask.bool()].abs() for n, mod in m.named_modules() if hasattr(mod, "weight_mask")])
    assert gone.max() <= kept.min()


def test_magnitude_structured_scores_are_filter_norms():
    m = MLP()
    x, _ = mlp_batch()
    s = pruners.score(m, criterion=make_criterion("magnitude", p=1, normalizer="none"), granularity="structured", example_inputs=x)
    lin2 = m.net[4]
    # The second hidden layer's group: its rows (outputs) and the classifier's columns.
    expect = (lin2.weight.abs().sum(1) + m.net[6].weight.abs().sum(0)) / 2
    assert torch.allclose(s["net.4"].float(), expect.detach(), atol=1e-6)


def test_magnitude_head_scores_are_head_norms_over_their_layer_mean():
    m = TinyTransformer()
    x, _ = transformer_batch()
    s = pruners.score(m, criterion="magnitude", granularity="structured", example_inputs=x)["block.self_attn"]
    attn = m.block.self_attn  # converted by score(), same weights
    h, d = attn.num_heads, attn.head_dim
    sq = sum(p.weight.detach().reshape(h, d, -1).pow(2).sum((1, 2)) for p in (attn.q_proj, attn.k_proj, attn.v_proj))
    sq = sq + attn.out_proj.weight.detach().reshape(-1, h, d).pow(2).sum((0, 2))
    norms = sq.sqrt().double()
    assert torch.allclose(s, norms / norms.mean())


def test_grouped_conv_input_channels_score_their_own_groups_filters():
    from pruners.criteria._group import layer_slice_scores

    conv = nn.Conv2d(4, 6, 3, groups=2, bias=False)
    got = layer_slice_scores(conv, False, lambda m, name: m.weight.detach().abs())
    w = conv.weight.detach().abs()  # (6, 2, 3, 3): filters 0-2 read inputs 0-1, filters 3-5 inputs 2-3
    assert torch.allclose(got, torch.cat([w[:3].sum((0, 2, 3)), w[3:].sum((0, 2, 3))]).double())


def test_random_is_reproducible_and_seeded():
    x, _ = mlp_batch()
    a = pruners.score(MLP(), criterion=make_criterion("random", seed=3), granularity="unstructured", example_inputs=x)
    b = pruners.score(MLP(), criterion=make_criterion("random", seed=3), granularity="unstructured", example_inputs=x)
    c = pruners.score(MLP(), criterion=make_criterion("random", seed=4), granularity="unstructured", example_inputs=x)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)


def test_random_structured_scores_are_uniform_whatever_the_fan_in():
    m = MLP()  # net.1 reads 64 inputs, net.4 32: summed draws would rank by width
    x, _ = mlp_batch()
    scores = pruners.score(m, criterion="random", granularity="structured", example_inputs=x)
    assert all(((s >= 0) & (s < 1)).all() for s in scores.values())
    r = pruners.prune(m, criterion="random", granularity="structured", amount=0.5, example_inputs=x)
    # Half of the 64 channels go, drawn from both layers (neither is emptied).
    assert r.units_after == 32
    assert all(8 <= layer.units_after <= 24 for layer in r.layers), r.layers


def test_taylor_is_weight_times_gradient():
    m = MLP()
    x, y = mlp_batch()
    crit = make_criterion("taylor")
    s = pruners.score(m, criterion=crit, granularity="unstructured", example_inputs=x, calibration=[(x, y)])
    m.eval()
    loss = nn.functional.cross_entropy(m(x), y)
    g = torch.autograd.grad(loss, m.net[1].weight)[0]
    assert torch.allclose(s["net.1"], (g * m.net[1].weight).abs().flatten().detach(), atol=1e-7)


def test_taylor_structured_is_the_squared_sum_over_each_units_parameters():
    """Molchanov et al. 2019: a channel scores mean_b (sum of theta * dL_b/dtheta over every
    parameter that goes with it: its filter and bias, its BatchNorm scale and shift, the next
    layers' input columns)^2. Checked against a brute-force sum over the group's slices."""
    from pruners.structured import build_dependency_graph as _build_graph

    torch.manual_seed(0)
    model = ResidualCNN(width=6).eval()
    batches = [cnn_batch(8, seed=i) for i in range(2)]
    crit = make_criterion("taylor", normalizer="none")
    crit.prepare(model, batches)
    products = []
    for x, y in batches:
        model.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        products.append({m: {k: (p.detach() * p.grad) for k, p in m.named_parameters(recurse=False)}
                         for m in model.modules()})
    dg = _build_graph(model, batches[0][0][:1])
    checked = 0
    for group in dg.get_all_groups(root_module_types=[nn.Conv2d, nn.Linear]):
        n = len(group[0].idxs)
        brute = torch.zeros(n, dtype=torch.float64)
        for prod in products:
            unit = torch.zeros(n, dtype=torch.float64)
            for item in group:
                layer = item.dep.target.module
                if not isinstance(layer, nn.Module) or not prod.get(layer):
                    continue
                out = dg.is_out_channel_pruning_fn(item.dep.handler)
                for i, r in zip(item.idxs, item.root_idxs):
                    w = prod[layer]["weight"]
                    unit[r] += float(w[i].sum() if out or w.dim() == 1 else w[:, i].sum())
                    if out and "bias" in prod[layer]:
                        unit[r] += float(prod[layer]["bias"][i])
            brute += unit ** 2
        torch.testing.assert_close(crit.group_scores(group), brute / len(products), rtol=1e-4, atol=1e-12)
        checked += 1
    assert checked >= 3


def test_taylor_sums_a_units_contributions_before_squaring():
    """Two hidden units: unit 0's weights pull against each other (x = [1, 1], w = [a, -a]),
    so removing the whole unit costs nothing to first order although each weight alone
    matters; unit 1's small weights pull together. Molchanov's (sum w g)^2 prunes unit 0;
    a sum of |w g| (the former score) would prune unit 1."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(2, 2, bias=False), nn.Tanh(), nn.Linear(2, 3))
    with torch.no_grad():
        model[0].weight.copy_(torch.tensor([[2.0, -2.0], [0.1, 0.1]]))
        model[2].weight.copy_(torch.tensor([[1.0, 1.0], [-1.0, -1.0], [0.5, 0.5]]))  # same pull on both
    x = torch.ones(6, 2)
    y = torch.tensor([0, 1, 2, 0, 1, 2])
    taylor = pruners.score(model, criterion=make_criterion("taylor", normalizer="none"), granularity="structured",
                           example_inputs=x[:1], calibration=[(x, y)])["0"]
    model.zero_grad()
    nn.functional.cross_entropy(model(x), y).backward()
    wg = model[0].weight.detach() * model[0].weight.grad
    abs_form = wg.abs().sum(1)  # the old per-channel score
    assert abs_form[0] > abs_form[1]
    assert taylor[0] < 1e-12 < taylor[1]
    report = pruners.prune(model, criterion="taylor", granularity="structured", amount=0.5,
                           example_inputs=x[:1], calibration=[(x, y)])
    assert report.units_after == 1
    assert torch.allclose(model[0].weight, torch.tensor([[0.1, 0.1]]))


def test_sensitivity_scores_sum_to_one_over_the_network():
    m = MLP()
    x, y = mlp_batch()
    crit = make_criterion("sensitivity")
    crit.prepare(m, [(x, y)])
    total = sum(float(crit.elementwise(mod, "weight").sum()) for mod in m.modules() if isinstance(mod, nn.Linear))
    assert total == pytest.approx(1.0)


def test_sensitivity_of_the_surviving_weights_sums_to_one():
    m = MLP()
    x, y = mlp_batch()
    pruners.prune(m, criterion="magnitude", granularity="unstructured", amount=0.5, example_inputs=x)
    crit = make_criterion("sensitivity")
    crit.prepare(m, [(x, y)])
    alive = [
        crit.elementwise(mod, "weight") * getattr(mod, "weight_mask", torch.ones(())).cpu()
        for mod in m.modules()
        if isinstance(mod, nn.Linear)
    ]
    assert sum(float(s.sum()) for s in alive) == pytest.approx(1.0)


def test_slimming_penalty_and_scores_use_batchnorm_scales():
    m = ResidualCNN()
    with torch.no_grad():
        m.bn1.weight.copy_(torch.arange(1.0, 9.0))
    crit = make_criterion("slimming", penalty=0.5)
    pen = crit.penalty(m)
    gammas = sum(float(mod.weight.detach().abs().sum()) for mod in m.modules() if isinstance(mod, nn.BatchNorm2d))
    assert float(pen.detach()) == pytest.approx(0.5 * gammas)
    x, _ = cnn_batch()
    s = pruners.score(m, criterion=crit, granularity="structured", example_inputs=x)
    assert torch.allclose(s["conv1"].float(), torch.arange(1.0, 9.0))
    r = pruners.prune(m, criterion=crit, granularity="structured", amount=0.5, scope="layerwise", example_inputs=x)
    assert m.conv1.out_channels == 4
    assert [layer for layer in r.layers if layer.name == "conv1"][0].units_after == 4


def test_l2_penalty_is_group_lasso_and_spares_the_classifier():
    m = MLP()
    crit = make_criterion("l2_penalty", penalty=2.0)
    expect = 2.0 * sum(float(mod.weight.detach().norm(dim=1).sum()) for mod in (m.net[1], m.net[4]))
    assert float(crit.penalty(m).detach()) == pytest.approx(expect, rel=1e-5)
    with torch.no_grad():
        m.net[1].weight[:5] = 0  # five dead channels must be the first to go
    x, _ = mlp_batch()
    pruners.prune(m, criterion=crit, granularity="structured", amount=5 / 32, scope="layerwise", example_inputs=x)
    assert m.net[1].out_features == 27
    assert (m.net[1].weight.norm(dim=1) > 0).all()


def test_layer_norm_empties_the_weakest_layer_first():
    m = MLP()
    with torch.no_grad():
        m.net[4].weight.mul_(1e-3)  # the second hidden layer is by far the weakest
    x, _ = mlp_batch()
    n4 = m.net[4].weight.numel()
    total = m.net[1].weight.numel() + n4
    r = pruners.prune(m, criterion="layer_norm", granularity="unstructured", amount=(n4 - 10) / total, example_inputs=x)
    by_name = {layer.name: layer for layer in r.layers}
    assert by_name["net.1"].units_after == by_name["net.1"].units_before
    assert by_name["net.4"].units_after == 10


# --------------------------------------------------------------------------- attention
GATED = ["attention", "adaptive_attention", "multilevel_attention"]


def _hooks(m: nn.Module) -> int:
    return sum(len(mod._forward_hooks) + len(mod._forward_pre_hooks) for mod in m.modules())


@pytest.mark.parametrize("name", GATED)
@pytest.mark.parametrize("model", ["cnn", "transformer"])
def test_detach_folds_gates_exactly(name, model):
    build, batch = {"cnn": (ResidualCNN, cnn_batch), "transformer": (TinyTransformer, transformer_batch)}[model]
    m = build().eval()
    x, y = batch()
    crit = make_criterion(name, gate_steps=5, gate_lr=0.5)
    crit.prepare(m, [(x, y)])  # attaches and trains the gates
    assert crit.attached and _hooks(m) > 0
    gates = crit.trainable_parameters()
    assert gates and any(float((torch.sigmoid(g.detach()) - torch.sigmoid(torch.tensor(3.0))).abs().max()) > 1e-3 for g in gates)
    if model == "transformer":
        assert crit.head_gates  # one gate per head of the converted attention
    param_names = [n for n, _ in m.named_parameters()]
    with torch.no_grad():
        gated = m(x)
    crit.detach(m)
    assert _hooks(m) == 0
    assert [n for n, _ in m.named_parameters()] == param_names  # no gate left in the model
    with torch.no_grad():
        assert torch.allclose(m(x), gated, atol=1e-5)


def test_named_gate_criterion_is_detached_by_prune():
    m = ResidualCNN().eval()
    x, y = cnn_batch()
    pruners.prune(m, criterion="attention", granularity="structured", amount=0.5, example_inputs=x, calibration=[(x, y)])
    assert _hooks(m) == 0
    assert m(x).shape == (8, 10)


@pytest.mark.parametrize("name", GATED)
def test_a_failed_prune_leaves_the_model_as_it_was(name):
    m = ResidualCNN().eval()
    x, y = cnn_batch()
    before = {k: v.clone() for k, v in m.state_dict().items()}
    broken = [(x, y), (x[:, :, :2, :2], y[:3])]  # the second batch fails after a gate step
    with pytest.raises(Exception):
        pruners.prune(m, criterion=name, granularity="structured", amount=0.5, example_inputs=x,
                      calibration=broken)
    assert _hooks(m) == 0
    assert all(torch.equal(before[k], v) for k, v in m.state_dict().items())


@pytest.mark.parametrize("name", GATED)
def test_score_with_a_named_gate_criterion_leaves_the_weights_alone(name):
    m = TinyTransformer().eval()
    x, y = transformer_batch()
    before = {k: v.clone() for k, v in m.state_dict().items()}
    scores = pruners.score(m, criterion=name, granularity="structured", example_inputs=x, calibration=[(x, y)])
    assert scores and _hooks(m) == 0
    after = m.state_dict()  # attention converted (same function): out_proj kept its name
    assert "block.self_attn.out_proj.weight" in after
    assert all(torch.equal(before[k], after[k]) for k in before if k in after)


def test_gates_follow_pruned_channels_and_attention_freezes():
    x, y = cnn_batch()
    for name, adaptive in (("attention", False), ("adaptive_attention", True)):
        net = ResidualCNN().eval()
        crit = make_criterion(name, gate_steps=3)
        crit.attach(net)
        pruners.prune(net, criterion=crit, granularity="structured", amount=0.5, example_inputs=x, calibration=[(x, y)])
        assert crit.attached  # an instance stays attached: finetune owns it
        assert crit.channel_gates[net.conv1].numel() == net.conv1.out_channels
        assert net(x).shape == (8, 10)
        assert bool(crit.trainable_parameters()) == adaptive
        assert (crit.penalty(net) is not None) == adaptive
        crit.detach(net)


def test_surviving_gates_are_those_of_the_surviving_channels():
    net = ResidualCNN().eval()
    x, y = cnn_batch()
    crit = make_criterion("adaptive_attention", gate_steps=0)
    crit.attach(net)
    alphas = torch.tensor([0.5, -1.0, 2.0, 0.1, -2.0, 1.5, 0.0, 3.0])
    with torch.no_grad():
        crit.channel_gates[net.conv1].copy_(alphas)
    pruners.prune(net, criterion=crit, granularity="structured", amount=0.5, scope="layerwise",
                  example_inputs=x, calibration=[(x, y)])
    # conv1 keeps its four highest gates, each still with its own channel (original order).
    assert crit.channel_gates[net.conv1].detach().tolist() == [0.5, 2.0, 1.5, 3.0]
    crit.detach(net)


def test_attached_but_untrained_gates_are_trained_before_scoring():
    m = ResidualCNN().eval()
    x, y = cnn_batch()
    crit = make_criterion("attention", gate_steps=5, gate_lr=0.5)
    crit.attach(m)  # as finetune does, here with no warm-up before pruning
    scores = pruners.score(m, criterion=crit, granularity="structured", example_inputs=x, calibration=[(x, y)])
    assert all(s.unique().numel() > 1 for s in scores.values())  # no all-tied layer
    crit.detach(m)


def test_attention_scores_heads_of_a_transformer():
    m = TinyTransformer().eval()
    x, y = transformer_batch()
    r = pruners.prune(
        m, criterion=make_criterion("attention", gate_steps=5), granularity="structured", amount=0.5,
        example_inputs=x, calibration=[(x, y)],
    )
    attn = m.block.self_attn
    assert isinstance(attn, pruners.PrunableMultiheadAttention)
    assert attn.num_heads == 2 and attn.q_proj.out_features == 2 * attn.head_dim
    assert attn.embed_dim == 16  # the residual stream keeps its width
    assert {layer.name for layer in r.layers} == {"block.linear1", "block.self_attn"}
    assert m(x).shape == (8, 10)


@pytest.mark.parametrize(
    "name", [n for n in pruners.list_criteria() if "structured" in pruners.criterion_granularities(n) and n != "slimming"]
)
def test_every_structured_criterion_prunes_heads_and_mlp_of_a_transformer(name):
    m = TinyTransformer().eval()
    x, y = transformer_batch()
    r = pruners.prune(m, criterion=_crit(name), granularity="structured", amount=0.5, example_inputs=x, calibration=[(x, y)])
    by_name = {layer.name: layer for layer in r.layers}
    assert by_name["block.self_attn"].units_after == 2 == m.block.self_attn.num_heads
    assert by_name["block.linear1"].units_after == 16 == m.block.linear1.out_features
    assert m(x).shape == (8, 10)


def test_slimming_on_a_model_without_batchnorm_says_so():
    x, y = transformer_batch()
    with pytest.raises(ValueError, match="needs BatchNorm"):
        pruners.prune(TinyTransformer(), criterion="slimming", granularity="structured", amount=0.5, example_inputs=x)


def test_multilevel_layer_gates_decide_how_much_each_layer_loses():
    m = MLP().eval()
    x, y = mlp_batch()
    crit = make_criterion("multilevel_attention", gate_steps=0)
    crit.attach(m)
    with torch.no_grad():
        crit.layer_gates[m.net[4]].fill_(-4.0)  # this layer matters little overall
    r = pruners.prune(m, criterion=crit, granularity="structured", amount=0.25, example_inputs=x, calibration=[(x, y)])
    by_name = {layer.name: layer for layer in r.layers}
    assert by_name["net.4"].units_after == 32 - 16
    assert by_name["net.1"].units_after == 32
    crit.detach(m)


def test_a_criterion_is_a_torch_pruning_importance():
    import torch_pruning as tp

    m = ResidualCNN()
    x, _ = cnn_batch()
    pruner = tp.pruner.BasePruner(m, x, importance=make_criterion("magnitude"), pruning_ratio=0.5, ignored_layers=[m.fc])
    pruner.step()
    assert m.conv1.out_channels == 4 and m(x).shape == (8, 10)
