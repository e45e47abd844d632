"""Does int8 work across torchvision, dense and pruned to half the FLOPs? (issue 18, section 5)

For each model (default: resnet18, mobilenet_v3_small, efficientnet_b0, convnext_tiny,
regnet_y_400mf, vit_b_16), built by torchvision with RANDOM weights (``weights=None``: no
download; seed 0) and two variants of it:

* ``dense``: the model as built;
* ``pruned``: channels / heads removed (``pruners.prune``: ``magnitude`` = L1 norm,
  ``structured``, global) until dense FLOPs fall 2x (``threshold_rule="flops_cut"``,
  amount 2: prune bisects the fraction of units to reach it); the achieved FLOPs ratio
  (``torch.utils.flop_counter``, batch 1) is printed.

each variant is written three ways: the float ONNX file (``pruners.quantize.save_onnx``),
the float32 ``pruners.save`` file (.pt2, torch.export), and the int8 ONNX file
(``pruners.quantize.quantize_int8``: torchao PT2E, X86InductorQuantizer, per-channel
symmetric int8 weights, uint8 per-tensor activations), calibrated on a few SYNTHETIC image
batches (uniform pixels normalised with ImageNet's mean / std; no data set is used).

Printed per variant: agreement of the int8 file's outputs (loaded on ONNX Runtime) with the
float model it came from (eager torch), on a separate synthetic batch of 16: top-1
agreement, mean cosine similarity of the logit vectors, max |logit difference| (relative to
the float logits' max |value|); file ratios int8 ONNX / float ONNX and int8 ONNX / float
.pt2; and speed-ups on ONE thread at batch 1 and 16: the float ONNX file / the int8 ONNX
file, both on ONNX Runtime's CPU provider (the same runtime), and the float .pt2 on torch /
the int8 ONNX file. Files are timed as loaded back, alternately (round robin), after
warm-up; speed-ups are the median of paired ratios (``pruners.measure.paired_speedup``).
``fp32 ONNX cos`` is the float ONNX file's cosine with the eager model (a check
of the export and of the reference, not of int8). ``float ops`` counts the weight-reading ops (Conv / Gemm / MatMul with an initializer
weight) that stayed float in the int8 file (``weight_dtypes``). With random weights the
agreement columns say how much int8 perturbs these particular networks, not accuracy.

Random weights can make the float logits degenerate (all zero in vit_b_16, whose head
torchvision zero-initialises; ~1e-9 in mobilenet_v3_small, whose signals vanish with
BatchNorm statistics left at mean 0 / var 1): the bench says so under the table, and
``--condition`` re-estimates BatchNorm statistics on the calibration batches and
re-initialises all-zero Linear weights first (off by default).

A variant that cannot be pruned, exported or quantized prints one ``FAIL`` line naming the
step and the error, and the run goes on.

``--smoke-test``: ``resnet_tiny`` (torchvision's ResNet, one BasicBlock per stage) at 32x32,
short timings; the numbers mean nothing, the code paths are the real ones.

    python bench/quantize_breadth.py [--models a,b] [--side 224] [--threads 1]
        [--calib-batches 4] [--budget-s 20] [--condition] [--smoke-test]
"""

from __future__ import annotations

import copy
import os
import tempfile
import time
import traceback

import _common
import torch
import torchvision_sweep

import pruners
from pruners.measure import paired_speedup, time_forward
from pruners.quantize import load_onnx, quantize_int8, save_onnx

MODELS = ("resnet18", "mobilenet_v3_small", "efficientnet_b0", "convnext_tiny", "regnet_y_400mf", "vit_b_16")
#: The smoke test's model: torchvision's ResNet with one BasicBlock per stage (resnet18 has
#: two), 10 classes: the same ops (residual adds, one ReLU module called twice) in half the
#: export time.
SMOKE = ("resnet_tiny",)
BATCHES = (1, 16)
MEAN = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
STD = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)


def build(name: str) -> torch.nn.Module:
    if name == "resnet_tiny":
        from torchvision.models.resnet import BasicBlock, ResNet

        return ResNet(BasicBlock, [1, 1, 1, 1], num_classes=10)
    return torchvision_sweep._build(name)


