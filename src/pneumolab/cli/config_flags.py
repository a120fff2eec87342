"""Command-line flags generated from :class:`~pneumolab.config.TrainConfig`: one flag per field
(``image_size`` -> ``--image-size``) whose type, choices and help come from the field, so no
setting or list of choices is typed twice."""

from __future__ import annotations

import argparse
import types
from collections.abc import Collection
from typing import Any, Literal, Union, get_args, get_origin

from pydantic.fields import FieldInfo

from pneumolab.config import OPTIONAL_NUMBERS, TrainConfig


def _number_or_none(kind: type) -> Any:
    """An argparse type: a number of ``kind``, or the word ``none`` (TrainConfig reads it as
    None), so that a flag can switch off what the config file set."""

    def parse(text: str) -> Any:
        return "none" if text.strip().lower() == "none" else kind(text)

    parse.__name__ = f"{kind.__name__} or none"  # argparse names the type in its error
    return parse


def _value_type(annotation: Any) -> Any:
    """``X`` of ``X | None``; the annotation itself otherwise."""
    if get_origin(annotation) in (Union, types.UnionType):
        arms = [arm for arm in get_args(annotation) if arm is not type(None)]
        if len(arms) == 1:
            return arms[0]
    return annotation


def _flag_options(name: str, field: FieldInfo) -> dict[str, Any]:
    """``add_argument`` keywords for one field: type or choices or a --flag/--no-flag pair."""
    kind = _value_type(field.annotation)
    default = "none" if field.default is None else field.default
    description = (field.description or "").replace("%", "%%")
    options: dict[str, Any] = {"help": f"{description} (default: {default})".lstrip()}
    if kind is bool:
        options["action"] = argparse.BooleanOptionalAction
    elif get_origin(kind) is Literal:
        options["choices"] = get_args(kind)
    elif name in OPTIONAL_NUMBERS:
        options["type"] = _number_or_none(kind)
    elif kind in (int, float, str):
        options["type"] = kind
    else:
        raise TypeError(f"TrainConfig field of type {kind!r} has no command-line form")
    return options


def add_config_flags(parser: argparse.ArgumentParser, exclude: Collection[str] = ()) -> None:
    """One flag per TrainConfig field (but ``exclude``); an unset flag is None (no override)."""
    group = parser.add_argument_group("training settings (override the config file)")
    for name, field in TrainConfig.model_fields.items():
        if name not in exclude:
            flag = "--" + name.replace("_", "-")
            group.add_argument(flag, dest=name, default=None, **_flag_options(name, field))


def config_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """The TrainConfig settings given as flags (unset ones are None and override nothing)."""
    return {name: getattr(args, name) for name in TrainConfig.model_fields if hasattr(args, name)}
