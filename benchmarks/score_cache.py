"""A study's comparison with and without the shared score cache: time and identical results.

    python benchmarks/score_cache.py RUN_DIR [RUN_DIR ...] --data DATA [--out score_cache.md]

Give the members before their ensembles, as a study orders them. Every run is compared on its
validation split with the shift protocol (``compare_run(..., shift=True)``, what
``pneumolab study`` does for a study file with ``shift: true``), first each run on its own (the
baseline: an ensemble scores its members' passes again), then all of them through one
:class:`~pneumolab.inference.score_cache.ScoreCache` (what studies and ``pneumolab compare`` do
since 2026-12-03). Prints the wall time of each, their ratio, and whether every figure of the
table is the same (CPU ms/img aside: it is measured apart from the cache).
"""

from __future__ import annotations

import time
from dataclasses import asdict
from pathlib import Path

from report import publish, runs_parser

from pneumolab.choices import ComparisonBackend
from pneumolab.evaluation.comparison import ComparisonRow, compare_run
from pneumolab.inference.score_cache import ScoreCache

TIMING_FIELDS = ("cpu_ms_per_image",)


def timed_comparison(
    run_dirs: list[Path], data: Path, cache: ScoreCache | None, backend: ComparisonBackend = "torch"
) -> tuple[float, list[ComparisonRow]]:
    """Wall seconds of comparing every run (shift protocol on) with ``backend``, and the rows."""
    started = time.perf_counter()
    rows = [
        compare_run(d.name, d, data, "val", shift=True, cache=cache, backend=backend)
        for d in run_dirs
    ]
    return time.perf_counter() - started, rows


def figures(row: ComparisonRow) -> dict[str, object]:
    """A row without its timing."""
    return {k: v for k, v in asdict(row).items() if k not in TIMING_FIELDS}


def main() -> None:
    args = runs_parser(__doc__).parse_args()
    plain_s, plain_rows = timed_comparison(args.runs, args.data, None)
    cache = ScoreCache()
    cached_s, cached_rows = timed_comparison(args.runs, args.data, cache)
    same = [figures(a) == figures(b) for a, b in zip(plain_rows, cached_rows, strict=True)]
    lines = [
        "| comparison | wall s | scoring passes | figures |",
        "|---|---|---|---|",
        f"| each run on its own (baseline) | {plain_s:.0f} | {cache.hits + cache.misses} | — |",
        f"| one score cache | {cached_s:.0f} | {cache.misses} | "
        f"{'identical' if all(same) else 'DIFFER: ' + str(same)} |",
        "",
        f"Speed-up: {plain_s / cached_s:.2f}x over {len(args.runs)} runs "
        f"({', '.join(d.name for d in args.runs)}).",
    ]
    publish("\n".join(lines) + "\n", args.out)


if __name__ == "__main__":
    main()
