"""``pruners`` is plain PyTorch: importing it must not import Ray."""

from __future__ import annotations

import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_import_pruners_does_not_import_ray():
    code = (
        "import sys, pruners, pruners.criteria, pruners.prune, pruners.schedules, pruners.thresholds\n"
        "bad = sorted(m for m in sys.modules if m == 'ray' or m.startswith('ray.'))\n"
        "print(','.join(bad))\n"
        "sys.exit(1 if bad else 0)\n"
    )
    env = {**os.environ, "PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, f"ray modules imported: {proc.stdout.strip()} {proc.stderr[-2000:]}"
