"""Where a training epoch's time goes, on this machine: decoding, augmentation (per image in a
loader worker, as pneumolab did up to 2026-12-01, vs batched in the training process), the
forward/backward step and the validation pass.

    python benchmarks/train_profile.py --data ../shared/data/chest_xray [--size 160] [--images 1024]

The per-image baseline is torchvision transforms v2 with the same ranges as
:class:`pneumolab.data.transforms.BatchAugmentation`, one image at a time on one thread (what one
DataLoader worker did). Prints a Markdown table of images/s and the seconds each stage would take
for one epoch of the default split (4,430 training and 745 validation images). The training
step runs in the precision training chooses on this CPU (``precision: auto``: bf16 autocast
with AVX512-BF16 or AMX, else fp32; until 2026-12-07 always bf16, which AVX2-only CPUs emulate
slowly), channels-last as pneumolab's classifier is.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as TF

from pneumolab.data.dataset import decode_samples
from pneumolab.data.layout import scan_split
from pneumolab.data.transforms import BatchAugmentation, normalize_intensity
from pneumolab.models.registry import create_classifier
from pneumolab.training.fit import resolve_precision

EPOCH_TRAIN, EPOCH_VAL = 4430, 745


class _Gamma(torch.nn.Module):
    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return TF.adjust_gamma(image, float(torch.empty(1).uniform_(-0.405, 0.405).exp()))


class _Noise(torch.nn.Module):
    def forward(self, image: torch.Tensor) -> torch.Tensor:
        sigma = float(torch.empty(1).uniform_(0, 0.05)) * 255
        return (image.float() + torch.randn(image.shape) * sigma).round_().clamp_(0, 255).byte()


def per_image_augmentation(size: int) -> v2.Compose:
    """The per-image pipeline pneumolab used before batching (strength 1)."""
    return v2.Compose(
        [
            v2.RandomResizedCrop(size, scale=(0.7, 1.0), ratio=(0.85, 1.15), antialias=True),
            v2.RandomAffine(degrees=10, translate=(0.05, 0.05)),
            v2.ColorJitter(brightness=0.3, contrast=0.3),
            _Gamma(),
            v2.RandomApply([v2.GaussianBlur(5, sigma=(0.1, 1.5))], p=0.3),
            v2.RandomApply([_Noise()], p=0.5),
        ]
    )


def rate(n_images: int, fn: Callable[[], object], repeats: int = 1, warm_up: int = 1) -> float:
    """Images per second of ``fn`` (which handles ``n_images`` per call), after warm-up calls."""
    for _ in range(warm_up):
        fn()
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    return n_images * repeats / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data", required=True, help="dataset root (with train/)")
    parser.add_argument("--size", type=int, default=160)
    parser.add_argument("--images", type=int, default=1024)
    parser.add_argument("--model", default="mobilenetv2_100")
    args = parser.parse_args()
    torch.manual_seed(0)
    samples = scan_split(Path(args.data) / "train")[:: max(1, 5216 // args.images)][: args.images]
    start = time.perf_counter()
    pixels = decode_samples(samples, args.size).pixels
    decode_rate = len(pixels) / (time.perf_counter() - start)
    batches = pixels.split(32)
    per_image = per_image_augmentation(args.size)
    batched, acquisition = BatchAugmentation(), BatchAugmentation(acquisition=True)

    def augment_per_image() -> None:
        for image in pixels:
            normalize_intensity(per_image(image), "equalize").float().div_(255)

    def augment_batched(augmentation: BatchAugmentation) -> None:
        for batch in batches:
            normalize_intensity(augmentation(batch), "equalize").float().div_(255)

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    per_image_rate = rate(len(pixels), augment_per_image)
    torch.set_num_threads(threads)
    batched_rate = rate(len(pixels), lambda: augment_batched(batched))
    acquisition_rate = rate(len(pixels), lambda: augment_batched(acquisition))

    model = create_classifier(args.model, pretrained=False, num_classes=1)  # channels-last
    optimizer = torch.optim.AdamW(model.parameters(), 1e-3)
    x = pixels[:32].float() / 255
    y = torch.rand(len(x))
    bf16 = resolve_precision("auto", "cpu") == "bf16-mixed"  # what training chooses here
    precision = "bf16" if bf16 else "fp32"

    def train_step() -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = F.binary_cross_entropy_with_logits(model(x).float(), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    train_rate = rate(len(x), train_step, repeats=8, warm_up=3)
    model.eval()
    val_x = pixels[:128].float() / 255
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        val_rate = rate(len(val_x), lambda: model(val_x), repeats=3)

    print(f"torch {torch.__version__}, {threads} threads, {args.size} px, {len(pixels)} images")
    print("| stage | images/s | seconds per default epoch |")
    print("|---|---|---|")
    rows = [
        ("decode + resize (once per run, threads)", decode_rate, EPOCH_TRAIN + EPOCH_VAL),
        (
            "augment + equalise, per image, 1 thread (old loader worker)",
            per_image_rate,
            EPOCH_TRAIN,
        ),
        ("augment + equalise, batched, training process", batched_rate, EPOCH_TRAIN),
        ("the same, `augmentation: acquisition`", acquisition_rate, EPOCH_TRAIN),
        (f"train step, {precision} channels-last, batch {len(x)}", train_rate, EPOCH_TRAIN),
        (f"validation forward, {precision}, batch {len(val_x)}", val_rate, EPOCH_VAL),
    ]
    for name, images_per_second, n in rows:
        print(f"| {name} | {images_per_second:.0f} | {n / images_per_second:.1f} |")


if __name__ == "__main__":
    main()
