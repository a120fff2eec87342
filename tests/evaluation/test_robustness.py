from functools import partial

import numpy as np
import pytest
import torch
from torchvision.transforms.v2 import functional as F

from pneumolab.data.transforms import normalize_intensity
from pneumolab.evaluation.robustness import PERTURBATIONS, robustness_report, summarize
from pneumolab.inference.torch_scoring import predict_pixels
from pneumolab.models.registry import create_classifier


@pytest.fixture
def pixels() -> torch.Tensor:
    gradient = torch.linspace(0, 255, 32).round().to(torch.uint8)
    base = gradient.view(1, 1, 1, 32).expand(6, 1, 32, 32).clone()
    return base.roll(shifts=3, dims=2)


@pytest.mark.parametrize("name", sorted(PERTURBATIONS))
def test_perturbations_keep_shape_and_dtype(name, pixels):
    out = PERTURBATIONS[name](pixels)
    assert out.shape == pixels.shape and out.dtype == torch.uint8
    if name != "clean":
        assert not torch.equal(out, pixels), f"{name} changed nothing"


def test_equalization_removes_monotonic_intensity_changes():
    rng = np.random.default_rng(0)
    image = torch.from_numpy(rng.normal(110, 35, (1, 1, 64, 64)).clip(0, 255).astype(np.uint8))
    reference = normalize_intensity(image, "equalize").float()
    for shifted in (
        F.adjust_gamma(image, 1.6),
        F.adjust_contrast(image, 0.6),
        F.adjust_gamma(image, 0.6),
    ):
        raw_change = (shifted.float() - image.float()).abs().mean()
        equalized_change = (
            (normalize_intensity(shifted, "equalize").float() - reference).abs().mean()
        )
        assert equalized_change < raw_change / 3


def test_unknown_intensity_method():
    with pytest.raises(ValueError, match="unknown intensity"):
        normalize_intensity(torch.zeros(1, 1, 4, 4, dtype=torch.uint8), "clahe2")


def test_report_covers_every_perturbation(pixels):
    torch.manual_seed(0)
    model = create_classifier("pneumolab_cnn_small")
    labels = np.array([0, 1, 0, 1, 0, 1])
    predict = partial(predict_pixels, model, intensity="equalize")
    scored = []

    def score(batch):
        scored.append(batch.clone())
        return predict(batch)

    report = robustness_report(score, pixels, labels, threshold=0.5)
    # each condition scores its own perturbation of the pixels, in the table's order
    assert len(scored) == len(PERTURBATIONS)
    for batch, perturb in zip(scored, PERTURBATIONS.values(), strict=True):
        assert torch.equal(batch, perturb(pixels))
    assert set(report) == set(PERTURBATIONS)
    for row in report.values():
        assert 0.0 <= row.accuracy <= 1.0
    summary = summarize(report)
    assert summary.worst_roc_auc <= summary.mean_roc_auc
