"""Command-line interface: parse arguments, call the Python API, print results. No logic of its own."""

from __future__ import annotations

import argparse
import json
import logging
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path

from rich.console import Console
from rich.logging import RichHandler
from rich.markup import escape
from rich.table import Table

from pneumolab.errors import ImageLoadError, PneumolabError
from pneumolab.evaluation.metrics import SCALAR_METRICS, format_metric

console = Console(stderr=True, soft_wrap=True, width=None if sys.stderr.isatty() else 160)
stdout = Console(width=None if sys.stdout.isatty() else 200)  # tables: no truncated paths in logs
TTA_HELP = "average each image over fixed test-time views (zoom 1.1, rotations ±5°)"
METRIC_KEYS = ("n", *SCALAR_METRICS, "threshold")


def _metrics_table(metrics: dict, title: str) -> Table:
    intervals = metrics.get("ci95") or {}
    table = Table(title=title)
    table.add_column("metric")
    table.add_column("value", justify="right")
    if intervals:
        table.add_column("95% CI (patient bootstrap)", justify="right")
    for key in (k for k in METRIC_KEYS if k in metrics):
        row = [key, format_metric(metrics[key])]
        if intervals:
            low_high = intervals.get(key)
            row.append(f"{low_high[0]:.4f} – {low_high[1]:.4f}" if low_high else "")
        table.add_row(*row)
    (tn, fp), (fn, tp) = metrics["confusion_matrix"]
    table.add_row(escape("confusion [[tn, fp], [fn, tp]]"), escape(f"[[{tn}, {fp}], [{fn}, {tp}]]"))
    return table


def _operating_points_table(metrics: dict) -> Table:
    table = Table(
        "operating point",
        "threshold",
        "sensitivity",
        "specificity",
        "provenance",
        title="operating points (chosen on validation)",
    )
    for name, point in (metrics.get("operating_points") or {}).items():
        m = point["metrics"]
        table.add_row(
            name,
            format_metric(point["threshold"]),
            format_metric(m["sensitivity"]),
            format_metric(m["specificity"]),
            point["provenance"],
        )
    oracle = metrics.get("oracle")
    if oracle:
        m = oracle["metrics"]
        table.add_row(
            "[yellow]oracle (diagnosis only)[/]",
            format_metric(oracle["threshold"]),
            format_metric(m["sensitivity"]),
            format_metric(m["specificity"]),
            oracle["note"],
        )
    return table


def _robustness_table(report: dict[str, dict[str, float]]) -> Table:
    table = Table(
        "perturbation", "roc_auc", "accuracy", "sensitivity", "specificity", title="robustness"
    )
    for name, row in report.items():
        table.add_row(
            name, *(f"{row[k]:.4f}" for k in ("roc_auc", "accuracy", "sensitivity", "specificity"))
        )
    return table


def cmd_models(args: argparse.Namespace) -> int:
    from pneumolab.models.catalog import STUDY_MODELS, describe_model

    table = Table("model", "family", "parameters", "input", "ImageNet weights", title="models")
    for name in args.names or STUDY_MODELS:
        info = describe_model(name, args.weights)
        table.add_row(
            info.name, info.family, f"{info.parameters:,}", str(info.input_size), info.weights
        )
    stdout.print(table)
    console.print("Any other timm architecture name works too (see timm.list_models()).")
    return 0


def cmd_data_check(args: argparse.Namespace) -> int:
    from pneumolab.data.check import check_dataset

    report = check_dataset(args.data_dir)
    table = Table(title=f"{report.root}")
    for column in ("split", "NORMAL", "PNEUMONIA", "patients"):
        table.add_column(column, justify="right")
    for split, counts in report.counts.items():
        table.add_row(
            split, str(counts["NORMAL"]), str(counts["PNEUMONIA"]), str(report.patients[split])
        )
    console.print(table)
    console.print(
        f"byte-identical duplicate groups: {len(report.duplicate_groups)} "
        f"({len(report.cross_split_duplicates)} across splits)"
    )
    for group in report.cross_split_duplicates:
        console.print(f"  [yellow]across splits:[/] {', '.join(map(str, group))}")
    for pair, ids in report.patient_overlap.items():
        style = "yellow" if ids else "green"
        console.print(f"patients in both {pair}: [{style}]{len(ids)}[/] {' '.join(ids[:10])}")
    console.print(f"unreadable files: {len(report.unreadable)}")
    for problem in report.unreadable:
        console.print(f"  [red]{problem}[/]")
    return 0


