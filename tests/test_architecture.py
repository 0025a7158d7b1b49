"""The package's layering, read from the source: cli -> tasks / eval / callbacks -> model and components ->
diffusion, layout, tiling; datamodules and envs -> data utilities; no import cycles; no private names imported
across modules."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# installed name -> folder (pyproject's package-dir)
PACKAGES = {"cosmos_lit": ROOT / "cosmos_lit", "cosmos_lit.callbacks": ROOT / "callbacks",
            "cosmos_lit.datamodules": ROOT / "datamodules", "cosmos_lit.tasks": ROOT / "tasks"}


def _modules() -> dict[str, Path]:
    out = {}
    for pkg, folder in PACKAGES.items():
        for path in folder.rglob("*.py"):
            rel = path.relative_to(folder).with_suffix("")
            parts = [p for p in rel.parts if p != "__init__"]
            name = ".".join([pkg, *parts])
            if pkg == "cosmos_lit" and parts and parts[0] in ("callbacks", "datamodules", "tasks"):
                continue  # symlinks or stray copies: the real folders are listed above
            out[name] = path
    return out


MODULES = _modules()


def _imports(path: Path, top_level_only: bool) -> list[tuple[str, list[str]]]:
    """(module imported, names imported from it) for every import in the file (or only the module-level ones)."""
    tree = ast.parse(path.read_text())
    nodes = tree.body if top_level_only else list(ast.walk(tree))  # module level: `if TYPE_CHECKING:` blocks are skipped
    found = []
    for node in nodes:
        if isinstance(node, ast.Import):
            found += [(a.name, []) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append((node.module, [a.name for a in node.names]))
    return [(m, names) for m, names in found if m == "cosmos_lit" or m.startswith("cosmos_lit.")]


def _layer(module: str) -> str:
    for prefix, layer in (("cosmos_lit.cli", "cli"), ("cosmos_lit.__main__", "cli"), ("cosmos_lit.tasks", "tasks"),
                          ("cosmos_lit.eval", "eval"), ("cosmos_lit.callbacks", "callbacks"),
                          ("cosmos_lit.datamodules", "datamodules"), ("cosmos_lit.envs", "envs")):
        if module == prefix or module.startswith(prefix + "."):
            return layer
    return "core"


# which layers each layer may import (core = model, components, diffusion, layout, utilities)
ALLOWED = {
    "cli": {"cli", "tasks", "eval", "callbacks", "datamodules", "envs", "core"},
    "callbacks": {"callbacks", "eval", "envs", "core"},
    "eval": {"eval", "envs", "core"},
    "tasks": {"tasks", "core"},
    "datamodules": {"datamodules", "envs", "core"},  # ALOHA-sim demos are generated in the simulator
    "envs": {"envs", "core"},
    "core": {"core"},
}
# core modules that data loading and simulation may use: never the model, its components or the policy
DATA_UTILITIES_FORBIDDEN = ("cosmos_lit.model", "cosmos_lit.models", "cosmos_lit.policy", "cosmos_lit.checkpoint",
                            "cosmos_lit.components", "cosmos_lit.weights", "cosmos_lit.text")


@pytest.mark.parametrize("module", sorted(MODULES))
def test_imports_follow_the_layers(module):
    layer = _layer(module)
    for target, _ in _imports(MODULES[module], top_level_only=False):
        assert _layer(target) in ALLOWED[layer], f"{module} ({layer}) imports {target} ({_layer(target)})"
        if layer in ("datamodules", "envs"):
            assert not target.startswith(DATA_UTILITIES_FORBIDDEN), f"{module} imports {target}"


def test_the_model_layer_does_not_know_the_training_task():
    for name in ("cosmos_lit.model", "cosmos_lit.policy", "cosmos_lit.checkpoint", "cosmos_lit.models.planner"):
        for target, _ in _imports(MODULES[name], top_level_only=False):
            assert _layer(target) == "core", f"{name} imports {target}"


def test_no_import_cycles_at_module_level():
    graph: dict[str, set[str]] = {}
    for module, path in MODULES.items():
        deps = set()
        for target, names in _imports(path, top_level_only=True):
            submodules = {f"{target}.{n}" for n in names if f"{target}.{n}" in MODULES}  # `from pkg import module`
            named = {target} if len(submodules) < len(names) or not names else set()
            deps |= {t for t in submodules | named if t in MODULES and t != module}
        graph[module] = deps
    state: dict[str, int] = {}

    def visit(node: str, stack: list[str]) -> None:
        state[node] = 1
        for dep in sorted(graph[node]):
            if state.get(dep) == 1:
                cycle = stack[stack.index(dep):] + [dep] if dep in stack else [node, dep]
                raise AssertionError(f"import cycle: {' -> '.join(cycle)}")
            if dep not in state:
                visit(dep, stack + [dep])
        state[node] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])


@pytest.mark.parametrize("module", sorted(MODULES))
def test_no_private_names_imported_across_modules(module):
    for target, names in _imports(MODULES[module], top_level_only=False):
        private = [n for n in names if n.startswith("_") and not n.startswith("__")]
        assert not private, f"{module} imports private {private} from {target}"
