"""One trial = one Ray Train job: a Tune function trainable that runs a ``TorchTrainer``.

``run_trial`` (the trainable, on a small CPU share) builds a ``TorchTrainer`` with the
configured number of DDP workers, whose results reach Tune through ``TuneReportCallback``.
Each worker (:func:`worker_loop`) loads the data (``DistributedSampler`` shards), builds the
model from the dense baseline's weights (fetched from Ray's object store, so it works on
any node without shared disks), and hands it to ``pruners.finetune``, which evaluates every
epoch on the validation split and measures the file it saves. Every epoch all ranks call
``ray.train.report`` with that row (validation metrics are all-reduced inside ``finetune``,
so rank 0's row, the one Tune sees, is the global one) plus the trial's flat config. When
the epoch becomes the trial's kept one (``reports.contract.KeptEpoch``: first epoch, a new
achieved sparsity, or strictly higher validation accuracy) the model is also evaluated on
the test split (reported, never used to choose) and rank 0 attaches a checkpoint holding
the very file the row was measured on; the driver's ledger copies it to
``<output>/models/<trial_id>/``.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = [
    "TrialContext", "TrialOutcome", "is_transient", "load_state_dict_bytes", "make_trainer", "run_trial", "state_dict_bytes",
    "train_trial", "worker_loop", "worker_setup",
]

#: Ledger keys that are not metrics (dropped when a finished trial's result is replayed).
_NOT_METRICS = ("type", "trial_id", "config", "time_total_s")
#: A trial's checkpoint (every epoch): the state to continue from; and, when the epoch is the
#: trial's kept one, the saved model the row was measured on and the row.
from reports.layout import ROW_FILE, STATE_FILE, TRIAL_MODEL_FILES, model_file_name  # noqa: E402
#: Checkpoint score: the epoch when it became the trial's kept one, else 0.
KEPT_SCORE = "kept_score"


@dataclass(frozen=True)
class TrialContext:
    """What every trial shares, handed to :func:`run_trial` via ``tune.with_parameters``.

    Attributes:
        search: The validated search config (a ``SearchConfig``: workers use it as it is,
            without validating it again).
        dense_state: Object-store reference to the dense model's ``state_dict`` (bytes of
            ``torch.save``), the starting point of every trial; the dense job may still be
            producing it when the first trials start (their workers wait for it).
        train_storage: Where Train runs keep their checkpoints (absolute path or URI).
        workers: DDP workers per trial.
        worker_resources: ``resources_per_worker`` of each Train worker.
        use_gpu: Train on GPUs (NCCL) rather than CPUs (gloo).
        finished: ``trial_id -> last ledger result`` of trials that finished before a
            resume; they are replayed instead of run again.
        dense_gate: ``DenseJob.gate`` while the dense job may still be starting (None
            when the dense baseline was stored before the search).
        max_failures: Restarts of a trial's Train worker group after a failure (each from
            the trial's last checkpoint).
    """

    search: Any
    dense_state: Any
    train_storage: str
    workers: int
    worker_resources: dict[str, float]
    use_gpu: bool = False
    finished: dict[str, dict[str, Any]] = field(default_factory=dict)
    dense_gate: Any = None
    max_failures: int = 0


def run_trial(config: dict[str, Any], ctx: TrialContext) -> None:
    """Tune function trainable: run one trial as a Ray Train job.

    Args:
        config: The sampled flat Tune config (keys of ``space.flat_space``).
        ctx: Everything trials share (:class:`TrialContext`).
    """
    import ray.train.torch  # noqa: F401 - make_trainer's imports, done before any wait
    import ray.tune.integration.ray_train  # noqa: F401
    from ray import tune

    trial_id = tune.get_context().get_trial_id()
    done = ctx.finished.get(trial_id)
    if done is not None:
        # Finished before the driver died: report its last result again so Tune marks
        # it done; the ledger ignores it (it already holds this trial's lines).
        tune.report({k: v for k, v in done.items() if k not in _NOT_METRICS and v is not None})
        return

    if ctx.dense_gate is not None:
        # The dense job is still starting: begin this Train run (whose workers hold CPUs
        # while they wait for the dense weights) only once the dense workers hold theirs.
        import ray

        ray.wait([ctx.dense_gate], num_returns=1, fetch_local=False)
    loop_config = {"search": ctx.search, "trial": dict(config), "dense_state": ctx.dense_state,
                   "trainable_started": time.time()}
    make_trainer(worker_loop, loop_config, trial_id, ctx).fit()


def make_trainer(loop: Any, loop_config: dict[str, Any], trial_id: str, ctx: TrialContext) -> Any:
    """The ``TorchTrainer`` of one trial attempt, reporting to Tune (call inside a trainable).

    ``bench/trial_overhead.py`` builds its Ray-only baseline with this too, so both time
    the same Train run.
    """
    import ray.train
    from ray.train.torch import TorchConfig, TorchTrainer
    from ray.tune.integration.ray_train import TuneReportCallback

    from orchestrator.ray_runtime import pin_cluster_address

    pin_cluster_address()
    return TorchTrainer(
        loop,
        train_loop_config=loop_config,
        scaling_config=ray.train.ScalingConfig(
            num_workers=ctx.workers, use_gpu=ctx.use_gpu, resources_per_worker=dict(ctx.worker_resources)
        ),
        run_config=ray.train.RunConfig(
            # One name per trial: a retried trial (a lost node, --resume) is the same Train
            # run, which Ray restores from its latest checkpoint (the last finished epoch).
            name=trial_id,
            storage_path=ctx.train_storage,
            callbacks=[TuneReportCallback()],
            # Every epoch checkpoints (the state to continue from); Train always keeps the
            # latest, and of the others those of the last kept epochs (KEPT_SCORE), which the
            # ledger copies models from, possibly a few epochs later.
            checkpoint_config=ray.train.CheckpointConfig(
                num_to_keep=3, checkpoint_score_attribute=KEPT_SCORE, checkpoint_score_order="max"),
            # Lost workers and nodes, killed processes: the worker group restarts from there.
            failure_config=ray.train.FailureConfig(max_failures=ctx.max_failures),
        ),
        torch_config=TorchConfig(backend="nccl" if ctx.use_gpu else "gloo"),
    )


def state_dict_bytes(module: Any) -> bytes:
    """``module``'s ``state_dict`` (on the CPU) as ``torch.save`` bytes, the form trials load."""
    import torch

    buf = io.BytesIO()
    torch.save({k: v.detach().cpu() for k, v in module.state_dict().items()}, buf)
    return buf.getvalue()


