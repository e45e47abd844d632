"""prune(): outcomes of unstructured and structured pruning on the small test models."""

from __future__ import annotations

import math
import os

import pytest
import torch

import pruners
from pruners.thresholds import get_threshold_rule, select
from tests.pruners.models import MLP, ResidualCNN, cnn_batch, mlp_batch

MODELS = {"cnn": (ResidualCNN, cnn_batch), "mlp": (MLP, mlp_batch)}


def _params(m: torch.nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


def _zeros(m: torch.nn.Module) -> int:
    return sum(int((mod.weight == 0).sum()) for mod in m.modules() if hasattr(mod, "weight_mask"))


@pytest.mark.parametrize("model", sorted(MODELS))
@pytest.mark.parametrize("scope", ["global", "layerwise"])
def test_magnitude_unstructured_masks_half_of_the_weights(model, scope):
    build, batch = MODELS[model]
    m = build()
    x, _ = batch()
    shapes = {n: mod.weight.shape for n, mod in m.named_modules() if hasattr(mod, "weight")}
    r = pruners.prune(m, criterion="magnitude", granularity="unstructured", amount=0.5, scope=scope, example_inputs=x)
    assert r.units_before > 0
    assert abs(r.achieved - 0.5) <= 1 / r.units_before + 1e-9
    assert _zeros(m) == r.units_before - r.units_after
    # classifier untouched, shapes unchanged
    clf = m.fc if model == "cnn" else m.net[-1]
    assert not hasattr(clf, "weight_mask")
    assert {n: mod.weight.shape for n, mod in m.named_modules() if hasattr(mod, "weight")} == shapes
    assert torch.isfinite(m(x)).all()


@pytest.mark.parametrize("model", sorted(MODELS))
@pytest.mark.parametrize("scope", ["global", "layerwise"])
def test_magnitude_structured_removes_channels(model, scope):
    build, batch = MODELS[model]
    m = build()
    x, _ = batch()
    before = _params(m)
    out_shape = m(x).shape
    r = pruners.prune(m, criterion="magnitude", granularity="structured", amount=0.5, scope=scope, example_inputs=x)
    assert r.units_after < r.units_before
    assert abs(r.achieved - 0.5) <= 1 / r.units_before + 1e-9
    assert _params(m) < before
    assert m(x).shape == out_shape


def test_unstructured_is_cumulative_and_keeps_earlier_removals():
    m = MLP()
    x, _ = mlp_batch()
    pruners.prune(m, criterion="random", granularity="unstructured", amount=0.3, example_inputs=x)
    first = {n: mod.weight_mask.clone() for n, mod in m.named_modules() if hasattr(mod, "weight_mask")}
    r = pruners.prune(m, criterion="magnitude", granularity="unstructured", amount=0.5, example_inputs=x)
    assert r.achieved == pytest.approx(round(0.5 * r.units_before) / r.units_before)
    for n, mod in m.named_modules():
        if n in first:
            assert bool(((first[n] == 0) <= (mod.weight_mask == 0)).all())  # removed stay removed
            # one mask hook per layer, not a growing PruningContainer
            assert len(mod._forward_pre_hooks) == 1


class _FixedScores(pruners.Criterion):
    """Hand-set per-weight scores (not registered: an instance is passed to prune)."""

    name = "fixed"

    def __init__(self, scores: dict) -> None:
        super().__init__()
        self.scores = scores

    def elementwise(self, module, name):
        return self.scores[module] if name == "weight" else None


def test_a_layer_emptied_by_the_ranking_keeps_a_surviving_weight_not_a_masked_one():
    m = MLP()
    x, _ = mlp_batch()
    lin1, lin2 = m.net[1], m.net[4]
    s2 = torch.ones_like(lin2.weight)
    s2.view(-1)[0] = 0.0
    crit = _FixedScores({lin1: torch.full_like(lin1.weight, 10.0), lin2: s2})
    total = lin1.weight.numel() + lin2.weight.numel()
    pruners.prune(m, criterion=crit, granularity="unstructured", amount=1 / total, example_inputs=x)
    assert lin2.weight_mask.view(-1)[0] == 0 and int(lin2.weight_mask.sum()) == lin2.weight.numel() - 1
    # Now the masked weight scores best in its layer and the ranking takes the whole layer.
    s2.view(-1)[0] = 100.0
    r = pruners.prune(m, criterion=crit, granularity="unstructured", amount=lin2.weight.numel() / total, example_inputs=x)
    assert lin2.weight_mask.view(-1)[0] == 0  # removed stays removed
    assert int(lin2.weight_mask.sum()) == 1 == {layer.name: layer for layer in r.layers}["net.4"].units_after
    assert int((lin2.weight != 0).sum()) == 1


@pytest.mark.parametrize("granularity", ["unstructured", "structured"])
def test_global_min_keep_holds_every_layers_floor_and_still_reaches_the_amount(granularity):
    # One layer scores far below the others: ranked globally it would be emptied; min_keep
    # keeps a quarter of it, and what it keeps is removed elsewhere, so the total stays 0.6.
    m = ResidualCNN()
    x, _ = cnn_batch()
    with torch.no_grad():
        m.conv1.weight.mul_(1e-4)
    r = pruners.prune(m, criterion="magnitude", granularity=granularity, amount=0.6, scope="global",
                      min_keep=0.25, example_inputs=x)
    assert abs(r.achieved - 0.6) <= 1 / r.units_before + 1e-9
    for layer in r.layers:
        assert layer.units_after >= 0.25 * layer.units_before, layer
    conv1 = {layer.name: layer for layer in r.layers}["conv1"]
    assert conv1.units_after == math.ceil(0.25 * conv1.units_before)  # held at its floor


@pytest.mark.parametrize(
    "criterion,granularity",
    [("magnitude", "unstructured"), ("taylor", "structured"), ("attention", "structured")],
)
def test_every_modules_train_eval_flag_is_restored(criterion, granularity):
    m = ResidualCNN().train()
    m.bn1.eval()  # a BatchNorm frozen by the user inside a training model
    x, y = cnn_batch()
    modes = {n: mod.training for n, mod in m.named_modules()}
    stats = m.bn2.running_mean.clone()
    pruners.prune(m, criterion=criterion, granularity=granularity, amount=0.25, example_inputs=x,
                  calibration=[(x, y)], ignore=["conv2", "bn2"])
    assert {n: mod.training for n, mod in m.named_modules()} == modes
    assert torch.equal(m.bn2.running_mean, stats)  # scoring and tracing ran in eval mode


def test_same_weights_same_result():
    x, y = cnn_batch()
    a, b = ResidualCNN(), ResidualCNN()
    b.load_state_dict(a.state_dict())
    for m in (a, b):
        pruners.prune(m, criterion="taylor", granularity="structured", amount=0.4, example_inputs=x, calibration=[(x, y)])
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)


