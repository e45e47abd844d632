"""The dense baseline: trained once as a Ray Train job (or loaded), stored with the experiment.

Every trial starts from these weights and the reports use its metrics as the reference
row (and its costs as the hypervolume reference point). The job uses the same workers as a
trial and runs beside the search (:func:`start_dense`): the first trials start with it, begin
their Train runs once its workers are placed, and their workers wait for its weights. With
``dense.checkpoint`` it trains nothing (``dense.epochs`` is ignored) and only evaluates and
measures the given weights, on the same hardware the trials will be measured on.

Written under ``<output>/dense/``: ``model.pt2`` (``pruners.save``), ``state_dict.pt``
(what trials load), ``metrics.json`` (the metric keys of design.md section 3).
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import signal
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = [
    "DENSE_DIR", "DenseJob", "DenseJobError", "DenseRelay", "dense_loop", "load_checkpoint_state", "load_dense",
    "start_dense",
]

logger = logging.getLogger(__name__)

from reports.contract import REFERENCE_INT8_ID
from reports.layout import DENSE_DIR, DENSE_INT8_FILES, DENSE_INT8_METRICS_FILE, DENSE_INT8_MODEL_FILE, DENSE_STATE_FILE
from reports.layout import METRICS_FILE, MODEL_FILE
from reports.layout import DENSE_FILES as _FILES


def dense_loop(config: dict[str, Any]) -> None:
    """Train worker: train the dense model (DDP), evaluate, measure, save on rank 0.

    Selection never sees the test split: the dense model is trained for its epochs and
    evaluated on validation (the reference every trial competes with) and on test (reported).
    """
    import ray
    import ray.train
    import torch

    import pruners
    from orchestrator.trial import state_dict_bytes, worker_setup
    from pruners.measure import unwrap

    relay = config.get("relay")
    if relay is not None and ray.train.get_context().get_world_rank() == 0:
        # The worker group holds its resources now: trials may start their Train runs.
        ray.get(relay.placed.remote())
    setup = worker_setup(config["search"], config.get("initial_state"))
    cfg, model, device = setup.cfg, setup.model, setup.device
    epochs = 0 if config.get("initial_state") is not None else cfg.dense.epochs
    channels_last = cfg.resources.channels_last and setup.example_inputs.dim() == 4
    last: dict[str, Any] = {}

    def on_epoch(end: Any) -> None:
        last.update(end.row)
        ray.train.report(dict(end.row))

    if epochs:
        # The trials' loop without a pruner: the same steps, schedule, precision and reduction.
        model = pruners.train_epochs(
            model, setup.train_loader, setup.val_loader, epochs=epochs,
            optimizer=cfg.dense.optimizer.build(cfg.dense.lr, cfg.dense.epochs), on_epoch=on_epoch,
            bf16=cfg.resources.bf16, channels_last=channels_last)
    train_loss = last.get("train_loss", math.nan)
    net = unwrap(model)
    if channels_last:
        net.to(memory_format=torch.contiguous_format)  # the weights trials load are plain
    state_blob = b""
    if setup.rank == 0:
        state_blob = state_dict_bytes(net)
        if relay is not None:
            # The waiting trials start fine-tuning now, not after measuring and saving.
            ray.get(relay.publish.remote(state_blob))
    val_accuracy, val_loss = pruners.evaluate(model, setup.val_loader, device=device)
    test_accuracy, test_loss = pruners.evaluate(model, setup.test_loader, device=device)
    row = {
        "epoch": epochs,
        "val_accuracy": val_accuracy,
        "val_loss": val_loss,
        "test_accuracy": test_accuracy,
        "test_loss": test_loss,
        "train_loss": None if math.isnan(train_loss) else train_loss,
        "sparsity": 0.0,
        "requested_sparsity": 0.0,
        **setup.placement,
    }
    with tempfile.TemporaryDirectory(prefix="prunefront-dense-") as tmp:
        if setup.rank == 0:
            Path(tmp, DENSE_STATE_FILE).write_bytes(state_blob)
            path = os.path.join(tmp, MODEL_FILE)
            pruners.save(net, path, setup.example_inputs)
            # The dense row measures its own file: the reference of every trial's speedup.
            m = pruners.measure(net, setup.example_inputs, artifact=path,
                                latency_repeats=cfg.metrics.latency_repeats,
                                batch_size=cfg.metrics.latency_batch_size, threads=cfg.metrics.latency_threads)
            row = {**row, **m.to_dict(), "dense_latency_ms": m.latency_ms, "speedup": 1.0}
            Path(tmp, METRICS_FILE).write_text(json.dumps(row, indent=2))
        dense_int8(net, setup, row, tmp)  # every rank: the file's accuracy is summed over shards
        if setup.rank == 0:
            ray.train.report({**row, "final": True}, checkpoint=ray.train.Checkpoint.from_directory(tmp))
        else:
            ray.train.report({**row, "final": True})


def dense_int8(net: Any, setup: Any, row: dict[str, Any], folder: str) -> None:
    """The ``dense-int8`` reference: the dense model in post-training int8, its ONNX file and
    row written to ``folder`` on rank 0 (``DENSE_INT8_FILES``). Its latency and speedup are
    timed on ONNX Runtime against the float ONNX file of the same dense model, on the same
    threads; its accuracies are the file's. A model that cannot be quantized leaves no
    files and a warning: the search goes on without the int8 reference.
    """
    import torch

    import pruners
    from orchestrator.trial import _plain
    from pruners import _dist

    cfg = setup.cfg
    path, reference = os.path.join(folder, DENSE_INT8_MODEL_FILE), os.path.join(folder, "reference.onnx")
    ok = 1.0
    if setup.rank == 0:
        try:
            pruners.save_onnx(net, reference, setup.example_inputs)
            inputs = pruners.calibration_inputs(setup.train_loader, cfg.search.quantize_calibration, seed=cfg.seed)
            done = pruners.quantize_int8(net, path, setup.example_inputs, inputs,
                                         calibration_examples=cfg.search.quantize_calibration,
                                         metadata={"quantize": "int8", "trial": REFERENCE_INT8_ID})
        except Exception as e:  # noqa: BLE001 - an op without an int8 kernel, an export failure
            logger.warning("dense model not quantized to int8 (no dense-int8 reference): %s", e)
            ok = 0.0
    if _dist.all_reduce_sum([ok])[0] < _dist.world_size():
        return
    timing = {"latency_repeats": cfg.metrics.latency_repeats, "batch_size": cfg.metrics.latency_batch_size,
              "threads": cfg.metrics.latency_threads}
    main = setup.rank == 0
    int8_row, program = pruners.ship_int8(net, path, setup.example_inputs, (lambda: done) if main else None,
                                          setup.val_loader, row, reference=reference if main else None, **timing)
    test_accuracy, test_loss = pruners.evaluate(program, setup.test_loader, device=torch.device("cpu"))
    if main:
        int8_row.update(test_accuracy=test_accuracy, test_loss=test_loss)
        Path(folder, DENSE_INT8_METRICS_FILE).write_text(json.dumps({k: _plain(v) for k, v in int8_row.items()},
                                                                    indent=2))
        os.unlink(reference)


def load_checkpoint_state(path: str, search: Any) -> bytes:
    """``torch.save`` bytes of a state dict from ``dense.checkpoint`` (.pt state dict or
    ``pruners.save`` file), checked against the configured model.

    Raises:
        ValueError: the file is neither, or its weights do not fit the model (one line).
    """
    import torch

    from orchestrator import data, models
    from orchestrator.trial import state_dict_bytes

    cfg = search  # a validated SearchConfig
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
        state = obj.get("state_dict", obj) if isinstance(obj, dict) else None
    except Exception:  # not a pickled state dict: maybe a pruners.save program
        state = None
    if state is None:
        import pruners

        try:
            state = pruners.load(path).state_dict()
        except pruners.UnsafeModelFile as e:  # names the entry refused (docs/security.md)
            raise ValueError(f"dense.checkpoint: {e}") from None
        except Exception as e:
            raise ValueError(
                f"dense.checkpoint: {path!r} is neither a state_dict (.pt) nor a pruners.save file ({e.__class__.__name__})"
            ) from None
    ds = data.load_datasets(cfg.data, seed=cfg.seed)
    model = models.build_model(cfg.model.name, ds.num_classes, ds.input_shape[0], **cfg.model.kwargs)
    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        first = str(e).strip().splitlines()[0]
        raise ValueError(f"dense.checkpoint: {path!r} does not fit model {cfg.model.name!r}: {first}") from None
    return state_dict_bytes(model)


def _dense_job(
    search: Any,
    train_storage: str,
    workers: int,
    worker_resources: dict[str, float],
    use_gpu: bool,
    initial_state: list[Any],
    relay: Any,
) -> dict[str, Any]:
    """Ray task body: run the dense Train job, return its files (see :func:`start_dense`)."""
    import ray.train
    from ray.train.torch import TorchConfig, TorchTrainer

    from orchestrator.ledger import copy_from_storage
    from orchestrator.ray_runtime import pin_cluster_address

    pin_cluster_address()
    trainer = TorchTrainer(
        dense_loop,
        train_loop_config={"search": search, "initial_state": initial_state[0], "relay": relay},
        scaling_config=ray.train.ScalingConfig(num_workers=workers, use_gpu=use_gpu,
                                               resources_per_worker=dict(worker_resources)),
        run_config=ray.train.RunConfig(name="dense", storage_path=train_storage,
                                       # A lost or killed worker: the dense loop starts again.
                                       failure_config=ray.train.FailureConfig(
                                           max_failures=search.resources.max_failures)),
        torch_config=TorchConfig(backend="nccl" if use_gpu else "gloo"),
    )
    previous = signal.getsignal(signal.SIGINT)
    try:
        result = trainer.fit()
    finally:
        # fit() (on a main thread) installs a SIGINT handler holding the Train controller's
        # handle; this process stays in Ray's worker pool, so without this the controller
        # and its dataset manager would outlive the job (~0.5 GB).
        signal.signal(signal.SIGINT, previous)
    if result.checkpoint is None:
        raise RuntimeError("the dense job finished without a checkpoint")
    with tempfile.TemporaryDirectory(prefix="prunefront-dense-") as tmp:
        local = Path(tmp, "ckpt")
        copy_from_storage(train_storage, result.checkpoint.path, local)
        files = {name: (local / name).read_bytes() for name in _FILES}
        files.update({name: (local / name).read_bytes() for name in DENSE_INT8_FILES if (local / name).is_file()})
    return {"metrics": json.loads(files[METRICS_FILE]), "files": files}


class DenseRelay:
    """A Ray actor (no CPU) the dense job's rank 0 posts to, and trials wait on.

    ``placed()`` once the job's workers hold their resources (``wait_placed`` returns
    then), ``publish(blob)`` with the trained ``state_dict`` bytes as soon as training ends
    (``weights`` returns them), before the job measures, exports and saves the model.
    """

    def __init__(self) -> None:
        import asyncio

        self._placed = asyncio.Event()
        self._published = asyncio.Event()
        self._blob = b""

    async def placed(self) -> None:
        self._placed.set()

    async def wait_placed(self) -> None:
        await self._placed.wait()

    async def publish(self, blob: bytes) -> None:
        self._blob = blob
        self._published.set()

    async def weights(self) -> bytes:
        await self._published.wait()
        return self._blob


class DenseJobError(RuntimeError):
    """The dense job failed; the message is one line."""


@dataclass
class DenseJob:
    """A dense Train job running as a Ray task (see :func:`start_dense`).

    Attributes:
        state: Object ref of the trained ``state_dict`` (``torch.save`` bytes): what every
            trial starts from. It resolves as soon as training ends; trials may hold it
            before that, and fetching it waits.
        output: Object ref of ``{"metrics": ..., "files": {name: bytes}}`` (the job's end).
        gate: Object ref that resolves once the job's workers hold their resources (or,
            if the job ends without getting there, once :meth:`store` has seen it end).
            Trials start their Train runs only after it: from then on their workers,
            waiting for :attr:`state`, cannot hold what the dense job needs.
        relay: The :class:`DenseRelay` actor behind ``state`` and ``gate`` (kept until
            the job ends; both refs are the driver's, so they outlive it).
    """

    state: Any
    output: Any
    gate: Any = None
    relay: Any = None

    def store(self, out_dir: str | os.PathLike[str]) -> dict[str, Any]:
        """Wait for the job, write ``<out_dir>/dense`` (atomically), return its metrics.

        Raises:
            DenseJobError: the job failed (the message is the error's first line).
        """
        import ray

        from orchestrator.ledger import write_json

        try:
            output = ray.get(self.output)
            ray.wait([self.state], num_returns=1, fetch_local=False)  # published before the end
        except Exception as e:  # RayTaskError wrapping the Train error
            cause = getattr(e, "cause", None) or e
            text = str(cause).strip().splitlines()
            raise DenseJobError(f"the dense job failed: {cause.__class__.__name__}: "
                                f"{text[-1] if text else ''}") from None
        finally:
            # The job ended: nothing can wait on its resources any more. A gate that never
            # opened, or weights never published (the job failed first), now resolve to an
            # error, releasing every trial waiting on them.
            if self.relay is not None:
                ray.kill(self.relay)
                self.relay = None
        dense_dir = Path(out_dir) / DENSE_DIR
        tmp = dense_dir.with_name(f".{DENSE_DIR}.tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        # metrics.json last: its presence marks a complete dense directory (see load_dense).
        for name, blob in output["files"].items():
            if name != METRICS_FILE:
                (tmp / name).write_bytes(blob)
        shutil.rmtree(dense_dir, ignore_errors=True)
        os.replace(tmp, dense_dir)
        write_json(dense_dir / METRICS_FILE, output["metrics"])
        return dict(output["metrics"])


def start_relay() -> Any:
    """A :class:`DenseRelay` actor on this driver's node.

    Its answers (the dense weights every trial starts from, and starts again from after a
    failure) are stored on the node it runs on and cannot be rebuilt: on a worker node, the
    loss of that node would leave the trial retried there nothing to start from. The
    driver's node lives as long as the search does.
    """
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    here = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=False)
    return ray.remote(num_cpus=0)(DenseRelay).options(scheduling_strategy=here).remote()


def start_dense(
    search: Any,
    *,
    train_storage: str,
    workers: int,
    worker_resources: dict[str, float],
    use_gpu: bool,
    initial_state: Any = None,
) -> DenseJob:
    """Start the dense job without waiting for it.

    The job's own driver is a Ray task holding no CPU (it only waits on its Train run).
    Trials may start at once if they wait for :attr:`DenseJob.gate` before starting their
    Train runs (a trial driver holds only its small CPU share): once the dense workers hold
    their resources, trials start Train runs beside the job (their start-up overlaps its
    training) whose workers wait for :attr:`DenseJob.state`. The dense workers never wait
    for anything a trial holds, so this cannot deadlock; trials that do not fit beside the
    dense job wait for its resources like any Ray task.

    Args:
        search: The validated ``SearchConfig``.
        train_storage: Train storage path / URI (the checkpoint is read back from there).
        workers: DDP workers.
        worker_resources: ``resources_per_worker``.
        use_gpu: GPUs (NCCL) or CPUs (gloo).
        initial_state: Object ref of a ``state_dict`` (from ``dense.checkpoint``) to
            evaluate instead of training.
    """
    import ray

    relay = start_relay()
    # Retried like a trial when its process is lost (a node, the memory monitor).
    task = ray.remote(num_cpus=0, max_retries=search.resources.max_failures)(_dense_job)
    # The ref goes inside a list so Ray hands it to the job as a ref, not as its bytes.
    output = task.remote(search, train_storage, workers, dict(worker_resources), use_gpu, [initial_state], relay)
    return DenseJob(state=relay.weights.remote(), output=output, gate=relay.wait_placed.remote(), relay=relay)


def load_dense(out_dir: str | os.PathLike[str]) -> tuple[dict[str, Any], bytes] | None:
    """``(metrics, state_dict bytes)`` of a stored dense baseline, or None if incomplete."""
    d = Path(out_dir) / DENSE_DIR
    if not all((d / f).is_file() for f in _FILES):
        return None
    return json.loads((d / METRICS_FILE).read_text()), (d / DENSE_STATE_FILE).read_bytes()
