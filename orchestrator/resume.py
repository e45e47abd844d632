"""What ``--resume`` checks before Ray starts: the run continues the experiment it names.

* ``--set`` may change only what does not change the results: the resources a trial gets
  (:data:`RESUMABLE`). Anything else (a seed, a subset, the model) would put rows of two
  configurations on one front under a record (``experiment.json``) that names only the first.
* The stored state is readable: the ledger parses, ``dense/metrics.json`` parses, and
  ``dense/state_dict.pt`` fits the configured model, so the run does not fail after Ray has
  started (every trial erroring one by one on a model that does not fit).

Every problem is a one-line :class:`ConfigError`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from orchestrator.errors import ConfigError, fmt

__all__ = ["RESUMABLE", "changed_keys", "check_overrides", "check_state"]

#: Config keys ``--resume --set`` may change: the resources trials run on. Not
#: ``resources.bf16``, which changes the training arithmetic and so the results. The
#: config has no time limits (a search ends when its trials do); none to allow.
RESUMABLE = ("resources.",)
_NOT_RESUMABLE = ("resources.bf16",)


def _flat(d: Any, prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}`` (an empty mapping stays a value)."""
    if not isinstance(d, dict) or not d:
        return {prefix: d}
    out: dict[str, Any] = {}
    for k, v in d.items():
        out.update(_flat(v, f"{prefix}.{k}" if prefix else str(k)))
    return out


def changed_keys(old: dict[str, Any], new: dict[str, Any]) -> list[tuple[str, Any, Any]]:
    """``(dotted key, old value, new value)`` for each value that differs, in order."""
    a, b = _flat(old), _flat(new)
    return [(k, a.get(k), b.get(k)) for k in dict.fromkeys([*a, *b]) if a.get(k, ...) != b.get(k, ...)]


def check_overrides(recorded: Any, resumed: Any) -> None:
    """Refuse a resumed config (``SearchConfig``) that changes more than resources.

    Raises:
        ConfigError: naming the first key changed that may not be.
    """
    for key, was, now in changed_keys(recorded.to_dict(), resumed.to_dict()):
        if not key.startswith(RESUMABLE) or key.startswith(_NOT_RESUMABLE):
            raise ConfigError(
                f"--set {key}: --resume cannot change it ({fmt(was)} -> {fmt(now)}): the experiment's results "
                "were produced with the recorded value; only resources.* (not resources.bf16) may change on "
                "--resume; start a new experiment (--config ... --output NEW) to change it"
            )


def _num_classes(cfg: Any) -> tuple[int, int] | None:
    """``(num_classes, in_channels)`` of the configured dataset, None when unknown here."""
    from orchestrator.datasets import DATASETS

    info = DATASETS.get(cfg.data.dataset).info
    if info.num_classes is not None:
        return info.num_classes, info.in_channels
    train = Path(cfg.data.root or "", "train")
    if not train.is_dir():
        return None
    return sum(1 for p in train.iterdir() if p.is_dir()), info.in_channels


def _check_dense_fits(cfg: Any, state_file: Path) -> None:
    from orchestrator import models
    from orchestrator.trial import load_state_dict_bytes

    try:
        state = load_state_dict_bytes(state_file.read_bytes())
    except Exception as e:  # noqa: BLE001 - any failure to read it is the same refusal
        raise ConfigError(f"--resume: {str(state_file)!r} is unreadable ({e.__class__.__name__}); "
                          "delete dense/ to train the dense model again") from None
    shape = _num_classes(cfg)
    if shape is None:
        return
    try:
        model = models.build_model(cfg.model.name, shape[0], shape[1], **cfg.model.kwargs)
    except Exception:  # noqa: BLE001 - building is the search's to report, with its own line
        return
    want = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    have = {k: tuple(getattr(v, "shape", ())) for k, v in state.items()}
    for key in sorted(set(want) | set(have)):
        if want.get(key) != have.get(key):
            what = (f"the model's {key!r} is not in the file" if key not in have
                    else f"the file's {key!r} is not in the model" if key not in want
                    else f"{key!r} has shape {list(have[key])} in the file, {list(want[key])} in the model")
            raise ConfigError(
                f"--resume: {str(state_file)!r} does not fit model.name {cfg.model.name!r} ({what}); dense/ was "
                "trained for another model: resume with the experiment's own config, or start a new experiment"
            )


def check_state(cfg: Any) -> None:
    """The experiment's stored state reads back: ledger, ``dense/metrics.json``, and
    ``dense/state_dict.pt`` against the configured model.

    Raises:
        ConfigError: one line naming the file (and line) that is damaged.
    """
    from reports.contract import LedgerError
    from reports.layout import Layout
    from reports.ledger import check_experiment_dir

    out = cfg.output_dir
    try:
        check_experiment_dir(out)  # the readers' own rules: torn tail, damaged lines, ranges
    except (LedgerError, ValueError) as e:
        raise ConfigError(f"--resume: {e}; repair or remove it, then resume again") from None
    layout = Layout(out)
    if not layout.dense_metrics.is_file() or not layout.dense_state.is_file():
        return  # no complete dense baseline: the run trains it again
    _check_dense_fits(cfg, layout.dense_state)