def condition(model: torch.nn.Module, calib: list[torch.Tensor]) -> list[str]:
    """Make a random-init model's signals non-degenerate (``--condition``); returns what changed.

    BatchNorm running statistics are re-estimated on the calibration batches (random init
    leaves mean 0 / var 1 whatever the layer computes: in mobilenet_v3_small the logits then
    shrink to ~1e-9, under the quantizer's smallest scale, and the int8 output is exactly
    zero), and a Linear whose weight is all zero (torchvision zero-initialises vit_b_16's
    head, so its logits are all zero) gets N(0, 0.02) weights.
    """
    changed = []
    norms = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    if norms:
        for m in norms:
            m.reset_running_stats()
            m.momentum = None  # cumulative average over the batches
        model.train()
        with torch.no_grad():
            for x in calib:
                model(x)
        model.eval()
        changed.append(f"{len(norms)} BatchNorm statistics re-estimated")
    for name, m in model.named_modules():
        if isinstance(m, torch.nn.Linear) and not m.weight.any():
            torch.nn.init.normal_(m.weight, std=0.02)
            changed.append(f"{name} (all-zero Linear) re-initialised")
    return changed


def synthetic(n: int, side: int, generator: torch.Generator) -> torch.Tensor:
    """``n`` synthetic images: uniform pixels in [0, 1], normalised as torchvision expects."""
    return (torch.rand(n, 3, side, side, generator=generator) - MEAN) / STD


def _why(exc: BaseException) -> str:
    """One line: the error, and the innermost frame of the project or torch that raised it."""
    first = (str(exc).strip().splitlines() or [""])[0][:160]
    frames = traceback.extract_tb(exc.__traceback__)
    where = next((f"{os.path.basename(f.filename)}:{f.lineno} {f.name}" for f in reversed(frames)), "")
    return f"{type(exc).__name__}: {first} [{where}]"


def agreement(reference: torch.Tensor, out: torch.Tensor) -> dict[str, float]:
    ref, out = reference.float().flatten(1), out.float().flatten(1)
    diff = (out - ref).abs()
    return {
        "top1": float((ref.argmax(1) == out.argmax(1)).float().mean()),
        "cos": float(torch.nn.functional.cosine_similarity(ref, out, dim=1).mean()),
        "max_rel": float(diff.max() / ref.abs().max().clamp_min(1e-12)),
        "mean_abs": float(diff.mean()),
    }


def _timed(programs: dict, x: torch.Tensor, threads: int, budget_s: float, max_repeats: int) -> dict:
    """Time every program on ``x`` alternately, as many rounds as ``budget_s`` allows (>= 3)."""
    t0 = time.perf_counter()
    with torch.inference_mode():
        for p in programs.values():  # one untimed pass each: warm-up, and the cost of a round
            p(x)
    round_s = time.perf_counter() - t0
    repeats = max(3, min(max_repeats, int(budget_s / max(round_s, 1e-6))))
    return time_forward(programs, (x,), repeats=repeats, warmup=1, threads=threads)


def run_variant(model: torch.nn.Module, tmp: str, tag: str, side: int, calib: list, x_eval: torch.Tensor,
                args) -> dict:
    """Write the three files of one variant, compare the int8 outputs, time the files."""
    x1 = x_eval[:1]
    row: dict = {}
    step = "float ONNX export (save_onnx)"
    try:
        f_onnx, f_pt2, q_onnx = (os.path.join(tmp, f"{tag}{ext}") for ext in (".onnx", ".pt2", ".int8.onnx"))
        save_onnx(model, f_onnx, x1)
        step = "float .pt2 export (pruners.save)"
        pruners.save(model, f_pt2, x1)
        step = "int8 (quantize_int8: prepare, calibrate, convert, ONNX export)"
        t0 = time.perf_counter()
        report = quantize_int8(model, q_onnx, x1, calib, calibration_examples=None)
        row["quantize_s"] = time.perf_counter() - t0
        row["calibrated"] = report.calibration_examples
        row["weight_ops"] = len(report.quantized) + len(report.left_float)
        row["left_float"] = report.left_float
        row["size_int8"] = os.path.getsize(q_onnx)
        row["size_onnx"] = os.path.getsize(f_onnx)
        row["size_pt2"] = os.path.getsize(f_pt2)
        step = "load on ONNX Runtime / torch"
        int8 = load_onnx(q_onnx, threads=args.threads)
        fonnx = load_onnx(f_onnx, threads=args.threads)
        fpt2 = pruners.load(f_pt2)
        step = "outputs against the float model"
        with torch.no_grad():
            ref = model(x_eval)
        row.update(agreement(ref, int8(x_eval)))
        row["ref_max"] = float(ref.abs().max())
        row["onnx_cos"] = agreement(ref, fonnx(x_eval))["cos"]  # the float export itself, as a check
        step = "timing"
        for b in BATCHES:
            xb = x_eval[:b].contiguous()
            lat = _timed({"onnx": fonnx, "int8": int8, "pt2": fpt2}, xb, args.threads, args.budget_s, args.max_repeats)
            row[f"ort_ms_{b}"] = lat["onnx"].median_ms
            row[f"int8_ms_{b}"] = lat["int8"].median_ms
            row[f"pt2_ms_{b}"] = lat["pt2"].median_ms
            row[f"x_ort_{b}"] = paired_speedup(lat["onnx"], lat["int8"])
            row[f"x_pt2_{b}"] = paired_speedup(lat["pt2"], lat["int8"])
            row[f"repeats_{b}"] = lat["int8"].repeats
    except Exception as exc:  # noqa: BLE001 - a failure is a result: one line, then the next variant
        row["error"] = f"{step}: {_why(exc)}"
    return row


