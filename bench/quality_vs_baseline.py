"""Does a Prunefront search beat the one-line baseline at 2x, 4x and 8x fewer MACs?

Target: Prunefront >= +0.2 points of test accuracy over the best baseline at 4x and at 8x, and
not below it at 2x, every side fine-tuning each model for the same 2 epochs.

1. Data: Fashion-MNIST (Debian's ``dataset-fashion-mnist``), split as every search splits it
   (``orchestrator.data``): validation carved from the training images, the official test
   set; ``--train-subset`` images of the rest to train on (the same ones everywhere).
2. The dense model: ``small_resnet`` (configs/fashion_mnist.yaml's, residual blocks, so
   channels are coupled across layers), trained once and shared by every side.
3. Baselines (Torch-Pruning, one-shot, a uniform per-layer ratio found by bisection to hit
   each MACs cut): group L1 magnitude (the common recipe), BN scale, Taylor, and random
   channels (the sanity check every pruning paper should beat). Each pruned model is
   fine-tuned 2 epochs (SGD, Nesterov, warm-up + cosine) at each learning rate of
   ``--lrs``; the epoch and learning rate with the best validation accuracy are kept and
   their test accuracy reported.
4. Prunefront: a real search (``orchestrator/search.py`` on an embedded Ray) from the same
   dense checkpoint: ``flops_cut`` targets 2/4/8, magnitude and Taylor criteria, global and
   layer-wise scopes, with and without distillation from the dense model, 2 fine-tuning
   epochs per trial (warm-up + cosine). For each target, the validation-best trial that
   reached the cut; its test accuracy is reported.

    python bench/quality_vs_baseline.py [--out bench/out/quality] [--train-subset 15000] [--smoke-test]
    python bench/quality_vs_baseline.py --reuse-baselines    # only the search again, same baselines
"""

from __future__ import annotations

import copy
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import _common
import torch
import torch.nn.functional as F
import torch_pruning as tp
import yaml

import pruners
from orchestrator import data, models
from orchestrator.config import DataConfig

CUTS = (2.0, 4.0, 8.0)
EPOCHS = 2
TARGET_GAIN = 0.2  # points at 4x and 8x; >= 0 at 2x
BASELINES = {
    "tp_group_l1": lambda: tp.importance.GroupMagnitudeImportance(p=1),
    "tp_bn_scale": lambda: tp.importance.BNScaleImportance(),
    "tp_taylor": lambda: tp.importance.GroupTaylorImportance(),
    "random": lambda: tp.importance.RandomImportance(),
}


def loaders(args: Any) -> tuple:
    cfg = DataConfig(dataset="fashion_mnist", val_size=args.val_size, train_subset=args.train_subset,
                     eval_subset=args.eval_subset, batch_size=128)
    ds = data.load_datasets(cfg, seed=0)
    train = data.build_loader(ds.train, 128, shuffle=True, seed=0)
    val = data.build_loader(ds.val, 512, shuffle=False)
    test = data.build_loader(ds.test, 512, shuffle=False)
    return ds, train, val, test


def fit(model, train, val, test, epochs: int, lr: float, warmup: float, restore_best: bool = False) -> dict:
    """Fine-tune (or train): SGD Nesterov, warm-up + cosine; keep the best-validation epoch.

    ``restore_best``: also leave ``model`` holding that epoch's weights (to ship it), not the last's."""
    opt_cfg = pruners.OptimizerConfig(name="sgd", lr=lr, momentum=0.9, weight_decay=5e-4, nesterov=True,
                                      lr_schedule="cosine", warmup=warmup)
    opt = opt_cfg.build(model.parameters())
    total, step, best = epochs * len(train), 0, None
    for epoch in range(1, epochs + 1):
        train.sampler.set_epoch(epoch)
        model.train()
        for x, y in train:
            for g in opt.param_groups:
                g["lr"] = opt_cfg.lr_at(step, total)
            opt.zero_grad(set_to_none=True)
            F.cross_entropy(model(x), y).backward()
            opt.step()
            step += 1
        val_acc = pruners.evaluate(model, val)[0]
        if best is None or val_acc > best["val_accuracy"]:
            best = {"epoch": epoch, "val_accuracy": val_acc, "test_accuracy": pruners.evaluate(model, test)[0]}
            if restore_best:
                state = copy.deepcopy(model.state_dict())
    if restore_best:
        model.load_state_dict(state)
        model.eval()
    return best


