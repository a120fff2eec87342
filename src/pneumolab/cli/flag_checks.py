"""Flags that act only together with another one: argparse checks each flag alone, so a flag
the command would ignore is refused here, before anything loads, instead of doing nothing."""

from __future__ import annotations

import argparse
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from pneumolab.errors import ConfigError

if TYPE_CHECKING:
    from pneumolab.config import TrainConfig

RAY_OPTIONS = ("address", "num_workers", "cpus_per_worker", "gpus_per_worker")
"""``predict`` options of the Ray engine (their flags default to None: RayOptions' defaults)."""


def _flag(option: str) -> str:
    return "--" + option.replace("_", "-")


def ignored_flags(args: argparse.Namespace) -> list[str]:
    """Each given flag the parsed command would ignore, with what it needs."""
    ignored = []
    if getattr(args, "export", False) and args.backend != "onnx":
        ignored.append("--export without --backend onnx (it writes the missing model.onnx)")
    if args.command == "export" and args.format != "onnx":
        ignored += [
            f"{flag} with --format {args.format} (it converts the run's model.onnx)"
            for flag, given in (("--opset", args.opset is not None), ("--verify", args.verify))
            if given
        ]
    if args.command == "data" and args.data_command == "fetch" and args.from_zip and args.url:
        ignored.append("--url with --from (the local zip is unpacked, nothing is downloaded)")
    if args.command == "report" and args.overwrite and args.out is None:
        ignored.append("--overwrite without --out (the run's own report.html is always replaced)")
    if args.command != "predict":
        return ignored
    if args.overwrite and args.out is None:
        ignored.append("--overwrite without --out (it starts the --out file again)")
    if args.json and args.out is not None:
        ignored.append("--json with --out (the results go to the --out file, not to stdout)")
    if args.engine == "ray" and args.workers is not None:
        ignored.append("--workers with --engine ray (Ray decodes in its own tasks)")
    if args.engine != "ray":
        ignored += [
            f"{_flag(option)} without --engine ray"
            for option in RAY_OPTIONS
            if getattr(args, option) is not None
        ]
    return ignored


def refuse_ignored_flags(args: argparse.Namespace) -> None:
    """ConfigError listing every flag of ``args`` the command would ignore; None if there is none."""
    ignored = ignored_flags(args)
    if ignored:
        raise ConfigError(f"these flags would be ignored: {'; '.join(ignored)}")


def refuse_inert_flags(configs: Sequence[TrainConfig], given: Mapping[str, Any]) -> None:
    """ConfigError listing each training flag ``given`` that none of ``configs`` (the config
    file and flags together; a study's models) reads (:func:`~pneumolab.config.inert_settings`)."""
    from pneumolab.config import inert_settings

    inert = [inert_settings(config) for config in configs]
    ignored = [
        f"{_flag(name)} {inert[0][name]}"
        for name, value in given.items()
        if value is not None and inert and all(name in settings for settings in inert)
    ]
    if ignored:
        raise ConfigError(f"these flags would be ignored: {'; '.join(ignored)}")
