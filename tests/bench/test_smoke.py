"""Each evidence benchmark runs end to end in its --smoke-test form and prints its RESULT line
(tiny data; the numbers mean nothing, the code paths are the real ones)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _run(script: str, *args: str, tmp: Path) -> str:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    proc = subprocess.run([sys.executable, f"bench/{script}", "--smoke-test", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=900)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-4000:]
    assert any(line.startswith("RESULT ") for line in proc.stdout.splitlines()), out[-4000:]
    return proc.stdout


def test_prune_speed(tmp_path: Path) -> None:
    """Its phase timers patch the helpers prune calls; a rename in pruners made it crash."""
    out = _run("prune_speed.py", tmp=tmp_path)
    assert "scoring + structural removal" in out


def test_torchvision_sweep(tmp_path: Path) -> None:
    """Every smoke model prunes in its capped child (a helper the sweep times was renamed
    once, and every model then failed while the script exited 0)."""
    out = _run("torchvision_sweep.py", tmp=tmp_path)
    assert "MEETS target" in out, out


def test_file_size(tmp_path: Path) -> None:
    _run("file_size.py", tmp=tmp_path)


def test_shipped_latency(tmp_path: Path) -> None:
    out = _run("shipped_latency.py", tmp=tmp_path)
    assert "structured 2x FLOPs" in out


@pytest.mark.slow
def test_quality_vs_baseline(tmp_path: Path) -> None:
    out = _run("quality_vs_baseline.py", "--out", str(tmp_path / "quality"), "--plot", str(tmp_path / "q.png"),
               tmp=tmp_path)
    assert "prunefront" in out and (tmp_path / "q.png").stat().st_size > 10_000


@pytest.mark.slow
def test_search_efficiency(tmp_path: Path) -> None:
    out = _run("search_efficiency.py", "--out", str(tmp_path / "grid"), "--plot", str(tmp_path / "e.png"),
               tmp=tmp_path)
    assert "MO-ASHA" in out and (tmp_path / "e.png").stat().st_size > 10_000


def test_replay_large_space(tmp_path: Path) -> None:
    """The simulated cluster (issue 20) end to end: the recorded grid's peers and the large
    space on both worker counts; Syne Tune's rows, or its skip line where the extra is absent."""
    out = _run("replay.py", tmp=tmp_path)
    assert "## 8 workers" in out and "## 32 workers" in out, out
    assert "random, no stopping" in out and "ASHA (Ray)" in out
    assert "Syne MOASHA fixed" in out or "# skipped: Syne Tune's MOASHA" in out, out
