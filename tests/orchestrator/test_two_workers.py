"""A trial with 2 Ray Train workers (DDP on gloo): both ranks end with the same masks,
the same structure, the same weights and the same accuracy."""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path

import pytest

pytestmark = [pytest.mark.ray, pytest.mark.slow]

# Data-driven scores (Taylor: all-reduced gradients x weights) on gradual schedules, so the
# ranks must agree on statistics gathered from different shards at several pruning steps.
METHODS = ("taylor+unstructured+gradual", "taylor+structured+gradual")


def _trial_config(method: str) -> tuple[dict, dict]:
    from orchestrator.config import Fixed, SearchConfig
    from orchestrator.space import flat_space

    cfg = SearchConfig.from_dict({
        "name": "two-workers",
        "data": {"dataset": "digits", "batch_size": 32},
        "search": {
            "space": {"scope": ["global"], "criterion": ["taylor"], "granularity": [method.split("+")[1]], "schedule": ["gradual"],
                      "amount": 0.6, "lr": 0.02},
            "epochs": 2,
        },
        "metrics": {"latency_repeats": 1},
    })
    flat = flat_space(cfg.search)
    flat["method"] = Fixed(method)
    assert all(isinstance(p, Fixed) for p in flat.values())
    return cfg, {k: p.value for k, p in flat.items()}


def _digest(tensors) -> str:
    h = hashlib.sha256()
    for name, t in tensors:
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def _fingerprint_loop(config: dict) -> None:
    """Run the real trial worker loop (one trial per Train run, as a search does), then
    record what this rank holds."""
    import ray.train

    from orchestrator.trial import train_trial
    from pruners.measure import unwrap

    rank = ray.train.get_context().get_world_rank()
    outcome = train_trial({"search": config["search"], "trial": config["trial"], "dense_state": None})
    state = sorted(unwrap(outcome.model).state_dict().items())
    out = {
        "shapes": {k: list(v.shape) for k, v in state},
        "masks": _digest([(k, v) for k, v in state if k.endswith("_mask")]),
        "n_masks": sum(k.endswith("_mask") for k, _ in state),
        "weights": _digest(state),
        "accuracy": [r["val_accuracy"] for r in outcome.rows],
        "test": [r.get("test_accuracy") for r in outcome.rows],
        "sparsity": [r["sparsity"] for r in outcome.rows],
    }
    Path(config["dump_dir"], f"rank{rank}.json").write_text(json.dumps(out))


def test_two_ranks_end_identical(tmp_path) -> None:
    import sys

    import ray.train
    from ray import cloudpickle
    from ray.train.torch import TorchConfig, TorchTrainer

    # Workers cannot import this test module: ship its functions by value.
    cloudpickle.register_pickle_by_value(sys.modules[__name__])

    r0, r1 = {}, {}
    for method in METHODS:
        search, trial = _trial_config(method)
        dump = tmp_path / method
        dump.mkdir()
        trainer = TorchTrainer(
            _fingerprint_loop,
            train_loop_config={"search": search, "trial": trial, "dump_dir": str(dump)},
            scaling_config=ray.train.ScalingConfig(num_workers=2, resources_per_worker={"CPU": 0.9}),
            run_config=ray.train.RunConfig(name=method, storage_path=str(tmp_path / "storage")),
            torch_config=TorchConfig(backend="gloo"),
        )
        trainer.fit()
        r0[method], r1[method] = (json.loads((dump / f"rank{r}.json").read_text()) for r in (0, 1))
    for method in METHODS:
        a, b = r0[method], r1[method]
        assert a == b, method
        assert len(a["accuracy"]) == 2 and a["sparsity"][-1] > 0.3
    # Unstructured pruning left masks (the same on both ranks); structured pruning
    # physically shrank the convolutions (to the same shapes on both ranks).
    assert r0[METHODS[0]]["n_masks"] > 0
    def n_weights(shapes: dict) -> int:
        return sum(math.prod(s) for k, s in shapes.items() if not k.endswith("_mask"))

    assert r0[METHODS[1]]["n_masks"] == 0
    assert n_weights(r0[METHODS[1]]["shapes"]) < 0.8 * n_weights(r0[METHODS[0]]["shapes"])
