"""pruners.Pruner in hand-written loops: pruning, state_dict round trips, calibration."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits
from torch.utils.data import DataLoader, TensorDataset

import pruners
from pruners import PruneSpec
from pruners.finetune import evaluate
from tests.pruners.models import MLP, ResidualCNN


@pytest.fixture(scope="module")
def data() -> tuple[torch.Tensor, torch.Tensor]:
    d = load_digits()
    x = torch.tensor(d.data, dtype=torch.float32).view(-1, 1, 8, 8) / 16.0
    return x, torch.tensor(d.target)


def _batches(data, n: int = 1280, size: int = 64) -> list[tuple[torch.Tensor, torch.Tensor]]:
    x, y = data
    return [(x[i:i + size], y[i:i + size]) for i in range(0, n, size)]


def test_a_hand_written_loop_prunes_on_schedule_and_learns(data):
    """What a user of another framework writes: their loop, the pruner's step after theirs."""
    x, y = data
    batches = _batches(data)
    torch.manual_seed(0)
    model = ResidualCNN(width=12)
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    sched = pruners.make_schedule("gradual", target=0.5, start_step=0, end_step=30, interval=10)
    pruner = pruners.Pruner(model, PruneSpec("magnitude", "structured", amount=0.5), sched, x[:1],
                            optimizer=opt)
    params_before = sum(p.numel() for p in model.parameters())
    changed = []
    for epoch in range(3):
        for xb, yb in batches:
            loss = F.cross_entropy(pruner.model(xb), yb)
            opt.zero_grad()
            loss.backward()
            opt.step()
            changed.append(pruner.step())
    pruned = pruner.finalize()
    # Updates at schedule steps 10, 20, 30 (the ramp is 0 at step 0), applied by the call
    # after that many optimizer steps.
    assert [i for i, c in enumerate(changed) if c] == [10, 20, 30]
    assert pruner.stats()["units_pruned"] == pytest.approx(0.5, abs=0.02)
    assert sum(p.numel() for p in pruned.parameters()) < 0.5 * params_before
    # The optimizer trains exactly the model's current parameters.
    assert {id(p) for g in opt.param_groups for p in g["params"]} == {id(p) for p in pruned.parameters()}
    acc, _ = evaluate(pruned, [(x[1280:], y[1280:])])
    assert acc > 0.7


def _run(spec: PruneSpec, sched, data, *, stop_at: int | None = None, resume=None, total: int = 40):
    """Train for `total` steps; stop at `stop_at` returning the three states, or resume."""
    x, _ = data
    batches = _batches(data)
    torch.manual_seed(0)
    model = ResidualCNN(width=12)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    pruner = pruners.Pruner(model, spec, sched, x[:1], optimizer=opt, calibration=batches, seed=3)
    start = 0
    if resume is not None:
        p_state, m_state, o_state = resume
        pruner.load_state_dict(p_state)
        pruner.module.load_state_dict(m_state)
        opt.load_state_dict(o_state)
        start = pruner.steps
    for k in range(start, total):
        if k == stop_at:
            return copy.deepcopy((pruner.state_dict(), pruner.module.state_dict(), opt.state_dict()))
        xb, yb = batches[k % len(batches)]
        loss = F.cross_entropy(pruner.model(xb), yb)
        penalty = pruner.penalty()
        if penalty is not None:
            loss = loss + penalty
        opt.zero_grad()
        loss.backward()
        pruner.sync_gradients()
        opt.step()
        pruner.step()
    return {k: v.clone() for k, v in pruner.finalize().state_dict().items()}


