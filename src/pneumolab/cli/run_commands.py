"""Subcommands that apply a trained run: predict, fit-ood, audit, export, serve, explain,
report. One function each: call the Python API, print the result; imports happen when a command
runs (an ONNX ``predict`` loads neither PyTorch nor scikit-learn)."""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import TYPE_CHECKING

from rich.table import Table
from rich.text import Text

from pneumolab.cli.console import console, report_error, say, stdout
from pneumolab.cli.exports import export_if_asked
from pneumolab.cli.flag_checks import RAY_OPTIONS
from pneumolab.errors import ConfigError, ImageLoadError, PneumolabError

if TYPE_CHECKING:
    from pneumolab.inference.manifest import ManifestImages
    from pneumolab.inference.predictor import Predictor


def max_pixels(args: argparse.Namespace) -> int:
    """``--max-megapixels`` in pixels."""
    return int(args.max_megapixels * 1_000_000)


def _predict_to_file(
    args: argparse.Namespace,
    predictor: Predictor,
    paths: list[Path],
    manifest: ManifestImages | None,
) -> int:
    if args.engine == "ray":
        from pneumolab.inference.ray_engine import RayOptions, predict_with_ray

        given = {name: getattr(args, name) for name in RAY_OPTIONS}
        options = RayOptions(
            **{name: value for name, value in given.items() if value is not None},
            batch_size=args.batch_size,
        )
        summary = predict_with_ray(
            predictor, paths, args.out, options, overwrite=args.overwrite, manifest=manifest
        )
    else:
        from pneumolab.inference.batch import predict_to_file

        summary = predict_to_file(
            predictor,
            paths,
            args.out,
            args.batch_size,
            overwrite=args.overwrite,
            workers=args.workers,
            manifest=manifest,
        )
    console.print(
        f"{summary.written} written to {args.out} ({summary.failed} failed, "
        f"{summary.already_done} already there from an earlier run)"
        + ("; the failed images are named in its error column" if summary.failed else "")
    )
    return 1 if summary.failed else 0


def cmd_predict(args: argparse.Namespace) -> int:
    """`pneumolab predict`: classify images or folders, locally or with Ray Data."""
    from pneumolab.inference.batch import each_image_once
    from pneumolab.inference.predictor import Predictor
    from pneumolab.inference.results_file import json_line

    paths = list(args.paths)
    manifest = None
    if args.manifest:
        from pneumolab.inference.manifest import manifest_images
        from pneumolab.outputs import check_apart

        if args.out:  # --overwrite replaced the manifest with the results
            check_apart(args.out, [args.manifest])
        # its images not found are warned about before scoring: a refused --out says only that
        manifest = manifest_images(args.manifest)
        paths += manifest.paths
    if not paths:
        raise ConfigError("nothing to predict: give image files or folders, or --manifest FILE")
    if args.engine == "ray":
        from pneumolab.inference.ray_engine import import_ray

        import_ray()  # before loading anything: without Ray, say how to install it
        if not args.out:
            raise ConfigError(
                "--engine ray writes its results to --out FILE.parquet (or .csv, .jsonl)"
            )
    export_if_asked(args, [args.run_dir])
    predictor = Predictor.from_run(
        args.run_dir,
        backend=args.backend,
        tta=args.tta,
        scope_verdict=not args.keep_label,
        max_pixels=max_pixels(args),
    )
    if args.out:
        return _predict_to_file(args, predictor, paths, manifest)
    if manifest is not None:
        manifest.warn_missing()
    failures = 0
    subtypes = bool(predictor.meta.subtype_names)  # a three-class run: a subtype column
    subtype_column = ["subtype"] if subtypes else []
    table = Table("path", "probability", "label", *subtype_column, "in scope", "why not")
    files = each_image_once(paths)  # one answer per image, as with --out
    for path, result, _ in predictor.score_files(files, args.batch_size, args.workers):
        if isinstance(result, ImageLoadError) and manifest is not None:
            result = ImageLoadError(manifest.noted(path, str(result)))
        if args.json:  # every file given a line, each of the same keys (docs/cli.md)
            line = json_line(str(path), result, predictor.threshold)
            if line["error"] and manifest is not None:  # a score that is not a number
                line["error"] = manifest.noted(path, line["error"])
            print(json.dumps(line), flush=True)
        if isinstance(result, PneumolabError):
            failures += 1
            report_error(result)
            continue
        scored = math.isfinite(result.probability)
        failures += not scored  # an error row with --out too
        if not args.json:
            why = "; ".join(result.reasons + result.warnings)
            if not scored and manifest is not None:  # an error, as its --json line says it
                why = manifest.noted(path, why)
            table.add_row(
                result.source,
                f"{result.probability:.4f}" if scored else "—",
                result.label,
                *([result.subtype or "—"] if subtypes else []),
                "yes" if result.in_scope else Text("no", style="bold red"),
                why,
            )
    if not args.json and table.row_count:  # no empty table above the errors
        stdout.print(table)
    return 1 if failures else 0


