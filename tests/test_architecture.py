"""The package's layering (README, "Architecture"): every import of lightning_al -- at module level, inside a
function or under TYPE_CHECKING -- goes to the same layer or one below, scoring/ and evaluation/ stay apart,
and the module graph has no cycle."""

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "lightning_al"

#: Bottom to top; a module's layer is that of its first dotted name under lightning_al.
LAYERS: list[set[str]] = [
    {"", "data", "strategies", "run_folder"},  # rows, prompts, batches; selection; the run folder's layout
    {"model"},  # loading a model, inference helpers, the LM head's post-processing (no Lightning)
    {"scoring", "evaluation"},  # uncertainty scores of the pool; evaluation passes
    {"module", "datamodule", "checkpointing", "recording", "selection_analysis"},  # Lightning parts
    {"loop"},  # the active-learning rounds
    {"cli", "study_grid", "report"},  # LightningCLI, the study's grid, the report
    {"study"},  # runs a grid of fits
    {"commands", "__main__"},  # the `lightning-al` dispatch
]


def _modules() -> dict[str, Path]:
    modules = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE).with_suffix("").parts
        modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return modules


def _imports(path: Path, modules: dict[str, Path]) -> set[str]:
    """The lightning_al modules ``path`` imports anywhere in its body (relative to the package)."""

    def resolve(name: str) -> str:
        name = name.removeprefix("lightning_al").lstrip(".")
        while name not in modules:
            name = name.rpartition(".")[0]
        return name

    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.level:
            raise AssertionError(f"{path}: relative import (write lightning_al.…)")
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("lightning_al"):
            for alias in node.names:  # `from lightning_al.x import y` may import the module x.y
                found.add(resolve(f"{node.module}.{alias.name}"))
        elif isinstance(node, ast.Import):
            found.update(resolve(a.name) for a in node.names if a.name.split(".")[0] == "lightning_al")
    return found


def _layer(module: str) -> int:
    top = module.split(".")[0]
    for i, names in enumerate(LAYERS):
        if top in names:
            return i
    raise AssertionError(f"lightning_al.{module} is in no layer of tests/test_architecture.py: place it")


MODULES = _modules()
GRAPH = {name: _imports(path, MODULES) - {name} for name, path in MODULES.items()}


@pytest.mark.parametrize("module", sorted(MODULES))
def test_imports_go_down_the_layers(module: str) -> None:
    for target in GRAPH[module]:
        assert _layer(target) <= _layer(module), f"lightning_al.{module} (layer {_layer(module)}) imports " \
                                                 f"lightning_al.{target} (layer {_layer(target)}), a higher layer"
        tops = {module.split(".")[0], target.split(".")[0]}
        assert tops != {"scoring", "evaluation"}, f"{module} imports {target}: scoring and evaluation stay apart"


def test_no_import_cycle() -> None:
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(module: str, path: list[str]) -> None:
        state[module] = 1
        for target in sorted(GRAPH[module]):
            assert state.get(target) != 1, "import cycle: " + " -> ".join([*path, module, target])
            if target not in state:
                visit(target, [*path, module])
        state[module] = 2

    for module in sorted(GRAPH):
        if module not in state:
            visit(module, [])


def test_the_checker_sees_lazy_and_type_only_imports(tmp_path: Path) -> None:
    source = tmp_path / "example.py"
    source.write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from lightning_al.loop import X\n"
                      "def f():\n    import lightning_al.study\n    from lightning_al.data import sources\n")
    assert _imports(source, MODULES) == {"loop", "study", "data.sources"}
