"""What a compression user ships: pruning x int8 from a Prunefront search against its baselines.

Target, on Prunefront's pick (chosen on validation): test accuracy at most 0.5 points below the
dense float32 model, a file >= 10x smaller than the dense float32 file, >= 4x faster at batch 1
(one thread, the shipped file on its runtime), and smaller and faster (batch 1 and 16) than the
dense model in int8.

1. Data and the dense model: those of ``bench/quality_vs_baseline.py`` (Fashion-MNIST split as
   every search splits it, ``--train-subset`` training images for everyone, ``small_resnet``
   trained once, its best-validation epoch kept and shared by every side).
2. Sides, every pruned model fine-tuned the same 2 epochs (SGD Nesterov, warm-up + cosine, its
   best-validation epoch shipped):
   - dense float32: ``pruners.save``'s ``.pt2`` on torch (the baseline of every ratio);
   - dense float ONNX on ONNX Runtime (printed so the runtime's own effect is visible);
   - dense int8: post-training int8 of the dense model (``pruners.quantize_int8``, ONNX QDQ on
     ONNX Runtime), calibrated on ``--calibration`` training images;
   - Torch-Pruning group L1, one-shot, uniform per-layer ratio at 2/4/8x fewer MACs, fine-tuned,
     then the same int8;
   - Prunefront: a real search (``orchestrator/search.py``, embedded Ray, grid, FIFO) from the
     same dense checkpoint over flops_cut 2/4/8 x magnitude x global / layer-wise (``--scopes``)
     x quantize none / int8 (12 trials, 2 epochs each; 6 with one scope). Its pick is ``reports.pick`` on the search's final
     table (its trials and dense-int8): the smallest file whose validation accuracy is within
     ``--max-drop`` points of the dense model's.
3. Every shipped file is loaded back and evaluated (test accuracy is the file's), and timed at
   batch 1 and 16 on one thread, all files alternately in one loop, so each speed-up is a paired
   ratio against the dense float32 ``.pt2`` timed in the same run.

    python bench/compression_vs_baselines.py [--out bench/out/compression] [--plot PNG] [--smoke-test]
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import math
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import _common
import quality_vs_baseline as qvb
import torch
import torch_pruning as tp

import pruners
from pruners.measure import paired_speedup
from orchestrator import models

CUTS = (2.0, 4.0, 8.0)
MAX_DROP = 0.5  # points of test accuracy below dense float32
SIZE_TARGET = 10.0  # x smaller than the dense float32 file
SPEED_TARGET = 4.0  # x faster at batch 1
BATCHES = (1, 16)
DENSE, DENSE_ONNX, DENSE_INT8 = "dense float32 (.pt2, torch)", "dense float32 (ONNX Runtime)", "dense int8 (PTQ)"
PICK = "Prunefront pick"


def shipped_accuracy(path: Path, val, test) -> tuple[float, float]:
    """Validation and test accuracy of a shipped file, loaded back on its runtime."""
    program = pruners.load_onnx(path, threads=torch.get_num_threads()) if path.suffix == ".onnx" else pruners.load(path)
    cpu = torch.device("cpu")
    return pruners.evaluate(program, val, device=cpu)[0], pruners.evaluate(program, test, device=cpu)[0]


def loaded(path: Path) -> Any:
    """A shipped file on its runtime, one thread (as a trial row times it)."""
    return pruners.load_onnx(path, threads=1) if path.suffix == ".onnx" else pruners.load(path)


def int8(model, path: Path, x, calibration, examples: int) -> dict:
    done = pruners.quantize_int8(model, path, x, calibration, calibration_examples=examples)
    return {"int8_layers": len(done.quantized), "float_layers": len(done.left_float)}


@contextlib.contextmanager
def ray_lock(path: str | None, log) -> Iterator[None]:
    """Hold an exclusive flock on ``path`` (None: no lock) while the search's Ray runs, on a
    machine where other users of Ray take the same lock; training here does not need it."""
    if path is None:
        yield
        return
    with open(path, "a") as f:
        log(f"waiting for the Ray lock {path}")
        fcntl.flock(f, fcntl.LOCK_EX)
        log("holding the Ray lock")
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def search_space(args) -> dict:
    return {"criterion": ["magnitude"], "scope": ["layerwise"] if args.smoke_test else args.scopes,
            "threshold_rule": ["flops_cut"], "amount": list(args.cuts), "distill": [0.0],
            "quantize": ["none", "int8"]}


def search_files(out: Path) -> tuple[Any, list[dict]]:
    """The search's final table and, per kept trial and dense-int8, its shipped file."""
    import pandas as pd

    from reports.layout import MODEL_FILE

    exp = out / "search"
    final = pd.read_parquet(exp / "report" / "final.parquet")
    rows = []
    for _, r in final.iterrows():
        shipped = r.get("model_file")
        if isinstance(shipped, str):
            path = exp / shipped
        elif isinstance(r.get("model_dir"), str):
            path = exp / r["model_dir"] / MODEL_FILE
        else:
            continue
        if r["trial_id"] == "dense" or not path.is_file():
            continue
        q = r.get("quantize")  # a reference row (dense-int8) has no config: NA
        q = "int8" if r["trial_id"] == "dense-int8" else (None if pd.isna(q) else str(q))
        rows.append({"trial_id": r["trial_id"], "file": path, "quantize": q,
                     "scope": r.get("scope"), "amount": r.get("amount"), "flops": r.get("flops"),
                     "val_accuracy": float(r["val_accuracy"]), "test_accuracy": float(r["test_accuracy"]),
                     "size_bytes": int(r["size_bytes"])})
    return final, rows


