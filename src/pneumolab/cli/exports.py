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

    missing = {  # by resolved path: a run given beside an ensemble it is a member of, once
        single.root.resolve(): single
        for run_dir in run_dirs
        for single in RunDir(run_dir).missing_onnx()
    }
    if not missing:
        return
    from pneumolab.serving.export import export_onnx  # loads PyTorch

    for single in missing.values():
        report = export_onnx(single.root, single.onnx)
        console.print(
            f"{single.onnx} was missing: exported (--export); "
            f"max |Δprob| vs PyTorch {report['max_abs_diff']:.1e}"
        )