def load_state_dict_bytes(blob: bytes) -> dict[str, Any]:
    """A ``state_dict`` from ``torch.save`` bytes (tensors only, no code is unpickled)."""
    import torch

    return torch.load(io.BytesIO(blob), map_location="cpu", weights_only=True)


@dataclass
class WorkerSetup:
    """What a Train worker builds before training (see :func:`worker_setup`)."""

    cfg: Any
    model: Any
    train_loader: Any
    val_loader: Any
    test_loader: Any
    example_inputs: Any
    device: Any
    rank: int
    world_size: int
    dense_wait_s: float = 0.0  # seconds spent waiting for the dense weights
    #: Where this worker runs (``node_id``, ``host``, ``device``): rank 0's go into
    #: every row, so a latency can be read against the hardware that measured it.
    placement: dict[str, str] = field(default_factory=dict)


def worker_setup(cfg: Any, initial_state: Any) -> WorkerSetup:
    """Data loaders for this rank and the model (prepared for DDP) inside a Train worker.

    Args:
        cfg: The validated ``SearchConfig``.
        initial_state: Object ref (or bytes) of a ``state_dict`` to start from, or None
            for the model as built (seeded, so every rank builds the same weights).
    """
    import ray
    import ray.train
    import ray.train.torch
    import torch

    from orchestrator import data, models

    tctx = ray.train.get_context()
    rank, world = tctx.get_world_rank(), tctx.get_world_size()
    ds = data.load_datasets(cfg.data, seed=cfg.seed)
    train_loader = data.build_loader(
        ds.train, cfg.data.batch_size, shuffle=True, rank=rank, world_size=world, seed=cfg.seed,
        num_workers=cfg.data.num_workers,
    )
    val_loader, test_loader = (
        data.build_loader(split, cfg.data.eval_batch_size, shuffle=False, rank=rank, world_size=world,
                          num_workers=cfg.data.num_workers)
        for split in (ds.val, ds.test)
    )
    torch.manual_seed(cfg.seed)
    model = models.build_model(cfg.model.name, ds.num_classes, ds.input_shape[0], **cfg.model.kwargs)
    waited = 0.0
    if initial_state is not None:
        t0 = time.time()
        blob = initial_state if isinstance(initial_state, (bytes, bytearray)) else ray.get(initial_state)
        waited = time.time() - t0  # the dense job may still be training
        model.load_state_dict(load_state_dict_bytes(blob))
    model = ray.train.torch.prepare_model(model)
    device = ray.train.torch.get_device()
    example = ds.example_inputs(1).to(device)
    return WorkerSetup(cfg, model, train_loader, val_loader, test_loader, example, device, rank, world, waited,
                       placement(device))


