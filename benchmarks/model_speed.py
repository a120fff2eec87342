"""CPU throughput of architectures: training images/s and frozen-feature extraction images/s.

    python benchmarks/model_speed.py --train pneumolab_cnn_small:128 pneumolab_cnn_medium:128 \
        --features legacy_xception:224 vgg19:224

Random weights (speed does not depend on their values), bf16 autocast as in training on CPUs
with AVX512-BF16, batch 32, after one warm-up batch. Used to size the study lineups for a
2-core CPU (e.g. VGG19's frozen features for the study without its ImageNet weights here).
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F

from pneumolab.models.registry import create_classifier

BATCH = 32


def _parse(spec: str) -> tuple[str, int]:
    name, size = spec.rsplit(":", 1)
    return name, int(size)


def train_images_per_second(name: str, size: int, steps: int = 4) -> float:
    model = create_classifier(name).train()
    optimizer = torch.optim.AdamW(model.parameters())
    x, y = torch.rand(BATCH, 1, size, size), torch.rand(BATCH)
    for step in range(steps + 1):
        if step == 1:
            started = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = F.binary_cross_entropy_with_logits(model(x).float(), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return BATCH * steps / (time.perf_counter() - started)


def feature_images_per_second(name: str, size: int, steps: int = 3) -> float:
    model = create_classifier(name).eval()
    x = torch.rand(BATCH, 1, size, size)
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
        model.features(x)
        started = time.perf_counter()
        for _ in range(steps):
            model.features(x)
    return BATCH * steps / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--train", nargs="*", default=[], metavar="MODEL:SIZE")
    parser.add_argument("--features", nargs="*", default=[], metavar="MODEL:SIZE")
    args = parser.parse_args()
    torch.manual_seed(0)
    print("| model | size | mode | images/s |\n|---|---|---|---|")
    for spec in args.train:
        name, size = _parse(spec)
        print(f"| {name} | {size} | train step | {train_images_per_second(name, size):.1f} |")
    for spec in args.features:
        name, size = _parse(spec)
        print(
            f"| {name} | {size} | frozen features | {feature_images_per_second(name, size):.1f} |"
        )


if __name__ == "__main__":
    main()
