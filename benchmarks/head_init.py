"""How a fresh classifier head starts on pretrained features: zero (BiT), fan_in, timm's own init.

    python benchmarks/head_init.py --data ../shared/data/chest_xray --weights ../shared/weights \
        [--model mobilenetv2_100] [--image-size 160] [--per-class 300] [--epochs 2]

A linear probe on a class-balanced sample of `train/`: the ImageNet features (eval mode, the
default intensity normalisation) are computed once; then the model's own head trains on them with
the default recipe's optimiser (AdamW, lr 1e-3, weight decay 1e-4, batch 32), once from each
`head_init`. Prints the per-step losses of the first epoch and the training AUC after each epoch,
with scikit-learn's logistic regression (5-fold, out of fold) as the probe's reference.
"""

from __future__ import annotations

import argparse
import copy
import random
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import cross_val_predict

from pneumolab.data.dataset import decode_samples
from pneumolab.data.layout import scan_split
from pneumolab.models.registry import HEAD_INITS, create_classifier
from pneumolab.training.frozen import extract_features


def sample_pixels(train: Path, per_class: int, size: int) -> tuple[torch.Tensor, np.ndarray]:
    """``per_class`` random images of each class, decoded to uint8 ``(N, 1, S, S)``; labels."""
    rng = random.Random(0)
    samples = scan_split(train)
    chosen = [
        sample
        for label in (0, 1)
        for sample in rng.sample([s for s in samples if s.label == label], per_class)
    ]
    decoded = decode_samples(chosen, size)
    return decoded.pixels, np.array([sample.label for sample in decoded.samples])


def train_head(
    head: torch.nn.Module, features: torch.Tensor, labels: np.ndarray, epochs: int
) -> tuple[list[float], list[float]]:
    """AdamW on the head alone: the first epoch's per-step losses, the training AUC per epoch."""
    optimizer = torch.optim.AdamW(head.parameters(), lr=1e-3, weight_decay=1e-4)
    targets = torch.from_numpy(labels).float()
    generator = torch.Generator().manual_seed(0)
    first_losses, aucs = [], []
    for epoch in range(epochs):
        for batch in torch.randperm(len(labels), generator=generator).split(32):
            loss = F.binary_cross_entropy_with_logits(
                head(features[batch]).squeeze(1), targets[batch]
            )
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            if epoch == 0:
                first_losses.append(loss.item())
        with torch.no_grad():
            aucs.append(roc_auc_score(labels, head(features).squeeze(1).numpy()))
    return first_losses, aucs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, type=Path)
    parser.add_argument("--weights", required=True)
    parser.add_argument("--model", default="mobilenetv2_100")
    parser.add_argument("--image-size", type=int, default=160)
    parser.add_argument("--intensity", default="clahe")
    parser.add_argument("--per-class", type=int, default=300)
    parser.add_argument("--epochs", type=int, default=2)
    args = parser.parse_args()
    torch.manual_seed(0)
    pixels, labels = sample_pixels(args.data / "train", args.per_class, args.image_size)
    model = create_classifier(args.model, pretrained=True, weights=args.weights, head_init="timm")
    features = extract_features(model, pixels, args.intensity, bf16=False)
    probe = LogisticRegression(max_iter=2000)
    reference = cross_val_predict(probe, features.numpy(), labels, cv=5, method="predict_proba")
    print(f"{args.model} {args.image_size} px, {len(labels)} images, features {features.shape[1]}")
    print(
        f"scikit-learn logistic regression, 5-fold AUC: {roc_auc_score(labels, reference[:, 1]):.4f}"
    )
    for name, initialise in HEAD_INITS.items():
        head = initialise(copy.deepcopy(model.backbone)).get_classifier()
        first_logits = head(features).detach()
        losses, aucs = train_head(head, features, labels, args.epochs)
        print(
            f"head_init {name}: first logits std {first_logits.std():.2f}; "
            f"epoch-1 losses {' '.join(f'{x:.2f}' for x in losses)}; "
            f"training AUC per epoch {' '.join(f'{x:.4f}' for x in aucs)}"
        )


if __name__ == "__main__":
    main()