def cmd_data_fetch(args: argparse.Namespace) -> int:
    from pneumolab.data.fetch import DEFAULT_URL, fetch

    root = fetch(args.out, url=args.url or DEFAULT_URL, from_zip=args.from_zip, sha256=args.sha256)
    console.print(f"dataset ready at [bold]{root}[/]")
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from pneumolab.config import resolve_config
    from pneumolab.training.train import train

    overrides = {
        "model": args.model,
        "epochs": args.epochs,
        "image_size": args.image_size,
        "seed": args.seed,
        "weights": args.weights,
        "pretrained": args.pretrained,
        "max_train_images": args.max_train_images,
        "batch_size": args.batch_size,
    }
    config = None if args.resume else resolve_config(args.config, overrides)
    run = train(args.data, args.out, config, resume=args.resume)
    meta = run.read_meta()
    console.print(
        _metrics_table(meta["val_metrics"], f"validation (patient-grouped) — {meta['model']}")
    )
    official = meta.get("official_val_metrics")
    if official:
        console.print(
            f"official val/ folder (reported, not used for selection): n={official['n']}, "
            f"accuracy {official['accuracy']:.3f}, sensitivity {official['sensitivity']:.3f}, "
            f"specificity {official['specificity']:.3f}"
        )
    console.print(f"trained in {meta['train_seconds']:.0f}s; run written to [bold]{run.root}[/]")
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from pneumolab.evaluation.evaluate import evaluate

    metrics = evaluate(
        args.run_dir, args.data, args.split, robustness=args.robustness, tta=args.tta
    )
    if args.json:
        print(json.dumps(metrics))
    else:
        console.print(_metrics_table(metrics, f"{args.split} — {metrics['model']}"))
        console.print(_operating_points_table(metrics))
        if args.robustness:
            console.print(_robustness_table(metrics["robustness"]))
        console.print(f"written to {Path(args.run_dir) / 'eval' / args.split}")
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    from pneumolab.inference.predictor import Predictor

    predictor = Predictor.from_run(args.run_dir, backend=args.backend, tta=args.tta)
    if args.out:
        from pneumolab.inference.batch import predict_to_file

        summary = predict_to_file(predictor, args.paths, args.out, args.batch_size)
        console.print(
            f"{summary.written} written to {args.out} ({summary.failed} failed, "
            f"{summary.already_done} already there from an earlier run)"
        )
        return 1 if summary.failed else 0
    failures = 0
    table = Table("path", "probability", "label")
    for result in predictor.predict_paths(args.paths, args.batch_size):
        if isinstance(result, ImageLoadError):
            failures += 1
            console.print(f"[red]error:[/] {result}")
        elif args.json:
            print(json.dumps(result.to_dict()), flush=True)
        else:
            table.add_row(result.source, f"{result.probability:.4f}", result.label)
    if not args.json:
        stdout.print(table)
    return 1 if failures else 0