def placement(device: Any) -> dict[str, str]:
    """This process's Ray node id, host name and torch device (with the GPU's name)."""
    import socket

    import ray
    import torch

    name = str(device)
    if getattr(device, "type", None) == "cuda":
        name = f"{name} ({torch.cuda.get_device_name(device)})"
    return {"node_id": ray.get_runtime_context().get_node_id(), "host": socket.gethostname(),
            "device": name}


def _plain(value: Any) -> Any:
    """Tensors / numpy scalars -> Python numbers, so Tune and JSON see plain values."""
    if hasattr(value, "item") and not isinstance(value, (str, bytes)):
        try:
            return value.item()
        except (TypeError, ValueError):
            return value
    return value


@dataclass
class TrialOutcome:
    """What :func:`train_trial` leaves on a worker: the final model and the epoch rows."""

    model: Any
    rows: list[dict[str, Any]]
    rank: int


#: Words in the message of an error that a retry can cure: a collective whose peer died
#: (gloo / NCCL), a lost connection, a timeout.
_TRANSIENT_WORDS = ("gloo", "nccl", "connection", "timed out", "timeout", "socket", "broken pipe", "peer")


def is_transient(error: BaseException) -> bool:
    """Whether a trial's exception is a fault of its surroundings, worth a retry.

    Lost peers, out-of-memory (another process may have taken it), I/O and Ray errors are;
    anything else raised by the same code on the same data (a shape mismatch, a config
    value the pruner rejects) would raise again on every retry.
    """
    import torch

    if isinstance(error, (MemoryError, torch.OutOfMemoryError, OSError, ConnectionError, TimeoutError)):
        return True
    dist_errors = tuple(getattr(torch.distributed, n) for n in ("DistError",) if hasattr(torch.distributed, n))
    if dist_errors and isinstance(error, dist_errors):
        return True
    if type(error).__module__.split(".")[0] == "ray":
        return True
    text = str(error).lower()
    return isinstance(error, RuntimeError) and any(w in text for w in _TRANSIENT_WORDS)


