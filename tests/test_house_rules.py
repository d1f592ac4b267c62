"""House rules of the package that the code itself can check (issue 16, outcome 6).

* No function in ``miniran`` is longer than 60 lines (``def`` line to last
  line): a function a reader cannot hold in view is split into named helpers.
* No import circle between the modules of ``miniran``, not even through an
  import written inside a function (the lazy import that hides a circle).
  Imports of a package (its ``__init__``) are left out: a package re-exports
  its modules, and importing ``miniran.models.x`` runs ``miniran.models`` first
  whatever ``x`` imports.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "miniran"
MAX_FUNCTION_LINES = 60


def _sources():
    return sorted(PACKAGE.rglob("*.py"))


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def test_no_function_is_longer_than_60_lines():
    too_long = []
    for path in _sources():
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = node.end_lineno - node.lineno + 1
                if lines > MAX_FUNCTION_LINES:
                    too_long.append(f"{path.relative_to(PACKAGE.parent)}:{node.lineno} {node.name} ({lines} lines)")
    assert not too_long, (f"functions over {MAX_FUNCTION_LINES} lines (split them into named helpers):\n"
                          + "\n".join(too_long))


def _import_graph():
    """``{module: {modules of miniran it imports}}``, every import statement of the file (lazy ones too)."""
    paths = {_module_name(p): p for p in _sources()}

    def known(name):  # the module that defines ``name``: itself, or the longest known prefix
        while name and name not in paths:
            name = name.rpartition(".")[0]
        return name or None

    graph = {}
    for module, path in paths.items():
        package = module if path.name == "__init__.py" else module.rpartition(".")[0]
        imported = set()
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.Import):
                imported |= {known(a.name) for a in node.names if a.name.split(".")[0] == "miniran"}
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = package
                    for _ in range(node.level - 1):
                        anchor = anchor.rpartition(".")[0]
                    base = anchor + ("." + base if base else "")
                if base.split(".")[0] != "miniran":
                    continue
                # ``from miniran.models import networks`` imports the module networks
                imported |= {f"{base}.{a.name}" if f"{base}.{a.name}" in paths else known(base) for a in node.names}
        imported -= {None, module}
        graph[module] = {m for m in imported if paths[m].name != "__init__.py"}
    return {m: deps for m, deps in graph.items() if paths[m].name != "__init__.py"}


def _cycles(graph):
    """The strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_no_import_circle_between_modules():
    cycles = _cycles(_import_graph())
    assert not cycles, "modules that import each other (directly or around a circle):\n" + "\n".join(
        " <-> ".join(c) for c in cycles)


def test_the_circle_finder_finds_a_circle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


def test_pretrained_builds_networks_without_importing_them():
    """networks imports pretrained (for ``attention56(pretrained=True)``); pretrained gets the builders
    registered, so the import goes one way only."""
    graph = _import_graph()
    assert "miniran.models.pretrained" in graph["miniran.models.networks"]
    assert "miniran.models.networks" not in graph["miniran.models.pretrained"]
    from miniran.models import networks, pretrained

    assert pretrained._BUILDERS["attention56"] is networks.attention56
