"""A network whose Grad-CAM is known exactly: its logit is the mean pixel of its input.

Two 1-channel convolutions (``features``: the first averages the three channels over a
``kernel`` x ``kernel`` window, the second copies) and global average pooling feed a linear
head of weight 1. Every cell's gradient is the same positive number, so the unscaled Grad-CAM
of ``features`` is the (window-averaged) image itself, times that number.
"""

from __future__ import annotations

import torch
from timm.models import register_model
from torch import nn

from pneumolab.models.classifier import XrayClassifier


class MeanReaderBackbone(nn.Module):
    """timm's backbone interface (``forward_features``, ``forward_head``, ``get_classifier``)
    around ``features`` and ``head``."""

    def __init__(self, kernel: int) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 1, kernel, stride=kernel, bias=False), nn.Conv2d(1, 1, 1, bias=False)
        )
        self.head = nn.Linear(1, 1)
        with torch.no_grad():
            self.features[0].weight.fill_(1 / (3 * kernel * kernel))
            self.features[1].weight.fill_(1.0)
            self.head.weight.fill_(1.0)
            self.head.bias.fill_(0.0)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        pooled = x.mean(dim=(2, 3))
        return pooled if pre_logits else self.head(pooled)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def get_classifier(self) -> nn.Module:
        return self.head


def mean_reader(kernel: int = 1) -> XrayClassifier:
    """The classifier of :class:`MeanReaderBackbone`, its input taken as it is (mean 0, std 1):
    a ``kernel``-px window per feature-map cell (an S px image with ``kernel = S``: a 1x1 map)."""
    return XrayClassifier(MeanReaderBackbone(kernel), mean=(0.0,) * 3, std=(1.0,) * 3).eval()


@register_model
def pneumolab_test_mean_reader(pretrained: bool = False, **_: object) -> MeanReaderBackbone:
    """The mean reader as a timm architecture, for runs made by hand (ImageNet's mean and std
    normalise its input there: an image darker than about 115 reads as NORMAL)."""
    return MeanReaderBackbone(kernel=1)


@register_model
def pneumolab_test_one_cell(pretrained: bool = False, **_: object) -> MeanReaderBackbone:
    """The mean reader of 32 x 32 windows: at 32 px every feature map it has is 1x1."""
    return MeanReaderBackbone(kernel=32)