def time_all(files: dict[str, Path], x: torch.Tensor, repeats: dict[int, int]) -> dict[int, dict]:
    """Every file timed alternately at each batch size on one thread: ms and paired speed-ups."""
    programs = {name: loaded(path) for name, path in files.items()}
    out = {}
    for b in BATCHES:
        lat = pruners.time_forward(programs, (x.repeat(b, *([1] * (x.dim() - 1))),), repeats=repeats[b],
                                   warmup=5, threads=1)
        out[b] = {name: {"ms": lat[name].median_ms,
                         "vs_pt2": paired_speedup(lat[DENSE], lat[name]),
                         "vs_onnx": paired_speedup(lat[DENSE_ONNX], lat[name]),
                         "vs_int8": paired_speedup(lat[DENSE_INT8], lat[name])} for name in programs}
    return out


def plot(results: dict, path: Path) -> None:
    """Test accuracy against file size and against batch-1 latency (both log x)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    sides, trials = results["sides"], results["trials"]
    dense = next(s for s in sides if s["side"] == DENSE)
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.6), dpi=120, sharey=True)
    for ax, key, label in ((axes[0], "size_bytes", "file size (KB), log scale"),
                           (axes[1], "ms_b1", "latency at batch 1, one thread (ms), log scale")):
        scale = 1e-3 if key == "size_bytes" else 1.0
        for q, marker in (("none", "o"), ("int8", "s")):
            pts = [t for t in trials if t["quantize"] == q]
            ax.scatter([scale * t[key] for t in pts], [100 * t["test_accuracy"] for t in pts], s=22, color="0.6",
                       marker=marker, zorder=2, label=f"Prunefront trials, quantize {q}")
        tps = sorted((s for s in sides if s["side"].startswith("Torch-Pruning")), key=lambda s: s["size_bytes"])
        ax.plot([scale * s[key] for s in tps], [100 * s["test_accuracy"] for s in tps], marker="D", linestyle=":",
                color="tab:blue", label="Torch-Pruning group L1 2/4/8x + int8")
        for s, marker, color in ((dense, "*", "black"), (next(x for x in sides if x["side"] == DENSE_ONNX), "P", "0.3"),
                                 (next(x for x in sides if x["side"] == DENSE_INT8), "X", "tab:green")):
            ax.scatter([scale * s[key]], [100 * s["test_accuracy"]], marker=marker, s=120, color=color, zorder=3,
                       label=s["side"])
        pick = next(s for s in sides if s["side"] == PICK)
        ax.scatter([scale * pick[key]], [100 * pick["test_accuracy"]], marker="o", s=150, facecolor="none",
                   edgecolor="crimson", linewidth=2, zorder=4, label=f"Prunefront pick ({pick['trial_id']})")
        ax.axhline(100 * dense["test_accuracy"] - MAX_DROP, color="crimson", linestyle="--", linewidth=0.8,
                   label=f"dense - {MAX_DROP} pt")
        ax.set_xscale("log")
        ax.xaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:g}"))
        ax.xaxis.set_minor_formatter(
            matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:g}" if f"{v:.0e}"[0] in "25" else ""))
        ax.set_xlabel(label)
        ax.grid(True, alpha=0.3, which="both")
    axes[0].set_ylabel("test accuracy (%)")
    axes[1].legend(fontsize=7, loc="lower right")
    fig.suptitle("Fashion-MNIST small_resnet: what ships (2 fine-tuning epochs per pruned model)")
    fig.tight_layout()
    _common.save_figure(fig, path)


def main() -> None:
    p = _common.parser(__doc__.splitlines()[0])
    p.add_argument("--out", default="bench/out/compression", help="where the dense model, files and results go")
    qvb.add_data_arguments(p)
    p.add_argument("--lr", type=float, default=0.02, help="fine-tuning learning rate, every side")
    p.add_argument("--calibration", type=int, default=512, help="training images int8 calibrates on")
    p.add_argument("--max-drop", type=float, default=MAX_DROP,
                   help="the pick's budget: points of validation accuracy below dense")
    p.add_argument("--scopes", nargs="+", default=["global", "layerwise"], choices=["global", "layerwise"],
                   help="the search's pruning scopes (each doubles its trials)")
    p.add_argument("--ray-lock", default=None, metavar="FILE",
                   help="hold this flock only while the search's Ray runs (a machine shared with other Ray users)")
    p.add_argument("--reuse-search", action="store_true",
                   help="take <out>/search (a finished search from the same dense checkpoint) instead of running it")
    p.add_argument("--plot", type=Path, default=None, help="also draw the figure to this PNG")
    p.add_argument("--plot-only", type=Path, default=None, metavar="RESULTS_JSON")
    args = p.parse_args()
    if args.plot_only is not None:
        plot(json.loads(args.plot_only.read_text()), args.plot or args.plot_only.with_suffix(".png"))
        return
    repeats = {1: args.repeats or 300, 16: max(5, (args.repeats or 300) // 5)}
    if args.smoke_test:
        args.train_subset, args.val_size, args.eval_subset, args.dense_epochs = 512, 256, 256, 1
        args.calibration, repeats = 64, {1: 5, 16: 3}
        # One dense epoch on 512 images is near chance: any budget in points may hold no model,
        # and the smoke test checks the code paths (pick included), not the numbers.
        args.max_drop = 100.0
        args.out = str(Path(args.out).with_name("compression-smoke"))
    args.cuts = CUTS if not args.smoke_test else (2.0,)
    args.search_lr = args.lr  # run_search's fine-tuning lr: the same as the baselines'
    _common.setup(args.threads)
    out = Path(args.out)
    files = out / "files"
    files.mkdir(parents=True, exist_ok=True)
    t0 = time.time()

    def log(msg: str) -> None:
        print(f"[{time.time() - t0:7.0f}s] {msg}", flush=True)

    ds, train, val, test = qvb.loaders(args)
    x = ds.example_inputs(1)
    log(f"Fashion-MNIST: {len(ds.train)} train, {len(ds.val)} validation, {len(ds.test)} test images")
    torch.manual_seed(0)
    dense = models.build_model("small_resnet", 10, 1, widths=[16, 32, 64])
    dense_path = out / "dense.pt"
    if dense_path.is_file():
        dense.load_state_dict(torch.load(dense_path, weights_only=True))
    else:
        qvb.fit(dense, train, val, test, args.dense_epochs, lr=0.1, warmup=0.05, restore_best=True)
        torch.save(dense.state_dict(), dense_path)
    dense.eval()
    calibration = pruners.calibration_inputs(train, args.calibration, seed=0)  # training images only

    sides: list[dict] = []

    def side(name: str, path: Path, **extra: Any) -> None:
        v, t = shipped_accuracy(path, val, test)
        sides.append({"side": name, "file": str(path), "size_bytes": path.stat().st_size, "val_accuracy": v,
                      "test_accuracy": t, **extra})
        log(f"{name}: val {v:.4f} test {t:.4f}, {path.stat().st_size} bytes")

    pruners.save(dense, files / "dense.pt2", x)
    side(DENSE, files / "dense.pt2", macs_cut=1.0)
    pruners.save_onnx(dense, files / "dense.onnx", x)
    side(DENSE_ONNX, files / "dense.onnx", macs_cut=1.0)
    side(DENSE_INT8, files / "dense-int8.onnx", macs_cut=1.0,
         **int8(dense, files / "dense-int8.onnx", x, calibration, args.calibration))

    tp_calibration = [b for b, _ in zip(train, range(4))]
    for cut in args.cuts:
        model, achieved = qvb.tp_prune(dense, x, lambda: tp.importance.GroupMagnitudeImportance(p=1), cut,
                                       tp_calibration)
        torch.manual_seed(0)
        fl = qvb.fit(model, train, val, test, qvb.EPOCHS, args.lr, warmup=0.1, restore_best=True)
        path = files / f"tp-group-l1-{cut:g}x-int8.onnx"
        side(f"Torch-Pruning group L1 {cut:g}x + int8", path, macs_cut=achieved,
             float_val_accuracy=fl["val_accuracy"], float_test_accuracy=fl["test_accuracy"],
             **int8(model, path, x, calibration, args.calibration))

    import reports

    if args.reuse_search and (out / "search" / "report" / "final.parquet").is_file():
        log(f"search: reusing {out / 'search'} (same dense checkpoint)")
    else:
        if (out / "search").exists():
            import shutil

            shutil.rmtree(out / "search")  # a fresh search every run
        with ray_lock(args.ray_lock, log):
            qvb.run_search(dense_path, out, args, name="compression-vs-baselines", space=search_space(args))
    final, trials = search_files(out)
    n_trials = int((~final["trial_id"].isin(["dense", "dense-int8"])).sum())
    try:
        choice = reports.pick(final, out / "search", max_drop=args.max_drop, by="size_bytes")
    except ValueError as e:  # no shipped model within the budget: a result too, said in one line
        print(f"RESULT compression.pick = none: {e}")
        raise SystemExit(1) from None
    row = choice.row
    log(f"search: {len(trials)} shipped files (trials + dense-int8), {n_trials} trials; pick "
        f"{row['trial_id']} ({choice.budget}, smallest file)")
    pick_file = Path(choice.model_file)
    side(PICK, pick_file, trial_id=str(row["trial_id"]),
         macs_cut=float(final.iloc[0]["flops"]) / float(row["flops"]),
         row_val_accuracy=float(row["val_accuracy"]), row_test_accuracy=float(row["test_accuracy"]),
         quantize=next(t["quantize"] for t in trials if t["trial_id"] == row["trial_id"]),
         what="the dense model" if row["status"] == "reference" else f"{row.get('method')} {row.get('scope')} {row.get('amount')}")

    timed_files = {s["side"]: Path(s["file"]) for s in sides}
    timed_files.update({f"trial {t['trial_id']}": t["file"] for t in trials})
    log(f"timing {len(timed_files)} files alternately, one thread, batch {BATCHES}, repeats {repeats}")
    timing = time_all(timed_files, x, repeats)
    for s in sides:
        for b in BATCHES:
            s.update({f"{k}_b{b}": v for k, v in timing[b][s["side"]].items()})
    for t in trials:
        for b in BATCHES:
            t.update({f"{k}_b{b}": v for k, v in timing[b][f"trial {t['trial_id']}"].items()})
        t["file"] = str(t["file"])

    d = next(s for s in sides if s["side"] == DENSE)
    results = {"sides": sides, "trials": trials, "search_trials": n_trials, "pick_budget": choice.budget,
               "args": {k: v for k, v in vars(args).items()}}
    (out / "results.json").write_text(json.dumps(results, indent=2, default=str))
    if args.plot is not None:
        plot(results, args.plot)

    print(f"\n{'side':<38} {'test %':>7} {'val %':>7} {'d test':>7} {'MACs':>6} {'bytes':>9} {'smaller':>8} "
          f"{'b1 ms':>7} {'b1 x':>6} {'vsONNX':>6} {'b16 ms':>7} {'b16 x':>6} {'vsONNX':>6}")
    for s in sides:
        print(f"{s['side']:<38} {100 * s['test_accuracy']:>7.2f} {100 * s['val_accuracy']:>7.2f} "
              f"{100 * (s['test_accuracy'] - d['test_accuracy']):>+7.2f} {s['macs_cut']:>5.2f}x {s['size_bytes']:>9} "
              f"{d['size_bytes'] / s['size_bytes']:>7.2f}x {s['ms_b1']:>7.3f} {s['vs_pt2_b1']:>5.2f}x "
              f"{s['vs_onnx_b1']:>5.2f}x {s['ms_b16']:>7.3f} {s['vs_pt2_b16']:>5.2f}x {s['vs_onnx_b16']:>5.2f}x")
    pick = next(s for s in sides if s["side"] == PICK)
    print(f"# pick: {pick['trial_id']} ({pick['what']}, quantize {pick['quantize']}); rule: reports.pick, "
          f"{choice.budget}, smallest file (size_bytes) among the search's trials and dense-int8")
    print("# test accuracy of each shipped file loaded back; 'smaller' and 'b1 x' / 'b16 x': dense float32 .pt2 / "
          "side, latency as paired ratios timed alternately in this run, one thread; vsONNX: against the dense "
          "float32 ONNX file on ONNX Runtime")
    print(f"# fine-tuning: {qvb.EPOCHS} epochs at lr {args.lr:g} per pruned model, every side; {n_trials} "
          f"search trials")
    print("\nsearch trials (every shipped file, timed in the same loop):")
    for t in sorted(trials, key=lambda t: t["size_bytes"]):
        print(f"  {t['trial_id']:<28} {t['quantize']!s:<5} {t['scope']!s:<10} {t['amount']!s:>4} "
              f"val {100 * t['val_accuracy']:.2f} test {100 * t['test_accuracy']:.2f} "
              f"{d['size_bytes'] / t['size_bytes']:6.2f}x smaller, b1 {t['vs_pt2_b1']:.2f}x, b16 {t['vs_pt2_b16']:.2f}x")

    drop = 100 * (d["test_accuracy"] - pick["test_accuracy"])
    _common.verdict("compression.pick_test_drop_pt", drop, MAX_DROP, higher_is_better=False)
    _common.verdict("compression.pick_smaller_x", d["size_bytes"] / pick["size_bytes"], SIZE_TARGET,
                    higher_is_better=True)
    _common.verdict("compression.pick_speedup_b1_x", pick["vs_pt2_b1"], SPEED_TARGET, higher_is_better=True)
    i8 = next(s for s in sides if s["side"] == DENSE_INT8)
    dominates = (pick["size_bytes"] < i8["size_bytes"] and pick["vs_int8_b1"] > 1.0 and pick["vs_int8_b16"] > 1.0)
    print(f"# pick vs dense int8: {i8['size_bytes'] / pick['size_bytes']:.2f}x smaller, "
          f"{pick['vs_int8_b1']:.2f}x faster at batch 1, {pick['vs_int8_b16']:.2f}x at batch 16")
    _common.verdict("compression.pick_dominates_dense_int8", float(dominates), 1.0, higher_is_better=True)
    if math.isnan(drop):
        raise SystemExit("the pick has no test accuracy")


if __name__ == "__main__":
    main()
