"""The tree keeps the shape of the data flow: no module imports across the wings' rule.

The rule and its picture are in docs/architecture.md. Every import counts, also one
inside a function or under `TYPE_CHECKING`: a late import hides a dependency from the
reader, not from the rule.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

#: wing → the wings it rests on directly; a wing may import those and, through them,
#: everything they rest on. Mail enters at relay, waits in queue, is made harmless in
#: pipeline and converters; what is kept lives in custody over store; api looks at custody,
#: and the console (pages for people) at what the api offers.
RESTS_ON: dict[str, set[str]] = {
    "converters": set(),
    "pipeline": {"converters"},
    "queue": {"pipeline"},
    "relay": {"queue"},
    "store": {"queue"},
    "custody": {"store"},
    "api": {"custody"},
    "console": {"api"},
    "loadtest": {"relay"},
}
#: The shell's leaves: every wing may import them; they import no wing.
LEAVES = {"gateway.settings", "gateway.logs", "gateway.metrics", "gateway.loop",
          "gateway.tenancy"}
#: The shell's top (processes and commands): they put the wings together and may import any.
TOP = {"gateway", "gateway.__main__", "gateway.cli", "gateway.server", "gateway.processes",
       "gateway.admin_cli", "gateway.office_cli", "gateway.user_cli", "gateway.reload"}


def _below(wing: str) -> set[str]:
    seen: set[str] = set()
    todo = [wing]
    while todo:
        for lower in RESTS_ON[todo.pop()] - seen:
            seen.add(lower)
            todo.append(lower)
    return seen


def _modules() -> dict[str, Path]:
    found = {}
    for package in ("gateway", "converters"):
        for path in sorted((ROOT / package).rglob("*.py")):
            if "migrations" in path.parts:
                continue  # Alembic's scripts: loaded by Alembic, not imported by the gateway
            parts = path.relative_to(ROOT).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            found[name] = path
    return found


MODULES = _modules()


def _imports(name: str, path: Path) -> Iterator[str]:
    """Every project module `name` imports, anywhere in the file."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join([*package.split(".")[:len(package.split(".")) - node.level + 1],
                                 *([base] if base else [])])
            # `from gateway.api import audit` imports the module gateway.api.audit
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in MODULES else base
                       for a in node.names]
        else:
            continue
        yield from (t for t in targets if t.split(".")[0] in ("gateway", "converters"))


def _wing(name: str) -> str | None:
    """converters, or the gateway wing a module belongs to; None for the shell."""
    parts = name.split(".")
    if parts[0] == "converters":
        return "converters"
    return parts[1] if len(parts) > 2 or (len(parts) == 2 and parts[1] in RESTS_ON) else None


def test_every_module_belongs_to_a_wing_or_to_the_shell() -> None:
    strays = [n for n in MODULES if _wing(n) is None and n not in LEAVES | TOP]
    assert strays == [], "put these modules into a wing (or name them in LEAVES/TOP)"


@pytest.mark.parametrize("name", sorted(MODULES))
def test_imports_follow_the_wings(name: str) -> None:
    """A module imports its own wing, the wings below it and the shell's leaves."""
    wing = _wing(name)
    if name in TOP:
        return
    allowed = set() if wing is None else {wing} | _below(wing)
    wrong = []
    for target in _imports(name, MODULES[name]):
        if target in LEAVES and wing != "converters":
            continue
        if name in LEAVES or _wing(target) not in allowed:
            wrong.append(target)
    assert wrong == [], f"{name} ({wing or 'shell leaf'}) may not import {wrong}"


def test_no_import_circles() -> None:
    """Modules that import each other (even late, inside a function) are one module in two
    files: the pipeline's recursion goes through a function handed down instead."""
    graph = {name: {t for t in _imports(name, path) if t in MODULES and t != name}
             for name, path in MODULES.items()}
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    circles: list[list[str]] = []

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                circles.append([*path[path.index(nxt):], nxt])
            elif nxt not in state:
                visit(nxt, [*path, nxt])
        state[node] = 2

    for start in sorted(graph):
        if start not in state:
            visit(start, [start])
    assert circles == []


def test_the_rule_catches_an_import_across_it() -> None:
    """The checker itself: the pipeline reaching up into the queue is refused."""
    wing = _wing("gateway.pipeline.rebuild")
    assert wing == "pipeline"
    assert _wing("gateway.queue.spool") not in {wing} | _below(wing)
    assert "queue" in _below("custody") and "relay" not in _below("custody")
