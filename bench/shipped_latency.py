"""How fast is the file a user ships? Dense vs 80 % unstructured vs structured at half the FLOPs.

ResNet-18 (torchvision, random weights: speed does not depend on the values) three ways:
dense; 80 % of its Conv / Linear weights masked by global magnitude (what an unstructured
trial ships: masks folded into the weights, no hooks); and channels removed (L1 magnitude,
global) until the FLOPs halve (the ``flops_cut`` rule at 2). Each is saved with
``pruners.save`` and measured exactly as a trial row is (``pruners.measure`` with the saved
file as ``artifact`` and the dense file as ``reference``): the file loaded back, on a fixed
number of threads, after warm-up, timed alternately with the dense file, median and
interquartile range. Target: the unstructured file is not reported slower than dense
(paired speed-up >= 0.95: dense kernels do the same work on zeros), and the structured one
is faster.

    python bench/shipped_latency.py [--threads 1] [--repeats 50] [--side 224] [--smoke-test]
"""

from __future__ import annotations

import copy
import os
import tempfile

import _common
import torch
import torchvision

import pruners

TARGET = 0.95  # unstructured speed-up against dense, as shipped


def main() -> None:
    p = _common.parser(__doc__.splitlines()[0])
    p.add_argument("--side", type=int, default=224)
    args = p.parse_args()
    threads = 1 if args.threads == (os.cpu_count() or 1) else args.threads  # one thread unless asked
    repeats = args.repeats or (3 if args.smoke_test else 50)
    side = 32 if args.smoke_test else args.side
    _common.setup(threads)
    x = torch.randn(1, 3, side, side)
    dense = torchvision.models.resnet18(weights=None).eval()
    unstructured = copy.deepcopy(dense)
    pruners.prune(unstructured, criterion="magnitude", granularity="unstructured", amount=0.8, example_inputs=x)
    structured = copy.deepcopy(dense)
    pruners.prune(structured, criterion="magnitude", granularity="structured", amount=2.0,
                  threshold_rule="flops_cut", example_inputs=x)
    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        files = {}
        for name, model in (("dense", dense), ("unstructured 80%", unstructured), ("structured 2x FLOPs", structured)):
            files[name] = os.path.join(tmp, f"{name.split()[0]}.pt2")
            pruners.save(model, files[name], x)
        for name, model in (("dense", dense), ("unstructured 80%", unstructured), ("structured 2x FLOPs", structured)):
            m = pruners.measure(model, x, artifact=files[name], reference=files["dense"], latency_repeats=repeats,
                                warmup=5, threads=threads)
            rows[name] = m
    print(f"# resnet18 {side}x{side}, batch 1, {threads} thread(s), {repeats} passes each, alternating with the dense file")
    print(f"{'model':<22} {'FLOPs':>9} {'zeros':>9} {'file MB':>8} {'latency ms':>11} {'IQR ms':>7} "
          f"{'dense ms':>9} {'speed-up':>9}")
    for name, m in rows.items():
        print(f"{name:<22} {m.flops / 1e9:>8.2f}G {1 - m.params_nonzero / m.params:>9.2f} "
              f"{m.size_bytes / 2**20:>8.1f} {m.latency_ms:>11.2f} {m.latency_iqr_ms:>7.2f} "
              f"{m.dense_latency_ms:>9.2f} {m.speedup:>9.2f}")
    _common.verdict("shipped_latency.unstructured_speedup", rows["unstructured 80%"].speedup, TARGET,
                    higher_is_better=True)
    print(f"# structured at {rows['dense'].flops / rows['structured 2x FLOPs'].flops:.2f}x fewer FLOPs: "
          f"{rows['structured 2x FLOPs'].speedup:.2f}x faster as shipped")


if __name__ == "__main__":
    main()
