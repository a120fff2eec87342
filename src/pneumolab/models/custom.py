"""The study's own baseline CNNs, registered with timm so ``timm.create_model`` builds them too.

Three capacities, in the spirit of the study's hand-designed networks: stacks of
conv–BN–ReLU–max-pool blocks, global average pooling and a dense head; the largest uses
depthwise-separable convolutions (Xception's building block) to stay cheap.
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import pairwise
from typing import Any

import torch
from timm.models import register_model
from torch import nn


def _conv(in_channels: int, out_channels: int, separable: bool) -> list[nn.Module]:
    if not separable:
        return [nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False)]
    return [
        nn.Conv2d(in_channels, in_channels, 3, padding=1, groups=in_channels, bias=False),
        nn.Conv2d(in_channels, out_channels, 1, bias=False),
    ]


def _conv_block(in_channels: int, out_channels: int, convs: int, separable: bool) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i in range(convs):
        # the first convolution of the network sees the raw image: a plain convolution
        sep = separable and (i > 0 or in_channels > 3)
        layers += [
            *_conv(in_channels if i == 0 else out_channels, out_channels, sep),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
        ]
    return nn.Sequential(*layers, nn.MaxPool2d(2))


class BaselineCNN(nn.Module):
    """Conv–BN–ReLU(–conv–BN–ReLU)–pool blocks, global average pooling and a dense head."""

    def __init__(
        self,
        widths: Sequence[int] = (16, 32, 64),
        convs_per_block: int = 1,
        separable: bool = False,
        num_classes: int = 1,
        in_chans: int = 3,
        head_width: int = 64,
        drop_rate: float = 0.3,
        **_: object,
    ) -> None:
        super().__init__()
        channels = [in_chans, *widths]
        self.features = nn.Sequential(
            *(_conv_block(a, b, convs_per_block, separable) for a, b in pairwise(channels))
        )
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

    def get_classifier(self) -> nn.Module:
        """The final linear layer (timm convention)."""
        return self.head[-1]

    def group_matcher(self, coarse: bool = False) -> dict[str, object]:
        """Parameter groups for timm: the first block is the stem, each later block a stage."""
        return {"stem": r"^features\.0\.", "blocks": r"^features\.(\d+)"}

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.head[:-1](self.pool(x))
        return x if pre_logits else self.head[-1](x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


@register_model
def pneumolab_cnn_small(pretrained: bool = False, **kwargs: Any) -> BaselineCNN:
    """Three conv blocks (16-32-64 filters): the study's smallest baseline."""
    return BaselineCNN(widths=(16, 32, 64), **kwargs)


@register_model
def pneumolab_cnn_medium(pretrained: bool = False, **kwargs: Any) -> BaselineCNN:
    """Four double-conv blocks (32-64-128-256 filters)."""
    return BaselineCNN(widths=(32, 64, 128, 256), convs_per_block=2, head_width=128, **kwargs)


@register_model
def pneumolab_cnn_separable(pretrained: bool = False, **kwargs: Any) -> BaselineCNN:
    """Five double-conv blocks with depthwise-separable convolutions (32-64-128-256-512 filters)."""
    return BaselineCNN(
        widths=(32, 64, 128, 256, 512), convs_per_block=2, separable=True, head_width=128, **kwargs
    )
