"""Does unstructured sparsity shrink the file users ship? (80 % sparse / dense file <= 0.35)

ResNet-18 (torchvision, random weights, 224x224 input) pruned with global magnitude masks at
50 / 80 / 95 % of its Conv / Linear weights, saved five ways; each size is divided by the
dense model's size in the same encoding's dense form (a plain ``torch.export`` file):

* ``export``: ``torch.export.save`` as PyTorch writes it (stored, uncompressed entries);
* ``pruners.save``: the same program with deflated entries: what Prunefront ships and
  reports as ``size_bytes`` (loads with plain ``torch.export.load``, no pickle);
* ``sparse_csr``: ``torch.save`` of a state dict whose weights are ``torch.sparse_csr``
  tensors (rows = output channels), the rest dense: loads with ``torch.load``, but is a
  state dict, not a runnable program;
* ``bitmask``: a state dict of packed bit masks (1 bit per weight) plus the nonzero values:
  needs code of ours to decode (not shipped: shown as the compact bound);
* ``bitmask+deflate``: that state dict in a deflated zip.

    python bench/file_size.py [--model resnet18] [--smoke-test]
"""

from __future__ import annotations

import io
import os
import tempfile
import zipfile

import _common
import numpy as np
import torch
import torchvision
from torch.nn.utils import prune as torch_prune

import pruners
from pruners.io import make_permanent_copy

TARGET = 0.35  # pruners.save at 80 % sparsity / dense file
SPARSITIES = (0.5, 0.8, 0.95)


def _nbytes(obj) -> int:
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getbuffer().nbytes


def _deflated(obj) -> int:
    raw = io.BytesIO()
    torch.save(obj, raw)
    out = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(raw.getvalue())) as src, zipfile.ZipFile(out, "w") as dst:
        for info in src.infolist():
            dst.writestr(zipfile.ZipInfo(info.filename), src.read(info), compress_type=zipfile.ZIP_DEFLATED)
    return out.getbuffer().nbytes


def encodings(model: torch.nn.Module, x: torch.Tensor, tmp: str) -> dict[str, int]:
    """Bytes of ``model`` in each encoding."""
    clone = make_permanent_copy(model).eval()
    sd = {k: v.detach() for k, v in clone.state_dict().items()}
    out = {}
    program = torch.export.export(clone, (torch.cat([x, x]),))
    plain = os.path.join(tmp, "plain.pt2")
    torch.export.save(program, plain)
    out["export"] = os.path.getsize(plain)
    shipped = os.path.join(tmp, "shipped.pt2")
    pruners.save(clone, shipped, x)
    out["pruners.save"] = os.path.getsize(shipped)
    csr, bits = {}, {}
    for k, v in sd.items():
        if v.is_floating_point() and v.dim() >= 2:
            csr[k] = v.reshape(v.shape[0], -1).to_sparse_csr()
            mask = v != 0
            bits[k] = {"shape": tuple(v.shape), "mask": torch.from_numpy(
                np.packbits(mask.flatten().numpy())), "values": v[mask]}
        else:
            csr[k] = bits[k] = v
    out["sparse_csr"] = _nbytes(csr)
    out["bitmask"] = _nbytes(bits)
    out["bitmask+deflate"] = _deflated(bits)
    return out


def main() -> None:
    p = _common.parser(__doc__.splitlines()[0])
    p.add_argument("--model", default="resnet18")
    args = p.parse_args()
    _common.setup(args.threads)
    side = 32 if args.smoke_test else 224
    name = "resnet18" if not args.smoke_test else "mobilenet_v3_small"
    name = args.model if not args.smoke_test else name
    torch.manual_seed(0)
    x = torch.randn(1, 3, side, side)
    base = getattr(torchvision.models, name)(weights=None).eval()
    with tempfile.TemporaryDirectory() as tmp:
        dense = encodings(base, x, tmp)
        print(f"# {name}: dense files {', '.join(f'{k} {v / 1e6:.2f} MB' for k, v in dense.items())}")
        print(f"{'sparsity':>9} " + " ".join(f"{k:>16}" for k in dense))
        ratios = {}
        for s in SPARSITIES:
            model = getattr(torchvision.models, name)(weights=None).eval()
            model.load_state_dict(base.state_dict())
            layers = [(m, "weight") for m in model.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))]
            torch_prune.global_unstructured(layers, pruning_method=torch_prune.L1Unstructured, amount=s)
            sizes = encodings(model, x, tmp)
            ratios[s] = {k: sizes[k] / dense["export"] for k in sizes}
            print(f"{s:>9.0%} " + " ".join(f"{ratios[s][k]:>16.3f}" for k in sizes))
    print("# each: file size / the dense model's plain torch.export file")
    _common.verdict("file_size.pruners_save_at_80pct_over_dense", ratios[0.8]["pruners.save"], TARGET,
                    higher_is_better=False)


if __name__ == "__main__":
    main()
