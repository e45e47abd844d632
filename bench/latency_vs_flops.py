"""Does halving FLOPs by structured pruning halve CPU latency? (speed-up / FLOPs reduction >= 0.8)

For torchvision's ResNet-18 and MobileNet-V2 (random weights; speed does not depend on the
values), find by bisection the channel fraction at which ``pruners.prune(...,
granularity="structured")`` leaves half the dense FLOPs, then time inference of the
dense and the pruned model, alternating, in the same run, at each batch size of
``--batch-sizes`` (default 1 and 16: single-request latency and a serving-like batch, where
the larger matrices keep the kernels busy). The figure, per model and batch size, is
``(dense latency / pruned latency) / (dense FLOPs / pruned FLOPs)``: 1.0 means latency
falls exactly as FLOPs do. Each batch size's dense baseline is timed next to its pruned model.

``--reference`` also times MobileNet-V2 built natively narrower (torchvision's
``width_mult``, channel counts rounded to multiples of 8) at the same FLOPs: what this CPU
delivers for a half-FLOPs MobileNet-V2 that nobody pruned, to tell the runtime's limits from
the pruned model's channel counts.

    python bench/latency_vs_flops.py [--threads 2] [--repeats 30] [--side 224]
        [--batch-sizes 1,16] [--scope global|layerwise] [--channels-last] [--reference]
"""

from __future__ import annotations

import copy

import _common
import torch
import torchvision

import pruners

TARGET = 0.8


def flops_of(model: torch.nn.Module, x: torch.Tensor) -> int:
    return pruners.measure(model, x, files=False).flops


def bisect(make, x: torch.Tensor, goal: float, lo: float, hi: float, decreasing: bool, steps: int = 7):
    """``make(v) -> model``; the model whose FLOPs are closest to ``goal``, with its v."""
    best = None
    for _ in range(steps):
        mid = (lo + hi) / 2
        model = make(mid)
        flops = flops_of(model, x)
        if best is None or abs(flops - goal) < abs(best[1] - goal):
            best = (model, flops, mid)
        if (flops > goal) == decreasing:
            lo = mid
        else:
            hi = mid
    return best


def main() -> None:
    p = _common.parser(__doc__.splitlines()[0])
    p.add_argument("--side", type=int, default=224)
    p.add_argument("--models", default="resnet18,mobilenet_v2")
    p.add_argument("--criterion", default="magnitude")
    p.add_argument("--scope", default="global", choices=["global", "layerwise"])
    p.add_argument("--channels-last", action="store_true", help="NHWC memory format for all")
    p.add_argument("--batch-sizes", default="1,16",
                   help="comma-separated batch sizes, each timed against its own dense baseline")
    p.add_argument("--batch-repeats", type=int, default=None,
                   help="timed repetitions at batch sizes > 1 (default: --repeats // 3, >= 3)")
    p.add_argument("--reference", action="store_true",
                   help="also time a natively narrower MobileNet-V2 at the same FLOPs")
    args = p.parse_args()
    try:
        batch_sizes = [int(b) for b in args.batch_sizes.split(",")]
        if not batch_sizes or min(batch_sizes) < 1:
            raise ValueError
    except ValueError:
        p.error(f"--batch-sizes must be positive integers separated by commas, got {args.batch_sizes!r}")
    _common.setup(args.threads)
    repeats = args.repeats or (2 if args.smoke_test else 30)
    batch_repeats = args.batch_repeats or max(3, repeats // 3)
    side = 64 if args.smoke_test else args.side
    x = torch.randn(1, 3, side, side)
    layout = ", channels_last" if args.channels_last else ""

    def inputs(batch: int) -> torch.Tensor:
        xb = x.expand(batch, -1, -1, -1).contiguous()
        return xb.contiguous(memory_format=torch.channels_last) if args.channels_last else xb

    def prepare(model: torch.nn.Module) -> torch.nn.Module:
        model = model.eval()
        return model.to(memory_format=torch.channels_last) if args.channels_last else model

    def run(model, xin):
        def f():
            with torch.inference_mode():
                model(xin)
        return f

    results = {}
    for name in args.models.split(","):
        base = getattr(torchvision.models, name)().eval()
        dense_flops = flops_of(base, x)

        def pruned_at(amount: float) -> torch.nn.Module:
            model = copy.deepcopy(base)
            pruners.prune(model, criterion=args.criterion, granularity="structured",
                          amount=amount, scope=args.scope, example_inputs=x)
            return model

        pruned, flops, amount = bisect(pruned_at, x, 0.5 * dense_flops, 0.0, 0.9, decreasing=True)
        variants = {"dense": prepare(base), "pruned": prepare(pruned)}
        ref = None
        if args.reference and name == "mobilenet_v2":
            ref = bisect(lambda w: torchvision.models.mobilenet_v2(width_mult=w), x,
                         0.5 * dense_flops, 0.3, 1.0, decreasing=False, steps=6)
            variants["narrow"] = prepare(ref[0])

        reduction = dense_flops / flops
        print(f"{name} ({args.scope}{layout}): channels removed {amount:.3f}, FLOPs per image "
              f"{dense_flops / 1e9:.3f} G -> {flops / 1e9:.3f} G (x{reduction:.2f} fewer)")
        for batch in batch_sizes:
            xb = inputs(batch)
            ms = _common.interleaved_ms({k: run(m, xb) for k, m in variants.items()},
                                        repeats=repeats if batch == 1 else batch_repeats, warmup=2)
            speedup = ms["dense"] / ms["pruned"]
            results[(name, batch)] = speedup / reduction
            print(f"  batch {batch:>3}: dense {ms['dense']:.2f} ms, pruned {ms['pruned']:.2f} ms "
                  f"(x{speedup:.2f} faster); speed-up / FLOPs reduction = {speedup / reduction:.3f}")
            if ref is not None:
                r_red, r_speed = dense_flops / ref[1], ms["dense"] / ms["narrow"]
                print(f"    reference: mobilenet_v2(width_mult={ref[2]:.3f}) {ref[1] / 1e9:.3f} G "
                      f"(x{r_red:.2f} fewer), {ms['narrow']:.2f} ms (x{r_speed:.2f} faster); "
                      f"speed-up / FLOPs reduction = {r_speed / r_red:.3f}")
    print(f"# side by side ({args.scope}{layout}): " + "; ".join(
        f"{n}: " + ", ".join(f"batch {b} {results[(n, b)]:.3f}" for b in batch_sizes)
        for n in dict.fromkeys(n for n, _ in results)))
    for (name, batch), value in results.items():
        _common.verdict(f"latency_vs_flops.{name}.batch{batch}", value, TARGET, higher_is_better=True)


if __name__ == "__main__":
    main()
