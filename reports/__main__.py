"""Command line: ``python -m reports {build,show,plot,compare,pick} ...``.

DIR is an experiment directory (read from its ledger and computed in memory, so
``show`` is current even while a search runs) or a report directory (its
Parquet files are read).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import NoReturn

from reports.layout import REPORT_DIR, RESULTS_DIR, Layout

EPILOG = f"""examples:
  python -m reports build {RESULTS_DIR}/digits
  python -m reports show {RESULTS_DIR}/digits
  python -m reports plot {RESULTS_DIR}/digits/report --out /tmp/plots
  python -m reports compare {RESULTS_DIR}/run_a {RESULTS_DIR}/run_b
  python -m reports pick {RESULTS_DIR}/digits --max-drop 0.5
  python -m reports pick {RESULTS_DIR}/digits --max-size 20KiB
"""


class _Parser(argparse.ArgumentParser):
    """argparse whose usage errors are one line (it prints the usage block first)."""

    def error(self, message: str) -> NoReturn:  # noqa: D102 - argparse API
        self.exit(2, f"{self.prog}: error: {message}; see {self.prog} --help\n")


def _parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog="python -m reports",
        description="Pareto-front reports of Prunefront experiments (no Ray needed).",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    b = sub.add_parser("build", help="(re)write DIR/report from the experiment's storage")
    b.add_argument("dir", metavar="DIR", help="experiment directory")
    b.add_argument("--out", help="report directory (default: DIR/report)")
    b.add_argument("--no-plots", action="store_true", help="write the Parquet files only")
    b.add_argument("--if-newer", action="store_true",
                   help="keep a report already built from a longer ledger (live refreshes use it)")
    s = sub.add_parser("show", help="print the fronts as tables")
    s.add_argument("dir", metavar="DIR", help="experiment or report directory")
    pl = sub.add_parser("plot", help="write fronts.png and fronts.html")
    pl.add_argument("dir", metavar="DIR", help="experiment or report directory")
    pl.add_argument("--out", help="output directory (default: the report directory)")
    c = sub.add_parser("compare", help="compare two experiments' fronts")
    c.add_argument("dir_a", metavar="DIR_A", help="experiment or report directory A")
    c.add_argument("dir_b", metavar="DIR_B", help="experiment or report directory B")
    k = sub.add_parser("pick", help="the best trial under a budget: its config, file and how to load it")
    k.add_argument("dir", metavar="DIR", help="experiment directory (or its report/)")
    k.add_argument("--max-drop", type=float, metavar="POINTS",
                   help="largest drop of validation accuracy below the dense model, in points (0.5 = 0.5 %%)")
    k.add_argument("--max-flops", metavar="N", help="FLOPs budget, e.g. 2.5M")
    k.add_argument("--max-flops-sparse", metavar="N", help="sparsity-aware FLOPs budget")
    k.add_argument("--max-size", metavar="BYTES", help="file size budget, e.g. 50KiB or 2MB")
    k.add_argument("--max-latency", metavar="MS", help="latency budget in ms (as measured in the trials)")
    k.add_argument("--by", default="flops", choices=["flops", "flops_sparse", "size_bytes", "latency_ms", "params"],
                   help="with only --max-drop: the cost to minimise (default flops)")
    return p


def _pick(args: argparse.Namespace) -> str:
    from reports.build import open_report
    from reports.pick import format_choice, pick
    from reports.units import parse_quantity

    if args.max_drop is not None and not args.max_drop >= 0:
        raise ValueError(f"--max-drop: {args.max_drop:g} must be >= 0 (points of validation accuracy)")
    limits = {"flops": args.max_flops, "flops_sparse": args.max_flops_sparse, "size_bytes": args.max_size,
              "latency_ms": args.max_latency}
    flags = {"flops": "--max-flops", "flops_sparse": "--max-flops-sparse", "size_bytes": "--max-size",
             "latency_ms": "--max-latency"}
    max_costs = {c: parse_quantity(v, flags[c]) for c, v in limits.items() if v is not None}
    path = Path(args.dir)
    experiment = path.parent if path.name == REPORT_DIR and not Layout(path).experiment.exists() else path
    frames, meta, _ = open_report(path)
    choice = pick(frames["final"], experiment, max_drop=args.max_drop, max_costs=max_costs, by=args.by)
    costs = list(dict.fromkeys([args.by, *max_costs, "flops", "size_bytes"]))
    return format_choice(choice, costs)


def _default_report_dir(path: Path) -> Path:
    from reports.ledger import is_experiment_dir

    return Layout(path).report if is_experiment_dir(path) else path


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; returns the exit status."""
    args = _parser().parse_args(argv)
    try:
        if args.command == "build":
            from reports.build import build_report

            written = build_report(args.dir, args.out, plots=not args.no_plots, if_newer=args.if_newer)
            for path in written.values():
                print(path)
        elif args.command == "show":
            from reports.build import open_report
            from reports.text import format_show

            frames, meta, title = open_report(args.dir)
            print(format_show(frames, meta, title))
        elif args.command == "plot":
            from reports import plots
            from reports.build import open_report
            from reports.io import write_atomic

            frames, meta, title = open_report(args.dir)
            out = Path(args.out) if args.out else _default_report_dir(Path(args.dir))
            costs = meta.get("report", {}).get("front_costs") or None
            png = plots.png_bytes(frames["fronts"], title, costs=costs)
            page = plots.html_page(
                frames["fronts"], meta.get("report", {}).get("fronts", {}), meta, title,
                methods=frames.get("methods"),
            ).encode()
            for name, data in (("fronts.png", png), ("fronts.html", page)):
                print(write_atomic(out / name, lambda f, data=data: f.write(data)))
        elif args.command == "compare":
            from reports.build import open_report
            from reports.compare import compare_fronts
            from reports.text import format_compare

            frames_a, meta_a, _ = open_report(args.dir_a)
            frames_b, meta_b, _ = open_report(args.dir_b)
            comparisons = compare_fronts(
                frames_a["fronts"],
                frames_b["fronts"],
                meta_a.get("report", {}).get("fronts", {}),
                meta_b.get("report", {}).get("fronts", {}),
            )
            print(format_compare(comparisons, args.dir_a, args.dir_b))
        elif args.command == "pick":
            print(_pick(args))
    except BrokenPipeError:
        # Output piped into `head` and closed early: stop quietly, like other tools.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    except Exception as exc:  # noqa: BLE001 - every failure on bad input is one line, exit 2
        print(f"python -m reports {args.command}: error: {_one_line(exc)}", file=sys.stderr)
        return 2
    return 0


def _one_line(exc: BaseException) -> str:
    """The error as one line. The reports' own errors (ValueError, OSError) name the file, line
    and key already; anything else is unexpected data in a file, named by its type."""
    if isinstance(exc, OSError) and exc.filename is not None:
        text = f"{exc.filename}: {exc.strerror or exc}"
    elif isinstance(exc, (ValueError, OSError)):
        text = str(exc)
    elif isinstance(exc, KeyError):
        text = f"missing key {exc.args[0]!r} in the data read"
    else:
        text = f"{exc.__class__.__name__}: {exc}"
    return " ".join(text.split()) or exc.__class__.__name__


if __name__ == "__main__":
    sys.exit(main())
