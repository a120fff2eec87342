"""What a user's type checker and an import of the package see."""

from __future__ import annotations

import ast
import tomllib
from pathlib import Path

import pytest

import pneumolab

SRC = Path(pneumolab.__file__).parent
ROOT = SRC.parents[1]


def test_the_package_ships_its_type_hints() -> None:
    """Without py.typed, mypy skipped pneumolab ("missing library stubs or py.typed marker")
    and saw every public name as Any."""
    assert (SRC / "py.typed").is_file()
    settings = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert "py.typed" in settings["tool"]["setuptools"]["package-data"]["pneumolab"]


def test_type_checkers_see_every_lazy_name() -> None:
    """Seven of the eleven lazy names fell through to ``__getattr__`` (Any) for type checkers."""
    tree = ast.parse((SRC / "__init__.py").read_text())
    block = next(
        node
        for node in tree.body
        if isinstance(node, ast.If) and getattr(node.test, "id", "") == "_TYPE_CHECKING"
    )
    declared = {
        alias.asname or alias.name
        for node in block.body
        if isinstance(node, ast.ImportFrom)
        for alias in node.names
    }
    assert declared | {"__version__"} == set(pneumolab.__all__)


def test_a_run_dir_is_path_like(tiny_run) -> None:
    """``train`` returns a RunDir, which no other function took (``TypeError: expected str,
    bytes or os.PathLike object, not RunDir``)."""
    from pneumolab.run import RunDir

    run = RunDir(tiny_run[0])
    assert pneumolab.load_run(run).run_dir == tiny_run[0]


def test_train_takes_a_config_file_and_refuses_other_types(tmp_path) -> None:
    """A config file's path reached the trainer as a string (AttributeError: 'str' object has
    no attribute 'distributed_strategy')."""
    from pneumolab.errors import ConfigError

    config = tmp_path / "config.yaml"
    config.write_text("epochs: -1\n")
    with pytest.raises(ConfigError, match=f"{config}: invalid training config"):
        pneumolab.train(tmp_path / "data", tmp_path / "run", str(config))
    with pytest.raises(TypeError, match="not int"):
        pneumolab.train(tmp_path / "data", tmp_path / "run", 5)  # type: ignore[arg-type]


def test_the_public_functions_type_hints_resolve() -> None:
    """A quoted alias left ``get_type_hints(pneumolab.train)`` a NameError (Mapping), for tools
    that read hints at run time (pydantic's validate_call, Sphinx)."""
    import typing

    for name in ("train", "evaluate", "load_run", "build_ensemble", "run_study"):
        typing.get_type_hints(getattr(pneumolab, name))
