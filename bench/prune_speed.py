"""How long does structured pruning of torchvision's ResNet-50 take on CPU? (target <= 1 s)

`pruners.prune(resnet50, criterion="magnitude", granularity="structured", amount=0.5)` does
three things: one forward pass to find the classifier, one traced forward pass to build
Torch-Pruning's dependency graph, then scoring every group and removing the channels. The
target is about the last part, "scoring + structural removal"; the two forward passes are
reported apart (they scale with the example input, not with our code), and so is one plain
forward pass measured in the same run as the baseline.

    python bench/prune_speed.py [--threads 2] [--repeats 3] [--input 224]
"""

from __future__ import annotations

import copy
import statistics
import time

import _common
import torch
import torchvision

import pruners

TARGET_S = 1.0


def main() -> None:
    p = _common.parser(__doc__.splitlines()[0])
    p.add_argument("--input", type=int, default=224, help="example image side")
    p.add_argument("--criterion", default="magnitude")
    args = p.parse_args()
    _common.setup(args.threads)
    repeats = args.repeats or (1 if args.smoke_test else 3)
    side = 64 if args.smoke_test else args.input

    base = torchvision.models.resnet50().eval()
    x = torch.randn(1, 3, side, side)
    with torch.no_grad():
        fwd_ms = _common.median_ms(lambda: base(x), repeats=3, warmup=1)

    # The two forward passes inside prune (classifier search, graph trace) are timed apart.
    totals, rest, traces, rest_cpu = [], [], [], []
    with _common.timed_prune_passes() as (phases, cpu_phases):
        for _ in range(repeats):
            model = copy.deepcopy(base)
            phases.clear()
            cpu_phases.clear()
            t0, c0 = time.perf_counter(), time.process_time()
            rep = pruners.prune(model, criterion=args.criterion, granularity="structured",
                                amount=0.5, example_inputs=x)
            total = time.perf_counter() - t0
            rest_cpu.append(time.process_time() - c0 - sum(cpu_phases.values()))
            totals.append(total)
            traces.append(sum(phases.values()))
            rest.append(total - sum(phases.values()))

    n_before = sum(p.numel() for p in base.parameters())
    n_after = sum(p.numel() for p in model.parameters())
    print(f"resnet50, input 1x3x{side}x{side}, criterion {args.criterion}, {repeats} run(s)")
    print(f"  channels removed: {rep.achieved:.3f} of {rep.units_before}; params {n_before:,} -> {n_after:,}")
    print(f"  baseline: one dense forward pass         {fwd_ms / 1e3:8.3f} s")
    print(f"  prune() total (median)                   {statistics.median(totals):8.3f} s"
          f"  = {statistics.median(totals) * 1e3 / fwd_ms:.1f} forward passes")
    print(f"    classifier forward + graph trace       {statistics.median(traces):8.3f} s")
    print(f"    scoring + structural removal           {statistics.median(rest):8.3f} s"
          f"  = {statistics.median(rest) * 1e3 / fwd_ms:.1f} forward passes")
    # CPU time of this process (all its threads): what the work costs when no other process
    # competes for the cores; wall time above is what a user waits on this machine now.
    print(f"    scoring + structural removal, CPU time {statistics.median(rest_cpu):8.3f} s")
    _common.verdict("prune_speed.scoring_and_removal_s", statistics.median(rest), TARGET_S,
                    higher_is_better=False)


if __name__ == "__main__":
    main()
