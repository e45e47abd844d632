"""Command line of the search: parse, validate, plan; never imports Ray (nor the search).

``orchestrator/search.py``, the one entry module, starts with::

    cfg, args = cli.parse(argv)        # exits 2 with one line on stderr when anything is wrong
    if args.dry_run:
        print(cli.describe(cfg, args)); return 0
    ...                                # only now import ray

Errors and exit codes live in ``orchestrator.errors``.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import NoReturn

from orchestrator.config import SearchConfig, default_output
from reports.layout import DENSE_DIR, EXPERIMENT_FILE, LEDGER_FILE, MODELS_DIR, REPORT_DIR, RESULTS_DIR, TUNE_DIR
from orchestrator.loading import apply_overrides, load_config, read_yaml
from orchestrator.errors import ConfigError, ErrorExit, fail
from orchestrator.space import flat_space

__all__ = [
    "DEFAULT_CONFIG",
    "EXPERIMENT_FILE",
    "ErrorExit",
    "build_parser",
    "check_environment",
    "cluster_for",
    "describe",
    "fail",
    "locate_factory",
    "lock_output",
    "parse",
    "resolve_experiment",
]

#: The shipped default search (digits, offline, a few minutes on 2 CPU cores).
DEFAULT_CONFIG = Path(__file__).resolve().parent.parent / "configs" / "default.yaml"


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors (argparse prints the usage block and ``prog: error``)."""

    def error(self, message: str) -> NoReturn:  # noqa: D102 - argparse API
        fail(f"{message}; see --help")


_EPILOG = """\
configuration:
  A YAML file; every key is optional and documented in configs/default.yaml.
  Searched entries are a list (choice), {low, high, log?, int?} (range) or a scalar.
  --set overrides any key with a YAML value:
    --set search.num_samples=4  --set search.space.criterion=[magnitude,taylor]
    --set 'search.space.amount={low: 0.5, high: 0.9}'  --set scheduler.name=moasha
""" + f"""
output:
  <output>/{EXPERIMENT_FILE}, {LEDGER_FILE}, {DENSE_DIR}/, {MODELS_DIR}/, {TUNE_DIR}/, {REPORT_DIR}/ (docs/design.md).
  An existing experiment is never overwritten: continue it with --resume DIR, or pick a new
  --output. --resume reads the config recorded in DIR/{EXPERIMENT_FILE} (--set may adjust it).

examples:
  python orchestrator/search.py                                   # default: digits, ~5 min on 2 CPUs
  python orchestrator/search.py --config configs/fashion_mnist.yaml --dry-run
  python orchestrator/search.py --config configs/cifar10_resnet56.yaml --dry-run --cluster-nodes 4 --cluster-cpus 16 --cluster-gpus 4
  python orchestrator/search.py --resume {RESULTS_DIR}/digits-default
"""


