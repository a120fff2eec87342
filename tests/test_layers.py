"""The package's layering (docs/design.md): a module imports only from its own layer or lower ones."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "pneumolab"

LAYERS: tuple[frozenset[str], ...] = tuple(
    frozenset(names.split())
    for names in (
        "errors choices files results config",
        "data",
        "run_meta run outputs",
        "models scope",
        "inference",
        "training",
        "evaluation",
        "explain",
        "reporting",
        "pipeline",
        "serving",
        "study",
        "cli __main__",
    )
)
"""Lowest first: top-level modules and sub-packages of ``pneumolab``, by name."""


def layer_of(unit: str) -> int:
    """Index in :data:`LAYERS` of a top-level module or sub-package."""
    for index, names in enumerate(LAYERS):
        if unit in names:
            return index
    raise KeyError(f"{unit} is in no layer: add it to LAYERS (and to docs/design.md)")


def unit_of(module: str) -> str | None:
    """The top-level unit of a ``pneumolab.…`` module name; None for the package root itself
    (``import pneumolab`` reads ``__version__``, which loads nothing else)."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else None


def package_imports(path: Path) -> set[str]:
    """Every ``pneumolab.…`` module a file imports, at any depth (lazy imports included)."""
    modules: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            modules.add(node.module)
        elif isinstance(node, ast.Import):
            modules.update(alias.name for alias in node.names)
    return {m for m in modules if m == "pneumolab" or m.startswith("pneumolab.")}


SOURCES = sorted(
    p for p in PACKAGE.rglob("*.py") if p.relative_to(PACKAGE).parts[0] != "__init__.py"
)


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_no_module_imports_a_higher_layer(path):
    unit = path.relative_to(PACKAGE).parts[0].removesuffix(".py")
    upward = [
        module
        for module in sorted(package_imports(path))
        if (target := unit_of(module)) is not None and layer_of(target) > layer_of(unit)
    ]
    assert not upward, f"{path.relative_to(PACKAGE)} ({unit}) imports a higher layer: {upward}"


def test_every_unit_has_a_layer():
    units = {p.relative_to(PACKAGE).parts[0].removesuffix(".py") for p in SOURCES}
    for unit in units:
        layer_of(unit)


def test_an_upward_import_is_caught(tmp_path):
    module = tmp_path / "bad.py"
    module.write_text("def f():\n    from pneumolab.serving.app import create_app\n")
    assert package_imports(module) == {"pneumolab.serving.app"}  # found inside a function too
    assert layer_of("serving") > layer_of("data")