def run_model(name: str, side: int, args) -> list[tuple[str, dict]]:
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(1)
    calib = [synthetic(args.calib_size, side, gen) for _ in range(args.calib_batches)]
    x_eval = synthetic(max(BATCHES), side, torch.Generator().manual_seed(2))
    t0 = time.perf_counter()
    try:
        dense = build(name).eval()
    except Exception as exc:  # noqa: BLE001
        return [("dense", {"error": f"build: {_why(exc)}"})]
    notes = condition(dense, calib) if args.condition else []
    flops = pruners.count_flops(dense, x_eval[:1])
    rows = []
    with tempfile.TemporaryDirectory(prefix="qbreadth-") as tmp:
        row = run_variant(dense, tmp, "dense", side, calib, x_eval, args)
        row["flops_ratio"] = 1.0
        rows.append(("dense", row))
        try:
            pruned = copy.deepcopy(dense)
            pruners.prune(pruned, criterion="magnitude", granularity="structured", amount=args.flops_cut,
                          threshold_rule="flops_cut", example_inputs=x_eval[:1])
            pruned.eval()
            ratio = pruners.count_flops(pruned, x_eval[:1]) / flops
        except Exception as exc:  # noqa: BLE001
            rows.append(("pruned", {"error": f"structured prune to {args.flops_cut:g}x fewer FLOPs: {_why(exc)}"}))
        else:
            row = run_variant(pruned, tmp, "pruned", side, calib, x_eval, args)
            row["flops_ratio"] = ratio
            rows.append(("pruned", row))
    for _, row in rows:
        row["model_s"] = time.perf_counter() - t0
        row["conditioned"] = notes
    return rows


HEADER = (f"{'model':<19} {'variant':<7} {'FLOPs':>5} {'top-1':>5} {'cos':>6} {'max|d|':>6} "
          f"{'int8/onnx':>9} {'int8/pt2':>8} {'ORT b1':>6} {'ORT b16':>7} {'pt2 b1':>6} {'pt2 b16':>7} "
          f"{'fp32 ORT ms b1/b16':>18} {'float ops':>9} {'fp32 ONNX cos':>13}")


def line(name: str, variant: str, r: dict) -> str:
    if "error" in r:
        return f"{name:<19} {variant:<7} FAIL {r['error']}"
    return (f"{name:<19} {variant:<7} {r['flops_ratio']:>5.2f} {r['top1']:>5.2f} {r['cos']:>6.3f} {r['max_rel']:>6.3f} "
            f"{r['size_int8'] / r['size_onnx']:>9.3f} {r['size_int8'] / r['size_pt2']:>8.3f} "
            f"{r['x_ort_1']:>5.2f}x {r['x_ort_16']:>6.2f}x {r['x_pt2_1']:>5.2f}x {r['x_pt2_16']:>6.2f}x "
            f"{r['ort_ms_1']:>8.1f}/{r['ort_ms_16']:<9.1f} {len(r['left_float']):>3}/{r['weight_ops']:<5} {r['onnx_cos']:>13.4f}")


