"""One script for a machine with a GPU: does Prunefront run there, and what does pruning buy?

    python bench/gpu_check.py                       # on the GPU machine (<= 8 minutes, offline)
    python bench/gpu_check.py --device cpu --smoke-test   # the same code paths on a CPU, small

1. **A tiny search sharing the GPU**: digits (bundled with scikit-learn, no download), two
   trials of one Train worker each at ``gpus_per_worker: 0.5``, so both run at once on one
   GPU, with bf16 autocast and channels-last on. Prints the plan, where each trial ran (the
   rows' ``device``), whether their epochs interleaved (they ran at the same time), and the
   search's wall time.
2. **Latency of a structurally pruned ResNet-50** (random weights, synthetic 224x224 input):
   ``pruners.prune`` with the ``flops_cut`` rule at 2x (L1 magnitude of channels, global),
   then dense and pruned timed alternately on the device (CUDA synchronised around each
   pass) at batch 1 and 64, float32. Torch-Pruning reports 1.35x latency for 2.04x MACs on
   a GPU at batch 64 (its ResNet-50 benchmark); ours is printed beside that figure.

Every number printed comes from this run. The last line is ``RESULT ...`` with the figures.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from reports.layout import LEDGER_FILE  # noqa: E402 - after the path set-up


def _say(msg: str) -> None:
    print(msg, flush=True)


def tiny_search(device: str, smoke: bool) -> dict:
    """Two trials sharing one GPU (or two CPU workers with --device cpu)."""
    import yaml

    from orchestrator import search

    gpu = device == "cuda"
    cfg = {
        "name": "gpu-check",
        "data": {"dataset": "digits"},
        "dense": {"epochs": 2 if smoke else 5},
        "search": {"algorithm": "grid", "num_samples": 1, "epochs": 2 if smoke else 3,
                   "space": {"quantize": ["none"], "criterion": ["magnitude"], "granularity": ["unstructured", "structured"],
                             "schedule": ["one_shot"], "scope": ["global"], "amount": [0.5], "lr": [0.05]}},
        "scheduler": {"name": "fifo"},
        "metrics": {"latency_repeats": 5 if smoke else 20},
        "resources": {"workers": 1, "use_gpu": gpu, "gpus_per_worker": 0.5 if gpu else None,
                      "cpus_per_worker": 1.0 if gpu else 0.9, "driver_cpus": 0.1,
                      "bf16": gpu, "channels_last": gpu},
    }
    with tempfile.TemporaryDirectory(prefix="prunefront-gpu-check-") as tmp:
        (Path(tmp) / "cfg.yaml").write_text(yaml.safe_dump(cfg))
        out = Path(tmp) / "exp"
        t0 = time.time()
        buf = io.StringIO()
        with contextlib.redirect_stdout(buf):
            code = search.main(["--config", str(Path(tmp) / "cfg.yaml"), "--output", str(out)])
        wall = time.time() - t0
        text = buf.getvalue()
        plan = next((ln for ln in text.splitlines() if "trial(s), up to" in ln), "")
        events = [json.loads(x) for x in (out / LEDGER_FILE).read_text().splitlines()] if code == 0 else []
    if code != 0:
        _say(text[-3000:])
        raise SystemExit(f"the tiny search failed (exit {code})")
    rows = [e for e in events if e["type"] == "result"]
    order = [e["trial_id"] for e in rows]
    # Concurrent trials interleave their epochs in the ledger: A1 B1 A2 B2 rather than A1 A2 B1 B2.
    interleaved = any(order[i] != order[i + 1] for i in range(len(order) - 1)) and order != sorted(order)
    devices = sorted({e.get("device", "?") for e in rows})
    statuses = [e["status"] for e in events if e["type"] == "status"]
    _say(f"search: {plan.strip()}")
    _say(f"search: {len(statuses)} trials {statuses}, devices {devices}, epochs interleaved: {interleaved}, "
         f"wall {wall:.0f} s")
    for e in rows:
        _say(f"  {e['trial_id']} epoch {e['epoch']}: val {e['val_accuracy']:.4f}, latency {e['latency_ms']:.3f} ms "
             f"({e['config']['granularity']}), speedup {e['speedup']:.2f}x on {e.get('device')}")
    return {"trials": len(statuses), "completed": statuses.count("completed"), "devices": devices,
            "interleaved": interleaved, "wall_s": round(wall, 1)}


def resnet50_latency(device: str, smoke: bool) -> dict:
    """Dense vs 2x-MACs-cut ResNet-50, timed alternately at batch 1 and 64."""
    import torch
    import torchvision

    import pruners
    from pruners.measure import paired_speedup, time_forward

    torch.manual_seed(0)
    size = 64 if smoke else 224
    dense = torchvision.models.resnet50(weights=None).eval()
    example = torch.randn(1, 3, size, size)
    pruned = torchvision.models.resnet50(weights=None).eval()
    pruned.load_state_dict(dense.state_dict())
    t0 = time.time()
    rep = pruners.prune(pruned, criterion="magnitude", granularity="structured", amount=2.0,
                        threshold_rule="flops_cut", scope="global", example_inputs=example)
    prune_s = time.time() - t0
    flops = {k: pruners.measure(m, example, latency_repeats=1).flops for k, m in (("dense", dense), ("pruned", pruned))}
    ratio = flops["dense"] / flops["pruned"]
    _say(f"resnet50 {size}x{size}: pruned to {ratio:.2f}x fewer MACs in {prune_s:.1f} s "
         f"({rep.achieved:.3f} of channels removed)")
    dev = torch.device(device)
    dense, pruned = dense.to(dev), pruned.to(dev)
    out = {"macs_cut": round(ratio, 3), "input": size}
    for batch in (1, 4 if smoke else 64):
        x = torch.randn(batch, 3, size, size, device=dev)
        lat = time_forward({"dense": dense, "pruned": pruned}, (x,), repeats=5 if smoke else 50, warmup=2 if smoke else 10,
                           threads=None)
        speedup = paired_speedup(lat["dense"], lat["pruned"])
        _say(f"resnet50 batch {batch}: dense {lat['dense'].median_ms:.2f} ms, pruned {lat['pruned'].median_ms:.2f} ms "
             f"-> {speedup:.2f}x faster ({device}, float32)")
        out[f"speedup_b{batch}"] = round(speedup, 3)
        out[f"dense_ms_b{batch}"] = round(lat["dense"].median_ms, 3)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    p.add_argument("--smoke-test", action="store_true", help="small and quick (the test suite runs this on a CPU)")
    args = p.parse_args(argv)
    import torch

    if args.device == "cuda" and not torch.cuda.is_available():
        print("error: no CUDA GPU is visible; run with --device cpu to check the code paths only", file=sys.stderr)
        return 2
    name = torch.cuda.get_device_name(0) if args.device == "cuda" else "cpu"
    _say(f"# torch {torch.__version__} | {name} | {os.cpu_count()} CPUs")
    t0 = time.time()
    search = tiny_search(args.device, args.smoke_test)
    latency = resnet50_latency(args.device, args.smoke_test)
    _say(f"RESULT gpu_check device={name!r} total_s={time.time() - t0:.0f} "
         f"search={json.dumps(search, sort_keys=True)} resnet50={json.dumps(latency, sort_keys=True)} "
         f"(Torch-Pruning reports 1.35x at batch 64 for 2.04x MACs on GPU)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
