"""The package's layering (docs/design.md): a module imports only from its own layer or lower ones."""

from __future__ import annotations

import ast
import graphlib
import re
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "pneumolab"

LAYERS: tuple[frozenset[str], ...] = tuple(
    frozenset(names.split())
    for names in (
        "errors choices files results config text allocator once",
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


def root_name_module(name: str) -> str | None:
    """The module a name read from the package root loads: a sub-package or module, a lazily
    exported name (``pneumolab.train``, ``pneumolab.load_run``...); None for ``__version__``."""
    import pneumolab

    if name in pneumolab._LAZY:
        return pneumolab._LAZY[name]
    if (PACKAGE / name).is_dir() or (PACKAGE / f"{name}.py").is_file():
        return f"pneumolab.{name}"
    return None


def package_imports(path: Path, runtime_only: bool = False) -> set[str]:
    """Every ``pneumolab.…`` module a file imports, at any depth (lazy imports included;
    ``from package import submodule`` names the submodule), and the modules behind names it
    takes from the package root (``from pneumolab import train``, ``pneumolab.train``);
    ``runtime_only`` leaves out ``if TYPE_CHECKING:`` blocks. A relative import is an error:
    the layering reads absolute ones."""
    modules: set[str] = set()
    from_root: set[str] = set()
    pending: list[ast.AST] = [ast.parse(path.read_text(), filename=str(path))]
    while pending:
        node = pending.pop()
        if runtime_only and isinstance(node, ast.If) and ast.unparse(node.test) == "TYPE_CHECKING":
            pending.extend(node.orelse)
            continue
        pending.extend(ast.iter_child_nodes(node))
        if isinstance(node, ast.ImportFrom):
            assert node.level == 0, f"{path}:{node.lineno}: relative import; write it absolute"
            if node.module == "pneumolab":
                from_root.update(alias.name for alias in node.names)
            elif node.module:
                modules.update(_imported_module(node.module, alias.name) for alias in node.names)
        elif isinstance(node, ast.Import):
            modules.update(alias.name for alias in node.names)
        elif (
            isinstance(node, ast.Attribute)
            and isinstance(node.value, ast.Name)
            and node.value.id == "pneumolab"
        ):
            from_root.add(node.attr)
    modules.update(m for name in from_root if (m := root_name_module(name)))
    return {m for m in modules if m == "pneumolab" or m.startswith("pneumolab.")}


def _imported_module(module: str, name: str) -> str:
    """``module.name`` where that is a module of the package (``from pneumolab.cli import
    commands``), else ``module``."""
    submodule = f"{module}.{name}"
    source = PACKAGE.parent.joinpath(*submodule.split("."))
    return submodule if source.with_suffix(".py").is_file() or source.is_dir() else module


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
    module.write_text(
        "import pneumolab\nfrom pneumolab import study, __version__\npneumolab.train\n"
    )
    assert package_imports(module) == {"pneumolab", "pneumolab.study", "pneumolab.pipeline.train"}
    module.write_text("from .serving import app\n")
    with pytest.raises(AssertionError, match="relative import"):
        package_imports(module)
    assert layer_of("serving") > layer_of("data")


def test_the_layers_are_those_docs_design_md_lists():
    design = (PACKAGE.parents[1] / "docs" / "design.md").read_text()
    listed = design.split("Layers, lowest first", 1)[1]
    documented = [
        frozenset(re.findall(r"`([a-z_]+)`", line.split(";")[0]))
        for line in re.findall(r"^\d+\. (.*)$", listed, flags=re.MULTILINE)
    ]
    assert tuple(documented) == LAYERS


LAZY_CYCLES = {("pneumolab.data.imageio", "pneumolab.data.dicom")}
"""Imports that close a cycle, each inside a function on purpose: a DICOM file is decoded by
``data.dicom`` (pydicom, imported only for a DICOM file), which builds on ``data.imageio``."""


def module_of(path: Path) -> str:
    """The dotted name of a source file (a package's ``__init__.py``: the package)."""
    parts = path.relative_to(PACKAGE).with_suffix("").parts
    return ".".join(("pneumolab", *(parts[:-1] if parts[-1] == "__init__" else parts)))


def import_graph(sources: list[Path]) -> dict[str, set[str]]:
    """Each module's runtime imports of other modules of the package."""
    graph = {module_of(path): package_imports(path, runtime_only=True) for path in sources}
    return {module: {m for m in imported if m in graph} for module, imported in graph.items()}


def test_no_two_modules_import_each_other():
    """A cycle hidden by a function-level import (``data.layout`` and ``data.patients``, the ONNX
    and OpenVINO backends) works until someone moves the import to the top of the file."""
    graph = import_graph(SOURCES)
    for importer, imported in LAZY_CYCLES:
        graph[importer].discard(imported)
    try:
        graphlib.TopologicalSorter(graph).prepare()
    except graphlib.CycleError as error:
        pytest.fail(f"modules import each other: {' -> '.join(error.args[1])}")


def test_lazy_imports_are_read_and_type_checking_ones_are_not(tmp_path):
    module = tmp_path / "second.py"
    module.write_text("def g():\n    from pneumolab.data.layout import Sample\n")
    assert package_imports(module, runtime_only=True) == {"pneumolab.data.layout"}
    module.write_text(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import pneumolab.data.layout\n"
    )
    assert package_imports(module, runtime_only=True) == set()
    assert package_imports(module) == {"pneumolab.data.layout"}  # the layering reads it
    module.write_text("from pneumolab.cli import commands\n")
    assert package_imports(module) == {"pneumolab.cli.commands"}