def cmd_fit_ood(args: argparse.Namespace) -> int:
    """`pneumolab fit-ood`: fit (or refit) a finished run's input-scope gate."""
    from pneumolab.pipeline.ood_fit import fit_run_ood

    ood = fit_run_ood(args.run_dir, args.data)
    say(
        f"OOD model ({ood.method}) written to ",
        (str(args.run_dir / "ood.safetensors"), "bold"),
        f": threshold {ood.threshold:.1f}, flags {ood.val_flagged_fraction:.1%} of "
        f"{len(ood.clean_val_scores)} validation images and as many augmented copies",
    )
    return 0


def cmd_audit(args: argparse.Namespace) -> int:
    """`pneumolab audit`: scope and score a site's folder, write the audit page."""
    from pneumolab.evaluation.metrics import format_share
    from pneumolab.reporting.audit_page import audit_into

    out = args.out or args.run_dir / "audit" / args.folder.resolve().name
    audit, files = audit_into(
        args.run_dir, args.folder, out, args.overwrite, args.batch_size, max_pixels(args)
    )
    summary = audit.summary()
    stdout.print(
        f"{summary.images} images ({summary.unreadable} unreadable), "
        f"{format_share(summary.out_of_scope_share)} out of scope; predicted pneumonia "
        f"{format_share(summary.predicted_pneumonia_rate)} of those in scope (validation: "
        f"{format_share(summary.val_predicted_pneumonia_rate)} of all its images)"
    )
    say((audit.verdict, "bold"), on=stdout)
    for reason in audit.verdict_reasons:
        stdout.print(f"  - {reason}")
    console.print(f"page: {files['html']}; figure: {files['figure']}; per image: {files['csv']}")
    return 1 if summary.unreadable else 0


def cmd_export(args: argparse.Namespace) -> int:
    """`pneumolab export`: write ONNX (fp32, INT8) or OpenVINO files, checked for parity."""
    if args.format != "onnx":
        from pneumolab.serving.accelerate import export_int8, export_openvino

        export = export_int8 if args.format == "onnx-int8" else export_openvino
        parity = export(args.run_dir, args.out, overwrite=args.overwrite)
        console.print(f"exported {args.format}; parity with fp32 on {parity.summary()}")
        return 0
    from pneumolab.choices import DEFAULT_OPSET
    from pneumolab.inference.inputs import expand_paths
    from pneumolab.serving.export import export_onnx

    # images to score, not files to answer: one of a format not read is passed over
    verify = expand_paths(args.verify, unread_formats=False) if args.verify else None
    opset = DEFAULT_OPSET if args.opset is None else args.opset
    report = export_onnx(
        args.run_dir, args.out, verify_images=verify, opset=opset, overwrite=args.overwrite
    )
    say(
        "exported ", (str(report.file), "bold"), f" (ONNX opset {report.opset}); {report.summary()}"
    )
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    """`pneumolab serve`: the HTTP API and web page of a run."""
    from pneumolab.serving.limits import ServerLimits, check_listen_address, run_server

    check_listen_address(args.host, args.port)  # before the app's imports (PyTorch: seconds)
    from pneumolab.serving.app import create_app

    export_if_asked(args, [args.run_dir])
    limits = ServerLimits(
        max_upload_bytes=int(args.max_upload_mb * 1_000_000),
        max_pixels=max_pixels(args),
        max_decodes=args.max_decodes,
        decode_wait_s=args.decode_wait,
        header_timeout_s=args.header_timeout,
        body_timeout_s=args.body_timeout,
        max_connections=args.max_connections,
    )
    app = create_app(
        args.run_dir, backend=args.backend, limits=limits, cors_origins=args.cors_origin
    )
    url = f"http://{args.host}:{args.port}/" if args.port else f"{args.host}, on a free port"
    say(
        f"serving {args.run_dir} at ",
        (url, "bold"),
        " (API docs at /docs; uvicorn logs the address)",
    )
    run_server(app, args.host, args.port, limits)
    return 0


def cmd_explain(args: argparse.Namespace) -> int:
    """`pneumolab explain`: Grad-CAM overlays of images."""
    from pneumolab.explain.gradcam import explain_paths

    failures = 0
    explained = explain_paths(
        args.run_dir,
        args.images,
        args.out,
        overwrite=args.overwrite,
        max_pixels=max_pixels(args),
        layer=args.layer,
    )
    for result in explained:
        if isinstance(result, PneumolabError):
            failures += 1
            report_error(result)
        else:
            console.print(f"wrote {result}")
    return 1 if failures else 0


def cmd_report(args: argparse.Namespace) -> int:
    """`pneumolab report`: the HTML report of a run on a split."""
    from pneumolab.reporting.model_card import CARD_NAME, CARD_SPLIT
    from pneumolab.reporting.report import build_report

    out = build_report(args.run_dir, args.data, args.split, args.out, overwrite=args.overwrite)
    card = f" and {args.run_dir / CARD_NAME}" if args.split == CARD_SPLIT else ""
    console.print(f"wrote {out}{card}")
    return 0
