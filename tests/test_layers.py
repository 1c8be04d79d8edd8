"""The import graph of structinit/ points one way, top to bottom: every module imports only modules
of its own layer or lower ones (imports inside functions count too), and no modules import each
other in a circle. A package (inits, commands) is one node: its modules are one unit (inits
registers its strategies from its own __init__)."""
import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "structinit"
LAYERS = [  # bottom to top
    ["validate", "paths", "footings", "provenance", "declarations", "metrics"],
    ["recipes", "data", "models", "structinit"],  # structinit: the package's __init__
    ["inits", "rank"],
    ["fidelity", "config", "attention"],
    ["checkpoint", "cluster", "registry"],
    ["tracking"],
    ["train", "results", "report", "stats"],
    ["study"],
    ["halving", "record"],
    ["runner"],
    ["commands", "cli", "__main__"],
]
LAYER = {name: i for i, names in enumerate(LAYERS) for name in names}


def node(path: Path) -> str:
    """The graph node of a file: its top-level module or package under structinit/."""
    parts = path.relative_to(PACKAGE).with_suffix("").parts
    return "structinit" if parts == ("__init__",) else parts[0]


def target(module: str) -> str | None:
    """The node a dotted module name imports, None outside structinit."""
    parts = module.split(".")
    if parts[0] != "structinit":
        return None
    if len(parts) == 1:
        return "structinit"
    return parts[1] if (PACKAGE / parts[1]).is_dir() or (PACKAGE / f"{parts[1]}.py").exists() else "structinit"


def imports(source: str, package: str) -> set[str]:
    """Every structinit node a module's source imports, at any depth of its code; `package` is
    the module's package (for relative imports)."""
    found = set()
    for n in ast.walk(ast.parse(source)):
        if isinstance(n, ast.Import):
            found |= {target(a.name) for a in n.names}
        elif isinstance(n, ast.ImportFrom):
            base = n.module or ""
            if n.level:  # relative: from the module's package upwards
                parts = package.split(".")
                base = ".".join([*parts[:len(parts) - n.level + 1], *filter(None, [base])])
            found |= {target(f"{base}.{a.name}") if base == "structinit" else target(base) for a in n.names}
    return found - {None}


def graph() -> dict[str, set[str]]:
    edges: dict[str, set[str]] = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        package = ".".join(("structinit", *path.relative_to(PACKAGE).parent.parts))
        edges.setdefault(node(path), set()).update(imports(path.read_text(), package) - {node(path)})
    return edges


def test_every_module_has_a_layer():
    assert sorted(graph()) == sorted(LAYER), "place a new module in LAYERS"


def test_imports_point_down_only():
    upward = [f"{a} (layer {LAYER[a]}) imports {b} (layer {LAYER[b]})"
              for a, targets in graph().items() for b in targets if LAYER[b] > LAYER[a]]
    assert not upward, upward


def test_no_import_circle():
    edges, state, circles = graph(), {}, []

    def visit(name: str, path: list[str]) -> None:
        state[name] = "open"
        for nxt in sorted(edges[name]):
            if state.get(nxt) == "open":
                circles.append(" -> ".join([*path[path.index(nxt):], nxt]))
            elif nxt not in state:
                visit(nxt, [*path, nxt])
        state[name] = "done"

    for name in sorted(edges):
        if name not in state:
            visit(name, [name])
    assert not circles, circles


def test_the_check_reads_every_kind_of_import():
    """`import a.b`, `from a import b` (a module or a name), relative imports, and imports inside
    functions all count; imports from outside structinit do not."""
    source = "\n".join(["import numpy", "import structinit.train", "from structinit import tracking, __version__",
                        "from structinit.inits.targets import shift_matrix", "def f():",
                        "    from structinit.results import load", "    from . import report",
                        "    from .paths import StudyPaths"])
    assert imports(source, "structinit") == {"train", "tracking", "structinit", "inits", "results", "report", "paths"}


def test_every_third_party_import_is_declared():
    """Every package that structinit/, bench/, studies/ or tests/ imports by name (at the top or in
    a function) is declared in pyproject.toml, the test-only ones under the `test` extra: none
    arrives only because another package happens to pull it in."""
    import importlib.metadata
    import re
    import sys
    import tomllib

    root = PACKAGE.parent
    project = tomllib.loads((root / "pyproject.toml").read_text())["project"]
    declared = {re.split(r"[\[<>=!~ ;]", d, maxsplit=1)[0].lower().replace("_", "-")
                for d in [*project["dependencies"], *sum(project["optional-dependencies"].values(), [])]}
    dists = importlib.metadata.packages_distributions()
    local = {"structinit", "tests", *(p.stem for folder in ("tests", "bench") for p in (root / folder).glob("*.py"))}
    missing = {}
    for folder in ("structinit", "bench", "studies", "tests"):
        for path in (root / folder).rglob("*.py"):
            for node_ in ast.walk(ast.parse(path.read_text())):
                names = ([a.name for a in node_.names] if isinstance(node_, ast.Import) else
                         [node_.module] if isinstance(node_, ast.ImportFrom) and node_.level == 0 else [])
                for top in {n.split(".")[0] for n in names} - local - set(sys.stdlib_module_names):
                    if not {d.lower().replace("_", "-") for d in dists.get(top, [top])} & declared:
                        missing.setdefault(top, path.relative_to(root).as_posix())
    assert not missing, f"imported but not declared in pyproject.toml: {missing}"
