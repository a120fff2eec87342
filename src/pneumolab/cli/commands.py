"""Subcommands that prepare data and train, evaluate and compare runs (those that apply a run:
:mod:`pneumolab.cli.run_commands`). One function each: call the Python API, print the result.

Each command imports what it needs when it runs (``pneumolab --help`` and an ONNX ``predict``
load neither PyTorch nor scikit-learn)."""

from __future__ import annotations

import argparse
from pathlib import Path

from rich.table import Table

from pneumolab.cli.console import console, say, stdout
from pneumolab.cli.exports import export_if_asked
from pneumolab.errors import ConfigError


def cmd_models(args: argparse.Namespace) -> int:
    """`pneumolab models`: the catalogue of model names, with sizes and offline weights."""
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


def cmd_import_weights(args: argparse.Namespace) -> int:
    """`pneumolab import-weights`: convert a weights file to a model's timm keys, verified."""
    from pneumolab.models.weights_import import import_weights

    written = import_weights(args.source, args.model, args.out, args.tag, args.overwrite)
    say(
        f"'{args.model}' weights written to ",
        (str(written), "bold"),
        "; train with --weights ",
        (str(args.out), "bold"),
    )
    return 0


def cmd_data_check(args: argparse.Namespace) -> int:
    """`pneumolab data check`: images per split and class, patients, duplicates, bad files."""
    from pneumolab.data.check import check_dataset
    from pneumolab.data.classes import CLASS_NAMES
    from pneumolab.data.patients import PATIENT_SCHEMES

    report = check_dataset(args.data_dir)
    table = Table(title=f"{report.root}")
    for column in ("split", *CLASS_NAMES, "patients"):
        table.add_column(column, justify="right")
    for split, counts in report.counts.items():
        classes = [str(counts[name]) for name in CLASS_NAMES]
        table.add_row(split, *classes, str(report.patients[split]))
    stdout.print(table)
    stdout.print(
        f"byte-identical duplicate groups: {len(report.duplicate_groups)} "
        f"({len(report.cross_split_duplicates)} across splits)"
    )
    for group in report.cross_split_duplicates:
        say(("  across splits: ", "yellow"), ", ".join(map(str, group)), on=stdout)
    for group in report.conflicting_labels:  # one image, two labels: label noise
        say(("  under two classes: ", "red"), ", ".join(map(str, group)), on=stdout)
    for pair, ids in report.patient_overlap.items():
        style = "yellow" if ids else "green"
        say(
            f"patients in both {pair}: ",
            (str(len(ids)), style),
            f" {' '.join(ids[:10])}",
            on=stdout,
        )
    if report.unnamed_patients:
        say(
            ("images without a patient ID: ", "yellow"),
            f"{len(report.unnamed_patients)} (each its own patient; read from {PATIENT_SCHEMES}; "
            f"first: {report.unnamed_patients[0]})",
            on=stdout,
        )
    stdout.print(f"unreadable files: {len(report.unreadable)}")
    for problem in report.unreadable:
        say(("  " + problem, "red"), on=stdout)
    for split, problem in report.layout_problems.items():
        say((f"{split}/ not checked: ", "red"), problem, on=stdout)
    return 2 if report.layout_problems else 1 if report.problems else 0