def test_ignore_and_classifier_are_never_pruned():
    m = ResidualCNN()
    x, _ = cnn_batch()
    r = pruners.prune(m, criterion="magnitude", granularity="structured", amount=0.5, example_inputs=x, ignore=["down"])
    assert m.down[0].out_channels == 16 and m.fc.out_features == 10
    assert "down.0" not in {layer.name for layer in r.layers}
    u = MLP()
    xu, _ = mlp_batch()
    pruners.prune(u, criterion="magnitude", granularity="unstructured", amount=0.5, example_inputs=xu, ignore=["net.1"])
    assert not hasattr(u.net[1], "weight_mask") and not hasattr(u.net[6], "weight_mask")


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"criterion": "magnitud"}, "valid choices"),
        ({"granularity": "channel"}, "valid choices: unstructured, structured"),
        ({"scope": "local"}, "valid choices: global, layerwise"),
        ({"amount": 1.0}, "must be in \\[0, 1\\)"),
        ({"threshold_rule": "top_k"}, "valid choices"),
        ({"ignore": ["nope"]}, "unknown module"),
        ({"ignore": "net.1"}, "list of module names"),
        ({"criterion": "slimming", "granularity": "unstructured"}, "does not support unstructured"),
    ],
)
def test_bad_input_says_what_is_allowed(kwargs, match):
    x, _ = mlp_batch()
    args = {"criterion": "magnitude", "granularity": "structured", "amount": 0.5, "example_inputs": x, **kwargs}
    with pytest.raises(ValueError, match=match):
        pruners.prune(MLP(), **args)


