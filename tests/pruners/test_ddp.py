"""finetune under DistributedDataParallel: two CPU processes (gloo), no Ray.

Every rank must end with the same masks, the same shapes and the same reported metrics;
otherwise DDP would hang or silently train different models.
"""

from __future__ import annotations

import json
import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

WORLD = 2
N_TRAIN, N_EVAL = 1280, 516  # both divide evenly: no sampler padding, exact global metrics
CASES = {
    # name: (criterion, granularity, schedule, schedule params, image model?, criterion params)
    "taylor_structured": ("taylor", "structured", "iterative", {"rounds": 2, "interval": 5}, True, {}),
    "magnitude_unstructured": (
        "magnitude", "unstructured", "gradual",
        {"start_step": 0, "end_step": 10, "interval": 5}, False, {},
    ),
    # Gates live outside the module (hooks): their gradients need the manual all-reduce.
    "attention_structured": (
        "adaptive_attention", "structured", "iterative", {"rounds": 2, "interval": 5}, True,
        {"warmup_steps": 5},
    ),
}


def _data():
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.tensor(d.data, dtype=torch.float32) / 16.0
    y = torch.tensor(d.target)
    perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(0))
    return x[perm], y[perm]


REDUCE_DTYPES = (torch.float32, torch.float64, torch.float16, torch.float32, torch.int64)


def _reduce_input(rank: int, i: int) -> torch.Tensor:
    """A rank-dependent tensor with values that no float format averages exactly."""
    n = (3, 7, 4, 2, 3)[i]
    base = torch.arange(n, dtype=torch.float64) / 3 + i + 10 * rank
    return base.to(REDUCE_DTYPES[i])


def _worker(rank: int, out_dir: str) -> None:
    # Runs in a fresh spawned interpreter: everything is imported here.
    import torch.nn.functional  # noqa: F401
    from torch.nn.parallel import DistributedDataParallel as DDP
    from torch.utils.data import DataLoader, TensorDataset
    from torch.utils.data.distributed import DistributedSampler

    import pruners
    from tests.pruners.models import MLP, ResidualCNN

    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo", init_method=f"file://{out_dir}/rendezvous", rank=rank, world_size=WORLD
    )
    try:
        from pruners._dist import all_reduce_mean_

        # Mixed dtypes, chunks of at most 5 elements (so tensors are packed and split).
        tensors = [_reduce_input(rank, i) for i in range(len(REDUCE_DTYPES))]
        all_reduce_mean_(tensors, chunk_numel=5)
        torch.save(tensors, os.path.join(out_dir, f"reduce.rank{rank}.pt"))
        x_all, y_all = _data()
        for case, (crit, gran, sched_name, sched_params, image, params) in CASES.items():
            x = x_all.view(-1, 1, 8, 8) if image else x_all
            train = TensorDataset(x[:N_TRAIN], y_all[:N_TRAIN])
            test = TensorDataset(x[N_TRAIN:N_TRAIN + N_EVAL], y_all[N_TRAIN:N_TRAIN + N_EVAL])
            train_loader = DataLoader(train, batch_size=32,
                                      sampler=DistributedSampler(train, shuffle=True, seed=0))
            eval_loader = DataLoader(test, batch_size=128,
                                     sampler=DistributedSampler(test, shuffle=False))
            torch.manual_seed(0)  # same initial weights on both ranks (DDP also broadcasts)
            model = DDP(ResidualCNN(width=12) if image else MLP(hidden=64))
            target = 0.5
            rows: list[dict] = []
            out = pruners.finetune(
                model, train_loader, eval_loader,
                spec=pruners.PruneSpec(crit, gran, amount=target, params=params),
                schedule=pruners.make_schedule(sched_name, target=target, **sched_params),
                epochs=2, optimizer=pruners.OptimizerConfig(name="adam", lr=0.01),
                report=rows.append, example_inputs=x[:1], latency_repeats=2,
            )
            wrapped = isinstance(out, DDP)
            net = out.module if wrapped else out
            # measure looks through the DDP wrapper.
            m_ddp, m_net = pruners.measure(out, x[:1], latency_repeats=1), pruners.measure(net, x[:1], latency_repeats=1)
            same_measure = (m_ddp.flops, m_ddp.params_nonzero, m_ddp.size_bytes) == (
                m_net.flops, m_net.params_nonzero, m_net.size_bytes)
            torch.save(
                {k: v.detach().cpu() for k, v in net.state_dict().items()},
                os.path.join(out_dir, f"{case}.rank{rank}.pt"),
            )
            with open(os.path.join(out_dir, f"{case}.rank{rank}.json"), "w") as f:
                json.dump({"rows": rows, "wrapped": wrapped, "same_measure": same_measure}, f)
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def ddp_results(tmp_path_factory):
    out_dir = str(tmp_path_factory.mktemp("ddp"))
    mp.spawn(_worker, args=(out_dir,), nprocs=WORLD, join=True)
    results = {}
    for case in CASES:
        per_rank = []
        for r in range(WORLD):
            with open(os.path.join(out_dir, f"{case}.rank{r}.json")) as f:
                info = json.load(f)
            info["state"] = torch.load(os.path.join(out_dir, f"{case}.rank{r}.pt"), weights_only=True)
            per_rank.append(info)
        results[case] = per_rank
    results["_dir"] = out_dir
    return results