def worker_loop(config: dict[str, Any]) -> None:
    """Train worker entry point (``TorchTrainer``'s ``train_loop_per_worker``).

    A transient error (:func:`is_transient`) propagates, so Train restarts the worker group
    from the last checkpoint (``resources.max_failures``). Any other error would only
    repeat: the trial ends at once with a ``trial_error`` result (the ledger records it
    errored, with that line as its reason) instead of being retried. Returns nothing: Train
    ships rank 0's return value back to the driver.
    """
    try:
        train_trial(config)
    except Exception as e:  # noqa: BLE001 - classified below
        if is_transient(e):
            raise
        import traceback

        import ray.train

        traceback.print_exc()  # the whole story stays in the worker's log
        message = " ".join(f"{type(e).__name__}: {e}".split())[:500]
        ray.train.report({"trial_error": message})


@dataclass
class _EpochReporter:
    """A trial's one reporting path: each epoch's row becomes one Train report (the row, the
    trial's config and extras) carrying rank 0's checkpoint: the state to continue from and,
    on the trial's kept epoch, the file the row was measured on and the row."""

    setup: WorkerSetup
    record: dict[str, Any]  # the trial's config (TrialSettings.record)
    extras: dict[str, Any]  # startup_s, dense_wait_s
    kept: Any = None  # reports.contract.KeptEpoch
    rows: list[dict[str, Any]] = field(default_factory=list)

    def report(self, row: dict[str, Any], keep: bool, checkpoint_dir: str | None = None) -> None:
        """``ray.train.report`` of ``row`` (the one place its metrics are built)."""
        import ray.train

        metrics = {**row, **self.record, **self.extras, "kept": int(keep),
                   KEPT_SCORE: int(row["epoch"]) if keep else 0, **self.setup.placement}
        ray.train.report(metrics, checkpoint=None if checkpoint_dir is None
                         else ray.train.Checkpoint.from_directory(checkpoint_dir))

    def epoch(self, model: Any, row: dict[str, Any], artifact: str | None, state: Any) -> None:
        """``pruners.finetune``'s ``checkpoint`` hook, after each epoch: its row, the file
        that row was measured on (rank 0) and the state to continue from."""
        import torch

        import pruners

        row = {k: _plain(v) for k, v in row.items()}
        keep = self.kept.observe(row)  # validation metrics: the same decision on every rank
        if keep:
            row["test_accuracy"], row["test_loss"] = pruners.evaluate(model, self.setup.test_loader,
                                                                      device=self.setup.device)
        self.rows.append(row)
        if self.setup.rank != 0:
            self.report(row, keep)
            return
        with tempfile.TemporaryDirectory(prefix="prunefront-ckpt-") as tmp:
            torch.save({"finetune": state(), "kept": self.kept.kept, "rows": self.rows}, os.path.join(tmp, STATE_FILE))
            if keep:  # model.pt2, or model.onnx for an int8 trial
                shutil.copyfile(artifact, os.path.join(tmp, model_file_name(self.record.get("quantize"))))
                Path(tmp, ROW_FILE).write_text(json.dumps({**row, "config": self.record}, default=str))
            self.report(row, keep, tmp)

    def resume(self, checkpoint: Any) -> dict[str, Any]:
        """The ``finetune`` state of ``checkpoint`` (the last epoch the trial finished), with
        its rows and kept epoch restored and that epoch reported again (with its model when
        it was the kept one): the driver may have died before its result reached the
        ledger, which writes each epoch once."""
        import torch

        with checkpoint.as_directory() as d:
            saved = torch.load(os.path.join(d, STATE_FILE), map_location="cpu", weights_only=True)
            self.kept.kept, self.rows = saved["kept"], list(saved["rows"])
            last = self.rows[-1]
            was_kept = self.kept.kept is not None and self.kept.kept.get("epoch") == last["epoch"]
            has_model = any(os.path.isfile(os.path.join(d, f)) for f in TRIAL_MODEL_FILES if f != ROW_FILE)
            self.report(last, was_kept, d if self.setup.rank == 0 and was_kept and has_model else None)
        return saved["finetune"]