def macs(model, x) -> float:
    return float(tp.utils.count_ops_and_params(model, x)[0])


def tp_prune(dense, x, importance, cut: float, calibration) -> tuple:
    """Torch-Pruning one-shot at a uniform per-layer ratio that cuts MACs by ``cut``."""
    base = macs(dense, x)

    def pruned(ratio: float):
        m = copy.deepcopy(dense)
        imp = importance()
        pruner = tp.pruner.MetaPruner(m, x, importance=imp, pruning_ratio=ratio, global_pruning=False,
                                      ignored_layers=[m.fc])
        if isinstance(imp, tp.importance.GroupTaylorImportance):
            m.eval()
            for xb, yb in calibration:
                F.cross_entropy(m(xb), yb).backward()
        torch.manual_seed(0)  # the random baseline draws the same channels every time
        pruner.step()
        m.zero_grad(set_to_none=True)
        return m, base / macs(m, x)

    lo, hi = 0.0, 0.99
    for _ in range(14):
        mid = (lo + hi) / 2
        if pruned(mid)[1] >= cut * 0.99:
            hi = mid
        else:
            lo = mid
    return pruned(hi)


def run_baselines(dense, ds, train, val, test, args, log) -> list[dict]:
    x = ds.example_inputs(1)
    calibration = [b for b, _ in zip(train, range(4))]
    rows = []
    for name, importance in BASELINES.items():
        if args.smoke_test and name not in ("tp_group_l1",):
            continue
        for cut in args.cuts:
            model, achieved = tp_prune(dense, x, importance, cut, calibration)
            best = None
            for lr in args.lrs:
                torch.manual_seed(0)
                got = fit(copy.deepcopy(model), train, val, test, EPOCHS, lr, warmup=0.1)
                if best is None or got["val_accuracy"] > best["val_accuracy"]:
                    best = {**got, "lr": lr}
            row = {"side": "baseline", "method": name, "cut": cut, "achieved_cut": achieved,
                   "epochs": EPOCHS * len(args.lrs), **best}
            rows.append(row)
            log(f"baseline {name} {cut:g}x (achieved {achieved:.2f}x, lr {best['lr']:g}): "
                f"val {best['val_accuracy']:.4f} test {best['test_accuracy']:.4f}")
    return rows


def run_search(dense_path: Path, out: Path, args, *, name: str = "quality-vs-baseline",
               space: dict | None = None) -> tuple[list[dict], int]:
    """The Prunefront search from the same dense weights; its kept trials and total epochs.

    ``space`` replaces keys of the search space below (another bench searching more choices)."""
    cfg = {
        "name": name,
        "seed": 0,
        "data": {"dataset": "fashion_mnist", "val_size": args.val_size, "train_subset": args.train_subset,
                 "eval_subset": args.eval_subset, "batch_size": 128, "eval_batch_size": 512, "augment": False},
        "model": {"name": "small_resnet", "kwargs": {"widths": [16, 32, 64]}},
        "dense": {"checkpoint": str(dense_path), "epochs": 0},
        "search": {
            "algorithm": "grid", "num_samples": 1, "epochs": EPOCHS,
            "space": {"quantize": ["none"], "criterion": ["magnitude", "taylor"] if not args.smoke_test else ["magnitude"],
                      "granularity": ["structured"], "scope": ["layerwise", "global"] if not args.smoke_test else ["layerwise"],
                      "threshold_rule": ["flops_cut"], "amount": list(args.cuts), "schedule": ["one_shot"],
                      "lr": [args.search_lr], "distill": [0.0, 0.7] if not args.smoke_test else [0.7],
                      "min_keep": 0.1},
            "optimizer": {"name": "sgd", "momentum": 0.9, "weight_decay": 5e-4, "nesterov": True,
                          "lr_schedule": "cosine", "warmup": 0.1},
        },
        "scheduler": {"name": "fifo"},
        "metrics": {"latency_repeats": 5},
        "resources": {"workers": 1, "cpus_per_worker": 0.9, "driver_cpus": 0.1},
    }
    cfg["search"]["space"].update(space or {})
    config = out / "search.yaml"
    config.write_text(yaml.safe_dump(cfg))
    root = Path(__file__).resolve().parent.parent
    env = {**os.environ, "PYTHONPATH": str(root)}
    proc = subprocess.run([sys.executable, str(root / "orchestrator" / "search.py"), "--config", str(config),
                           "--output", str(out / "search")], env=env, capture_output=True, text=True)
    (out / "search.log").write_text(proc.stdout + proc.stderr)
    if proc.returncode != 0:
        raise SystemExit(f"the search failed (exit {proc.returncode}); see {out / 'search.log'}")
    import pandas as pd

    final = pd.read_parquet(out / "search" / "report" / "final.parquet")
    trials = pd.read_parquet(out / "search" / "report" / "trials.parquet")
    dense = final[final["status"] == "reference"].iloc[0]
    rows = []
    for _, r in final[final["status"] != "reference"].iterrows():
        rows.append({"side": "prunefront", "method": r["method"], "scope": r["scope"], "distill": r["distill"],
                     "requested_cut": r["amount"], "achieved_cut": float(dense["flops"]) / float(r["flops"]),
                     "epochs": int(r["last_epoch"]), "epoch": int(r["epoch"]), "lr": r["lr"],
                     "val_accuracy": float(r["val_accuracy"]), "test_accuracy": float(r["test_accuracy"])})
    return rows, int((trials["status"] != "reference").sum())


