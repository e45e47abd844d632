"""Upper bounds on the config's counts: one table, read by the fields of ``orchestrator.config``.

A value above its bound is a typo or an attack (``num_samples: 1000000000`` queues a billion
trials in Tune's memory; ``latency_batch_size: 1000000000`` allocates the batch at the first
measurement, after Ray has started), so it is refused before Ray starts with the bound named:
``search.num_samples: 1000000000 is too large; must be <= 100000``. Each bound sits far
above any real use; the comment says what it would mean. Raise one here, nowhere else.
"""

from __future__ import annotations

__all__ = ["LIMITS"]

LIMITS: dict[str, int] = {
    # Trials of one search: Tune keeps every trial's state in the driver's memory and
    # checkpoints it with the experiment; 1e5 fine-tunings is years of a GPU already.
    "search.num_samples": 100_000,
    # Epochs of fine-tuning (a trial) and of the dense baseline; also the rung schedule's unit.
    "search.epochs": 10_000,
    "dense.epochs": 10_000,
    "scheduler.grace_period": 10_000,
    # Examples per step: 65536 is beyond what large-batch training uses (ImageNet in an hour
    # used 8192); a larger batch is an out-of-memory error after Ray starts.
    "data.batch_size": 65_536,
    "data.eval_batch_size": 65_536,
    "metrics.latency_batch_size": 65_536,
    "data.calibration_batches": 100_000,
    # int8 calibration examples, each held in memory at once as a float batch list: 1e6
    # ImageNet images is 600 GB (the training split also bounds it, checked before Ray).
    "search.quantize_calibration": 1_000_000,
    # Processes and threads per Train worker: no node has 1024 cores.
    "data.num_workers": 1_024,
    "metrics.latency_threads": 1_024,
    # Timed forward passes per measurement (each trial measures once per kept epoch).
    "metrics.latency_repeats": 100_000,
    # Input side in pixels (a 8192 x 8192 image is 200 MB per example as floats).
    "data.image_size": 8_192,
    # Train workers per trial: the largest clusters Ray runs have a few thousand GPUs.
    "resources.workers": 4_096,
    "resources.max_concurrent_trials": 100_000,  # = search.num_samples
    "resources.max_failures": 1_000,
    "resources.cluster.nodes": 100_000,
    # numpy and Python's random take seeds below 2**32.
    "seed": 2**32 - 1,
}
