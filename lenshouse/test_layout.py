"""The package's layout: no module imports, directly or through others, a
module that imports it back (function-level imports count too)."""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).parent


def _imports() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {}
    for f in ROOT.rglob("*.py"):
        if f.name.startswith("test_") or f.name == "conftest.py":
            continue
        parts = f.relative_to(ROOT.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        graph[name] = {
            n.module
            for n in ast.walk(ast.parse(f.read_text()))
            if isinstance(n, ast.ImportFrom) and n.module and n.module.startswith("lenshouse")
        }
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph[v] & graph.keys():
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while (w := stack.pop()) != v:
                comp.append(w)
            if comp:
                out.append(sorted([v, *comp]))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_the_checker_finds_a_cycle() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert _cycles(graph) == [["a", "b", "c"]]


def test_no_module_imports_itself_back() -> None:
    graph = _imports()
    assert len(graph) > 100, "the package's modules were found"
    assert _cycles(graph) == []


def test_http_status_codes_are_the_api_layers() -> None:
    """Outside ``lenshouse/api`` a refusal names its kind (``Invalid``,
    ``TooLarge``, …), never an HTTP status; the API maps kinds to codes."""
    from lenshouse.api.requests import STATUS, HttpError, status_of
    from lenshouse.points import BadInput, Invalid

    offenders = []
    for f in ROOT.rglob("*.py"):
        rel = f.relative_to(ROOT)
        if rel.parts[0] == "api" or f.name.startswith("test_"):
            continue
        for n in ast.walk(ast.parse(f.read_text())):
            kinds = {kind.__name__ for kind, _ in STATUS}
            is_kind = isinstance(n, ast.Call) and getattr(n.func, "id", None) in kinds
            if is_kind and (len(n.args) > 1 or n.keywords):
                offenders.append(f"{rel}:{n.lineno}")
            if isinstance(n, ast.Name) and n.id == HttpError.__name__:
                offenders.append(f"{rel}:{n.lineno}")
    assert not offenders, offenders
    assert status_of(Invalid("x")) == 422 and status_of(BadInput("x")) == 400
    assert status_of(HttpError("x", 403)) == 403


TOOLING = ("lenshouse.bench", "lenshouse.scenarios", "lenshouse.cluster")


def test_the_product_never_imports_the_tooling() -> None:
    """Benches, fault scenarios and the local cluster depend on the product,
    never the reverse; ``lenshouse.cli`` registers their commands (lazily)."""

    def tooling(name: str) -> bool:
        return any(name == t or name.startswith(t + ".") for t in TOOLING)

    wrong = {
        (module, imported)
        for module, imports in _imports().items()
        if not tooling(module) and module != "lenshouse.cli"
        for imported in imports
        if tooling(imported)
    }
    assert not wrong, sorted(wrong)


def test_test_modules_read_no_clock_at_import() -> None:
    """A constant read from the clock when the suite is collected is minutes
    old when its tests run: clocks are read in fixtures or tests."""
    clocks = {"time", "time_ns", "monotonic", "now", "utcnow"}
    found = []
    for f in ROOT.rglob("test_*.py"):
        for node in ast.parse(f.read_text()).body:
            if not isinstance(node, (ast.Assign, ast.AnnAssign)):
                continue
            for n in ast.walk(node):
                called = isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute)
                if called and n.func.attr in clocks:
                    found.append(f"{f.relative_to(ROOT)}:{node.lineno}")
    assert not found, found


_SQL = re.compile(
    r"\b(SELECT\s|INSERT INTO\b|CREATE (TABLE|MATERIALIZED VIEW|DATABASE|VIEW)\b"
    r"|ALTER TABLE\b|DROP (TABLE|VIEW|DATABASE)\b|TRUNCATE TABLE\b)"
)
# Outside storage/, SQL that is not the store's: a container's health check.
_SQL_ELSEWHERE = {"deploy/compose.py": "SELECT 1"}


def test_sql_is_the_storage_layers() -> None:
    """The product writes SQL in ``lenshouse/storage`` alone (the tooling, which
    starts and inspects servers, may query them too); docstrings may name it."""
    offenders = []
    for f in ROOT.rglob("*.py"):
        rel = f.relative_to(ROOT)
        tooling = f"lenshouse.{rel.parts[0]}" in TOOLING
        if rel.parts[0] == "storage" or tooling or f.name.startswith("test_"):
            continue
        if f.name == "conftest.py":
            continue
        tree = ast.parse(f.read_text())
        docs = {
            id(n.body[0].value)
            for n in ast.walk(tree)
            if isinstance(n, (ast.Module, ast.FunctionDef, ast.ClassDef, ast.AsyncFunctionDef))
            and n.body
            and isinstance(n.body[0], ast.Expr)
            and isinstance(n.body[0].value, ast.Constant)
        }
        for n in ast.walk(tree):
            if isinstance(n, ast.Constant) and isinstance(n.value, str) and id(n) not in docs:
                found = _SQL.search(n.value)
                if found and _SQL_ELSEWHERE.get(rel.as_posix()) != n.value.strip():
                    offenders.append(f"{rel}:{n.lineno}: {n.value[:60]!r}")
    assert not offenders, offenders