def plot(results: dict, path: Path) -> None:
    """Test accuracy against achieved MACs cut: each baseline's points, every search trial,
    the search's validation-selected pick at each target, and the dense model."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 4.8), dpi=120)
    markers = {"tp_group_l1": "s", "tp_bn_scale": "D", "tp_taylor": "^", "random": "v"}
    for name, marker in markers.items():
        pts = sorted((r["achieved_cut"], 100 * r["test_accuracy"]) for r in results["baselines"] if r["method"] == name)
        if pts:
            ax.plot(*zip(*pts), marker=marker, linestyle=":", linewidth=1, markersize=6, label=f"Torch-Pruning {name}"
                    if name != "random" else "random channels")
    trials = results["search"]
    ax.scatter([r["achieved_cut"] for r in trials], [100 * r["test_accuracy"] for r in trials], s=14, color="0.65",
               zorder=2, label="Prunefront trials (every kept model)")
    picks = []
    for cut in sorted({r["cut"] for r in results["baselines"]}):
        hits = [r for r in trials if r["achieved_cut"] >= cut * 0.99]
        if hits:
            best = max(hits, key=lambda r: (r["val_accuracy"], r["achieved_cut"]))
            picks.append((best["achieved_cut"], 100 * best["test_accuracy"]))
    if picks:
        ax.plot(*zip(*picks), marker="o", color="crimson", linewidth=1.8, markersize=8, zorder=3,
                label="Prunefront, validation-selected at each cut")
    ax.scatter([1.0], [100 * results["dense"]["test_accuracy"]], marker="*", s=160, facecolor="none",
               edgecolor="black", zorder=3, label="dense")
    ax.set_xscale("log", base=2)
    ax.set_xticks([1, 2, 4, 8])
    ax.set_xticklabels(["1x", "2x", "4x", "8x"])
    ax.set_xlabel("MACs cut (dense MACs / pruned MACs), log scale")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title("Fashion-MNIST, small_resnet: 2 fine-tuning epochs per model")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7.5, loc="lower left")
    fig.tight_layout()
    _common.save_figure(fig, path)


def add_data_arguments(p: Any) -> None:
    """The data and dense-model options every Fashion-MNIST bench built on these helpers takes."""
    p.add_argument("--train-subset", type=int, default=15000)
    p.add_argument("--val-size", type=int, default=5000)
    p.add_argument("--eval-subset", type=int, default=None)
    p.add_argument("--dense-epochs", type=int, default=10)


def main() -> None:
    p = _common.parser(__doc__.splitlines()[0])
    p.add_argument("--out", default="bench/out/quality", help="where the dense model, logs and results go")
    add_data_arguments(p)
    p.add_argument("--lrs", type=float, nargs="+", default=[0.01, 0.03])
    p.add_argument("--search-lr", type=float, default=0.02)
    p.add_argument("--plot", type=Path, default=None, help="also draw the figure to this PNG")
    p.add_argument("--plot-only", type=Path, default=None, metavar="RESULTS_JSON",
                   help="only draw --plot from a results.json of an earlier run")
    p.add_argument("--reuse-baselines", action="store_true",
                   help="take the baseline rows of <out>/results.json (same dense model) instead of running them again")
    args = p.parse_args()
    if args.plot_only is not None:
        plot(json.loads(args.plot_only.read_text()), args.plot or args.plot_only.with_suffix(".png"))
        return
    if args.smoke_test:
        args.train_subset, args.val_size, args.eval_subset, args.dense_epochs = 512, 256, 256, 1
        args.lrs, args.out = [0.02], str(Path(args.out).with_name("quality-smoke"))
    args.cuts = CUTS if not args.smoke_test else (2.0,)
    _common.setup(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()

    def log(msg: str) -> None:
        print(f"[{time.time() - t0:7.0f}s] {msg}", flush=True)

    ds, train, val, test = loaders(args)
    log(f"Fashion-MNIST: {len(ds.train)} train, {len(ds.val)} validation, {len(ds.test)} test images")
    torch.manual_seed(0)
    dense = models.build_model("small_resnet", 10, 1, widths=[16, 32, 64])
    dense_path = out / "dense.pt"
    if dense_path.is_file():
        dense.load_state_dict(torch.load(dense_path, weights_only=True))
        d = {"val_accuracy": pruners.evaluate(dense, val)[0], "test_accuracy": pruners.evaluate(dense, test)[0]}
    else:
        d = fit(dense, train, val, test, args.dense_epochs, lr=0.1, warmup=0.05)
        torch.save(dense.state_dict(), dense_path)
    dense.eval()
    log(f"dense small_resnet: val {d['val_accuracy']:.4f}, test {d['test_accuracy']:.4f}, "
        f"{macs(dense, ds.example_inputs(1)) / 1e6:.2f} M MACs")
    previous = out / "results.json"
    if args.reuse_baselines and previous.is_file():
        baselines = json.loads(previous.read_text())["baselines"]
        log(f"baselines: {len(baselines)} rows reused from {previous}")
    else:
        baselines = run_baselines(dense, ds, train, val, test, args, log)
    if (out / "search").exists():
        import shutil

        shutil.rmtree(out / "search")  # a fresh search every run
    search_rows, search_epochs = run_search(dense_path, out, args)
    log(f"search: {len(search_rows)} trials, {search_epochs} epochs")

    results = {"dense": d, "baselines": baselines, "search": search_rows, "search_epochs": search_epochs,
               "baseline_epochs": sum(r["epochs"] for r in baselines), "args": {k: v for k, v in vars(args).items()}}
    (out / "results.json").write_text(json.dumps(results, indent=2, default=str))
    if args.plot is not None:
        plot(results, args.plot)
    print(f"\n{'cut':>4} " + " ".join(f"{n:>12}" for n in BASELINES) + f" {'prunefront':>11} {'gain pt':>8}  best trial")
    gains = {}
    for cut in args.cuts:
        base = {r["method"]: r["test_accuracy"] for r in baselines if r["cut"] == cut}
        hits = [r for r in search_rows if r["achieved_cut"] >= cut * 0.99]
        pick = max(hits, key=lambda r: (r["val_accuracy"], r["achieved_cut"])) if hits else None
        best_base = max(base.values()) if base else math.nan
        gains[cut] = 100 * ((pick["test_accuracy"] if pick else math.nan) - best_base)
        cells = " ".join(f"{100 * base[n]:>12.2f}" if n in base else f"{'-':>12}" for n in BASELINES)
        what = (f"{pick['method']} {pick['scope']} distill {pick['distill']:g} ({pick['achieved_cut']:.2f}x)"
                if pick else "none reached the cut")
        print(f"{cut:>3g}x {cells} {100 * pick['test_accuracy'] if pick else math.nan:>11.2f} {gains[cut]:>+8.2f}  {what}")
    print(f"# test accuracy (%); each side fine-tunes every model {EPOCHS} epochs; epochs in all: baselines "
          f"{results['baseline_epochs']}, Prunefront {search_epochs}; selection on validation only")
    worst = min(gains[c] - (0.0 if c == 2.0 else TARGET_GAIN) for c in args.cuts)
    _common.verdict("quality_vs_baseline.min_gain_over_target_pt", worst, 0.0, higher_is_better=True)


if __name__ == "__main__":
    main()
