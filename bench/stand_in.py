"""A large configuration space whose epochs come from a model fitted to a recorded grid.

The recorded grid (``bench/data/search_grid_restarts.parquet``, the table
``bench/search_efficiency.py`` replays) ran 72 configurations: 12 methods (criterion x
granularity x schedule) x amount 0.5 / 0.7 / 0.9 x lr 0.005 / 0.03, 8 epochs each. A space
larger than any budget is sampled from *ranges* instead: a method uniformly, ``amount``
uniform in [0.5, 0.9], ``lr`` log-uniform in [0.005, 0.03]. Every epoch of every sampled
configuration is made up as follows, all from the recorded grid and one seeded generator:

* **validation accuracy**: a per-method curve, exact at the recorded configurations: at each
  epoch, for each recorded learning rate, the quadratic in ``amount`` through the method's
  three recorded amounts, then linear in ``log(lr)`` between the two learning rates. To it
  are added a per-epoch jitter ``N(0, sigma_m)`` and a per-configuration offset
  ``N(0, sigma_m)`` kept over all its epochs (a configuration's luck). ``sigma_m`` is fitted
  per method: the standard deviation of its recorded epoch-to-epoch changes over the last
  four epochs (where the curves are flat) divided by sqrt(2). The grid has no repeated
  configuration, so the offset's size is an assumption (the same as the jitter's), not a
  fit. Clipped to [0.1, 0.95] (0.1 is chance on 10 classes).
* **test accuracy**: validation accuracy plus ``N(mu, sigma)`` fitted to the recorded rows
  that have both (the kept epochs).
* **sparsity, FLOPs, sparse FLOPs, file size**: the method's recorded values at that epoch,
  interpolated in ``amount`` (quadratic through the three recorded amounts, averaged over the
  two learning rates): costs are functions of how much is pruned, not of luck.
* **wall time of an epoch**: drawn from the method's recorded times at that epoch (both
  learning rates, all amounts): the first epoch includes the pruning and is slower.

A fitted model is smoother than a real search (one noise level for every method), so read
the large-space replay for how the schedulers behave on a space that size, not as a
measured search.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd

COST_COLUMNS = ("sparsity", "flops", "flops_sparse", "size_bytes")
AMOUNTS = (0.5, 0.9)
LRS = (0.005, 0.03)


@dataclass
class StandIn:
    """The model fitted to a recorded grid (see the module)."""

    methods: list[str]
    epochs: int
    val_coef: dict[str, np.ndarray]  # method -> (epochs, 2 learning rates, 3): quadratic in amount
    cost_coef: dict[str, dict[str, np.ndarray]]  # method -> column -> (epochs, 3): quadratic in amount
    times: dict[str, list[np.ndarray]]  # method -> recorded epoch times, per epoch
    sigma: dict[str, float]  # method -> validation-accuracy noise
    test_mu: float
    test_sigma: float


def _quadratic(amount: pd.Series, values: pd.Series) -> np.ndarray:
    """Coefficients (``np.polyfit`` order) of the quadratic through the mean value at each of
    three amounts."""
    mean = values.groupby(amount).mean()
    return np.polyfit(mean.index.to_numpy(float), mean.to_numpy(float), 2)


def fit(table: pd.DataFrame) -> StandIn:
    """Fit the stand-in model to a recorded grid (rows: config, method, amount, lr, epoch, metrics)."""
    epochs = int(table["epoch"].max())
    methods = sorted(table["method"].unique())
    if sorted(table["lr"].unique()) != list(LRS) or len(table["amount"].unique()) != 3:
        raise ValueError(f"expected a grid over lr {LRS} and three amounts")
    val_coef, cost_coef, times, sigma = {}, {}, {}, {}
    for m in methods:
        g = table[table["method"] == m].sort_values(["config_id", "epoch"])
        val_coef[m] = np.zeros((epochs, 2, 3))
        cost_coef[m] = {c: np.zeros((epochs, 3)) for c in COST_COLUMNS}
        times[m] = []
        for e in range(1, epochs + 1):
            ge = g[g["epoch"] == e]
            for j, lr in enumerate(LRS):
                at = ge[ge["lr"] == lr]
                val_coef[m][e - 1, j] = _quadratic(at["amount"], at["val_accuracy"])
            for c in COST_COLUMNS:
                cost_coef[m][c][e - 1] = _quadratic(ge["amount"], ge[c])
            times[m].append(ge["time_s"].to_numpy(dtype=float))
        tail = g[g["epoch"] > epochs - 4].groupby("config_id")["val_accuracy"].diff().dropna()
        sigma[m] = float(tail.std()) / math.sqrt(2)
    both = table.dropna(subset=["test_accuracy"])
    delta = both["test_accuracy"] - both["val_accuracy"]
    return StandIn(methods=methods, epochs=epochs, val_coef=val_coef, cost_coef=cost_coef, times=times,
                   sigma=sigma, test_mu=float(delta.mean()), test_sigma=float(delta.std()))


def mean_curve(model: StandIn, method: str, amount: np.ndarray, lr: np.ndarray) -> np.ndarray:
    """Validation accuracy per epoch, without noise: ``(len(amount), epochs)``."""
    powers = np.stack([np.asarray(amount, float) ** 2, np.asarray(amount, float), np.ones(len(amount))], axis=-1)
    by_lr = np.einsum("nk,ejk->nej", powers, model.val_coef[method])  # (n, epochs, 2)
    w = (np.log(lr) - math.log(LRS[0])) / (math.log(LRS[1]) - math.log(LRS[0]))
    return by_lr[..., 0] * (1 - w[:, None]) + by_lr[..., 1] * w[:, None]


def sample(model: StandIn, configs: int, seed: int) -> pd.DataFrame:
    """``configs`` configurations sampled from the ranges, every epoch of each (the columns
    ``replay.simulate`` reads). The same seed gives the same table."""
    rng = np.random.default_rng(seed)
    e = model.epochs
    method_idx = rng.integers(len(model.methods), size=configs)
    amount = rng.uniform(*AMOUNTS, size=configs)
    lr = np.exp(rng.uniform(math.log(LRS[0]), math.log(LRS[1]), size=configs))
    cols: dict[str, np.ndarray] = {c: np.empty((configs, e)) for c in ("val_accuracy", "time_s", *COST_COLUMNS)}
    powers = np.stack([amount**2, amount, np.ones_like(amount)], axis=-1)  # np.polyfit's order
    noise = np.empty(configs)
    for k, m in enumerate(model.methods):
        rows = np.flatnonzero(method_idx == k)
        if not rows.size:
            continue
        cols["val_accuracy"][rows] = mean_curve(model, m, amount[rows], lr[rows])
        noise[rows] = model.sigma[m]
        for c in COST_COLUMNS:
            cols[c][rows] = powers[rows] @ model.cost_coef[m][c].T
        for j in range(e):
            cols["time_s"][rows, j] = rng.choice(model.times[m][j], size=rows.size)
    luck = rng.normal(size=(configs, 1)) + rng.normal(size=(configs, e))
    cols["val_accuracy"] = np.clip(cols["val_accuracy"] + noise[:, None] * luck, 0.1, 0.95)
    test = cols["val_accuracy"] + rng.normal(model.test_mu, model.test_sigma, size=(configs, e))
    out = {
        "config_id": np.repeat([f"s{i:05d}" for i in range(configs)], e),
        "method": np.repeat(np.asarray(model.methods)[method_idx], e),
        "amount": np.repeat(amount, e),
        "lr": np.repeat(lr, e),
        "epoch": np.tile(np.arange(1, e + 1), configs),
        "test_accuracy": np.clip(test, 0.1, 0.95).ravel(),
    }
    out.update({c: v.ravel() for c, v in cols.items()})
    out["sparsity"] = np.clip(out["sparsity"], 0.0, 1.0)
    return pd.DataFrame(out)
