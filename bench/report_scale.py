"""Reports at thousands of trials: `reports build` (with and without plots), `show`, `pick`.

Synthetic experiment directories (``bench/_synthetic.py``: the ledger format a search writes)
of 200, 2,000 and 10,000 trials x 10 epochs; each command runs as a child process, as a user
runs it, first with this checkout's ``reports`` and then with a baseline revision's
(``--baseline REV``, extracted with ``git archive``), in the same run. ``show`` and ``pick``
run on the experiment directory once its report is built (they read its Parquet files) and,
as ``show*`` / ``pick*``, on a copy without a report (everything computed from the ledger).

    python bench/report_scale.py --baseline 769b24d      # ~ minutes; the baseline is slow
    python bench/report_scale.py --sizes 10000 --no-baseline
    python bench/report_scale.py --smoke-test
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

from _synthetic import write_experiment  # noqa: E402

TARGETS = {"build --no-plots": 15.0, "show": 2.0, "pick": 2.0}


def _run(src: Path, args: list[str], timeout: float) -> float | None:
    """Seconds ``python -m reports ARGS`` took with the ``reports`` package under ``src``."""
    env = {**os.environ, "PYTHONPATH": str(src)}
    start = time.perf_counter()
    try:
        proc = subprocess.run([sys.executable, "-m", "reports", *args], cwd=src, env=env,
                              capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return None
    if proc.returncode != 0:
        raise SystemExit(f"error: reports {' '.join(args)} failed: {proc.stderr.strip()[-500:]}")
    return time.perf_counter() - start


def _measure(src: Path, exp: Path, timeout: float) -> dict[str, float | None]:
    bare = exp.with_name(exp.name + "-bare")  # no report: show / pick compute from the ledger
    shutil.rmtree(exp / "report", ignore_errors=True)
    out: dict[str, float | None] = {}
    out["build --no-plots"] = _run(src, ["build", str(exp), "--no-plots"], timeout)
    out["build"] = _run(src, ["build", str(exp)], timeout)
    out["show"] = _run(src, ["show", str(exp)], timeout)
    out["pick"] = _run(src, ["pick", str(exp), "--max-drop", "1"], timeout)
    if not bare.exists():
        shutil.copytree(exp, bare, ignore=shutil.ignore_patterns("report"))
    out["show*"] = _run(src, ["show", str(bare)], timeout)
    out["pick*"] = _run(src, ["pick", str(bare), "--max-drop", "1"], timeout)
    html = exp / "report" / "fronts.html"
    out["fronts.html MB"] = html.stat().st_size / 1e6 if html.is_file() else None
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", default="200,2000,10000", help="trials per experiment (10 epochs each)")
    p.add_argument("--baseline", default="769b24d", help="git revision to compare with")
    p.add_argument("--no-baseline", action="store_true")
    p.add_argument("--timeout", type=float, default=900.0, help="seconds per command")
    p.add_argument("--smoke-test", action="store_true", help="50 trials x 3 epochs, no baseline")
    args = p.parse_args()
    sizes = [50] if args.smoke_test else [int(s) for s in args.sizes.split(",")]
    epochs = 3 if args.smoke_test else 10
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"# {os.cpu_count()} cores | load avg {load:.2f} | python {sys.version.split()[0]}")
    with tempfile.TemporaryDirectory(prefix="report-scale-") as tmp:
        srcs = {"now": ROOT}
        if not (args.no_baseline or args.smoke_test):
            base = Path(tmp) / "baseline"
            base.mkdir()
            archive = subprocess.run(["git", "archive", args.baseline, "reports"], cwd=ROOT, capture_output=True, check=True)
            subprocess.run(["tar", "-x", "-C", str(base)], input=archive.stdout, check=True)
            srcs["baseline"] = base
        rows = []
        for n in sizes:
            exp = write_experiment(Path(tmp) / f"e{n}", n, epochs)
            for name, src in srcs.items():
                res = _measure(src, exp, args.timeout)
                rows.append((n, name, res))
                cells = "  ".join(f"{k} {'>' + format(args.timeout, '.0f') if v is None else format(v, '.2f')}"
                                  for k, v in res.items())
                print(f"{n:>6} trials  {name:<8}  {cells}", flush=True)
    big = max(sizes)
    for n, name, res in rows:
        if n != big or name != "now":
            continue
        for key, target in TARGETS.items():
            v = res[key]
            ok = v is not None and v <= target
            print(f"RESULT {key.replace(' ', '_')}_s_{n}x{epochs} = {'timeout' if v is None else format(v, '.2f')} "
                  f"(target <= {target:g}): {'MEETS' if ok else 'MISSES'} target")


if __name__ == "__main__":
    main()
