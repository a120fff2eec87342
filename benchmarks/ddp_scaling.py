"""Training throughput on 1 vs N processes (Lightning DDP), through the real `pneumolab train`.

    python benchmarks/ddp_scaling.py --data ../shared/data/chest_xray --processes 1 2 \
        --model mobilenetv2_100 --image-size 128 --max-train-images 512 --epochs 2

Each run is a fresh `pneumolab train` (Lightning's own launcher for N > 1; gloo on CPU, NCCL on
GPUs) with `batch_size` per process, so N processes take N times the samples per step.
Throughput is the last epoch's training images divided by its wall time (history.csv: the
training pass plus the validation pass, without process start-up and image decoding), so the
first epoch's warm-up is left out. Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import csv
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def run_once(args: argparse.Namespace, processes: int, out: Path) -> dict[str, float]:
    command = [
        sys.executable,
        "-m",
        "pneumolab",
        "train",
        "--data",
        str(args.data),
        "--out",
        str(out),
        "--model",
        args.model,
        "--image-size",
        str(args.image_size),
        "--batch-size",
        str(args.batch_size),
        "--epochs",
        str(args.epochs),
        "--max-train-images",
        str(args.max_train_images),
        "--accelerator",
        args.accelerator,
        "--devices",
        str(processes),
        *(["--weights", str(args.weights)] if args.weights else ["--no-pretrained"]),
    ]
    started = time.perf_counter()
    subprocess.run(command, check=True, capture_output=True)
    wall = time.perf_counter() - started
    with (out / "history.csv").open(newline="") as f:
        last = list(csv.DictReader(f))[-1]
    with (out / "split.csv").open(newline="") as f:
        n_train = sum(row["subset"] == "train" for row in csv.DictReader(f))
    seconds = float(last["seconds"])
    return {"epoch_s": seconds, "images_per_s": n_train / seconds, "wall_s": wall, "n": n_train}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--processes", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--model", default="mobilenetv2_100")
    parser.add_argument("--weights", type=Path, help="local ImageNet weights (else random)")
    parser.add_argument("--image-size", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=32, help="per process")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--max-train-images", type=int, default=512)
    parser.add_argument("--accelerator", default="cpu")
    args = parser.parse_args()
    print("| processes | train images | last epoch s | images/s | speed-up | whole command s |")
    print("|---|---|---|---|---|---|")
    base = None
    with tempfile.TemporaryDirectory() as tmp:
        for processes in args.processes:
            result = run_once(args, processes, Path(tmp) / f"run{processes}")
            base = base or result["images_per_s"]
            print(
                f"| {processes} | {result['n']:.0f} | {result['epoch_s']:.1f} | "
                f"{result['images_per_s']:.1f} | {result['images_per_s'] / base:.2f}x | "
                f"{result['wall_s']:.0f} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
