"""The classifier with its OOD score, from one forward pass (what runs and ONNX graphs serve)."""

from __future__ import annotations

import torch
from torch import nn

from pneumolab.models.classifier import XrayClassifier, pneumonia_logit


class ScoredModel(nn.Module):
    """``(probability, ood_score)`` of ``(B, 1, H, W)`` pixels in [0, 1].

    One forward pass gives the pooled features the classifier sees (timm's ``pre_logits``) and
    the scope descriptor that ``ood`` (a descriptor → score module) reads
    (:meth:`XrayClassifier.features_and_scope`); without ``ood`` the score is NaN.
    """

    def __init__(self, model: XrayClassifier, ood: nn.Module | None) -> None:
        super().__init__()
        self.model = model
        self.ood = ood

    def forward(self, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        probability, ood_score, _ = self.with_class_logits(pixels)
        return probability, ood_score

    def with_class_logits(
        self, pixels: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """:meth:`forward`'s ``(probability, ood_score)`` and the ``(B, K)`` class logits the
        probability comes from (a three-class network's subtypes), from the same pass."""
        features, scope = self.model.features_and_scope(pixels)
        logits = self.model.backbone.get_classifier()(features)
        probability = torch.sigmoid(pneumonia_logit(logits))
        if self.ood is None:
            return probability, torch.full_like(probability, float("nan")), logits
        return probability, self.ood(scope), logits
