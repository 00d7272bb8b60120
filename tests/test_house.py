"""The package's shape: wings import downwards only, no import circle, no module past ~400 lines without a reason.

Imports are read from the source (every `import`, also inside functions), nothing is executed.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "vlmtune_cli"

# Lower numbers sit lower: a module may import its own wing and any lower one. train and eval share a level and
# do not import each other.
LEVELS = {
    "errors": 0,
    "console": 0,
    "fsutil": 1,
    "config": 2,
    "runs": 3,
    "models": 4,
    "data": 5,
    "encode": 6,
    "train": 7,
    "eval": 7,
    "cluster": 8,
    "commands": 9,
    "cli": 10,
    "__main__": 11,
    "slurm": 11,  # the one-release re-export for old submitit pickles
}
MAX_LINES = 400


def _wing(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def _modules() -> dict[str, Path]:
    return {
        "vlmtune_cli." + ".".join(p.relative_to(PACKAGE).with_suffix("").parts).removesuffix(".__init__"): p
        for p in PACKAGE.rglob("*.py")
    }


def _imports(path: Path) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("vlmtune_cli")}
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("vlmtune_cli"):
            found.add(node.module)
            found |= {f"{node.module}.{a.name}" for a in node.names}
    return found


def test_every_wing_has_a_level() -> None:
    wings = {_wing(m) for m in _modules()} - {"__init__"}
    assert wings <= set(LEVELS), f"give these a level in LEVELS: {sorted(wings - set(LEVELS))}"


def test_wings_import_downwards_only() -> None:
    modules = _modules()
    wrong = []
    for module, path in modules.items():
        here = _wing(module)
        for imported in _imports(path):
            if imported not in modules and imported.rsplit(".", 1)[0] in modules:
                imported = imported.rsplit(".", 1)[0]  # `from package.module import name`
            there = _wing(imported)
            if there in ("__init__", here) or imported not in modules:
                continue
            if LEVELS[there] > LEVELS[here] or (LEVELS[there] == LEVELS[here] and there != here):
                wrong.append(f"{module} ({here}) imports {imported} ({there})")
    assert not wrong, "imports against the direction of the wings:\n" + "\n".join(sorted(wrong))


def test_no_import_circle() -> None:
    modules = _modules()
    graph = {
        m: {i if i in modules else i.rsplit(".", 1)[0] for i in _imports(p)} & set(modules) for m, p in modules.items()
    }
    for module in graph:  # a package's __init__ is not a dependency of its modules here
        graph[module] = {d for d in graph[module] if d != module and not module.startswith(d + ".")}
    state: dict[str, int] = {}

    def visit(node: str, trail: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                raise AssertionError("import circle: " + " -> ".join(trail[trail.index(nxt) :] + [node, nxt]))
            if nxt not in state:
                visit(nxt, trail + [node])
        state[node] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module, [])


def test_long_modules_say_why() -> None:
    long = []
    for module, path in _modules().items():
        text = path.read_text()
        if text.count("\n") > MAX_LINES and "Longer than 400 lines" not in text[:3000]:
            long.append(f"{module}: {text.count(chr(10))} lines")
    assert not long, "split these by concern, or say at the top why not ('Longer than 400 lines because ...'):\n" + (
        "\n".join(long)
    )