def build_parser(prog: str | None = None) -> argparse.ArgumentParser:
    """The argument parser (``--help`` text included)."""
    p = _Parser(
        prog=prog or "prunefront-search",
        description=(
            "Search pruning methods (criterion x granularity x threshold x schedule) for a "
            "PyTorch model with Ray Tune, fine-tuning each trial with Ray Train, and write the "
            "Pareto fronts. The config is validated, and the resources planned, before Ray starts."
        ),
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--config", metavar="FILE", help=f"YAML search config (default: configs/{DEFAULT_CONFIG.name})")
    p.add_argument(
        "--set", metavar="KEY=VALUE", action="append", default=[], dest="overrides",
        help="override a config key (dotted path, YAML value); repeatable",
    )
    p.add_argument("--output", metavar="DIR", help=f"experiment directory (default: ./{RESULTS_DIR}/<name>)")
    p.add_argument(
        "--resume", metavar="EXPERIMENT",
        help=f"continue the experiment in this directory (or ./{RESULTS_DIR}/EXPERIMENT)",
    )
    p.add_argument("--dry-run", action="store_true", help="validate, print the plan and exit without starting Ray")
    p.add_argument("--schema", action="store_true",
                   help="print the config's JSON Schema (configs/schema.json) and exit")
    p.add_argument(
        "--address", metavar="ADDR", default=os.environ.get("RAY_ADDRESS"),
        help="Ray cluster to connect to (default: $RAY_ADDRESS, else a local Ray)",
    )
    p.add_argument(
        "--metrics-port", metavar="PORT", type=int,
        help="embedded Ray only: export Ray's (and the search's) metrics for Prometheus on this port "
             "(a cluster's nodes set theirs with `ray start --metrics-export-port`)",
    )
    g = p.add_argument_group("cluster assumed by --dry-run (default: this machine, or resources.cluster)")
    g.add_argument("--cluster-nodes", type=int, metavar="N", help="number of nodes")
    g.add_argument("--cluster-cpus", type=float, metavar="N", help="CPUs per node")
    g.add_argument("--cluster-gpus", type=float, metavar="N", help="GPUs per node")
    return p


# --------------------------------------------------------------------------------------
# Experiments and paths
# --------------------------------------------------------------------------------------


def resolve_experiment(ref: str) -> Path:
    """``--resume`` argument -> experiment directory (a path, or a name under ./prunefront-results)."""
    p = Path(ref).expanduser()
    if (p / EXPERIMENT_FILE).is_file() or p.is_dir() or os.sep in ref:
        return p.absolute()
    return Path(RESULTS_DIR, ref).absolute()


def _check_writable(key: str, path: Path) -> None:
    """``path`` is (or can be created as) a directory we can write to; nothing is created."""
    probe = path
    while not probe.exists():
        if probe.parent == probe:
            break
        probe = probe.parent
    if probe.exists() and not probe.is_dir():
        raise ConfigError(f"{key}: cannot create {str(path)!r}: {str(probe)!r} is a file; choose a directory path")
    try:
        # A real write: os.access lies for root and on read-only mounts.
        with tempfile.NamedTemporaryFile(dir=probe, prefix=".prunefront-write-test-"):
            pass
    except OSError as e:
        reason = e.strerror or e.__class__.__name__
        raise ConfigError(f"{key}: cannot write to {str(probe)!r} ({reason}); choose a writable directory") from None


def _is_local_storage(storage: str) -> str | None:
    if storage.startswith("file://"):
        return storage[len("file://"):]
    if "://" in storage:
        return None
    return storage


def cluster_for(cfg: SearchConfig, args: argparse.Namespace):  # -> plan.Cluster
    """The cluster a pre-Ray plan assumes: flags, else ``resources.cluster``, else this machine."""
    from orchestrator.plan import Cluster, available_cpus, detect_gpus

    spec = cfg.resources.cluster
    nodes = args.cluster_nodes if args.cluster_nodes is not None else (spec.nodes if spec else 1)
    if args.cluster_cpus is not None:
        cpus = args.cluster_cpus
    else:
        cpus = spec.cpus if spec else available_cpus()
    if args.cluster_gpus is not None:
        gpus = args.cluster_gpus
    else:
        gpus = spec.gpus if spec else detect_gpus()
    if nodes < 1 or cpus <= 0 or gpus < 0:
        raise ConfigError(
            f"--cluster-nodes/--cluster-cpus/--cluster-gpus: got {nodes}, {cpus:g}, {gpus:g}; "
            "need nodes >= 1, cpus > 0, gpus >= 0"
        )
    return Cluster.uniform(nodes, cpus, gpus)


def locate_factory(name: str) -> str:
    """Where the module of ``package.module:factory`` lives, found without importing it.

    A config's ``model.name`` is code: the search imports the module and calls the factory
    (as Hydra's ``_target_`` does). ``--dry-run`` only locates the module's file: each
    package level is looked up on its parent's ``__path__`` (``importlib.util.find_spec`` on
    a dotted name would import the parents, running their ``__init__``).

    Raises:
        ConfigError: the module cannot be found.
    """
    import importlib.machinery
    import importlib.util
    import sys

    module, _, _attr = name.partition(":")
    parts = module.split(".")
    spec = None
    for i, part in enumerate(parts):
        if i == 0:
            spec = importlib.util.find_spec(part) if part not in sys.modules else sys.modules[part].__spec__
        else:
            locations = spec.submodule_search_locations if spec is not None else None
            spec = importlib.machinery.PathFinder.find_spec(part, list(locations)) if locations else None
        if spec is None:
            raise ConfigError(
                f"model.name: cannot find module {'.'.join(parts[: i + 1])!r} (searched without importing it); "
                "package.module:factory must be importable (on PYTHONPATH) on every node"
            )
    return spec.origin or "a namespace package"


def check_environment(cfg: SearchConfig, *, resuming: bool, local: bool, dry_run: bool = False) -> None:
    """Checks that need the file system or imports, in cheap-first order.

    Output and storage are writable (nothing is created), an existing experiment is never
    taken over unless resuming, the dataset is present (or may be downloaded), the dense
    checkpoint exists, and the model name resolves. Data and checkpoint paths are only
    checked when the cluster is this machine (``local``); a remote cluster sees its own disks.

    Raises:
        ConfigError: the first problem found.
    """
    out = cfg.output_dir
    if out.exists() and not out.is_dir():
        raise ConfigError(f"output: {str(out)!r} is a file; choose a directory")
    exp_file = out / EXPERIMENT_FILE
    if out.is_dir():
        from orchestrator.lock import live_holder

        live_holder(out)  # another driver runs on it (a record; run's lock is the real check)
    if not resuming and exp_file.exists():
        raise ConfigError(
            f"output: {str(out)!r} already holds an experiment; continue it with --resume {out} "
            "or choose a new --output"
        )
    _check_writable("output", out)
    if cfg.storage is not None:
        local_storage = _is_local_storage(cfg.storage)
        if local_storage is not None:
            _check_writable("storage", Path(local_storage))

    if resuming:
        from orchestrator.resume import check_state

        check_state(cfg)  # the ledger and dense/ read back, before Ray starts
    if local:
        from orchestrator import datasets

        datasets.locate(cfg.data)  # raises ConfigError saying where it looked
        check_calibration(cfg)
        if cfg.dense.checkpoint is not None and not Path(cfg.dense.checkpoint).exists():
            raise ConfigError(
                f"dense.checkpoint: {cfg.dense.checkpoint!r} does not exist; give a state_dict (.pt) or "
                "pruners.save file, or null to train the dense model"
            )

    from orchestrator import models

    if dry_run and ":" in cfg.model.name and models.timm_model_name(cfg.model.name) is None:
        locate_factory(cfg.model.name)  # a dry run runs none of the config's code
    else:
        models.check_model_name(cfg.model.name)


def check_calibration(cfg: SearchConfig) -> None:
    """int8 calibrates on search.quantize_calibration training examples: no more than the
    training split holds (read here, before Ray starts, only when int8 may be drawn)."""
    from orchestrator.params import values_of

    if not set(values_of(cfg.search.space.quantize)) - {"none"}:
        return
    from orchestrator import data

    n = len(data.load_datasets(cfg.data, seed=cfg.seed).train)
    if cfg.search.quantize_calibration > n:
        raise ConfigError(
            f"search.quantize_calibration: {cfg.search.quantize_calibration} is larger than the training split "
            f"({n} examples of {cfg.data.dataset} after the validation split and data.train_subset); "
            f"must be <= {n}")


def lock_output(cfg: SearchConfig):  # -> lock.Held
    """Take the output's driver lock (``orchestrator.lock``) before anything is written there.

    Another driver on the output: one line naming it (pid, host, start time) and exit 2.
    """
    from orchestrator import lock

    try:
        return lock.acquire(cfg.output_dir)
    except ConfigError as e:
        fail(str(e))


def _load(args: argparse.Namespace) -> tuple[SearchConfig, bool]:
    """Read the config (from --config, the default file, or a resumed experiment)."""
    if args.resume is not None:
        if args.config is not None:
            raise ConfigError(
                f"--resume: the config comes from the experiment's {EXPERIMENT_FILE}; drop --config "
                "(use --set to change values)"
            )
        if args.output is not None:
            raise ConfigError("--resume: the experiment directory is the output; drop --output")
        exp = resolve_experiment(args.resume)
        exp_file = exp / EXPERIMENT_FILE
        if not exp_file.is_file():
            raise ConfigError(
                f"--resume: no experiment at {str(exp)!r} ({EXPERIMENT_FILE} missing); give the directory "
                "of an experiment that has started"
            )
        try:
            recorded = json.loads(exp_file.read_text(encoding="utf-8"))
            raw = recorded["config"]
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise ConfigError(
                f"--resume: {str(exp_file)!r} is unreadable or has no 'config' ({e.__class__.__name__}); "
                "it must be written by prunefront"
            ) from None
        from orchestrator.resume import check_overrides

        cfg = SearchConfig.from_dict({**raw, "output": str(exp)}) if isinstance(raw, dict) else None
        if cfg is None:
            raise ConfigError(f"--resume: {str(exp_file)!r} has no 'config' mapping; it must be written by prunefront")
        resumed = SearchConfig.from_dict({**apply_overrides(raw, args.overrides), "output": str(exp)})
        check_overrides(cfg, resumed)  # --set may change resources only
        return resumed, True

    path = args.config if args.config is not None else DEFAULT_CONFIG
    if args.output is not None:
        raw = apply_overrides(read_yaml(path), args.overrides)
        raw["output"] = args.output
        return SearchConfig.from_dict(raw), False
    return load_config(path, args.overrides), False


def parse(argv: Sequence[str] | None = None, *, prog: str | None = None) -> tuple[SearchConfig, argparse.Namespace]:
    """Parse the command line and validate everything that can be checked without Ray.

    Returns the validated config (``output`` always set, absolute) and the argparse
    namespace with these fields: ``config``, ``overrides`` (the ``--set`` items),
    ``output``, ``resume``, ``dry_run``, ``address``, ``metrics_port``, ``cluster_nodes``, ``cluster_cpus``,
    ``cluster_gpus``, plus

    * ``resuming`` (bool): continue the experiment in ``cfg.output_dir``;
    * ``local`` (bool): no ``--address``/``RAY_ADDRESS``, Ray will run on this machine;
    * ``checked_files`` (bool): the dataset and dense checkpoint were found on this machine
      (False for a remote cluster, whose disks the Ray side must check);
    * ``plan`` (``orchestrator.plan.Plan`` | None): the resource plan for this machine (or
      the dry-run cluster); None when a remote cluster will be asked after ``ray.init``.

    Any problem: one line ``error: ...`` on stderr and ``SystemExit(2)`` (:func:`fail`).
    """
    args = build_parser(prog).parse_args(argv)
    if args.schema:
        return None, args  # type: ignore[return-value]  # nothing to validate
    try:
        cfg, resuming = _load(args)
        if cfg.output is None:
            cfg = cfg.model_copy(update={"output": default_output(cfg.name)})
        args.resuming = resuming
        args.local = not args.address
        if args.metrics_port is not None:
            if args.address:
                raise ConfigError("--metrics-port sets the embedded Ray's port; a cluster's nodes export "
                                  "on the port given to `ray start --metrics-export-port`")
            if not 1024 <= args.metrics_port <= 65535:
                raise ConfigError(f"--metrics-port must be between 1024 and 65535, got {args.metrics_port}")
        args.plan = None
        if args.dry_run or args.local:
            from orchestrator.plan import Cluster, make_plan

            # A dry run plans for the cluster the user describes (flags, resources.cluster,
            # else this machine); a real local run for this machine, which is what Ray sees.
            cluster = cluster_for(cfg, args) if args.dry_run else Cluster.local()
            args.plan = make_plan(cfg, cluster)
        # A dry run planned for another cluster (flags or resources.cluster) cannot judge
        # that cluster's disks; skip the data and checkpoint checks then.
        other_cluster = args.dry_run and (
            args.cluster_nodes is not None
            or args.cluster_cpus is not None
            or args.cluster_gpus is not None
            or cfg.resources.cluster is not None
        )
        args.checked_files = args.local and not other_cluster
        check_environment(cfg, resuming=resuming, local=args.checked_files, dry_run=args.dry_run)
    except ConfigError as e:
        fail(str(e))
    return cfg, args


def _factory_note(name: str) -> list[str]:
    if ":" not in name or name.startswith("timm:"):
        return []
    return [f"code:        model.name imports {name.partition(':')[0]!r} ({locate_factory(name)}) and calls "
            f"{name.partition(':')[2]!r} when the search starts; not run by --dry-run (configs are trusted code)"]


def describe(cfg: SearchConfig, args: argparse.Namespace) -> str:
    """What ``--dry-run`` prints: experiment, search space and the resource plan."""
    s = cfg.search
    lines = [
        f"experiment:  {cfg.name} -> {cfg.output_dir}" + ("  (resuming)" if getattr(args, "resuming", False) else ""),
        f"storage:     {cfg.storage_path}" + ("" if cfg.storage else "  (Tune experiment under <output>/tune)"),
        f"data:        {cfg.data.dataset}  model: {cfg.model.name}  dense: "
        + (cfg.dense.checkpoint or f"{cfg.dense.epochs} epoch(s) at lr {cfg.dense.lr:g}"),
        *_factory_note(cfg.model.name),
        f"search:      {s.algorithm}, {s.num_samples} sample(s), {s.max_epochs} fine-tune epoch(s) max, "
        f"scheduler {cfg.scheduler.name}"
        + (f" on {cfg.scheduler.metric} ({cfg.scheduler.mode})" if cfg.scheduler.name == "asha" else "")
        + (f" on {cfg.scheduler.objectives}" if cfg.scheduler.name == "moasha" else ""),
        "space:",
    ]
    for key, p in flat_space(s).items():
        lines.append(f"  {key:<32} {json.dumps(p.to_raw())}")
    if not getattr(args, "checked_files", True):
        lines.append("files:       dataset and checkpoint not checked (they live on the cluster)")
    if args.plan is not None:
        lines.append(args.plan.describe())
    return "\n".join(lines)
