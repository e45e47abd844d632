"""bench/quantize_breadth.py --smoke-test: both variants quantize, and the table's numbers make sense."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow  # about a minute on 2 cores: four ONNX exports and two torch.export files
def test_quantize_breadth_smoke() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    proc = subprocess.run([sys.executable, "bench/quantize_breadth.py", "--smoke-test"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)
    out = proc.stdout
    assert proc.returncode == 0, (out + proc.stderr)[-4000:]
    header = next(i for i, ln in enumerate(out.splitlines()) if ln.startswith("model "))
    cols = out.splitlines()[header].split()
    rows = {tuple(ln.split()[:2]): ln.split() for ln in out.splitlines()[header + 1:]
            if ln.startswith("resnet_tiny ")}
    assert set(rows) == {("resnet_tiny", "dense"), ("resnet_tiny", "pruned")}, out
    for key, row in rows.items():
        assert "FAIL" not in row, out
        flops, top1, cos, _, int8_onnx, int8_pt2 = (float(v) for v in row[2:8])
        assert 0 < int8_onnx < 0.5 and 0 < int8_pt2 < 0.5, row  # int8 weights: about a quarter of float32
        assert 0 <= top1 <= 1 and cos > 0.9, row
        for speedup in row[8:12]:
            assert speedup.endswith("x") and float(speedup[:-1]) > 0, row
        left, total = row[-2].split("/")
        assert float(row[-1]) > 0.999, row  # the float ONNX export computes what the eager model does
        assert int(left) == 0 and int(total) > 0, row  # every conv / linear of a ResNet reads int8 weights
        assert (flops == 1.0) if key[1] == "dense" else (0.35 < flops < 0.65), row
    assert cols[:3] == ["model", "variant", "FLOPs"]
    assert "RESULT quantize_breadth.quantized = 2/2" in out and "MEETS target" in out, out
