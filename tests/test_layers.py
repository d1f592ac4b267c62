"""The import rule of the package: each layer imports only from the layers below it.

    backend, _io -> threads, kernels, distributed -> autograd -> functional -> fast -> nn -> models
    -> optim | data -> viz, diagrams -> train

(``optim`` and ``data`` share a level and do not import each other.) The test
reads every module's imports from its syntax tree, so an import inside a
function counts too: a lazy import is still a dependency.
"""

import ast
import sys
from pathlib import Path

import miniran

PACKAGE = Path(miniran.__file__).parent
LEVELS = [("backend", "_io"), ("threads", "kernels", "distributed"), ("autograd",), ("functional",), ("fast",), ("nn",),
          ("models",), ("optim", "data"),
          ("viz", "diagrams"), ("train",)]
LEVEL = {name: i for i, names in enumerate(LEVELS) for name in names}


def layer_of(path: Path) -> str:
    parts = path.relative_to(PACKAGE).with_suffix("").parts
    return parts[0]


def miniran_imports(path: Path):
    """(line, 'miniran.x.y') for every import of a miniran module in the file."""
    tree = ast.parse(path.read_text(), filename=str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, f"{path}:{node.lineno}: relative import; miniran uses absolute imports"
            if node.module == "miniran":
                for alias in node.names:
                    yield node.lineno, f"miniran.{alias.name}"
            elif node.module:
                yield node.lineno, node.module


def test_every_module_belongs_to_a_layer():
    for path in PACKAGE.rglob("*.py"):
        if path.parent == PACKAGE and path.stem in ("__init__", "__main__"):
            continue
        assert layer_of(path) in LEVEL, f"{path.relative_to(PACKAGE)} is in no layer: add it to LEVELS and docs"


def test_each_layer_imports_only_the_layers_below():
    bad = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if path.parent == PACKAGE and path.stem in ("__init__", "__main__"):
            continue  # the package's front door imports its layers
        own = layer_of(path)
        for line, name in miniran_imports(path):
            parts = name.split(".")
            if parts[0] != "miniran":
                continue
            if len(parts) == 1:
                bad.append(f"{path.relative_to(PACKAGE)}:{line} imports the whole package")
                continue
            target = parts[1]
            if target == own:
                continue
            if LEVEL.get(target, len(LEVELS)) >= LEVEL[own]:
                bad.append(f"{path.relative_to(PACKAGE)}:{line} ({own}) imports {name}")
    assert not bad, "imports against the layer rule:\n" + "\n".join(bad)


def test_the_lowest_layers_import_nothing_from_miniran():
    for name in ("backend", "_io"):
        path = PACKAGE / f"{name}.py"
        assert [n for _, n in miniran_imports(path) if n.startswith("miniran")] == [], name


def test_autograd_alone_has_no_import_cycle():
    """Importing autograd loads nothing above it (functional, nn, ...) by itself."""
    import subprocess

    code = ("import sys, importlib.util; sys.modules['miniran'] = type(sys)('miniran'); "
            f"sys.modules['miniran'].__path__ = [{str(PACKAGE)!r}]; "
            "import miniran.autograd; "
            "print(sorted(m for m in sys.modules if m.startswith('miniran.')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    loaded = {m.split(".")[1] for m in eval(out)}
    assert loaded <= {"autograd", "backend", "_io"}, loaded


def test_functions_and_modules_do_not_share_class_names():
    import inspect

    from miniran import functional, models, nn
    from miniran.autograd import Function

    def classes(package, base):
        found = set()
        for mod in list(sys.modules.values()):
            if getattr(mod, "__name__", "").startswith(package.__name__):
                found |= {c.__name__ for _, c in inspect.getmembers(mod, inspect.isclass)
                          if issubclass(c, base) and c.__module__.startswith(package.__name__)}
        return found

    functions = classes(functional, Function)
    modules = classes(nn, nn.Module) | classes(models, nn.Module)
    assert functions and modules and not functions & modules, functions & modules


def test_the_textbook_never_imports_the_engine():
    """functional/ (the reference algorithms) imports neither the engine nor its tools.

    Not miniran.fast (the twins), miniran.threads (the thread pool, ctypes)
    nor miniran.kernels (CUDA source); and none of the standard modules that
    only engine code needs.
    """
    engine = ("miniran.fast", "miniran.threads", "miniran.kernels")
    stdlib = {"ctypes", "threading", "concurrent", "concurrent.futures", "multiprocessing", "cupyx"}
    bad = []
    for path in sorted((PACKAGE / "functional").rglob("*.py")):
        for line, name in miniran_imports(path):
            if name.startswith(engine):
                bad.append(f"{path.relative_to(PACKAGE)}:{line} imports {name}")
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            bad += [f"{path.relative_to(PACKAGE)}:{node.lineno} imports {n}" for n in names
                    if n.split(".")[0] in stdlib or n in stdlib]
        source = path.read_text()
        for word in ("ElementwiseKernel", "ReductionKernel", "RawKernel", "parallel_chunks"):
            if word in source:
                bad.append(f"{path.relative_to(PACKAGE)} mentions {word}")
    assert not bad, "engine code in the textbook:\n" + "\n".join(bad)


def test_the_engine_imports_the_textbook_not_the_layers_above():
    """miniran.fast registers twins of functional's Functions; it needs nothing above functional."""
    for path in sorted((PACKAGE / "fast").rglob("*.py")):
        for line, name in miniran_imports(path):
            if name.startswith("miniran."):
                assert LEVEL[name.split(".")[1]] <= LEVEL["fast"], f"{path.relative_to(PACKAGE)}:{line} imports {name}"
