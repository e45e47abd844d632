"""Driver for test_two_workers: ``python _two_workers_driver.py ADDRESS DUMP_DIR METHOD...``.

Attaches to the Ray at ADDRESS as a search's driver does, runs one Train run of 2 gloo
workers per METHOD (the real trial worker loop, one trial per run as a search does), and
each rank writes what it ends with to ``DUMP_DIR/<METHOD>/rank<r>.json``. A process of its
own: a Train run that fails or hangs ends with this process, never holding the test
session's Ray or its shutdown.
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path


def _trial_config(method: str) -> tuple[dict, dict]:
    from orchestrator.config import Fixed, SearchConfig
    from orchestrator.space import flat_space

    criterion, granularity, schedule = method.split("+")
    cfg = SearchConfig.from_dict({
        "name": "two-workers",
        "data": {"dataset": "digits", "batch_size": 32},
        "search": {
            "space": {"quantize": ["none"], "scope": ["global"], "criterion": [criterion], "granularity": [granularity],
                      "schedule": [schedule], "amount": 0.6, "lr": 0.02},
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


def fingerprint_loop(config: dict) -> None:
    """Run the trial worker loop, then record what this rank holds."""
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


def main(address: str, dump_dir: str, methods: list[str]) -> None:
    import ray.train
    from ray.train.torch import TorchConfig, TorchTrainer

    from orchestrator import ray_runtime

    ray_runtime.init(address)
    for method in methods:
        search, trial = _trial_config(method)
        dump = Path(dump_dir, method)
        dump.mkdir(parents=True)
        trainer = TorchTrainer(
            fingerprint_loop,  # defined in __main__: shipped to the workers by value
            train_loop_config={"search": search, "trial": trial, "dump_dir": str(dump)},
            scaling_config=ray.train.ScalingConfig(num_workers=2, resources_per_worker={"CPU": 0.9}),
            run_config=ray.train.RunConfig(name=method, storage_path=str(Path(dump_dir, "storage"))),
            torch_config=TorchConfig(backend="gloo"),
        )
        trainer.fit()
        print(f"{method}: done", flush=True)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], sys.argv[3:])
