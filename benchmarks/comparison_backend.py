"""A study's comparison scored with PyTorch and with onnxruntime: time and the same figures.

    python benchmarks/comparison_backend.py RUN_DIR [RUN_DIR ...] --data DATA [--out comparison_backend.md]

Give the members before their ensembles, as a study orders them. First every network without a
``model.onnx`` is exported (timed; verified against PyTorch, as ``pneumolab export`` does).
Then every run is compared on its validation split with the shift protocol, through one score
cache each time (what ``pneumolab study`` does): with the ``torch`` backend (the baseline), then
with ``onnx`` (a study's ``backend: onnx``). Prints the wall time of each, their ratio, each
run's CPU ms/img under both, and whether every figure of the table agrees to 4 decimals.
"""

from __future__ import annotations

import time
from dataclasses import asdict

from report import publish, runs_parser
from score_cache import timed_comparison

from pneumolab.evaluation.comparison import ComparisonRow
from pneumolab.inference.score_cache import ScoreCache
from pneumolab.serving.export import export_missing

NOT_FIGURES = ("cpu_ms_per_image", "backend")


def rounded(row: ComparisonRow) -> dict[str, object]:
    """A row's figures (not its timing or backend), floats to 4 decimals."""
    return {
        key: round(value, 4) if isinstance(value, float) else value
        for key, value in asdict(row).items()
        if key not in NOT_FIGURES
    }


def main() -> None:
    args = runs_parser(__doc__).parse_args()
    started = time.perf_counter()
    exported = list(export_missing(args.runs))
    export_s = time.perf_counter() - started
    torch_s, torch_rows = timed_comparison(args.runs, args.data, ScoreCache(), "torch")
    onnx_s, onnx_rows = timed_comparison(args.runs, args.data, ScoreCache(), "onnx")
    same = [rounded(a) == rounded(b) for a, b in zip(torch_rows, onnx_rows, strict=True)]
    lines = [
        "| comparison | wall s | figures |",
        "|---|---|---|",
        f"| torch (baseline) | {torch_s:.0f} | — |",
        f"| onnx | {onnx_s:.0f} | {'the same' if all(same) else 'DIFFER: ' + str(same)} |",
        "",
        f"Speed-up: {torch_s / onnx_s:.2f}x over {len(args.runs)} runs; exporting "
        f"{len(exported)} network(s) first took {export_s:.0f} s.",
        "",
        "| run | CPU ms/img torch | CPU ms/img onnx |",
        "|---|---|---|",
        *(
            f"| {a.name} | {a.cpu_ms_per_image:.1f} | {b.cpu_ms_per_image:.1f} |"
            for a, b in zip(torch_rows, onnx_rows, strict=True)
        ),
    ]
    publish("\n".join(lines) + "\n", args.out)


if __name__ == "__main__":
    main()