def cmd_data_fetch(args: argparse.Namespace) -> int:
    """`pneumolab data fetch`: download the dataset (or unpack a local zip of it) and verify it."""
    from pneumolab.data.fetch import DEFAULT_URL, fetch

    root = fetch(args.out, url=args.url or DEFAULT_URL, from_zip=args.from_zip, sha256=args.sha256)
    say("dataset ready at ", (str(root), "bold"))
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    """`pneumolab train`: train one model from the config file and flags, print its metrics."""
    from pneumolab.cli.config_flags import config_overrides
    from pneumolab.cli.flag_checks import refuse_inert_flags
    from pneumolab.cli.tables import metrics_table
    from pneumolab.config import resolve_config
    from pneumolab.pipeline.train import train
    from pneumolab.training.distributed import global_rank

    overrides = config_overrides(args)
    given = [f"--{k.replace('_', '-')}" for k, v in overrides.items() if v is not None]
    given += ["--config"] if args.config else []
    if args.resume and given:
        raise ConfigError(
            f"--resume continues {args.out} with its stored config.yaml, so {', '.join(given)} "
            "would be ignored: drop them, or train a new run into another --out"
        )
    config = None if args.resume else resolve_config(args.config, overrides)
    if config is not None:
        refuse_inert_flags([config], overrides)
    run = train(args.data, args.out, config, resume=args.resume)
    if global_rank() != 0:  # rank 0 finishes the run and reports it
        return 0
    meta = run.read_meta()
    stdout.print(metrics_table(meta.val_metrics, f"validation (patient-grouped) — {meta.model}"))
    official = meta.official_val_metrics
    if official is not None:
        stdout.print(
            f"official val/ folder (reported, not used for selection): n={official.n}, "
            f"accuracy {official.accuracy:.3f}, sensitivity {official.sensitivity:.3f}, "
            f"specificity {official.specificity:.3f}"
        )
    say(f"trained in {meta.train_seconds:.0f}s; run written to ", (str(run.root), "bold"))
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    """`pneumolab evaluate`: score a run on a split (robustness, shift, TTA on request); on
    validation, the model card is rewritten with the evaluation's intervals."""
    from pneumolab.cli.tables import (
        metrics_table,
        operating_points_table,
        robustness_table,
        shift_table,
        subtypes_table,
    )
    from pneumolab.pipeline.evaluate import evaluate, refreshes_card
    from pneumolab.reporting.model_card import CARD_NAME

    export_if_asked(args, [args.run_dir])
    metrics = evaluate(
        args.run_dir,
        args.data,
        args.split,
        robustness=args.robustness,
        tta=args.tta,
        shift=args.shift,
        backend=args.backend,
    )
    if args.json:
        print(metrics.to_json())
    else:
        stdout.print(metrics_table(metrics, f"{args.split} — {metrics.model}"))
        stdout.print(operating_points_table(metrics))
        if metrics.robustness is not None:
            stdout.print(robustness_table(metrics.robustness))
        if metrics.shift is not None:
            stdout.print(shift_table(metrics.shift))
        if metrics.subtypes is not None:
            stdout.print(subtypes_table(metrics.subtypes))
        console.print(f"written to {Path(args.run_dir) / 'eval' / args.split}")
    if refreshes_card(args.split, args.tta):
        console.print(f"rewrote {Path(args.run_dir) / CARD_NAME}")
    return 0


def cmd_study(args: argparse.Namespace) -> int:
    """`pneumolab study`: train, compare and select the models and ensembles of a study file."""
    from pneumolab.cli.config_flags import config_overrides
    from pneumolab.cli.flag_checks import refuse_inert_flags
    from pneumolab.cli.tables import comparison_table
    from pneumolab.study.config import load_study
    from pneumolab.study.runner import run_study
    from pneumolab.training.distributed import global_rank

    overrides = config_overrides(args)
    try:  # run_study reads the file again and names it in any problem
        configs = load_study(args.config).train_configs(overrides)
    except ConfigError:
        configs = {}
    refuse_inert_flags(list(configs.values()), overrides)
    result = run_study(args.config, args.data, args.out, overrides)
    if global_rank() != 0:  # rank 0 compares the models and reports
        return 0
    stdout.print(comparison_table(result.rows, f"study {args.config} — validation split"))
    for name, reason in result.failed.items():
        say(("not run:", "bold red"), f" {name}: {reason}")
    if result.best:
        leader = result.margins.leader if result.margins else result.best
        smaller = (
            ""
            if leader == result.best
            else f" (the smallest that validation cannot tell from the leader, {leader})"
        )
        say(
            f"selected on validation by {result.select_by}: ",
            (result.best, "bold"),
            f"{smaller} → {args.out / 'best'}",
        )
    written = {"table": "markdown", "chart": "chart", "margins of the selection": "selection"}
    shown = [
        f"{what}: {result.outputs[key]}" for what, key in written.items() if key in result.outputs
    ]
    console.print("; ".join(shown) or "no model ran: nothing to compare")
    return 1 if result.failed else 0


def cmd_ensemble(args: argparse.Namespace) -> int:
    """`pneumolab ensemble`: combine trained runs into one mean-probability run."""
    from pneumolab.cli.tables import metrics_table
    from pneumolab.pipeline.ensemble import build_ensemble

    run = build_ensemble(args.run_dirs, args.out, args.target_sensitivity)
    meta = run.read_meta()
    stdout.print(metrics_table(meta.val_metrics, f"validation (patient-grouped) — {meta.model}"))
    say("ensemble written to ", (str(run.root), "bold"))
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    """`pneumolab compare`: score runs on the same images, with paired margins."""
    from pneumolab.cli.tables import comparison_table
    from pneumolab.evaluation.comparison import check_comparison, compare_runs

    check_comparison(args.run_dirs, args.out, args.overwrite)  # before an export writes anything
    export_if_asked(args, args.run_dirs)
    rows, outputs = compare_runs(
        args.run_dirs,
        args.data,
        args.split,
        args.out,
        args.robustness,
        args.shift,
        overwrite=args.overwrite,
        backend=args.backend,
    )
    stdout.print(comparison_table(rows, f"{args.split} split"))
    console.print(
        f"table: {outputs['markdown']}; chart: {outputs['chart']}; margins: {outputs['margins']}"
    )
    return 0
