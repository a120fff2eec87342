"""Batch-scoring throughput: the single-process path vs Ray Data with 1 and N model replicas.

    python benchmarks/ray_predict.py RUN_DIR ../shared/data/chest_xray/train --images 300 \
        --workers 1 2 --cpus 2 --usd-per-cpu-hour 0.04

Each engine scores the same images (decode, resize, model) into a fresh results file, timed
end to end. Ray's time includes its replicas loading the model and the pipeline's start-up
(paid once per job), not starting the local Ray instance itself (``--cpus`` logical CPUs, one
kept for the decoding tasks, the rest split between the replicas). Prints a Markdown table
with images/s and the cost of a million images extrapolated from it at the given price of a
CPU-hour (an extrapolation: a linear scale-up of this measurement, not a measured cost).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from pneumolab.inference.batch import predict_to_file
from pneumolab.inference.inputs import expand_paths
from pneumolab.inference.predictor import Predictor
from pneumolab.inference.ray_engine import RayOptions, import_ray, predict_with_ray
from pneumolab.inference.results_table import read_results


def _row(name: str, n: int, seconds: float, cpus: int, price: float, diff: str) -> str:
    rate = n / seconds
    cost = 1e6 / rate / 3600 * cpus * price
    return f"| {name} | {n} | {seconds:.1f} | {rate:.1f} | {cost:.2f} | {diff} |"


def _probabilities(path: Path) -> dict[str, float]:
    return {r.source: r.probability for r in read_results(path) if r.probability is not None}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("images", type=Path, nargs="+", help="files or folders")
    parser.add_argument("--images-limit", "--images", type=int, default=300, dest="limit")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--cpus", type=int, default=2, help="CPUs of the machine / local Ray")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--backend", choices=("torch", "onnx"), default="torch")
    parser.add_argument("--usd-per-cpu-hour", type=float, default=0.04)
    args = parser.parse_args()
    files = expand_paths(args.images)[: args.limit]
    predictor = Predictor.from_run(args.run_dir, backend=args.backend)
    price = args.usd_per_cpu_hour
    print(
        f"| engine | images | seconds | images/s | USD per 1M images ({args.cpus} CPUs at "
        f"${price}/CPU-hour, extrapolated) | max abs diff of p vs single process |"
    )
    print("|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        single = Path(tmp) / "single.csv"
        started = time.perf_counter()
        predict_to_file(predictor, files, single, args.batch_size, False)
        seconds = time.perf_counter() - started
        reference = {str(Path(s).resolve()): p for s, p in _probabilities(single).items()}
        print(_row("single process", len(files), seconds, args.cpus, price, "—"))
        ray = import_ray()
        for workers in args.workers:
            ray.init(num_cpus=args.cpus, include_dashboard=False, log_to_driver=False)
            options = RayOptions(
                num_workers=workers,
                cpus_per_worker=(args.cpus - 1) / workers,
                batch_size=args.batch_size,
            )
            out = Path(tmp) / f"ray{workers}.parquet"
            started = time.perf_counter()
            predict_with_ray(predictor, files, out, options)
            seconds = time.perf_counter() - started
            ray.shutdown()
            got = _probabilities(out)
            diff = max(abs(got[source] - p) for source, p in reference.items())
            name = f"Ray, {workers} replica(s)"
            row = _row(name, len(files), seconds, args.cpus, price, f"{diff:.1e}")
            print(row, flush=True)


if __name__ == "__main__":
    main()
