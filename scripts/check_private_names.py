"""Refuse third-party private names outside edgereason/compat/ (run by `make lint` and the fast tests).

A private name is one that starts with a single underscore. Flagged outside compat/:
- importing one from another package (`from llama_cpp import _internals`, `import x._y`);
- reading or writing an attribute `obj._name` (or `getattr(obj, "_name")`) that edgereason
  itself never defines (so it belongs to a library object, the standard library's included).
  `self._x`/`cls._x` and our own private attributes pass.
    python scripts/check_private_names.py [PACKAGE_DIR]     (exit 1 and one line per use when any)
"""

from __future__ import annotations

import ast
import sys
from collections.abc import Mapping
from pathlib import Path

ALLOWED_STDLIB = {"_exit", "_getframe", "_replace", "_asdict", "_fields", "_make", "_thread"}


def _private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__")


def _defined_names(trees: Mapping[Path, ast.AST]) -> set[str]:
    """Private names edgereason defines: functions, classes, assignments, attributes it assigns."""
    names: set[str] = set()
    for tree in trees.values():
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                names.add(node.name)
            elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
                names.add(node.id)
            elif isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store):
                names.add(node.attr)
            elif isinstance(node, ast.arg):
                names.add(node.arg)
            elif isinstance(node, ast.keyword) and node.arg:
                names.add(node.arg)  # dataclass(...)/pydantic fields built by keyword
    return {n for n in names if _private(n)}


def check(package: Path) -> list[str]:
    files = sorted(package.rglob("*.py"))
    trees = {f: ast.parse(f.read_text(encoding="utf-8"), str(f)) for f in files}
    ours = _defined_names(trees)
    problems: list[str] = []
    for f, tree in trees.items():
        if "compat" in f.relative_to(package).parts:
            continue
        for node in ast.walk(tree):
            where = f"{f}:{getattr(node, 'lineno', 0)}"
            if isinstance(node, ast.ImportFrom) and node.module and not node.module.startswith("edgereason") and node.level == 0:
                parts = node.module.split(".")
                if any(_private(p) for p in parts) and parts[-1] not in ALLOWED_STDLIB:
                    problems.append(f"{where}: from {node.module} import ... (a private module)")
                problems += [f"{where}: from {node.module} import {a.name}" for a in node.names
                             if _private(a.name) and a.name not in ALLOWED_STDLIB]
            elif isinstance(node, ast.Import):
                problems += [f"{where}: import {a.name}" for a in node.names
                             if not a.name.startswith("edgereason") and any(_private(p) for p in a.name.split("."))
                             and a.name not in ALLOWED_STDLIB]
            elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name) \
                    and node.func.id in ("getattr", "setattr", "hasattr", "delattr") and len(node.args) >= 2 \
                    and isinstance(node.args[1], ast.Constant) and isinstance(node.args[1].value, str) \
                    and _private(node.args[1].value) and node.args[1].value not in ours:
                problems.append(f"{where}: {node.func.id}(..., {node.args[1].value!r}) (a library's private attribute)")
            elif isinstance(node, ast.Attribute) and _private(node.attr) and node.attr not in ours \
                    and node.attr not in ALLOWED_STDLIB:
                problems.append(f"{where}: .{node.attr} (a library's private attribute)")
    return problems


def main() -> int:
    package = Path(sys.argv[1] if len(sys.argv) > 1 else Path(__file__).resolve().parent.parent / "edgereason")
    problems = check(package)
    for p in problems:
        print(p)
    if problems:
        print(f"{len(problems)} use(s) of third-party private names outside edgereason/compat/: wrap them there")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
