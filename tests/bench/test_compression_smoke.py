"""bench/compression_vs_baselines.py runs end to end in its --smoke-test form: the dense model,
its int8 file, Torch-Pruning + int8, a 2-trial search over quantize on an embedded Ray, the
pick among its trials and dense-int8, every shipped file evaluated and timed (tiny data; the
numbers mean nothing, the code paths are the real ones)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_compression_vs_baselines(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    proc = subprocess.run([sys.executable, "bench/compression_vs_baselines.py", "--smoke-test", "--out",
                           str(tmp_path / "compression"), "--plot", str(tmp_path / "c.png")],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-4000:]
    for name in ("dense float32 (.pt2, torch)", "dense int8 (PTQ)", "Torch-Pruning group L1 2x + int8",
                 "Prunefront pick"):
        assert name in proc.stdout, (name, out[-4000:])
    results = [line for line in proc.stdout.splitlines() if line.startswith("RESULT compression.")]
    assert len(results) == 4, out[-4000:]
    assert (tmp_path / "c.png").stat().st_size > 10_000
    assert (tmp_path / "compression-smoke" / "files" / "dense-int8.onnx").is_file()
