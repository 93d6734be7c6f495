"""The dependency rule of cyclebatch's wings, read off every import of every module (package docstring):

    cli -> train | run | video | export -> engine -> models -> io -> errors

a wing imports only wings below it; no import circle between modules; no private (_underscore) name
imported from another wing. The checker is tested on made-up violations too, so that it cannot pass by
seeing nothing."""

import ast
from pathlib import Path

import pytest

from conftest import ROOT

PACKAGE = ROOT / "cyclebatch"
RANK = {"cli": 5, "train": 4, "run": 4, "video": 4, "export": 4, "engine": 3, "models": 2, "io": 1, "errors": 0}
# The package's front door and the one-release shim of an old path: they may name any wing.
FRONT = {"cyclebatch", "cyclebatch.__main__", "cyclebatch.pipeline"}
ROOT_NAMES = {"__version__", "IMPORT_STARTED", "lazy_api"}  # what any wing may take from the package itself


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def wing(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "cyclebatch"


def imports_of(path: Path, module: str) -> list[tuple[str, list[str]]]:
    """(imported module, names imported from it) for every import in the file, at any depth."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = []
    for node in _nodes(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found += [(a.name, []) for a in node.names if a.name.startswith("cyclebatch")]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                target = ".".join([*base, *([node.module] if node.module else [])])
            elif node.module and node.module.startswith("cyclebatch"):
                target = node.module
            else:
                continue
            names = [a.name for a in node.names]
            modules = [n for n in names if is_module(f"{target}.{n}")]  # `from . import x`: the module x
            found += [(f"{target}.{n}", []) for n in modules]
            if len(modules) < len(names):
                found.append((target, [n for n in names if n not in modules]))
    return found


def is_module(dotted: str) -> bool:
    path = PACKAGE.parent / dotted.replace(".", "/")
    return path.with_suffix(".py").exists() or (path / "__init__.py").exists()


def _nodes(tree: ast.AST):
    """Every node, except what sits under `if TYPE_CHECKING:` (annotations only, never run)."""
    todo = [tree]
    while todo:
        node = todo.pop()
        yield node
        if isinstance(node, ast.If) and getattr(node.test, "id", getattr(node.test, "attr", "")) == "TYPE_CHECKING":
            todo += node.orelse
            continue
        todo += ast.iter_child_nodes(node)


def graph() -> dict[str, list[tuple[str, list[str]]]]:
    return {module_name(p): imports_of(p, module_name(p)) for p in sorted(PACKAGE.rglob("*.py"))}


def violations(g: dict[str, list[tuple[str, list[str]]]]) -> list[str]:
    bad = []
    for module, imports in g.items():
        if module in FRONT:
            continue
        mine = wing(module)
        for target, names in imports:
            theirs = wing(target)
            if target == "cyclebatch" and set(names) <= ROOT_NAMES:
                continue  # the version, the import clock, the wings' lazy __init__ helper
            if theirs != mine:
                if RANK.get(theirs, 99) >= RANK.get(mine, -1):
                    bad.append(f"{module} imports {target}: {mine} may not import {theirs}")
                private = [n for n in names if n.startswith("_") and not n.endswith("__")]
                if private:
                    bad.append(f"{module} imports private {', '.join(private)} from {target}")
    # circles between modules (an edge per imported module; a package's __init__ counts as its module)
    edges = {m: {t for t, _ in imps if t in g and t != m} for m, imps in g.items()}
    state: dict[str, int] = {}

    def visit(m: str, stack: list[str]) -> None:
        state[m] = 1
        for t in sorted(edges.get(m, ())):
            if state.get(t) == 1:
                bad.append("import circle: " + " -> ".join(stack[stack.index(t):] + [t]) if t in stack
                           else f"import circle through {t}")
            elif t not in state:
                visit(t, stack + [t])
        state[m] = 2

    for m in sorted(edges):
        if m not in state:
            visit(m, [m])
    return bad


def test_the_package_follows_its_dependency_rule():
    g = graph()
    assert len(g) > 60 and {wing(m) for m in g} >= set(RANK) - {"errors"}
    assert violations(g) == []


def test_every_wing_is_a_folder_and_no_module_is_left_at_the_top():
    top = sorted(p.name for p in PACKAGE.glob("*.py"))
    assert top == ["__init__.py", "__main__.py", "errors.py", "pipeline.py"]  # pipeline.py: the old path's shim
    for name in RANK:
        if name != "errors":
            assert (PACKAGE / name / "__init__.py").exists(), name


def test_no_module_grows_past_about_400_lines():
    long = {module_name(p): n for p in PACKAGE.rglob("*.py") if (n := len(p.read_text().splitlines())) > 430}
    assert long == {}


@pytest.mark.parametrize("edit,expected", [
    # a lower wing reaching up
    (("cyclebatch.models.networks", "cyclebatch.engine.translator", ["Translator"]), "models may not import engine"),
    # two wings beside each other
    (("cyclebatch.video.finish", "cyclebatch.run.pipeline", ["working_size"]), "video may not import run"),
    # a private name across wings
    (("cyclebatch.run.pipeline", "cyclebatch.engine.translator", ["_run"]), "imports private _run"),
    # a circle inside a wing
    (("cyclebatch.engine.memory", "cyclebatch.engine.translator", ["Translator"]), "import circle"),
])
def test_the_checker_sees_each_kind_of_violation(edit, expected):
    g = graph()
    source, target, names = edit
    g[source] = g[source] + [(target, names)]
    assert any(expected in v for v in violations(g)), violations(g)
