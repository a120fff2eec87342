"""``--backend onnx --export``: export what a command is about to score where it is missing."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

from pneumolab.cli.console import console


def export_if_asked(args: argparse.Namespace, run_dirs: Sequence[Path]) -> None:
    """With ``--backend onnx --export``: export every network of ``run_dirs`` (each member of an
    ensemble) that has no ``model.onnx`` yet, and say so. Without ``--export`` nothing is
    written, and PyTorch is loaded only when something is missing."""
    if args.backend != "onnx" or not args.export:
        return
    from pneumolab.run import RunDir

    if not any(RunDir(run_dir).missing_onnx() for run_dir in run_dirs):
        return
    from pneumolab.serving.export import export_missing  # loads PyTorch

    for path, report in export_missing(run_dirs).items():
        console.print(
            f"{path} was missing: exported (--export); "
            f"max |Δprob| vs PyTorch {report.max_abs_diff:.1e}"
        )