def test_all_reduce_mean_keeps_dtypes_and_gives_every_rank_the_same_bits(ddp_results):
    out_dir = ddp_results["_dir"]
    r0, r1 = (torch.load(os.path.join(out_dir, f"reduce.rank{r}.pt"), weights_only=True)
              for r in range(WORLD))
    for i, (a, b) in enumerate(zip(r0, r1)):
        assert a.dtype == b.dtype == REDUCE_DTYPES[i]  # no float64 round trip of everything
        assert torch.equal(a, b), i  # bit-identical on both ranks
        inputs = [_reduce_input(r, i) for r in range(WORLD)]
        mean = sum(t.double() for t in inputs) / WORLD
        torch.testing.assert_close(a.double(), mean.to(REDUCE_DTYPES[i]).double())


@pytest.mark.slow
@pytest.mark.parametrize("case", list(CASES))
def test_ranks_end_with_identical_masks_shapes_and_metrics(ddp_results, case):
    r0, r1 = ddp_results[case]
    assert r0["wrapped"] and r1["wrapped"]  # a DDP model in, a re-wrapped DDP model out
    assert r0["same_measure"] and r1["same_measure"]
    assert r0["state"].keys() == r1["state"].keys()
    for key in r0["state"]:
        a, b = r0["state"][key], r1["state"][key]
        assert a.shape == b.shape, key
        if key.endswith("_mask"):
            assert torch.equal(a, b), key
        elif a.is_floating_point():
            # DDP keeps the weights in step (up to all-reduce summation order).
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=key)

    # The file (size, latency against the dense file) is written and timed on rank 0 only.
    files = {"size_bytes", "latency_ms", "latency_iqr_ms", "dense_latency_ms", "speedup", "latency_runtime",
             "latency_threads"}
    assert all(isinstance(r["size_bytes"], int) and r["latency_ms"] > 0 for r in r0["rows"])
    assert all(r[k] is None for r in r1["rows"] for k in files)

    def global_view(row: dict) -> dict:
        return {k: v for k, v in row.items() if k not in files}

    assert [global_view(r) for r in r0["rows"]] == [global_view(r) for r in r1["rows"]]
    last = r0["rows"][-1]
    assert last["units_pruned"] == pytest.approx(0.5, abs=0.05)
    assert last["val_accuracy"] > 0.3  # 2 epochs on half the data per rank; chance is 0.1
    if case.endswith("unstructured"):
        assert any(k.endswith("_mask") for k in r0["state"])