def test_absolute_and_mean_std_rules_on_structured_scores():
    m = MLP()
    x, _ = mlp_batch()
    crit = pruners.make_criterion("magnitude", p=1, normalizer="none")
    scores = pruners.score(m, criterion=crit, granularity="structured", example_inputs=x)
    cut = float(torch.cat(list(scores.values())).median())
    expect = sum(int((s < cut).sum()) for s in scores.values())
    r = pruners.prune(m, criterion=crit, granularity="structured", amount=cut, threshold_rule="absolute", example_inputs=x)
    assert r.units_before - r.units_after == expect
    assert r.requested == cut and r.requested_fraction == pytest.approx(expect / r.units_before)

    m2 = MLP()
    s2 = pruners.score(m2, criterion=crit, granularity="structured", example_inputs=x)
    expect2 = sum(int((s < s.mean() - 0.5 * s.std(unbiased=False)).sum()) for s in s2.values())
    r2 = pruners.prune(m2, criterion=crit, granularity="structured", amount=0.5, threshold_rule="mean_std", scope="layerwise", example_inputs=x)
    assert r2.units_before - r2.units_after == expect2 > 0


# A value per rule; a rule registered without one here fails below (KeyError) until added.
RULE_VALUES = {"fraction": 0.3, "absolute": "median", "mean_std": 0.5, "sensitivity": 0.2}


SCORE_RULES = [r for r in pruners.list_threshold_rules() if get_threshold_rule(r).kind == "score"]


@pytest.mark.parametrize("granularity", pruners.GRANULARITIES)
@pytest.mark.parametrize("rule", SCORE_RULES)
def test_every_threshold_rule_removes_exactly_what_it_selects(rule, granularity):
    m = MLP()
    x, _ = mlp_batch()
    crit = pruners.make_criterion("magnitude", p=1, normalizer="none")
    flat = torch.cat(list(pruners.score(m, criterion=crit, granularity=granularity, example_inputs=x).values()))
    value = float(flat.median()) if RULE_VALUES[rule] == "median" else RULE_VALUES[rule]
    expect = int(select(flat, rule, value).sum())
    r = pruners.prune(m, criterion=crit, granularity=granularity, amount=value, threshold_rule=rule, example_inputs=x)
    assert (r.threshold_rule, r.requested) == (rule, value)
    assert r.units_before == flat.numel()
    assert r.requested_fraction == pytest.approx(expect / flat.numel())
    assert r.units_before - r.units_after == expect > 0
    assert r.achieved == pytest.approx(expect / flat.numel())


@pytest.mark.parametrize("granularity", pruners.GRANULARITIES)
@pytest.mark.parametrize(("rule", "factor"), [("flops_cut", 3.0), ("params_cut", 2.5)])
def test_cost_rules_cut_the_cost_by_the_factor_asked(rule, factor, granularity):
    """A user asks for 3x fewer FLOPs, not for a fraction of channels: the fraction is found
    (by bisection on copies) so the cost falls by the factor, within one unit's worth."""
    m = ResidualCNN(width=16)
    x = cnn_batch(1)[0]

    def cost(model):
        got = pruners.measure(model, x, files=False)
        if rule == "params_cut":
            return got.params_nonzero
        return got.flops if granularity == "structured" else got.flops_sparse

    before = cost(m)
    r = pruners.prune(m, criterion="magnitude", granularity=granularity, amount=factor, threshold_rule=rule,
                      example_inputs=x)
    cut = before / cost(m)
    assert (r.threshold_rule, r.requested) == (rule, factor)
    assert factor * 0.99 <= cut <= factor * 1.35, cut  # channels are discrete
    assert m(x).shape == (1, 10)


def test_ddp_style_wrapper_is_unwrapped():
    m = torch.nn.DataParallel(MLP())
    x, _ = mlp_batch()
    r = pruners.prune(m, criterion="magnitude", granularity="structured", amount=0.5, example_inputs=x)
    assert m.module.net[1].out_features + m.module.net[4].out_features == 32 == r.units_after
    assert m(x).shape == (8, 10)