RESTORE_CASES = {
    "taylor_structured_gradual": (PruneSpec("taylor", "structured", amount=0.5),
                                  dict(name="gradual", start_step=0, end_step=30, interval=10)),
    "random_structured_iterative": (PruneSpec("random", "structured", amount=0.6),
                                    dict(name="iterative", rounds=3, interval=10)),
    "magnitude_unstructured_dynamic": (PruneSpec("magnitude", amount=0.8),
                                       dict(name="dynamic", interval=5, regrow_fraction=0.2, end_step=30)),
    "adaptive_attention_structured": (PruneSpec("adaptive_attention", "structured", amount=0.5),
                                      dict(name="iterative", rounds=2, interval=10)),
    "slimming_structured_gradual": (PruneSpec("slimming", "structured", amount=0.5, params={"penalty": 1e-3}),
                                    dict(name="gradual", start_step=0, end_step=30, interval=10)),
}


@pytest.mark.parametrize("case", list(RESTORE_CASES))
def test_save_and_restore_mid_schedule_ends_bit_identical(data, case):
    """Stop after 15 steps (mid-schedule: structure, masks, gates and regrowth in flight),
    rebuild everything from the three state dicts on a fresh model, finish: the weights are
    bit for bit those of the uninterrupted run."""
    spec, sched_kw = RESTORE_CASES[case]
    kw = dict(sched_kw)
    sched = pruners.make_schedule(kw.pop("name"), target=spec.amount, **kw)
    whole = _run(spec, sched, data)
    saved = _run(spec, sched, data, stop_at=15)
    assert saved[0]["steps"] == 15
    resumed = _run(spec, sched, data, resume=saved)
    assert whole.keys() == resumed.keys()
    for key in whole:
        assert torch.equal(whole[key], resumed[key]), key


def test_load_state_dict_needs_a_fresh_pruner(data):
    x, _ = data
    spec = PruneSpec("magnitude", "structured", amount=0.5)
    sched = pruners.make_schedule("one_shot", target=0.5)
    pruner = pruners.Pruner(ResidualCNN(width=12), spec, sched, x[:1])
    pruner.step()
    with pytest.raises(ValueError, match="fresh pruner"):
        pruner.load_state_dict(pruner.state_dict())


class _CountingDataset(TensorDataset):
    pass


def test_calibration_never_touches_the_training_iterator():
    """With persistent DataLoader workers, iter(loader) restarts the epoch in progress: a
    criterion drawing its calibration batches from the training loader made a 10-batch
    epoch run 13 steps. Calibration now samples the dataset: each epoch is its batches."""
    d = load_digits()
    x = torch.tensor(d.data[:640], dtype=torch.float32) / 16.0
    y = torch.tensor(d.target[:640])
    train = DataLoader(TensorDataset(x, y), batch_size=64, shuffle=True, num_workers=1,
                       persistent_workers=True, generator=torch.Generator().manual_seed(0))
    val = DataLoader(TensorDataset(x[:128], y[:128]), batch_size=128)
    assert len(train) == 10
    rows: list[dict] = []
    torch.manual_seed(0)
    pruners.finetune(
        MLP(hidden=32), train, val, spec=PruneSpec("taylor", amount=0.6),
        schedule=pruners.make_schedule("iterative", target=0.6, rounds=3, interval=3), epochs=2,
        optimizer=pruners.OptimizerConfig(name="adam", lr=0.01), report=rows.append,
        example_inputs=x[:1], latency_repeats=1, calibration_batches=2,
    )
    assert [r["step"] for r in rows] == [10, 20]


def test_calibration_draws_are_reproducible_and_fresh():
    ds = TensorDataset(torch.arange(100.0).view(-1, 1), torch.zeros(100, dtype=torch.long))
    loader = DataLoader(ds, batch_size=10)
    a = pruners.CalibrationBatches(loader, 2, torch.device("cpu"), seed=1)
    b = pruners.CalibrationBatches(loader, 2, torch.device("cpu"), seed=1)
    first, second = a.take(), a.take()
    assert all(torch.equal(p[0], q[0]) for p, q in zip(first, b.take()))
    assert not torch.equal(first[0][0], second[0][0])  # a new draw each time
    b.load_state_dict(a.state_dict())
    assert all(torch.equal(p[0], q[0]) for p, q in zip(a.take(), b.take()))


