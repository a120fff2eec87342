"""The study's own baseline CNNs, registered with timm so ``timm.create_model`` builds them too."""

from __future__ import annotations

from collections.abc import Sequence
from itertools import pairwise

import torch
from timm.models import register_model
from torch import nn


def _conv_block(in_channels: int, out_channels: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
        nn.MaxPool2d(2),
    )


class BaselineCNN(nn.Module):
    """Stacked conv–BN–ReLU–pool blocks, global average pooling and a dense head."""

    def __init__(
        self,
        widths: Sequence[int] = (16, 32, 64),
        num_classes: int = 1,
        in_chans: int = 3,
        head_width: int = 64,
        drop_rate: float = 0.3,
        **_: object,
    ) -> None:
        super().__init__()
        channels = [in_chans, *widths]
        self.features = nn.Sequential(*(_conv_block(a, b) for a, b in pairwise(channels)))
        self.num_features = widths[-1]
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Sequential(
            nn.Flatten(),
            nn.Linear(self.num_features, head_width),
            nn.ReLU(inplace=True),
            nn.Dropout(drop_rate),
            nn.Linear(head_width, num_classes),
        )
        self.pretrained_cfg = {
            "architecture": type(self).__name__,
            "input_size": (in_chans, 224, 224),
            "mean": (0.5,) * in_chans,
            "std": (0.25,) * in_chans,
        }

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.pool(self.features(x)))


@register_model
def pneumolab_cnn_small(pretrained: bool = False, **kwargs: object) -> BaselineCNN:
    """Three conv blocks (16-32-64 filters): the study's smallest baseline."""
    return BaselineCNN(widths=(16, 32, 64), **kwargs)
