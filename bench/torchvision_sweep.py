"""Does structured pruning work, in seconds, for every torchvision classifier? (all pass)

For each model of ``torchvision.models.list_models(module=torchvision.models)``, built with
random weights: ``pruners.prune(model, criterion="magnitude", granularity="structured",
amount=0.5, example_inputs=x)`` at 224x224 (299 for Inception-v3), then a forward pass.
Each model runs in its own process under a hard address-space cap (``RLIMIT_AS``, set in
the child before it imports anything), so a crash, a hang or a runaway allocation is one
FAIL line, never a dead sweep or a dead machine.

One line per model: scoring + removal seconds (the target: <= 30 s; the classifier-finding
forward pass and the dependency-graph trace are timed apart and included in ``total``),
peak resident memory of the child (from ``wait4``; target <= 4 GB), dense FLOPs cut
(``torch.utils.flop_counter``, batch 1), parameters cut, achieved vs requested fraction of
prunable units, then PASS or FAIL with the reason. A model passes when the pruned model
runs, its output shape is unchanged and finite, its FLOPs fell, and both targets hold.

The six largest models (``vit_h_14``, ``vit_l_16``, ``vit_l_32``, ``regnet_y_128gf``,
``regnet_y_32gf``, ``regnet_y_16gf``) are skipped by default (``--no-skip-largest`` runs
them): on a 2-core, 24 GB machine they take minutes per model just to build and trace.
``--timm`` runs a family sample of timm models instead (random weights).

    python bench/torchvision_sweep.py [--threads 2] [--models a,b] [--timm]
        [--mem-cap-gb 8] [--timeout 300] [--amount 0.5] [--smoke-test]
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import threading
import time

import _common

#: Requirements of the issue: seconds of scoring + removal, and peak resident memory.
TARGET_PRUNE_S = 30.0
TARGET_RSS_GB = 4.0

#: Skipped by default: the six largest torchvision classifiers (parameters, build time).
LARGEST = ("vit_h_14", "vit_l_16", "vit_l_32", "regnet_y_128gf", "regnet_y_32gf", "regnet_y_16gf")

#: One timm model per family (ResNet, EfficientNet, ConvNeXt, ViT, DeiT, Swin, RegNet,
#: MobileNetV3), the smallest common variant of each.
TIMM_SAMPLE = (
    "resnet50",
    "efficientnet_b0",
    "convnext_tiny",
    "vit_small_patch16_224",
    "deit_small_patch16_224",
    "swin_tiny_patch4_window7_224",
    "regnety_016",
    "mobilenetv3_large_100",
)

SMOKE = ("resnet18", "mobilenet_v3_small", "squeezenet1_0")

#: Input side per model (torchvision: 224 except Inception-v3).
SIDES = {"inception_v3": 299}


# ------------------------------------------------------------------------------ child
def _build(name: str):
    if name.startswith("timm:"):
        import timm

        return timm.create_model(name[len("timm:"):], pretrained=False)
    import torchvision

    return torchvision.models.get_model(name, weights=None)


def _side(name: str, model) -> int:
    if name.startswith("timm:"):
        cfg = getattr(model, "pretrained_cfg", None) or {}
        return int(cfg.get("input_size", (3, 224, 224))[-1])
    return SIDES.get(name, 224)


def child(name: str, amount: float, side: int | None) -> dict:
    """Prune one model in this process; return the measurements (no verdict)."""
    import torch

    import pruners

    torch.manual_seed(0)
    t_build = time.perf_counter()
    model = _build(name).eval()
    build_s = time.perf_counter() - t_build
    side = side or _side(name, model)
    x = torch.randn(1, 3, side, side)
    # prune would do this first anyway (same outputs); done here, outside the timed prune.
    pruners.convert_attention(model)
    with torch.no_grad():
        shape = tuple(model(x).shape)
    params = sum(p.numel() for p in model.parameters())
    dense_flops = pruners.count_flops(model, x)

    # The two forward passes inside prune (classifier search, graph trace) are timed apart.
    with _common.timed_prune_passes() as (phases, cpu_phases):
        t0, c0 = time.perf_counter(), time.process_time()
        report = pruners.prune(model, criterion="magnitude", granularity="structured", amount=amount,
                               example_inputs=x)
    total_s = time.perf_counter() - t0
    total_cpu_s = time.process_time() - c0
    with torch.no_grad():
        y = model(x)
    return {
        "name": name,
        "side": side,
        "build_s": build_s,
        "total_s": total_s,
        "prune_s": total_s - sum(phases.values()),
        # CPU time of this process (all its threads): what the work costs when no other
        # process competes for the cores (wall time above is what a user waits now).
        "prune_cpu_s": total_cpu_s - sum(cpu_phases.values()),
        "trace_s": phases.get("graph trace", 0.0),
        "shape_ok": tuple(y.shape) == shape,
        "finite": bool(torch.isfinite(y).all()),
        "flops_before": dense_flops,
        "flops_after": pruners.count_flops(model, x),
        "params_before": params,
        "params_after": sum(p.numel() for p in model.parameters()),
        "requested": report.requested_fraction,
        "achieved": report.achieved,
        "units": report.units_before,
    }


def _child_main(argv: list[str]) -> None:
    name, amount, threads, side = argv[0], float(argv[1]), int(argv[2]), int(argv[3])
    import torch

    torch.set_num_threads(threads)
    out = child(name, amount, side or None)
    print("SWEEP-JSON " + json.dumps(out), flush=True)


# ------------------------------------------------------------------------------ parent
def _run_one(name: str, amount: float, threads: int, side: int, cap_bytes: int, timeout: float) -> dict:
    """Run one model in a capped child process; its result plus peak RSS and exit status."""

    def cap() -> None:  # runs in the child before exec: the cap covers the whole child
        resource.setrlimit(resource.RLIMIT_AS, (cap_bytes, cap_bytes))

    cmd = [sys.executable, os.path.abspath(__file__), "--child", name, str(amount), str(threads), str(side)]
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            preexec_fn=cap)
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(proc.stdout), daemon=True)
    reader.start()
    timed_out = False
    while True:  # wait4, not Popen.wait: it gives this child's own peak RSS
        pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
        if pid:
            break
        if time.perf_counter() - t0 > timeout:
            proc.kill()
            timed_out = True
            pid, status, usage = os.wait4(proc.pid, 0)
            break
        time.sleep(0.05)
    proc.returncode = os.waitstatus_to_exitcode(status)
    reader.join(5)
    wall = time.perf_counter() - t0
    result: dict = {"name": name, "wall_s": wall, "rss_gb": usage.ru_maxrss / 2**20}
    for line in lines:
        if line.startswith("SWEEP-JSON "):
            result.update(json.loads(line[len("SWEEP-JSON "):]))
    if timed_out:
        result["error"] = f"timed out after {timeout:.0f} s"
    elif "achieved" not in result:
        tail = [ln.strip() for ln in lines if ln.strip()]
        why = tail[-1] if tail else ""
        if proc.returncode < 0:
            why = f"killed by signal {-proc.returncode}" + (f" ({why})" if why else "")
        elif "MemoryError" in why or "Cannot allocate memory" in why:
            why = f"over the {cap_bytes / 2**30:.0f} GB address-space cap: {why}"
        result["error"] = why[:200] or f"exit status {proc.returncode}"
    return result


def _verdict(r: dict) -> str | None:
    """None when the model passes, else the first reason it does not."""
    if "error" in r:
        return r["error"]
    if not r["shape_ok"]:
        return "output shape changed"
    if not r["finite"]:
        return "non-finite output"
    if not r["flops_after"] < r["flops_before"]:
        return "FLOPs did not fall"
    if r["prune_s"] > TARGET_PRUNE_S:
        return f"scoring + removal {r['prune_s']:.1f} s > {TARGET_PRUNE_S:.0f} s"
    if r["rss_gb"] > TARGET_RSS_GB:
        return f"peak RSS {r['rss_gb']:.2f} GB > {TARGET_RSS_GB:.0f} GB"
    return None


def _line(r: dict, why: str | None) -> str:
    if "achieved" not in r:
        return f"{r['name']:<32} {'':>25} total {r['wall_s']:6.1f} s  peak {r['rss_gb']:5.2f} GB  FAIL: {why}"
    flops_cut = 1 - r["flops_after"] / r["flops_before"]
    params_cut = 1 - r["params_after"] / r["params_before"]
    return (
        f"{r['name']:<32} prune {r['prune_s']:5.2f} s (cpu {r['prune_cpu_s']:5.2f})  total {r['total_s']:6.2f} s  "
        f"peak {r['rss_gb']:5.2f} GB  FLOPs -{flops_cut:5.1%}  params -{params_cut:5.1%}  "
        f"achieved {r['achieved']:.3f} / requested {r['requested']:.3f}  "
        + ("PASS" if why is None else f"FAIL: {why}")
    )


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        _child_main(sys.argv[2:])
        return
    p = _common.parser(__doc__.splitlines()[0])
    p.add_argument("--models", default=None, help="comma-separated names (timm: prefix for timm)")
    p.add_argument("--timm", action="store_true", help="the timm family sample instead of torchvision")
    p.add_argument("--skip-largest", action=__import__("argparse").BooleanOptionalAction, default=True,
                   help=f"skip {', '.join(LARGEST)} (default: on)")
    p.add_argument("--amount", type=float, default=0.5, help="fraction of units to remove")
    p.add_argument("--side", type=int, default=0, help="input side (default: the model's own)")
    p.add_argument("--mem-cap-gb", type=float, default=8.0,
                   help="hard address-space cap of each child process (RLIMIT_AS)")
    p.add_argument("--timeout", type=float, default=300.0, help="seconds before a child is killed")
    p.add_argument("--json", default=None, help="also write every result to this JSON file")
    args = p.parse_args()
    _common.setup(args.threads)

    if args.models:
        names = [n.strip() for n in args.models.split(",") if n.strip()]
    elif args.smoke_test:
        names = list(SMOKE)
    elif args.timm:
        names = [f"timm:{n}" for n in TIMM_SAMPLE]
    else:
        import torchvision

        names = sorted(torchvision.models.list_models(module=torchvision.models))
    skipped = [n for n in names if args.skip_largest and n in LARGEST and not args.models]
    names = [n for n in names if n not in skipped]
    side = args.side or (64 if args.smoke_test else 0)
    cap = int(args.mem_cap_gb * 2**30)
    print(f"# {len(names)} model(s), amount {args.amount}, magnitude, structured, global; "
          f"child cap {args.mem_cap_gb:g} GB address space, timeout {args.timeout:g} s"
          + (f"; skipped (largest): {', '.join(skipped)}" if skipped else ""), flush=True)

    results = []
    for name in names:
        r = _run_one(name, args.amount, args.threads, side, cap, args.timeout)
        why = _verdict(r)
        r["pass"] = why is None
        r["reason"] = why
        results.append(r)
        print(_line(r, why), flush=True)

    passed = sum(r["pass"] for r in results)
    ran = [r for r in results if "prune_s" in r]
    if ran:
        slow = sorted(ran, key=lambda r: -r["prune_s"])[:3]
        print("# slowest scoring + removal: " + ", ".join(f"{r['name']} {r['prune_s']:.1f} s" for r in slow))
        print(f"# peak RSS max: {max(r['rss_gb'] for r in results):.2f} GB")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)
    label = "timm_sweep" if args.timm and not args.models else "torchvision_sweep"
    print(f"RESULT {label} = {passed}/{len(results)} models pass"
          f" (target {len(results)}/{len(results)}): {'MEETS' if passed == len(results) else 'MISSES'} target")


if __name__ == "__main__":
    main()
