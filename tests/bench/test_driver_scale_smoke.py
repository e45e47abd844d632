"""bench/driver_scale.py runs end to end in its --smoke-test form: the real MO-ASHA and the
real ledger, monitor and report callbacks take every stand-in result, and the reports CLI
builds, shows and picks from the experiment directory the run wrote."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_driver_scale_smoke() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    proc = subprocess.run([sys.executable, "bench/driver_scale.py", "--smoke-test"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-4000:]
    for name in ("scheduler", "ledger", "monitor", "report", "total", "MO-ASHA alone", "floor: Ray FIFO"):
        assert re.search(rf"^{re.escape(name)}\s+\d+\.\d+\s+\d+\.\d+", proc.stdout, re.M), (name, out[-4000:])
    cli = re.findall(r"^reports CLI s: build (\S+), show (\S+), pick (\S+)$", proc.stdout, re.M)
    assert cli and all(v != "nan" for v in cli[-1][:2]), out[-4000:]  # build and show worked
    assert "RESULT driver_scale.moasha_alone_median_ms_at_" in proc.stdout
