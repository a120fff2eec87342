"""Mirrored X-rays: can a cheap check tell a chest X-ray from its left-right mirror image?

    python benchmarks/mirror_check.py RUN_DIR --data ../shared/data [--images 1200]

A mirrored chest (the heart on the image's left) passes the input-scope gate and can change the
model's answer. Two candidate checks, each on ``--images`` training copies
(``chest_xray/train``, decoded and resized as ``predict`` does) and their mirror images, and on
the full-resolution originals as another acquisition:

- **laterality**: a hand-made statistic in the spirit of the polarity check, the lower chest's
  right band (the heart's side in a PA view) minus its left band, in standard deviations;
- **probe**: a logistic regression on the gate's own features (the run's
  :meth:`~pneumolab.models.classifier.XrayClassifier.scope_features`, mean activations), fitted
  on two thirds of the images and their mirrors, scored on the other third.

Printed: each check's ROC AUC (mirror vs original) and, at a few thresholds, the share of real
X-rays it would flag against the share of mirrors it catches. Nothing here looks at the test
split.
"""

from __future__ import annotations

import argparse
import random
from pathlib import Path

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score

import pneumolab
from pneumolab.data.formats import IMAGE_SUFFIXES
from pneumolab.inference.predictor import Predictor
from pneumolab.inference.torch_scoring import score_batches


def laterality(pixels: np.ndarray) -> float:
    """Lower chest (45-85% of the height): the band at 52-70% of the width minus the band at
    30-48%, over the image's standard deviation (positive where the heart is on the right)."""
    height, width = pixels.shape[-2:]
    image = np.asarray(pixels, dtype=np.float64).reshape(height, width)
    rows = image[int(0.45 * height) : int(0.85 * height)]
    right = rows[:, int(0.52 * width) : int(0.70 * width)].mean()
    left = rows[:, int(0.30 * width) : int(0.48 * width)].mean()
    return float((right - left) / (image.std() + 1e-6))


def _images(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)


def _report(name: str, real: np.ndarray, mirrored: np.ndarray, cuts: list[float]) -> None:
    """AUC, then real-flagged / mirrors-caught at each cut (a higher value means 'mirrored')."""
    labels = np.r_[np.zeros(len(real)), np.ones(len(mirrored))]
    print(f"{name}: ROC AUC {roc_auc_score(labels, np.r_[real, mirrored]):.4f}")
    for cut in cuts:
        print(
            f"  > {cut:g}: real X-rays flagged {np.mean(real > cut):.4f}, "
            f"mirrors caught {np.mean(mirrored > cut):.4f}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--images", type=int, default=1200)
    args = parser.parse_args()
    predictor: Predictor = pneumolab.load_run(args.run_dir)
    model = predictor.require_model("the probe")
    paths = _images(args.data / "chest_xray" / "train")
    paths = random.Random(0).sample(paths, min(args.images, len(paths)))
    originals = sorted(_images(args.data / "chest_xray_fullres_sample"))

    def pixels(files: list[Path]) -> torch.Tensor:
        return torch.from_numpy(np.stack([predictor.preprocess(p).numpy() for p in files]))

    def extract(batch: torch.Tensor) -> torch.Tensor:
        return model.scope_features(batch).float()

    def features(batch: torch.Tensor) -> np.ndarray:
        return score_batches(extract, model, batch, predictor.intensity, 64)

    train, full = pixels(paths), pixels(originals)
    lateral = np.array([laterality(p[0]) for p in train.numpy()])
    mirrored = np.array([laterality(p[0]) for p in train.flip(-1).numpy()])
    print(f"{len(paths)} training copies, {len(originals)} full-resolution originals")
    _report("laterality (training copies; -score)", -lateral, -mirrored, [0.0, 0.05, 0.1, 0.2])
    real_f, mirror_f = features(train), features(train.flip(-1))
    fit = np.arange(len(paths)) < 2 * len(paths) // 3
    probe = LogisticRegression(max_iter=2000).fit(
        np.r_[real_f[fit], mirror_f[fit]], np.r_[np.zeros(fit.sum()), np.ones(fit.sum())]
    )
    held = ~fit
    _report(
        f"probe on {real_f.shape[1]} gate features (held-out third)",
        probe.predict_proba(real_f[held])[:, 1],
        probe.predict_proba(mirror_f[held])[:, 1],
        [0.5, 0.9, 0.99],
    )
    _report(
        "probe on the full-resolution originals",
        probe.predict_proba(features(full))[:, 1],
        probe.predict_proba(features(full.flip(-1)))[:, 1],
        [0.5, 0.9],
    )


if __name__ == "__main__":
    main()