def test_a_cost_target_is_met_at_the_end_of_a_gradual_schedule(data):
    """flops_cut 3 on a gradual schedule: the FLOPs ramp down, and end 3x below the start."""
    x, _ = data
    batches = _batches(data)
    torch.manual_seed(0)
    model = ResidualCNN(width=16)
    dense_flops = pruners.measure(model, x[:1], files=False).flops
    opt = torch.optim.SGD(model.parameters(), lr=0.02, momentum=0.9)
    sched = pruners.make_schedule("gradual", target=1 - 1 / 3, start_step=0, end_step=15, interval=5)
    pruner = pruners.Pruner(model, PruneSpec("taylor", "structured", amount=3, threshold_rule="flops_cut"), sched,
                            x[:1], optimizer=opt, calibration=batches)
    flops = []
    for xb, yb in batches:
        loss = F.cross_entropy(pruner.model(xb), yb)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if pruner.step():
            flops.append(pruners.measure(pruner.module, x[:1], files=False).flops)
    assert flops == sorted(flops, reverse=True) and len(flops) >= 3  # ramped down
    assert 3 * 0.99 <= dense_flops / flops[-1] <= 3 * 1.3
    with pytest.raises(ValueError, match=r"flops_cut 3: the schedule's target must be 0.666667"):
        pruners.Pruner(ResidualCNN(width=16), PruneSpec("magnitude", "structured", amount=3, threshold_rule="flops_cut"),
                       pruners.make_schedule("one_shot", target=0.5), x[:1])


def test_distillation_pulls_the_student_towards_its_teacher(data):
    x, y = data
    train = DataLoader(TensorDataset(x[:512], y[:512]), batch_size=64, shuffle=True,
                       generator=torch.Generator().manual_seed(0))
    val = [(x[1280:], y[1280:])]
    torch.manual_seed(0)
    teacher = ResidualCNN(width=12)
    for xb, yb in _batches(data):  # a teacher that knows something
        loss = F.cross_entropy(teacher(xb), yb)
        loss.backward()
        with torch.no_grad():
            for p in teacher.parameters():
                p -= 0.1 * p.grad
                p.grad = None
    gaps = {}
    for w in (0.0, 0.9):
        student = copy.deepcopy(teacher)
        out = pruners.finetune(
            student, train, val, spec=PruneSpec("magnitude", "structured", amount=0.5),
            schedule=pruners.make_schedule("one_shot", target=0.5), epochs=1,
            optimizer=pruners.OptimizerConfig(name="sgd", lr=0.05), report=lambda row: None,
            example_inputs=x[:1], latency_repeats=1, teacher=teacher if w else None, distill=w,
        )
        with torch.no_grad():
            t, s = F.log_softmax(teacher(x[1280:]), 1), F.log_softmax(out(x[1280:]), 1)
            gaps[w] = float(F.kl_div(s, t, log_target=True, reduction="batchmean"))
    assert gaps[0.9] < gaps[0.0]
    with pytest.raises(ValueError, match="distill must be in"):
        pruners.finetune(ResidualCNN(width=12), train, val, spec=PruneSpec("magnitude", amount=0.5),
                         schedule=pruners.make_schedule("one_shot", target=0.5), epochs=1,
                         optimizer=pruners.OptimizerConfig(), report=lambda row: None, example_inputs=x[:1], distill=0.5)


def test_warmup_then_cosine_learning_rate():
    opt = pruners.OptimizerConfig(lr=0.1, lr_schedule="cosine", warmup=0.1)
    lrs = [opt.lr_at(s, 100) for s in range(100)]
    assert lrs[0] == pytest.approx(0.01) and lrs[9] == pytest.approx(0.1)  # linear ramp over 10 steps
    assert max(lrs) == pytest.approx(0.1) and lrs[-1] < 0.001  # then cosine to 0
    assert lrs[10:] == sorted(lrs[10:], reverse=True)
