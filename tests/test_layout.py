"""The layout's rules, checked: reports never need the orchestrator, no import cycle inside
orchestrator/, modules stay small enough to read, the result contract has one home."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("orchestrator", "pruners", "reports")
MAX_LINES = 520  # "no module over ~500 lines"


def _modules(package: str) -> dict[str, Path]:
    out = {}
    for path in sorted((ROOT / package).rglob("*.py")):
        rel = path.relative_to(ROOT).with_suffix("")
        parts = list(rel.parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def test_reports_run_without_the_orchestrator():
    """Every reports module (the CLI included) imports, and builds a report, with no
    orchestrator module loaded: reports read results through reports.contract alone."""
    names = [m for m in _modules("reports") if m != "reports.callback"]  # the Ray callback is the orchestrator's hook
    code = (
        "import importlib, sys\n"
        f"for name in {names!r}:\n"
        "    importlib.import_module(name)\n"
        "bad = sorted(m for m in sys.modules if m == 'orchestrator' or m.startswith('orchestrator.'))\n"
        "print(','.join(bad)); sys.exit(1 if bad else 0)\n"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, f"orchestrator modules imported: {proc.stdout.strip()} {proc.stderr[-2000:]}"


def _imports(path: Path, known: set[str]) -> set[str]:
    """Project modules ``path`` imports anywhere (module level or inside functions)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        for n in names:
            while n and n not in known:
                n = n.rpartition(".")[0]
            if n:
                found.add(n)
    return found


def test_no_module_is_too_long_to_read():
    long = {str(p.relative_to(ROOT)): n for pkg in PACKAGES for p in _modules(pkg).values()
            if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert not long, f"split these modules by job: {long}"


def test_the_result_contract_lives_in_one_module():
    """Metric keys, the kept-epoch rule and the ledger reader are defined once
    (reports/contract.py); other modules import them."""
    for pkg in PACKAGES:
        for name, path in _modules(pkg).items():
            if name == "reports.contract":
                continue
            tree = ast.parse(path.read_text())
            for node in ast.walk(tree):
                if isinstance(node, ast.Assign):
                    targets = [t.id for t in node.targets if isinstance(t, ast.Name)]
                    assert not {"METRIC_KEYS", "SPARSITY_ATOL"} & set(targets), (name, targets)
                if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
                    assert node.name not in {"KeptEpoch", "kept_epoch", "read_events", "trial_states",
                                             "BestModelRule", "_chosen_epoch"}, (name, node.name)


#: Files and folders of an experiment directory (reports/layout.py owns their names).
LAYOUT_NAMES = ("experiment.json", "results.jsonl", "model.pt2", "row.json", "state_dict.pt", "metrics.json",
                "prunefront-results")
SOURCE_DIRS = PACKAGES + ("bench", "cluster")


def _string_literals(path: Path) -> list[tuple[int, str]]:
    """Every string constant of a module except docstrings (f-string parts included)."""
    tree = ast.parse(path.read_text())
    docstrings = {id(node.body[0].value) for node in ast.walk(tree)
                  if isinstance(node, (ast.Module, ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))
                  and node.body and isinstance(node.body[0], ast.Expr)
                  and isinstance(node.body[0].value, ast.Constant) and isinstance(node.body[0].value.value, str)}
    return [(node.lineno, node.value) for node in ast.walk(tree)
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings]


def _modules_spelling(names: tuple[str, ...], roots: tuple[str, ...] = SOURCE_DIRS) -> dict[str, set[str]]:
    spelled: dict[str, set[str]] = {n: set() for n in names}
    for top in roots:
        for path in sorted((ROOT / top).rglob("*.py")):
            for line, text in _string_literals(path):
                for n in names:
                    if n in text:
                        spelled[n].add(f"{path.relative_to(ROOT)}:{line}")
    return spelled


def test_only_the_layout_module_spells_experiment_file_names():
    """experiment.json, results.jsonl, model.pt2 (and the rest of design.md section 4) are
    string literals in reports/layout.py only; everything else imports the names."""
    spelled = _modules_spelling(LAYOUT_NAMES)
    elsewhere = {n: sorted(w for w in where if not w.startswith("reports/layout.py:")) for n, where in spelled.items()}
    assert all(spelled[n] for n in LAYOUT_NAMES), "reports/layout.py must name every file"
    assert not any(elsewhere.values()), f"spell these through reports.layout: { {n: w for n, w in elsewhere.items() if w} }"


def test_the_file_name_check_sees_a_literal(tmp_path, monkeypatch):
    """The check above finds a literal outside docstrings (so it can fail)."""
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "m.py").write_text('"""Writes experiment.json."""\nPATH = "out/" + "results.jsonl"\n')
    monkeypatch.setattr(sys.modules[__name__], "ROOT", tmp_path)
    spelled = _modules_spelling(("experiment.json", "results.jsonl"), roots=("pkg",))
    assert spelled == {"experiment.json": set(), "results.jsonl": {"pkg/m.py:2"}}


MAX_FUNCTION_LINES = 80
#: Functions allowed past the limit, each with why. make_plan keeps its numbered phases.
LONG_FUNCTIONS_ALLOWED = {"orchestrator.plan.make_plan"}


def _long_functions(package: str) -> dict[str, int]:
    out = {}
    for name, path in _modules(package).items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                length = node.end_lineno - node.lineno + 1
                if length > MAX_FUNCTION_LINES:
                    out[f"{name}.{node.name}"] = length
    return out


def test_no_function_in_the_orchestrator_or_reports_is_too_long_to_read():
    long = {f: n for pkg in ("orchestrator", "reports") for f, n in _long_functions(pkg).items()
            if f not in LONG_FUNCTIONS_ALLOWED}
    assert not long, f"split these into named steps (<= {MAX_FUNCTION_LINES} lines): {long}"


def test_no_import_cycle_anywhere():
    """No cycle among all project modules (pruners, orchestrator, reports together)."""
    mods = {m: p for pkg in PACKAGES for m, p in _modules(pkg).items()}
    known = set(mods)
    graph = {m: _imports(p, known) - {m, *PACKAGES} for m, p in mods.items()}
    for pkg in PACKAGES:  # a package's __init__ is where its submodules' imports start, not a cycle
        graph.pop(pkg, None)
    state: dict[str, int] = {}
    stack: list[str] = []
    cycles: list[str] = []

    def visit(m: str) -> None:
        state[m] = 1
        stack.append(m)
        for n in sorted(graph.get(m, ())):
            if state.get(n) == 1:
                cycles.append(" -> ".join(stack[stack.index(n):] + [n]))
            elif n not in state:
                visit(n)
        stack.pop()
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m)
    assert not cycles, "import cycles: " + "; ".join(cycles)
