"""Which features should the OOD score read? Mahalanobis distance on several descriptors of the
same trained network, compared on the OOD corpus of ``ood_benchmark.py`` and on validation
images under the shift protocol (in scope by intent).

    python benchmarks/ood_descriptors.py RUN_DIR --data DATA_DIR [--weights ../shared/weights]

Descriptors (each fitted like the stored score: class means and a shared Ledoit-Wolf covariance
of up to ``--fit`` training images of the run's split, threshold at the 99th percentile of the
validation split):

- ``final pooled``: the pooled features the classifier sees (what runs store today);
- ``stage K mean``: the global average of stage K's feature map (timm ``forward_intermediates``);
- ``stages 1-4 mean+std``: per-channel mean and standard deviation of four stages, concatenated;
- ``ImageNet backbone``: the pooled features of the same architecture with its ImageNet weights,
  not fine-tuned (a second forward pass: a reference, not a candidate for the one-pass gate).

With ``--augmented``, every descriptor gets a second row: fitted on the training images plus an
augmented copy of them (the ``acquisition`` training augmentation, seed 0) and thresholded on the
validation images plus an augmented copy, so that acquisition changes count as in scope.

Prints a Markdown table: ROC AUC validation vs the whole OOD corpus, share of the corpus flagged,
share of validation flagged clean, under ``reframe`` and under ``compound`` (draw 0).
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from functools import partial
from pathlib import Path

import numpy as np
import torch
from ood_benchmark import (
    prepare_all,
    pydicom_images,
    skimage_photos,
    synthetic,
    text_pages,
    transformed_xrays,
)
from sklearn.metrics import roc_auc_score

from pneumolab.data.dataset import decode_samples
from pneumolab.data.transforms import BatchAugmentation
from pneumolab.evaluation.shift import SCENARIOS, apply_shift
from pneumolab.inference.predictor import Predictor
from pneumolab.inference.torch_scoring import score_batches
from pneumolab.models.classifier import XrayClassifier
from pneumolab.models.registry import create_classifier
from pneumolab.run import RunDir
from pneumolab.scope.mahalanobis import fit_mahalanobis
from pneumolab.scope.ood import validation_threshold

Descriptor = Callable[[torch.Tensor], torch.Tensor]


def _as_float(describe: Descriptor, x: torch.Tensor) -> torch.Tensor:
    return describe(x).float()


def descriptors(model: XrayClassifier, reference: XrayClassifier | None) -> dict[str, Descriptor]:
    """Feature functions of float pixels in [0, 1] (intensity normalisation already applied)."""
    backbone = model.backbone

    def stages(x: torch.Tensor) -> list[torch.Tensor]:
        return backbone.forward_intermediates(
            model._backbone_input(x), indices=[1, 2, 3, 4], intermediates_only=True
        )

    def stage_mean(x: torch.Tensor, k: int) -> torch.Tensor:
        return stages(x)[k].float().mean(dim=(2, 3))

    found: dict[str, Descriptor] = {"final pooled": model.features}
    for k in range(4):  # partial binds k now, as the ``k=k`` lambda default did (mypy types it)
        found[f"stage {k + 1} mean"] = partial(stage_mean, k=k)
    found["stages 1-4 mean+std"] = lambda x: torch.cat(
        [torch.cat([m.float().mean(dim=(2, 3)), m.float().std(dim=(2, 3))], 1) for m in stages(x)],
        dim=1,
    )
    if reference is not None:
        found["ImageNet backbone"] = reference.features
    return found


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--weights", type=Path, help="ImageNet weights for the reference row")
    parser.add_argument("--fit", type=int, default=2000, help="training images to fit on")
    parser.add_argument("--augmented", action="store_true", help="also fit on augmented copies")
    args = parser.parse_args()
    predictor = Predictor.from_run(args.run_dir)
    model = predictor.require_model("the descriptor comparison")
    reference = None
    if args.weights:
        reference = create_classifier(predictor.meta.model, pretrained=True, weights=args.weights)
        reference.eval()
    run = RunDir(args.run_dir)
    train_samples = run.read_split(args.data.resolve(), "train")
    picks = np.random.default_rng(0).choice(len(train_samples), args.fit, replace=False)
    train = decode_samples([train_samples[i] for i in sorted(picks)], predictor.image_size)
    val = decode_samples(run.read_split(args.data.resolve(), "val"), predictor.image_size)
    val_paths = [s.path for s in val.samples]
    corpus = [
        *skimage_photos(),
        *pydicom_images(),
        *text_pages(),
        *synthetic(),
        *(item for family in transformed_xrays(val_paths[::7][:100]).values() for item in family),
    ]
    ood_pixels = prepare_all(predictor, corpus)[0]
    sets = {
        "train": train.pixels,
        "val": val.pixels,
        "reframe": apply_shift(val.pixels, SCENARIOS["reframe"], 0),
        "compound": apply_shift(val.pixels, SCENARIOS["compound"], 0),
        "ood": ood_pixels,
    }
    if args.augmented:
        torch.manual_seed(0)
        augmentation = BatchAugmentation(acquisition=True)
        sets["train_augmented"] = torch.cat([augmentation(b) for b in train.pixels.split(64)])
        sets["val_augmented"] = torch.cat([augmentation(b) for b in val.pixels.split(64)])
    labels = np.array([s.label for s in train.samples])
    print(
        f"{args.run_dir.name}: fitted on {len(labels)} training images; OOD corpus {len(ood_pixels)}"
    )
    print(
        "| descriptor | dims | AUROC val vs OOD | OOD flagged | val flagged | reframe flagged | compound flagged |"
    )
    print("|---|---|---|---|---|---|---|")
    for name, describe in descriptors(model, reference).items():
        features = {
            key: score_batches(partial(_as_float, describe), model, pixels, predictor.intensity, 64)
            for key, pixels in sets.items()
        }
        variants = {name: (["train"], ["val"])}
        if args.augmented:
            fit_on = ["train", "train_augmented"]
            variants[f"{name}, augmented fit"] = (fit_on, ["val", "val_augmented"])
        for row, (fit_on, threshold_on) in variants.items():
            fit = np.concatenate([features[k] for k in fit_on])
            scorer = fit_mahalanobis(fit, np.tile(labels, len(fit_on)))
            with torch.no_grad():
                scores = {k: scorer(torch.from_numpy(v)).numpy() for k, v in features.items()}
            threshold = validation_threshold(np.concatenate([scores[k] for k in threshold_on]))
            auroc = roc_auc_score(
                np.r_[np.zeros(len(scores["val"])), np.ones(len(scores["ood"]))],
                np.r_[scores["val"], scores["ood"]],
            )
            shares = [
                float(np.mean(scores[k] > threshold)) for k in ("ood", "val", "reframe", "compound")
            ]
            cells = " | ".join(f"{share:.3f}" for share in shares)
            print(f"| {row} | {fit.shape[1]} | {auroc:.3f} | {cells} |", flush=True)


if __name__ == "__main__":
    main()
