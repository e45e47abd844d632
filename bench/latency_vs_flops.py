"""Does halving FLOPs by structured pruning halve CPU latency? (speed-up / FLOPs reduction >= 0.8)

For torchvision's ResNet-18 and MobileNet-V2 (random weights; speed does not depend on the
values), find by bisection the channel fraction at which ``pruners.prune(...,
granularity="structured")`` leaves half the dense FLOPs, then time batch-1 inference of the
dense and the pruned model, alternating, in the same run. The figure is
``(dense latency / pruned latency) / (dense FLOPs / pruned FLOPs)``: 1.0 means latency
falls exactly as FLOPs do.

    python bench/latency_vs_flops.py [--threads 2] [--repeats 30] [--side 224] [--channels-last]
"""

from __future__ import annotations

import copy

import _common
import torch
import torchvision

import pruners

TARGET = 0.8


def prune_to_half_flops(base: torch.nn.Module, x: torch.Tensor, criterion: str):
    dense_flops = pruners.measure(base, x, latency_repeats=1, warmup=0).flops
    lo, hi = 0.0, 0.9
    best = None
    for _ in range(7):  # ~0.007 resolution on the channel fraction
        mid = (lo + hi) / 2
        model = copy.deepcopy(base)
        pruners.prune(model, criterion=criterion, granularity="structured", amount=mid,
                      example_inputs=x)
        flops = pruners.measure(model, x, latency_repeats=1, warmup=0).flops
        if best is None or abs(flops / dense_flops - 0.5) < abs(best[1] / dense_flops - 0.5):
            best = (model, flops, mid)
        if flops > 0.5 * dense_flops:
            lo = mid
        else:
            hi = mid
    return dense_flops, best


def main() -> None:
    p = _common.parser(__doc__.splitlines()[0])
    p.add_argument("--side", type=int, default=224)
    p.add_argument("--models", default="resnet18,mobilenet_v2")
    p.add_argument("--criterion", default="magnitude")
    p.add_argument("--channels-last", action="store_true", help="NHWC memory format for both")
    args = p.parse_args()
    _common.setup(args.threads)
    repeats = args.repeats or (2 if args.smoke_test else 30)
    side = 64 if args.smoke_test else args.side
    x = torch.randn(1, 3, side, side)

    results = {}
    for name in args.models.split(","):
        base = getattr(torchvision.models, name)().eval()
        dense_flops, (pruned, flops, amount) = prune_to_half_flops(base, x, args.criterion)
        pruned.eval()
        xin = x
        if args.channels_last:
            base = base.to(memory_format=torch.channels_last)
            pruned = pruned.to(memory_format=torch.channels_last)
            xin = x.contiguous(memory_format=torch.channels_last)

        def run(model):
            def f():
                with torch.inference_mode():
                    model(xin)
            return f

        ms = _common.interleaved_ms({"dense": run(base), "pruned": run(pruned)}, repeats=repeats, warmup=3)
        speedup = ms["dense"] / ms["pruned"]
        reduction = dense_flops / flops
        results[name] = speedup / reduction
        print(f"{name}: channels removed {amount:.3f}, FLOPs {dense_flops / 1e9:.3f} G -> "
              f"{flops / 1e9:.3f} G (x{reduction:.2f} fewer)")
        print(f"  latency batch 1: dense {ms['dense']:.2f} ms, pruned {ms['pruned']:.2f} ms "
              f"(x{speedup:.2f} faster); speed-up / FLOPs reduction = {results[name]:.3f}")
    for name, value in results.items():
        _common.verdict(f"latency_vs_flops.{name}", value, TARGET, higher_is_better=True)


if __name__ == "__main__":
    main()
