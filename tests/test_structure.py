"""The code's shape, checked: no import cycles between files, no private names imported across modules, no
sys.path tricks in the programs, nothing at run time reading tests/."""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("kanade_stream", "training", "distill")
SOURCES = sorted(p for package in PACKAGES for p in (ROOT / package).rglob("*.py"))
PROGRAMS = sorted((ROOT / "demos").glob("*.py")) + sorted((ROOT / "benchmarks").glob("*.py"))


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> list[tuple[str, list[str]]]:
    """(imported module, names) for every import in the file, function-level ones included."""
    tree = ast.parse(path.read_text(), filename=str(path))
    package = _module_name(path) if path.name == "__init__.py" else _module_name(path).rpartition(".")[0]
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(alias.name, []) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            found.append((module, [alias.name for alias in node.names]))
    return found


def _graph() -> dict[str, set[str]]:
    modules = {_module_name(p): p for p in SOURCES}
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        for module, names in _imports(path):
            # "from package import submodule" imports the submodule
            targets = [module] + [f"{module}.{n}" for n in names]
            for target in targets:
                if target in modules and target != name:
                    graph[name].add(target)
    return graph


def test_no_import_cycles():
    graph = _graph()
    # package __init__ files re-export their modules; a module importing its own package's __init__ is
    # the usual way in, not a cycle between files, so edges into __init__ of an enclosing package are left out
    def edges(name):
        return {t for t in graph[name] if not (name.startswith(t + ".") and (ROOT / t.replace(".", "/")).is_dir())}

    state: dict[str, int] = {}
    cycles = []

    def visit(node, stack):
        state[node] = 1
        for target in sorted(edges(node)):
            if state.get(target) == 1:
                cycles.append(stack[stack.index(target):] + [target])
            elif target not in state:
                visit(target, stack + [target])
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])
    assert not cycles, "import cycles: " + "; ".join(" -> ".join(c) for c in cycles)


@pytest.mark.parametrize("path", SOURCES + PROGRAMS, ids=lambda p: str(p.relative_to(ROOT)))
def test_no_private_names_imported_across_modules(path):
    private = [f"{module}.{name}" for module, names in _imports(path) for name in names
               if name.startswith("_") and not name.startswith("__")]
    assert not private, f"{path.relative_to(ROOT)} imports private names {private}: make them public or move them"


def test_no_sys_path_tricks_and_no_tests_at_run_time():
    offenders = []
    for path in SOURCES + sorted((ROOT / "demos").glob("*.py")):
        text = path.read_text()
        if "sys.path" in text:
            offenders.append(f"{path.relative_to(ROOT)}: sys.path")
        if '"tests"' in text or "'tests'" in text or "tests/data" in text:
            offenders.append(f"{path.relative_to(ROOT)}: reads tests/")
    assert not offenders, offenders
