"""Cost of training with unstructured masks: masked step time / dense step time (target <= 1.10).

A training step (forward, backward, SGD step) of torchvision's ResNet-18 on CIFAR-sized
inputs, dense versus masked at 80 % sparsity through ``torch.nn.utils.prune`` (what
``pruners.prune(..., granularity="unstructured")`` installs: a forward pre-hook computing
``weight = weight_orig * weight_mask``). Also reported: the straight-through variant the
``dynamic`` schedule uses while masks may still change. Dense and masked steps alternate,
so load drift on a shared machine affects both alike.

    python bench/masked_step.py [--threads 2] [--repeats 20] [--batch 32]
"""

from __future__ import annotations

import copy

import _common
import torch
import torch.nn.functional as F
import torchvision

import pruners
from pruners._dynamic import StraightThrough

TARGET = 1.10


def main() -> None:
    p = _common.parser(__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--side", type=int, default=32)
    p.add_argument("--model", default="resnet18")
    args = p.parse_args()
    _common.setup(args.threads)
    repeats = args.repeats or (2 if args.smoke_test else 20)
    batch, side = (4, 16) if args.smoke_test else (args.batch, args.side)

    dense = getattr(torchvision.models, args.model)(num_classes=10)
    masked = copy.deepcopy(dense)
    x = torch.randn(batch, 3, side, side)
    y = torch.randint(0, 10, (batch,))
    pruners.prune(masked, criterion="magnitude", granularity="unstructured", amount=0.8,
                  example_inputs=x[:2])
    straight = copy.deepcopy(masked)
    StraightThrough().attach(straight)

    def stepper(model: torch.nn.Module):
        model.train()
        opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)

        def step() -> None:
            opt.zero_grad(set_to_none=True)
            F.cross_entropy(model(x), y).backward()
            opt.step()

        return step

    ms = _common.interleaved_ms(
        {"dense": stepper(dense), "masked": stepper(masked), "straight": stepper(straight)},
        repeats=repeats,
    )
    ratio = ms["masked"] / ms["dense"]
    print(f"{args.model}, batch {batch}x3x{side}x{side}, 80 % unstructured sparsity, {repeats} steps each")
    print(f"  dense step                       {ms['dense']:8.1f} ms  (baseline)")
    print(f"  masked step (torch prune hooks)  {ms['masked']:8.1f} ms  ratio {ratio:.3f}")
    print(f"  masked + straight-through        {ms['straight']:8.1f} ms  ratio {ms['straight'] / ms['dense']:.3f}")
    _common.verdict("masked_step.ratio", ratio, TARGET, higher_is_better=False)


if __name__ == "__main__":
    main()
