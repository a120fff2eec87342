"""Scoring and training speed with glibc's default ``malloc`` against
:func:`pneumolab.allocator.reuse_freed_memory` (what the ``pneumolab`` command does at start),
each in a fresh process of its own, alternating, in the same run.

    python benchmarks/allocator.py [--model legacy_xception] [--size 224] [--images 128]
        [--steps 6] [--unfreeze-stages 10] [--repeats 2]

Scoring: ``predict_pixels`` (the pipeline's scoring: CLAHE, batches of 64) of the pipeline's
classifier on random uint8 images. Training: ``benchmarks/cpu_precision.py``'s fp32
channels-last training step (batch 32). Prints ms per image, images/s, the minor page faults
of each part (training's include building the network and its warm-up steps) and the peak
resident size; the last line gives the ratios of the means over the repeats.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from pneumolab.allocator import LEGACY_MALLOC_VARIABLES, SYSTEM_MALLOC_VARIABLE


def measure(model_name: str, size: int, images: int, steps: int, stages: int | None) -> dict:
    """One setting's figures, in this process."""
    import torch

    sys.path.insert(0, str(Path(__file__).parent))
    from cpu_precision import throughput

    from pneumolab.inference.torch_scoring import predict_pixels
    from pneumolab.models.registry import create_classifier

    def faults() -> int:
        return resource.getrusage(resource.RUSAGE_SELF).ru_minflt

    torch.manual_seed(0)
    model = create_classifier(model_name)
    pixels = torch.randint(0, 256, (images, 1, size, size), dtype=torch.uint8)
    predict_pixels(model, pixels[:64], "clahe")  # warm-up
    before, start = faults(), time.perf_counter()
    predict_pixels(model, pixels, "clahe")
    score_ms = (time.perf_counter() - start) / images * 1000
    score_faults = faults() - before
    before = faults()
    train_rate, _ = throughput(model_name, size, 32, steps, False, True, stages)
    return {
        "score_ms_per_image": score_ms,
        "score_minor_faults": score_faults,
        "train_images_per_s": train_rate,
        "train_minor_faults": faults() - before,
        "peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
    }


def run_worker(args: argparse.Namespace, system_malloc: bool) -> dict:
    """:func:`measure` in a fresh process, with the system's ``malloc`` or pneumolab's setting."""
    env = dict(os.environ)
    for name in (SYSTEM_MALLOC_VARIABLE, "GLIBC_TUNABLES", "LD_PRELOAD", *LEGACY_MALLOC_VARIABLES):
        env.pop(name, None)
    if system_malloc:
        env[SYSTEM_MALLOC_VARIABLE] = "1"
    command = [sys.executable, __file__, "--worker", "--model", args.model, "--size", str(args.size),
               "--images", str(args.images), "--steps", str(args.steps)]  # fmt: skip
    if args.unfreeze_stages is not None:
        command += ["--unfreeze-stages", str(args.unfreeze_stages)]
    done = subprocess.run(command, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"the worker failed:\n{done.stderr}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default="legacy_xception")
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--images", type=int, default=128)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--unfreeze-stages", type=int, default=None)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        from pneumolab.allocator import reuse_freed_memory

        reused = reuse_freed_memory()
        figures = measure(args.model, args.size, args.images, args.steps, args.unfreeze_stages)
        print(json.dumps(figures | {"reused": reused}))
        return
    trained = "everything" if args.unfreeze_stages is None else f"last {args.unfreeze_stages}"
    print(f"{args.model}, {args.size} px, training {trained} stages; {args.repeats} repeats")
    print("| malloc | score ms/img | score faults | train img/s | train faults | peak RSS GiB |")
    print("|---|---|---|---|---|---|")
    results: dict[bool, list[dict]] = {True: [], False: []}
    for _ in range(args.repeats):
        for system_malloc in (True, False):
            figures = run_worker(args, system_malloc)
            if figures["reused"] == system_malloc:
                raise SystemExit("the worker's malloc setting is not the one asked for (glibc?)")
            results[system_malloc].append(figures)
            print(
                f"| {'system' if system_malloc else 'reuse freed'} | "
                f"{figures['score_ms_per_image']:.1f} | {figures['score_minor_faults']:,} | "
                f"{figures['train_images_per_s']:.2f} | {figures['train_minor_faults']:,} | "
                f"{figures['peak_rss_gib']:.2f} |",
                flush=True,
            )

    def mean(setting: bool, key: str) -> float:
        return float(np.mean([f[key] for f in results[setting]]))

    print(
        f"scoring {mean(True, 'score_ms_per_image') / mean(False, 'score_ms_per_image'):.2f}x "
        f"faster, training {mean(False, 'train_images_per_s') / mean(True, 'train_images_per_s'):.2f}x "
        "faster with freed memory reused (means)"
    )


if __name__ == "__main__":
    main()