def _pruning(setup: WorkerSetup, trial: Any) -> tuple[Any, Any, Any]:
    """``(spec, schedule, teacher)`` of a decoded trial on this worker's data."""
    import pruners
    from orchestrator.steps import build_schedule
    from pruners.thresholds import schedule_target

    # The fraction rule ramps to `amount`, a cost rule to the share of the cost it removes;
    # the other rules apply `amount` at each update step (the schedule only times them).
    schedule = build_schedule(trial.schedule, trial.schedule_params,
                              target=schedule_target(trial.threshold_rule, trial.amount),
                              steps_per_epoch=len(setup.train_loader), epochs=trial.epochs)
    spec = pruners.PruneSpec(
        criterion=trial.criterion, granularity=trial.granularity, amount=trial.amount,
        threshold_rule=trial.threshold_rule, scope=trial.scope, params=dict(trial.criterion_params),
        min_keep=trial.min_keep,
    )
    teacher = None
    if trial.distill > 0:  # the dense model the trial starts from teaches the pruned one
        import copy

        from pruners.measure import unwrap

        teacher = copy.deepcopy(unwrap(setup.model))
    return spec, schedule, teacher


def train_trial(config: dict[str, Any]) -> TrialOutcome:
    """Prune and fine-tune with ``pruners.finetune`` on this worker, reporting every epoch.

    Args:
        config: ``{"search": SearchConfig, "trial": sampled flat Tune config,
            "dense_state": ref or bytes of the start weights (None: as built),
            "trainable_started": time.time() of the trainable}``.
    """
    import ray.train

    import pruners
    from orchestrator.optim import trial_optimizer
    from orchestrator.space import decode_trial
    from reports.contract import KeptEpoch

    setup = worker_setup(config["search"], config["dense_state"])
    cfg = setup.cfg
    trial = decode_trial(config["trial"])
    spec, schedule, teacher = _pruning(setup, trial)
    optimizer = trial_optimizer(cfg, trial.lr, trial.epochs)  # cosine_restarts: restarts after each rung
    # Seconds from the trainable's start to training: Train run launch, worker process,
    # imports, data, model (the per-trial overhead the search pays before any work), not
    # counting the wait for a dense job still training beside the first trials.
    startup_s = time.time() - float(config.get("trainable_started", time.time())) - setup.dense_wait_s
    reporter = _EpochReporter(setup, trial.record(), {"startup_s": startup_s, "dense_wait_s": setup.dense_wait_s},
                              KeptEpoch())
    resume = None
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:
        # A retry (a lost worker or node, a killed process, --resume): continue after the
        # last epoch the trial finished, exactly where it was.
        resume = reporter.resume(checkpoint)
        if int(resume["epoch"]) >= trial.epochs:  # it had finished
            return TrialOutcome(model=setup.model, rows=reporter.rows, rank=setup.rank)
    model = pruners.finetune(
        setup.model, setup.train_loader, setup.val_loader,
        spec=spec, schedule=schedule, epochs=trial.epochs, optimizer=optimizer,
        checkpoint=reporter.epoch,  # the one hook: its report carries the checkpoint
        example_inputs=setup.example_inputs, device=setup.device,
        calibration_batches=cfg.data.calibration_batches,
        latency_batch_size=cfg.metrics.latency_batch_size,
        latency_repeats=cfg.metrics.latency_repeats,
        latency_threads=cfg.metrics.latency_threads,
        artifact_metadata={"config": reporter.record},
        seed=cfg.seed,
        teacher=teacher, distill=trial.distill, temperature=cfg.search.distill_temperature,
        resume=resume, bf16=cfg.resources.bf16, channels_last=cfg.resources.channels_last,
        quantize=trial.quantize, quantize_calibration=cfg.search.quantize_calibration,
        qat_epochs=cfg.search.qat_epochs,
    )
    return TrialOutcome(model=model, rows=reporter.rows, rank=setup.rank)
