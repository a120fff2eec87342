"""Train and score a list of recipes on the patient-grouped validation split, clean and perturbed.

    python benchmarks/recipe_sweep.py --data ../shared/data/chest_xray --recipes benchmarks/recipes.yaml \
        --out runs/sweep [--jobs 3] [--set num_workers=4] [--only NAME ...]

Each recipe is a set of overrides of the default training config. Finished recipes are skipped,
so an interrupted sweep resumes. Writes ``results.csv`` and ``results.md`` into ``--out``.
"""

from __future__ import annotations

import argparse
import csv
import json
import multiprocessing
import sys
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path

import yaml

from pneumolab.config import resolve_config
from pneumolab.evaluation.evaluate import evaluate
from pneumolab.pipeline.train import train
from pneumolab.run import RunDir

COLUMNS = (
    "recipe",
    "device",
    "train_seconds",
    "best_epoch",
    "roc_auc",
    "sensitivity",
    "specificity",
    "accuracy",
    "threshold",
    "worst_roc_auc",
    "mean_roc_auc",
    "worst_specificity",
    "worst_sensitivity",
    "mean_accuracy",
)


def run_recipe(name: str, overrides: dict, data: Path, out: Path) -> dict:
    """Train one recipe (unless already finished), evaluate it with robustness, return its row."""
    import torch

    run = RunDir(out / name)
    if not run.is_complete():
        if run.root.exists():
            train(data, run.root, resume=True)
        else:
            train(data, run.root, resolve_config(None, overrides))
    meta = run.read_meta()
    metrics = evaluate(run.root, data, "val", robustness=True)
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
    row = {
        "recipe": name,
        "device": device,
        "train_seconds": meta.train_seconds,
        "best_epoch": meta.best_epoch,
    }
    row |= metrics.model_dump(
        include={"roc_auc", "sensitivity", "specificity", "accuracy", "threshold"}
    )
    assert metrics.robustness_summary is not None  # evaluated with robustness=True
    row |= metrics.robustness_summary.model_dump()
    (run.root / "sweep_row.json").write_text(json.dumps(row))
    return row


def _parse_set(items: list[str]) -> dict:
    return {k: yaml.safe_load(v) for k, v in (item.split("=", 1) for item in items)}


def write_tables(rows: list[dict], out: Path) -> None:
    """results.csv and a Markdown table, in recipe order."""
    with (out / "results.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    fmt = lambda v: f"{v:.4f}" if isinstance(v, float) else str(v)  # noqa: E731
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(fmt(r[c]) for c in COLUMNS) + " |" for r in rows]
    (out / "results.md").write_text("\n".join(lines) + "\n")


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--recipes", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--jobs", type=int, default=1, help="recipes trained at once")
    parser.add_argument("--set", nargs="*", default=[], help="KEY=VALUE added to every recipe")
    parser.add_argument("--only", nargs="*", help="run only these recipes")
    args = parser.parse_args()

    recipes = yaml.safe_load(args.recipes.read_text())
    unknown = sorted(set(args.only or ()) - set(recipes))
    if unknown:
        parser.error(f"--only: no recipe named {', '.join(unknown)} in {args.recipes}")
    names = [n for n in recipes if not args.only or n in args.only]
    common = _parse_set(args.set)
    args.out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(args.jobs, mp_context=context) as pool:
        futures = {
            n: pool.submit(run_recipe, n, {**(recipes[n] or {}), **common}, args.data, args.out)
            for n in names
        }
        rows: dict[str, dict] = {}
        for future in as_completed(futures.values()):
            name = next(n for n, f in futures.items() if f is future)
            try:
                rows[name] = future.result()
            except Exception as exc:  # one failed recipe must not lose the others
                print(f"{name}: failed: {exc}", file=sys.stderr)
            write_tables([rows[n] for n in names if n in rows], args.out)
    print((args.out / "results.md").read_text())
    print(f"sweep took {time.perf_counter() - started:.0f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
