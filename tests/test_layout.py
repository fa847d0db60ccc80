"""The layout's promise: imports flow one way. The leaves (agents/nn, envs, and training's
runtime pieces) import nothing above them, so no module imports one that imports it back."""

import ast
from pathlib import Path

from tests.conftest import ROOT

ABOVE = ("agents.sac", "agents.ppo", "agents.dt", "experiments", "analysis", "launch",
         "training.config", "training.train", "training.runner")
LEAVES = {
    "agents/nn": ABOVE + ("training.data", "training.run_dir", "training.checkpoint", "envs"),
    "envs": ABOVE + ("agents", "training.data", "training.run_dir", "training.checkpoint"),
    "training/data": ABOVE + ("agents",),
    "training/run_dir.py": ("agents", "envs", "experiments", "analysis", "training.train",
                            "training.runner"),
    "training/checkpoint.py": ABOVE + ("agents", "envs"),
    "training/errors.py": ABOVE + ("agents", "envs", "training"),
}


def _imports(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return found


def test_leaves_import_nothing_above_them():
    for leaf, forbidden in LEAVES.items():
        target = ROOT / leaf
        files = [target] if target.suffix else sorted(target.rglob("*.py"))
        assert files, leaf
        for path in files:
            for name in _imports(path):
                if name == "training.errors" or name.startswith("training.errors."):
                    continue  # the one shared leaf: the error types and field bounds
                bad = [f for f in forbidden if name == f or name.startswith(f + ".")]
                assert not bad, f"{path.relative_to(ROOT)} imports {name}"


def test_no_module_imports_itself_back():
    """No cycle in the project's module graph (imports inside functions included)."""
    modules = {}
    for path in ROOT.rglob("*.py"):
        rel = path.relative_to(ROOT)
        if rel.parts[0] in (".venv", "tests", "bench") or "site-packages" in rel.parts:
            continue
        name = ".".join(rel.with_suffix("").parts).removesuffix(".__init__")
        modules[name] = path
    graph = {m: {i for i in _imports(p) if i in modules and i != m} for m, p in modules.items()}
    state: dict[str, int] = {}

    def visit(m, stack):
        state[m] = 1
        for n in graph[m]:
            assert state.get(n) != 1, " -> ".join([*stack, m, n])
            if n not in state:
                visit(n, [*stack, m])
        state[m] = 2

    for m in graph:
        if m not in state:
            visit(m, [])
