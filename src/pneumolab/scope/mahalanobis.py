"""The Mahalanobis OOD score as a PyTorch module, and its fit (scikit-learn's Ledoit-Wolf)."""

from __future__ import annotations

import logging

import numpy as np
import torch
from torch import nn

log = logging.getLogger(__name__)


class MahalanobisScore(nn.Module):
    """``(B, D)`` features → ``(B,)`` smallest squared Mahalanobis distance to the class means.

    With the shared precision ``P = Wᵀ W``: ``min_c ‖W f − W μ_c‖²``, one matrix product.
    """

    whitening: torch.Tensor
    centers: torch.Tensor

    def __init__(self, whitening: torch.Tensor, centers: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("whitening", whitening.float())
        self.register_buffer("centers", centers.float())

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        whitened = features.float() @ self.whitening.T
        distances = ((whitened[:, None, :] - self.centers[None]) ** 2).sum(dim=-1)
        return distances.min(dim=1).values


def fit_mahalanobis(features: np.ndarray, labels: np.ndarray) -> MahalanobisScore:
    """Class means and a shared Ledoit-Wolf covariance of ``(N, D)`` training features."""
    from sklearn.covariance import LedoitWolf

    classes, index = np.unique(labels, return_inverse=True)
    features = np.asarray(features, dtype=np.float64)
    means = np.stack([features[index == i].mean(axis=0) for i in range(len(classes))])
    if not np.any(np.abs(features - means[index]) > 1e-6 * (1 + np.abs(means[index]))):
        log.warning(  # a zero covariance: the whitening is zero, every score 0, none flagged
            "the scope features do not vary within a class over the %d fitted images: the "
            "content (OOD) score is 0 for every input and flags none; only the sanity and DICOM "
            "checks gate inputs (fit the gate on more, varied images)",
            len(features),
        )
    precision = LedoitWolf(assume_centered=True).fit(features - means[index]).precision_
    eigenvalues, eigenvectors = np.linalg.eigh((precision + precision.T) / 2)
    whitening = (eigenvectors * np.sqrt(eigenvalues.clip(min=0))).T  # P = Wᵀ W
    return MahalanobisScore(torch.from_numpy(whitening), torch.from_numpy(means @ whitening.T))