def cmd_export(args: argparse.Namespace) -> int:
    from pneumolab.inference.predictor import expand_paths
    from pneumolab.serving.export import ONNX_FILE_NAME, export_onnx

    out = args.out or args.run_dir / ONNX_FILE_NAME
    verify = expand_paths(args.verify) if args.verify else None
    report = export_onnx(args.run_dir, out, verify_images=verify, opset=args.opset)
    labels = (
        "identical"
        if report["labels_identical"]
        else f"{report['label_flips']} differ (scores within {report['tolerance']:.0e} of it)"
    )
    console.print(
        f"exported [bold]{report['file']}[/] (ONNX opset {report['opset']}); verified on "
        f"{report['verified_on']}: max |Δprob| vs PyTorch {report['max_abs_diff']:.1e}, "
        f"labels at the threshold: {labels}"
    )
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    import uvicorn

    from pneumolab.serving.app import create_app

    app = create_app(
        args.run_dir,
        backend=args.backend,
        max_upload_bytes=int(args.max_upload_mb * 1_000_000),
        cors_origins=args.cors_origin,
    )
    console.print(
        f"serving {args.run_dir} at [bold]http://{args.host}:{args.port}/[/] (API docs at /docs)"
    )
    uvicorn.run(app, host=args.host, port=args.port)
    return 0


def cmd_explain(args: argparse.Namespace) -> int:
    from pneumolab.explain.gradcam import explain_paths

    failures = 0
    for result in explain_paths(args.run_dir, args.images, args.out):
        if isinstance(result, ImageLoadError):
            failures += 1
            console.print(f"[red]error:[/] {result}")
        else:
            console.print(f"wrote {result}")
    return 1 if failures else 0