def main() -> None:
    p = _common.parser(__doc__.splitlines()[0])
    p.add_argument("--models", default=None, help=f"comma-separated torchvision names (default: {','.join(MODELS)})")
    p.add_argument("--side", type=int, default=None, help="input side (default 224; smoke test 32)")
    p.add_argument("--flops-cut", type=float, default=2.0, help="factor by which pruning cuts FLOPs")
    p.add_argument("--calib-batches", type=int, default=None, help="synthetic calibration batches (default 4; smoke 2)")
    p.add_argument("--calib-size", type=int, default=8, help="images per calibration batch")
    p.add_argument("--condition", action="store_true",
                   help="re-estimate BatchNorm statistics on the calibration batches and re-initialise "
                        "all-zero Linear weights before anything else (random-init signals; see condition())")
    p.add_argument("--budget-s", type=float, default=None,
                   help="seconds of timing per variant and batch size (default 20; smoke 1)")
    p.add_argument("--max-repeats", type=int, default=None, help="timed rounds at most (default 30; smoke 3)")
    args = p.parse_args()
    if args.threads == (os.cpu_count() or 1):  # one thread unless asked (the setting)
        args.threads = 1
    smoke = args.smoke_test
    side = args.side or (32 if smoke else 224)
    args.calib_batches = args.calib_batches or (2 if smoke else 4)
    args.budget_s = args.budget_s if args.budget_s is not None else (1.0 if smoke else 20.0)
    args.max_repeats = args.repeats or args.max_repeats or (3 if smoke else 30)
    names = [n.strip() for n in args.models.split(",") if n.strip()] if args.models else list(SMOKE if smoke else MODELS)
    _common.setup(args.threads)
    import onnxruntime
    import torchao

    print(f"# torchao {torchao.__version__} | onnxruntime {onnxruntime.__version__} | models: {', '.join(names)}")
    print(f"# random-init weights (torchvision weights=None, seed 0{'; --condition' if args.condition else ''}); input {side}x{side}; calibration: "
          f"{args.calib_batches} synthetic batches of {args.calib_size}; agreement on a synthetic batch of "
          f"{max(BATCHES)}; pruned = magnitude (L1), structured, global, flops_cut {args.flops_cut:g}")
    print(f"# speed-ups on {args.threads} thread(s): ORT = float ONNX / int8 ONNX, both on ONNX Runtime CPU; "
          f"pt2 = float .pt2 on torch / int8 ONNX; FLOPs = variant / dense; file ratios = int8 ONNX / float file")
    t_all = time.perf_counter()
    print(HEADER, flush=True)
    results = []
    for name in names:
        for variant, r in run_model(name, side, args):
            results.append((name, variant, r))
            print(line(name, variant, r), flush=True)
    wall = time.perf_counter() - t_all
    for name, variant, r in results:
        if r.get("conditioned") and variant == "dense":
            print(f"# {name}: --condition: {'; '.join(r['conditioned'])}")
        if "ref_max" in r and r["ref_max"] < 1e-6:
            print(f"# {name} {variant}: the float model's logits are at most {r['ref_max']:.1e} in absolute value "
                  "(random init): its agreement columns say nothing (--condition)")
        if r.get("left_float"):
            shown = ", ".join(r["left_float"][:4]) + (", ..." if len(r["left_float"]) > 4 else "")
            print(f"# {name} {variant}: weight ops left float: {shown}")
    load = os.getloadavg()
    print(f"# wall {wall:.0f} s; load avg at the end {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    ok = [(n, v, r) for n, v, r in results if "error" not in r]
    print(f"RESULT quantize_breadth.quantized = {len(ok)}/{len(results)} variants quantized, exported and run "
          f"(target {len(results)}/{len(results)}): {'MEETS' if len(ok) == len(results) else 'MISSES'} target")
    if ok:
        def rng(key, fmt="{:.2f}"):
            vals = [r[key] for _, _, r in ok]
            return f"{fmt.format(min(vals))} .. {fmt.format(max(vals))}"

        sizes = [r["size_int8"] / r["size_onnx"] for _, _, r in ok]
        print(f"RESULT quantize_breadth.file_ratio = {min(sizes):.3f} .. {max(sizes):.3f} (int8 ONNX / float ONNX)")
        print(f"RESULT quantize_breadth.speedup_b1 = {rng('x_ort_1')} (int8 vs float ONNX, ONNX Runtime, "
              f"{args.threads} thread)")
        print(f"RESULT quantize_breadth.speedup_b16 = {rng('x_ort_16')} (int8 vs float ONNX, ONNX Runtime, "
              f"{args.threads} thread)")
        print(f"RESULT quantize_breadth.top1_agreement = {rng('top1')} (int8 vs its float model)")


if __name__ == "__main__":
    main()
