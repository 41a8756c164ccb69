"""The architecture, held: where DeepSpeed and HTTP may live, which packages may import which, how long a function
may be, and that the task's language stays in apr_ds/tasks/. Read from the source with `ast`, imports inside
functions counted like module-level ones. `python tests/test_architecture.py [ROOT]` prints what a tree breaks."""

from __future__ import annotations

import ast
import sys
from dataclasses import dataclass, field
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "apr_ds"
MAX_FUNCTION_LINES = 60
HTTP_LIBRARIES = ("aiohttp", "requests", "httpx", "urllib.request", "http.client", "http.server", "fastapi",
                  "uvicorn", "starlette")
TASK_GRAMMAR = ("Current State", "Exploring Operation", "Generated Node", "Resulting Numbers", "Moving to Node")


@dataclass
class Module:
    path: Path
    name: str
    """Relative to apr_ds/: "learner/rl.py"."""
    unit: str
    """The package it belongs to ("learner"), or the module itself for a top-level one ("config")."""
    tree: ast.Module
    source: str
    imports: list[str] = field(default_factory=list)
    """Every imported module name, at any depth of the file."""


def read_modules(root: Path = PACKAGE) -> list[Module]:
    modules = []
    for path in sorted(root.rglob("*.py")):
        relative = path.relative_to(root)
        unit = relative.parts[0] if len(relative.parts) > 1 else relative.stem
        source = path.read_text()
        module = Module(path, str(relative), unit, ast.parse(source), source)
        for node in ast.walk(module.tree):
            if isinstance(node, ast.Import):
                module.imports += [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                module.imports.append(node.module)
                module.imports += [f"{node.module}.{alias.name}" for alias in node.names]
        modules.append(module)
    return modules


def imports_of(module: Module, library: str) -> bool:
    return any(name == library or name.startswith(library + ".") for name in module.imports)


def unit_graph(modules: list[Module]) -> dict[str, set[str]]:
    units = {m.unit for m in modules} - {"__init__"}
    graph: dict[str, set[str]] = {unit: set() for unit in units}
    for module in modules:
        for name in module.imports:
            parts = name.split(".")
            if parts[0] == "apr_ds" and len(parts) > 1 and parts[1] in units and parts[1] != module.unit:
                graph.setdefault(module.unit, set()).add(parts[1])
    return graph


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every strongly connected group of more than one unit (Tarjan), as a sorted list."""
    index, low, stack, on_stack, cycles, counter = {}, {}, [], set(), [], [0]

    def visit(unit: str) -> None:
        index[unit] = low[unit] = counter[0]
        counter[0] += 1
        stack.append(unit)
        on_stack.add(unit)
        for other in graph.get(unit, ()):
            if other not in index:
                visit(other)
                low[unit] = min(low[unit], low[other])
            elif other in on_stack:
                low[unit] = min(low[unit], index[other])
        if low[unit] == index[unit]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == unit:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))
    for unit in sorted(graph):
        if unit not in index:
            visit(unit)
    return sorted(cycles)


def violations(root: Path = PACKAGE) -> dict[str, list[str]]:
    modules = read_modules(root)
    found = {
        "deepspeed outside apr_ds/learner/": [m.name for m in modules
                                              if imports_of(m, "deepspeed") and m.unit != "learner"],
        "HTTP client code outside rollout/client.py": [
            m.name for m in modules if m.unit != "engine" and m.name != "rollout/client.py"
            and any(imports_of(m, library) for library in HTTP_LIBRARIES)],
        "HTTP server code outside apr_ds/engine/": [
            m.name for m in modules if m.unit != "engine" and any(imports_of(m, name) for name in (
                "aiohttp.web", "http.server", "fastapi", "uvicorn", "starlette"))],
        "HTTP client code in apr_ds/engine/": [
            m.name for m in modules if m.unit == "engine" and ("ClientSession" in m.source or any(
                imports_of(m, library) for library in ("requests", "httpx", "urllib.request", "http.client")))],
        "a /health poller outside rollout/client.py": [
            m.name for m in modules if m.unit != "engine" and m.name != "rollout/client.py"
            and ('"/health"' in m.source or "'/health'" in m.source)],
        "imports of apr_ds.cli": [m.name for m in modules if m.name != "cli.py" and imports_of(m, "apr_ds.cli")],
        "import cycles between packages": [" <-> ".join(cycle) for cycle in find_cycles(unit_graph(modules))],
        f"functions over {MAX_FUNCTION_LINES} lines": [
            f"{m.name}:{node.lineno} {node.name} ({node.end_lineno - node.lineno + 1} lines)" for m in modules
            for node in ast.walk(m.tree) if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
            and node.end_lineno - node.lineno + 1 > MAX_FUNCTION_LINES],
        "task grammar outside apr_ds/tasks/": [
            f"{m.name}: {phrase!r}" for m in modules if m.unit != "tasks" for phrase in TASK_GRAMMAR
            if phrase in m.source],
    }
    return {rule: items for rule, items in found.items() if items}


# ---------------------------------------------------------------------------- the rules


def test_the_tree_keeps_the_architecture():
    assert violations() == {}


def test_the_rules_catch_what_they_name(tmp_path):
    """A tree that breaks each rule once is caught once per rule, so the test above cannot pass by reading nothing."""
    def write(name: str, text: str) -> None:
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    write("learner/train.py", "import deepspeed\n\ndef f():\n    from apr_ds.rollout import runner\n")
    write("rollout/runner.py", "def g():\n    import deepspeed\n    from apr_ds.learner.train import f\n")
    write("rollout/health.py", "import urllib.request\nURL = '/health'\n")
    write("eval/serve.py", "from aiohttp import web\nfrom apr_ds.cli import main\n")
    write("engine/fetch.py", "import aiohttp\nsession = aiohttp.ClientSession\n")
    write("lang/words.py", "HEAD = 'Current State: '\n")
    write("long.py", "def long():\n" + "    x = 1\n" * MAX_FUNCTION_LINES)
    found = violations(tmp_path)
    assert found == {
        "deepspeed outside apr_ds/learner/": ["rollout/runner.py"],
        "HTTP client code outside rollout/client.py": ["eval/serve.py", "rollout/health.py"],
        "HTTP server code outside apr_ds/engine/": ["eval/serve.py"],
        "HTTP client code in apr_ds/engine/": ["engine/fetch.py"],
        "a /health poller outside rollout/client.py": ["rollout/health.py"],
        "imports of apr_ds.cli": ["eval/serve.py"],
        "import cycles between packages": ["learner <-> rollout"],
        f"functions over {MAX_FUNCTION_LINES} lines": [f"long.py:1 long ({MAX_FUNCTION_LINES + 1} lines)"],
        "task grammar outside apr_ds/tasks/": ["lang/words.py: 'Current State'"],
    }


if __name__ == "__main__":
    root = Path(sys.argv[1]) if len(sys.argv) > 1 else PACKAGE
    for rule, items in violations(root).items():
        print(f"{rule}:")
        for item in items:
            print(f"    {item}")
    print("import graph:")
    for unit, targets in sorted(unit_graph(read_modules(root)).items()):
        print(f"    {unit} -> {', '.join(sorted(targets)) or '-'}")
