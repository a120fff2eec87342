"""Training and inference throughput on this machine: fp32 vs bf16 autocast, NCHW vs channels-last;
with ``--unfreeze-stages``, also the training step of ``strategy: partial`` (the input-side
stages frozen, their batch norms in eval mode, as in training) against fine-tuning everything.

    python benchmarks/cpu_precision.py [--model mobilenetv2_100] [--size 160] [--batch 32] [--steps 6]
        [--precision {both,fp32,bf16}] [--memory-format {both,nchw,channels-last}]
        [--unfreeze-stages K ...]

Prints one line per setting (images/s); the numbers behind the default `precision: auto`.
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F

from pneumolab.models.registry import create_backbone
from pneumolab.training.strategies import apply_strategy, train_unfrozen_batch_norms


def throughput(
    model_name: str,
    size: int,
    batch: int,
    steps: int,
    bf16: bool,
    channels_last: bool,
    unfreeze_stages: int | None = None,
) -> tuple[float, float]:
    """(training images/s, inference images/s) for random inputs; every parameter trains, or
    the head and the last ``unfreeze_stages`` stages (``strategy: partial``)."""
    torch.manual_seed(0)
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    model = create_backbone(model_name, num_classes=1).to(memory_format=memory_format)
    if unfreeze_stages is not None:
        apply_strategy(model, "partial", unfreeze_stages)
    train_unfrozen_batch_norms(model)  # frozen batch norms keep their statistics, as in training
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, 1e-3)
    x = torch.randn(batch, 3, size, size).contiguous(memory_format=memory_format)
    y = torch.rand(batch, 1)

    def train_step() -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = F.binary_cross_entropy_with_logits(model(x).float(), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    def timed(fn, n: int) -> float:
        fn(), fn()  # warm-up
        start = time.perf_counter()
        for _ in range(n):
            fn()
        return batch * n / (time.perf_counter() - start)

    train_rate = timed(train_step, steps)
    model.eval()
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        infer_rate = timed(lambda: model(x), steps)
    return train_rate, infer_rate


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default="mobilenetv2_100")
    parser.add_argument("--size", type=int, default=160)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--precision", choices=("both", "fp32", "bf16"), default="both")
    parser.add_argument(
        "--memory-format", choices=("both", "nchw", "channels-last"), default="both"
    )
    parser.add_argument(
        "--unfreeze-stages",
        type=int,
        nargs="*",
        default=[],
        metavar="K",
        help="also time strategy partial with K trainable stages (fine-tuning everything first)",
    )
    args = parser.parse_args()
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, {torch.backends.cpu.get_cpu_capability()}"
    )
    print("| model | size | trained | precision | memory format | train img/s | inference img/s |")
    print("|---|---|---|---|---|---|---|")
    for bf16 in {"both": (False, True), "fp32": (False,), "bf16": (True,)}[args.precision]:
        formats = {"both": (False, True), "nchw": (False,), "channels-last": (True,)}
        for channels_last in formats[args.memory_format]:
            for stages in (None, *args.unfreeze_stages):
                train_rate, infer_rate = throughput(
                    args.model, args.size, args.batch, args.steps, bf16, channels_last, stages
                )
                print(
                    f"| {args.model} | {args.size} | "
                    f"{'everything' if stages is None else f'last {stages} stages'} | "
                    f"{'bf16 autocast' if bf16 else 'fp32'} | "
                    f"{'channels-last' if channels_last else 'NCHW'} | {train_rate:.1f} | "
                    f"{infer_rate:.1f} |",
                    flush=True,
                )


if __name__ == "__main__":
    main()
