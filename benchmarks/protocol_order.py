"""Does a validation figure order models as the held-out split did? Kendall's tau per figure.

    python benchmarks/protocol_order.py TABLE.md [TABLE.md ...] --as RUN=MODEL [--as ...] \
        [--reference benchmarks/heldout_reference.yaml] [--out order.md]

TABLE.md: tables written by ``shift_protocol.py --out`` (figures as rows, runs as columns).
``--as`` names the reference model (a key of the reference file: held-out figures measured
outside the loop) that each retrained run stands for. For every figure of the tables: Kendall's
tau against the held-out ROC AUC and against the held-out specificity, and the pairs it orders
the other way. Retrained runs are other instances of the same recipes, not the measured models,
so a figure is trusted only when it keeps the orders that are far larger than seed noise.
"""

from __future__ import annotations

import argparse
import itertools
from pathlib import Path

import yaml
from report import publish
from scipy.stats import kendalltau

HELD_OUT = ("roc_auc", "specificity")
SKIPPED = ("_min_", "sensitivity")
"""Left out of the comparison: worst draws (the means are steadier) and sensitivities (the
held-out split's sensitivities are all within 0.96-0.985)."""


def read_tables(paths: list[Path]) -> dict[str, dict[str, float]]:
    """``{run: {figure: value}}`` from shift_protocol.py's markdown tables."""
    runs: dict[str, dict[str, float]] = {}
    for path in paths:
        lines = [line for line in path.read_text().splitlines() if line.startswith("|")]
        names = [cell.strip() for cell in lines[0].strip("|").split("|")][1:]
        repeated = sorted({n for n in names if names.count(n) > 1} | (set(names) & set(runs)))
        if repeated:  # the last column would silently stand for every run of that name
            raise SystemExit(
                f"{path}: the run name(s) {', '.join(repeated)} head two columns of the tables; "
                "each column must be its own run (rename folders like seed0/mnv2, seed1/mnv2)"
            )
        for line in lines[2:]:
            figure, *cells = (cell.strip() for cell in line.strip("|").split("|"))
            for name, cell in zip(names, cells, strict=True):
                runs.setdefault(name, {})[figure] = float(cell)
    return runs


def discordant(values: dict[str, float], reference: dict[str, float]) -> list[str]:
    """Pairs ordered one way by ``values`` and the other way by ``reference``."""
    pairs = []
    for a, b in itertools.combinations(sorted(values), 2):
        if (values[a] - values[b]) * (reference[a] - reference[b]) < 0:
            low, high = (a, b) if reference[a] < reference[b] else (b, a)
            pairs.append(f"{low} < {high}")
    return pairs


def order_table(
    runs: dict[str, dict[str, float]], names: dict[str, str], reference: dict[str, dict]
) -> str:
    """Markdown: per figure, tau and reversed pairs against each held-out figure."""
    models = {names[run]: figures for run, figures in runs.items() if run in names}
    figures = [
        f
        for f in next(iter(models.values()))
        if all(f in m for m in models.values()) and not any(s in f for s in SKIPPED)
    ]
    header = "| figure | " + " | ".join(f"tau vs held-out {h} | reversed pairs" for h in HELD_OUT)
    lines = [header + " |", "|---" * (1 + 2 * len(HELD_OUT)) + "|"]
    for figure in figures:
        values = {model: m[figure] for model, m in models.items()}
        cells = []
        for held_out in HELD_OUT:
            truth = {model: reference[model][held_out] for model in values}
            tau = kendalltau([values[m] for m in values], [truth[m] for m in values]).statistic
            cells += [f"{tau:+.2f}", "; ".join(discordant(values, truth)) or "none"]
        lines.append(f"| {figure} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("tables", nargs="+", type=Path)
    parser.add_argument("--as", dest="names", action="append", required=True, metavar="RUN=MODEL")
    parser.add_argument(
        "--reference", type=Path, default=Path(__file__).with_name("heldout_reference.yaml")
    )
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    names = dict(pair.split("=", 1) for pair in args.names)
    reference = yaml.safe_load(args.reference.read_text())
    unknown = sorted(set(names.values()) - set(reference))
    if unknown:
        parser.error(f"not in {args.reference}: {', '.join(unknown)}")
    models = list(names.values())
    twice = sorted({model for model in models if models.count(model) > 1})
    if twice:  # keyed by model, one of the runs would silently stand for it alone
        parser.error(f"one run per reference model: {', '.join(twice)} given more than once")
    runs = read_tables(args.tables)
    missing = sorted(set(names) - set(runs))
    if missing:
        parser.error(f"not in the tables: {', '.join(missing)}")
    table = order_table(runs, names, reference)
    publish(table, args.out)


if __name__ == "__main__":
    main()