def cmd_report(args: argparse.Namespace) -> int:
    from pneumolab.reporting.model_card import write_model_card
    from pneumolab.reporting.report import build_report
    from pneumolab.run import RunDir

    out = build_report(args.run_dir, args.data, args.split, args.out)
    card = write_model_card(RunDir(args.run_dir))
    console.print(f"wrote {out} and {card}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The ``pneumolab`` argument parser."""
    parser = argparse.ArgumentParser(
        prog="pneumolab",
        description="Train, evaluate and apply pneumonia classifiers for pediatric chest X-rays.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    commands = parser.add_subparsers(dest="command", required=True)

    data = commands.add_parser("data", help="dataset utilities").add_subparsers(
        dest="data_command", required=True
    )
    check = data.add_parser("check", help="counts, patients, duplicates, leakage, unreadable files")
    check.add_argument("data_dir", type=Path)
    check.set_defaults(func=cmd_data_check)
    fetch = data.add_parser("fetch", help="download and extract the public release")
    fetch.add_argument("--out", type=Path, required=True, help="folder to extract into")
    fetch.add_argument("--from", dest="from_zip", type=Path, help="use an already downloaded zip")
    fetch.add_argument("--url", default=None, help="download address (default: Mendeley Data)")
    fetch.add_argument("--sha256", default=None, help="expected checksum of the zip")
    fetch.set_defaults(func=cmd_data_fetch)

    models = commands.add_parser("models", help="list the available models and their weights")
    models.add_argument("names", nargs="*", help="only these models (any timm name)")
    models.add_argument("--weights", help="local weights file or folder to look in")
    models.set_defaults(func=cmd_models)

    train = commands.add_parser("train", help="train a model into a run directory")
    train.add_argument("--data", type=Path, required=True, help="dataset root (holds train/)")
    train.add_argument("--out", type=Path, required=True, help="run directory to create")
    train.add_argument("--config", type=Path, help="YAML config; flags below override it")
    train.add_argument("--model", help="timm model name or pneumolab CNN")
    train.add_argument("--epochs", type=int)
    train.add_argument("--image-size", type=int)
    train.add_argument("--batch-size", type=int)
    train.add_argument("--seed", type=int)
    train.add_argument("--weights", help="local ImageNet weights file or folder")
    train.add_argument("--pretrained", action=argparse.BooleanOptionalAction, default=None)
    train.add_argument(
        "--max-train-images", type=int, help="stratified subset of train (quick runs)"
    )
    train.add_argument("--resume", action="store_true", help="continue an interrupted run in --out")
    train.set_defaults(func=cmd_train)

    evaluate = commands.add_parser("evaluate", help="metrics of a run on a split")
    evaluate.add_argument("run_dir", type=Path)
    evaluate.add_argument("--data", type=Path, required=True)
    evaluate.add_argument("--split", choices=("val", "test"), default="val")
    evaluate.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    evaluate.add_argument("--tta", action="store_true", help=TTA_HELP)
    evaluate.add_argument(
        "--robustness",
        action="store_true",
        help="also score under contrast/exposure/geometry shifts",
    )
    evaluate.set_defaults(func=cmd_evaluate)

    predict = commands.add_parser("predict", help="predict images or folders")
    predict.add_argument("run_dir", type=Path)
    predict.add_argument("paths", nargs="+", type=Path)
    predict.add_argument("--json", action="store_true", help="one JSON object per line on stdout")
    predict.add_argument(
        "--out", type=Path, help="stream results to FILE.csv or FILE.jsonl; re-running resumes it"
    )
    predict.add_argument("--batch-size", type=int, default=32)
    predict.add_argument("--tta", action="store_true", help=TTA_HELP)
    predict.add_argument(
        "--backend",
        choices=("torch", "onnx"),
        default="torch",
        help="onnx: onnxruntime on RUN_DIR/model.onnx (exported on first use)",
    )
    predict.set_defaults(func=cmd_predict)

    export = commands.add_parser("export", help="export a run for serving, verified vs PyTorch")
    export.add_argument("run_dir", type=Path)
    export.add_argument("--format", choices=("onnx",), default="onnx")
    export.add_argument("--out", type=Path, help="file to write (default RUN_DIR/model.onnx)")
    export.add_argument("--opset", type=int, default=17, help="ONNX opset version")
    export.add_argument(
        "--verify",
        nargs="+",
        type=Path,
        help="images or folders to verify on (default: up to 32 of the run's validation images)",
    )
    export.set_defaults(func=cmd_export)

    serve = commands.add_parser("serve", help="HTTP API and web page for a run (FastAPI)")
    serve.add_argument("run_dir", type=Path)
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument(
        "--backend",
        choices=("torch", "onnx"),
        default="torch",
        help="onnx: onnxruntime on RUN_DIR/model.onnx (no heat maps)",
    )
    serve.add_argument("--max-upload-mb", type=float, default=20, help="largest upload (MB)")
    serve.add_argument(
        "--cors-origin", action="append", help="allow browser calls from this origin (repeatable)"
    )
    serve.set_defaults(func=cmd_serve)

    explain = commands.add_parser("explain", help="Grad-CAM heat maps of predictions, as PNGs")
    explain.add_argument("run_dir", type=Path)
    explain.add_argument("images", nargs="+", type=Path, help="image files or folders")
    explain.add_argument("--out", type=Path, required=True, help="folder for the PNGs")
    explain.set_defaults(func=cmd_explain)

    report = commands.add_parser(
        "report", help="self-contained HTML report of a run on a split; refreshes MODEL_CARD.md"
    )
    report.add_argument("run_dir", type=Path)
    report.add_argument("--data", type=Path, required=True)
    report.add_argument("--split", choices=("val", "test"), default="val")
    report.add_argument(
        "--out", type=Path, help="HTML file to write (default RUN_DIR/eval/<split>/report.html)"
    )
    report.set_defaults(func=cmd_report)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``pneumolab`` console script."""
    args = build_parser().parse_args(argv)
    handler = RichHandler(console=console, show_path=False, show_time=False)
    package_log = logging.getLogger("pneumolab")
    package_log.setLevel(logging.DEBUG if args.verbose else logging.INFO)
    if not package_log.handlers:
        package_log.addHandler(handler)
    warnings.filterwarnings("ignore", message=".*LeafSpec.*")  # Lightning-internal deprecation
    try:
        return args.func(args)
    except PneumolabError as exc:
        console.print(f"[bold red]error:[/] {exc}")
        return 2
    except KeyboardInterrupt:
        console.print("[yellow]interrupted[/]; a training run can be continued with --resume")
        return 130


if __name__ == "__main__":
    sys.exit(main())
