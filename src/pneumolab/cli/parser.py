"""The argument parser of the ``pneumolab`` command."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TypeAlias

from pneumolab.choices import BACKENDS, DEFAULT_OPSET, ENGINES, EXPORT_FORMATS, ONNX_OPSETS, SPLITS
from pneumolab.cli import commands as cmd
from pneumolab.cli import run_commands as run_cmd
from pneumolab.cli.config_flags import add_config_flags
from pneumolab.cli.types import PORT, POSITIVE_INT, bounded, target_sensitivity

TTA_HELP = (
    "average each image over fixed test-time views (zoom 1.1, rotations ±5°) and decide at the "
    "run's TTA threshold (chosen on validation scores averaged over the same views)"
)
SHIFT_HELP = "also score under the shift protocol (compound acquisition shifts, 3 draws each)"
KEEP_LABEL_HELP = (
    "give out-of-scope inputs their class label instead of OUT_OF_SCOPE (still flagged: "
    "in_scope false, with the reasons)"
)
Subcommands: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"
"""What ``add_subparsers`` returns: each ``_add_*`` function adds one command to it."""


def add_backend_flags(parser: argparse.ArgumentParser, onnx_note: str = "") -> None:
    """``--backend`` (one of BACKENDS) and ``--export`` (export a missing model.onnx first)."""
    parser.add_argument(
        "--backend",
        choices=BACKENDS,
        default="torch",
        help=f"onnx: onnxruntime on RUN_DIR/model.onnx (from `pneumolab export`{onnx_note}); "
        "onnx-int8, openvino: files written by `pneumolab export --format` after a parity check",
    )
    parser.add_argument(
        "--export",
        action="store_true",
        help="with --backend onnx: export RUN_DIR/model.onnx first if it is missing",
    )


def add_max_megapixels_flag(parser: argparse.ArgumentParser) -> None:
    """``--max-megapixels``: the largest image decoded (refused from its header above it)."""
    parser.add_argument(
        "--max-megapixels",
        type=bounded(float, 0.01, 178),  # Pillow refuses more than 2 x its own limit
        default=50,
        help="largest image decoded, in megapixels (refused from its header; at most 178)",
    )


def _add_data(commands: Subcommands) -> None:
    data = commands.add_parser("data", help="dataset utilities").add_subparsers(
        dest="data_command", required=True
    )
    check = data.add_parser("check", help="counts, patients, duplicates, leakage, unreadable files")
    check.add_argument("data_dir", type=Path)
    check.set_defaults(func=cmd.cmd_data_check)
    fetch = data.add_parser("fetch", help="download and extract the public release")
    fetch.add_argument("--out", type=Path, required=True, help="folder to extract into")
    fetch.add_argument("--from", dest="from_zip", type=Path, help="use an already downloaded zip")
    fetch.add_argument("--url", default=None, help="download address (default: Mendeley Data)")
    fetch.add_argument("--sha256", default=None, help="expected checksum of the zip")
    fetch.set_defaults(func=cmd.cmd_data_fetch)


def _add_models(commands: Subcommands) -> None:
    models = commands.add_parser("models", help="list the available models and their weights")
    models.add_argument("names", nargs="*", help="only these models (any timm name)")
    models.add_argument("--weights", help="local weights file or folder to look in")
    models.set_defaults(func=cmd.cmd_models)


def _add_import_weights(commands: Subcommands) -> None:
    imports = commands.add_parser(
        "import-weights", help="convert another port's ImageNet weights to timm's layout"
    )
    imports.add_argument(
        "source", type=Path, help="the port's .pth/.pt/.bin state dict (its order)"
    )
    imports.add_argument("--model", required=True, help="timm architecture they belong to")
    imports.add_argument("--out", type=Path, required=True, help="weights folder to write into")
    imports.add_argument("--tag", default="imported", help="file name tag (default: imported)")
    imports.add_argument("--overwrite", action="store_true", help="replace an existing file")
    imports.set_defaults(func=cmd.cmd_import_weights)


def _add_train(commands: Subcommands) -> None:
    train = commands.add_parser("train", help="train a model into a run directory")
    train.add_argument("--data", type=Path, required=True, help="dataset root (holds train/)")
    train.add_argument("--out", type=Path, required=True, help="run directory to create")
    train.add_argument(
        "--config", type=Path, help="YAML config (default: the default recipe); flags override it"
    )
    train.add_argument("--resume", action="store_true", help="continue an interrupted run in --out")
    add_config_flags(train)
    train.set_defaults(func=cmd.cmd_train)


def _add_study(commands: Subcommands) -> None:
    study = commands.add_parser(
        "study", help="train and compare every model of a study file; link the best"
    )
    study.add_argument(
        "config",
        type=Path,
        help="study YAML (the lineups: configs/study-*.yaml in the source tree and the sdist)",
    )
    study.add_argument("--data", type=Path, required=True, help="dataset root (holds train/)")
    study.add_argument("--out", type=Path, required=True, help="study directory (resumable)")
    add_config_flags(study, exclude=("model",))  # each flag overrides every model of the study
    study.set_defaults(func=cmd.cmd_study)


def _add_ensemble(commands: Subcommands) -> None:
    ensemble = commands.add_parser(
        "ensemble", help="average finished runs of one split into an ensemble run directory"
    )
    ensemble.add_argument("run_dirs", type=Path, nargs="+", help="member runs (two or more)")
    ensemble.add_argument(
        "--out", type=Path, required=True, help="ensemble run directory to create"
    )
    ensemble.add_argument(
        "--target-sensitivity",
        type=target_sensitivity,
        default=None,
        help="validation sensitivity its threshold keeps (default: the members' own, "
        "0.95 for runs that recorded none)",
    )
    ensemble.set_defaults(func=cmd.cmd_ensemble)


def _add_compare(commands: Subcommands) -> None:
    compare = commands.add_parser("compare", help="compare finished runs on a split")
    compare.add_argument("run_dirs", type=Path, nargs="+")
    compare.add_argument("--data", type=Path, required=True)
    compare.add_argument("--split", choices=SPLITS, default="val")
    compare.add_argument("--out", type=Path, required=True, help="folder for table and figures")
    compare.add_argument(
        "--overwrite", action="store_true", help="replace an earlier comparison in --out"
    )
    compare.add_argument(
        "--robustness", action="store_true", help="add worst-case figures under perturbations"
    )
    compare.add_argument("--shift", action="store_true", help=SHIFT_HELP)
    add_backend_flags(compare)
    compare.set_defaults(func=cmd.cmd_compare)


def _add_evaluate(commands: Subcommands) -> None:
    evaluate = commands.add_parser("evaluate", help="metrics of a run on a split")
    evaluate.add_argument("run_dir", type=Path)
    evaluate.add_argument("--data", type=Path, required=True)
    evaluate.add_argument("--split", choices=SPLITS, default="val")
    evaluate.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    evaluate.add_argument("--tta", action="store_true", help=TTA_HELP)
    evaluate.add_argument(
        "--robustness",
        action="store_true",
        help="also score under contrast/exposure/geometry shifts",
    )
    evaluate.add_argument("--shift", action="store_true", help=SHIFT_HELP)
    add_backend_flags(evaluate)
    evaluate.set_defaults(func=cmd.cmd_evaluate)


def _add_predict(commands: Subcommands) -> None:
    predict = commands.add_parser("predict", help="predict images or folders")
    predict.add_argument("run_dir", type=Path)
    predict.add_argument("paths", nargs="*", type=Path, help="image files or folders")
    predict.add_argument(
        "--manifest", type=Path, help="CSV or Parquet file listing images in a 'path' column"
    )
    predict.add_argument("--json", action="store_true", help="one JSON object per line on stdout")
    predict.add_argument(
        "--out",
        type=Path,
        help="write results to FILE.csv or FILE.jsonl (ray: also FILE.parquet); re-running resumes it",
    )
    predict.add_argument(
        "--overwrite", action="store_true", help="start --out again instead of resuming it"
    )
    predict.add_argument("--batch-size", type=POSITIVE_INT, default=32)
    predict.add_argument("--tta", action="store_true", help=TTA_HELP)
    predict.add_argument("--keep-label", action="store_true", help=KEEP_LABEL_HELP)
    add_backend_flags(predict)
    predict.add_argument(
        "--workers", type=POSITIVE_INT, help="image decoding threads (default: one per core)"
    )
    add_max_megapixels_flag(predict)
    engine = predict.add_argument_group("engine (docs/scaling.md)")
    engine.add_argument(
        "--engine",
        choices=ENGINES,
        default="local",
        help="ray: Ray Data, parallel decoding and model-replica actors; needs --out",
    )
    engine.add_argument("--address", help="Ray cluster address (default: a local Ray)")
    engine.add_argument("--num-workers", type=POSITIVE_INT, help="model replicas (default: 1)")
    engine.add_argument(
        "--cpus-per-worker", type=bounded(float, 0), help="CPUs per replica (default: 1)"
    )
    engine.add_argument(
        "--gpus-per-worker", type=bounded(float, 0), help="GPUs per replica (default: 0)"
    )
    predict.set_defaults(func=run_cmd.cmd_predict)


def _add_fit_ood(commands: Subcommands) -> None:
    fit_ood = commands.add_parser(
        "fit-ood", help="fit (or refit) a finished run's OOD model for the input-scope gate"
    )
    fit_ood.add_argument("run_dir", type=Path, help="single run or ensemble")
    fit_ood.add_argument("--data", type=Path, required=True, help="dataset the run trained on")
    fit_ood.set_defaults(func=run_cmd.cmd_fit_ood)


def _add_audit(commands: Subcommands) -> None:
    audit = commands.add_parser(
        "audit", help="site-shift check of a folder of unlabelled images against validation"
    )
    audit.add_argument("run_dir", type=Path)
    audit.add_argument("folder", type=Path, help="the new site's images (searched recursively)")
    audit.add_argument(
        "--out",
        type=Path,
        help="folder for audit.html/.png/.json, images.csv (default RUN_DIR/audit/<folder name>)",
    )
    audit.add_argument("--batch-size", type=POSITIVE_INT, default=32)
    audit.add_argument("--overwrite", action="store_true", help="replace an earlier audit there")
    add_max_megapixels_flag(audit)
    audit.set_defaults(func=run_cmd.cmd_audit)


def _add_export(commands: Subcommands) -> None:
    export = commands.add_parser("export", help="export a run for serving, verified vs PyTorch")
    export.add_argument("run_dir", type=Path)
    export.add_argument(
        "--format",
        choices=EXPORT_FORMATS,
        default="onnx",
        help="onnx-int8 (static quantisation) and openvino are written only after a parity "
        "check against the fp32 ONNX model on the run's validation images",
    )
    export.add_argument(
        "--out",
        type=Path,
        help="file to write (default RUN_DIR/model.onnx, model.int8.onnx, model.openvino.xml)",
    )
    export.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    export.add_argument(
        "--opset",
        type=bounded(int, ONNX_OPSETS.start, ONNX_OPSETS.stop - 1),
        help=f"ONNX opset version of --format onnx (default: {DEFAULT_OPSET})",
    )
    export.add_argument(
        "--verify",
        nargs="+",
        type=Path,
        help="images or folders to verify on (default: up to 32 of the run's validation images)",
    )
    export.set_defaults(func=run_cmd.cmd_export)


def _add_serve(commands: Subcommands) -> None:
    serve = commands.add_parser("serve", help="HTTP API and web page for a run (FastAPI)")
    serve.add_argument("run_dir", type=Path)
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on")
    serve.add_argument("--port", type=PORT, default=8000)
    add_backend_flags(serve, "; no heat maps")
    serve.add_argument(
        "--max-upload-mb",
        type=bounded(float, 0.001, 10_000),
        default=20,
        help="largest upload (MB)",
    )
    add_max_megapixels_flag(serve)
    serve.add_argument(
        "--max-decodes", type=bounded(int, 1, 64), default=2, help="images decoded at once"
    )
    serve.add_argument(
        "--decode-wait", type=bounded(float, 0, 600), default=10, help="s a request waits to decode"
    )
    serve.add_argument(
        "--header-timeout", type=bounded(float, 0.1, 600), default=10, help="s to send headers"
    )
    serve.add_argument(
        "--body-timeout", type=bounded(float, 0.1, 3600), default=30, help="s to send the body"
    )
    serve.add_argument(
        "--max-connections", type=bounded(int, 1, 100_000), default=64, help="before 503"
    )
    serve.add_argument(
        "--cors-origin", action="append", help="allow browser calls from this origin (repeatable)"
    )
    serve.set_defaults(func=run_cmd.cmd_serve)


def _add_explain(commands: Subcommands) -> None:
    explain = commands.add_parser("explain", help="Grad-CAM heat maps of predictions, as PNGs")
    explain.add_argument("run_dir", type=Path)
    explain.add_argument("images", nargs="+", type=Path, help="image files or folders")
    explain.add_argument("--out", type=Path, required=True, help="folder for the PNGs")
    explain.add_argument("--overwrite", action="store_true", help="replace PNGs already in --out")
    explain.add_argument(
        "--layer",
        metavar="NAME",
        help="the network's module to explain, by its name in torch's named_modules() (e.g. "
        "backbone.blocks.5; an unknown name lists the candidates); default: the last "
        "convolutional feature map larger than 1x1",
    )
    add_max_megapixels_flag(explain)
    explain.set_defaults(func=run_cmd.cmd_explain)


def _add_report(commands: Subcommands) -> None:
    report = commands.add_parser(
        "report", help="self-contained HTML report of a run on a split; refreshes MODEL_CARD.md"
    )
    report.add_argument("run_dir", type=Path)
    report.add_argument("--data", type=Path, required=True)
    report.add_argument("--split", choices=SPLITS, default="val")
    report.add_argument(
        "--out", type=Path, help="HTML file to write (default RUN_DIR/eval/<split>/report.html)"
    )
    report.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    report.set_defaults(func=run_cmd.cmd_report)


COMMANDS = (
    _add_data,
    _add_models,
    _add_import_weights,
    _add_train,
    _add_study,
    _add_ensemble,
    _add_compare,
    _add_evaluate,
    _add_predict,
    _add_fit_ood,
    _add_audit,
    _add_export,
    _add_serve,
    _add_explain,
    _add_report,
)
"""Each adds one command, in the order ``--help`` lists them."""


def build_parser() -> argparse.ArgumentParser:
    """The ``pneumolab`` argument parser."""
    parser = argparse.ArgumentParser(
        prog="pneumolab",
        description="Train, evaluate and apply pneumonia classifiers for pediatric chest X-rays.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    commands = parser.add_subparsers(dest="command", required=True)
    for add_command in COMMANDS:
        add_command(commands)
    return parser