@pytest.mark.parametrize("batch_first", [True, False])
def test_prunable_attention_matches_multihead_attention(batch_first):
    mha = torch.nn.MultiheadAttention(16, 4, batch_first=batch_first).eval()
    ours = pruners.PrunableMultiheadAttention.from_mha(mha).eval()
    q = torch.randn(3, 5, 16) if batch_first else torch.randn(5, 3, 16)
    pad = torch.zeros(3, 5, dtype=torch.bool)
    pad[0, -2:] = True
    for kwargs in ({"need_weights": False}, {"need_weights": True}, {"need_weights": False, "key_padding_mask": pad}):
        a, wa = mha(q, q, q, **kwargs)
        b, wb = ours(q, q, q, **kwargs)
        assert torch.allclose(a, b, atol=1e-5)
        if wa is not None:
            assert torch.allclose(wa, wb, atol=1e-5)
    ours.remove_heads([1, 3])
    assert ours.num_heads == 2 and ours(q, q, q, need_weights=False)[0].shape == q.shape


def _rank_worker(rank: int, world: int, init_file: str, out_dir: str) -> None:
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        torch.set_num_threads(1)
        torch.manual_seed(0)
        model = MLP()  # same weights on every rank
        # Different data and a different number of batches on every rank (1 and 2).
        calibration = [mlp_batch(seed=s) for s in ([0] if rank == 0 else [1, 2])]
        x, _ = calibration[0]
        pruners.prune(model, criterion="taylor", granularity="structured", amount=0.5, example_inputs=x, calibration=calibration)
        torch.save(model.state_dict(), os.path.join(out_dir, f"taylor{rank}.pt"))
        # Raw scores too: a threshold like `absolute` sees their scale, not just their order.
        torch.manual_seed(0)
        raw = pruners.score(MLP(), criterion=pruners.make_criterion("gradient", normalizer="none"),
                            granularity="unstructured", example_inputs=x, calibration=calibration)
        torch.save(raw, os.path.join(out_dir, f"gradient{rank}.pt"))
        torch.manual_seed(rank)  # a rank-local RNG must not matter to `random`
        model = MLP()
        pruners.prune(model, criterion="random", granularity="unstructured", amount=0.5, example_inputs=x)
        torch.save({k: v for k, v in model.state_dict().items() if k.endswith("mask")}, os.path.join(out_dir, f"random{rank}.pt"))
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_ranks_agree_under_torch_distributed(tmp_path):
    import torch.multiprocessing as mp

    mp.spawn(_rank_worker, args=(2, str(tmp_path / "store"), str(tmp_path)), nprocs=2, join=True)
    t0, t1 = torch.load(tmp_path / "taylor0.pt"), torch.load(tmp_path / "taylor1.pt")
    assert t0.keys() == t1.keys() and all(torch.equal(t0[k], t1[k]) for k in t0)
    r0, r1 = torch.load(tmp_path / "random0.pt"), torch.load(tmp_path / "random1.pt")
    assert r0 and all(torch.equal(r0[k], r1[k]) for k in r0)
    # The all-reduced statistics are the mean over both ranks' batches: one process seeing
    # all three batches keeps the same channels.
    torch.manual_seed(0)
    single = MLP()
    x, _ = mlp_batch(seed=0)
    pruners.prune(single, criterion="taylor", granularity="structured", amount=0.5, example_inputs=x,
                  calibration=[mlp_batch(seed=s) for s in (0, 1, 2)])
    s = single.state_dict()
    assert all(s[k].shape == t0[k].shape for k in s)
    assert all(torch.allclose(s[k], t0[k]) for k in s)
    g0, g1 = torch.load(tmp_path / "gradient0.pt"), torch.load(tmp_path / "gradient1.pt")
    assert g0.keys() == g1.keys() and all(torch.equal(g0[k], g1[k]) for k in g0)
    torch.manual_seed(0)
    g = pruners.score(MLP(), criterion=pruners.make_criterion("gradient", normalizer="none"),
                      granularity="unstructured", example_inputs=x, calibration=[mlp_batch(seed=s) for s in (0, 1, 2)])
    assert all(torch.allclose(g[k], g0[k], atol=1e-7) for k in g)
