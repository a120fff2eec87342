"""The network pneumolab trains and serves: grayscale X-ray in, one pneumonia logit out."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any
from weakref import WeakKeyDictionary

import torch
from torch import nn

from pneumolab.errors import ModelError

_PASS_LOCKS: WeakKeyDictionary[nn.Module, threading.RLock] = WeakKeyDictionary()
_PASS_LOCKS_GUARD = threading.Lock()


def passes_lock(model: nn.Module) -> threading.RLock:
    """The lock that keeps ``model``'s passes one at a time across threads: Grad-CAM hooks its
    layers, and a pass beside it (another map, a prediction) mixed its activations into the map
    (maps off by up to 1.0, or torch errors). Scoring and Grad-CAM take it."""
    with _PASS_LOCKS_GUARD:
        return _PASS_LOCKS.setdefault(model, threading.RLock())


Backbone = Any
"""A timm model (``nn.Module`` with ``get_classifier``, ``forward_features``...): timm ships no
type information, so calls of its methods are not checked."""


def pneumonia_logit(class_logits: torch.Tensor) -> torch.Tensor:
    """The logit of P(pneumonia) from ``(B, K)`` logits: the single logit when K = 1; with
    subtypes (class 0 = NORMAL), log P(any pneumonia class) - log P(NORMAL).

    The log-sum-exp is written out (max, exp, sum, log) rather than ``torch.logsumexp``, whose
    ONNX ``ReduceLogSumExp`` OpenVINO's converter reduced over the whole batch: every image's
    score depended on the others in its batch, and no three-class run passed OpenVINO parity."""
    if class_logits.shape[-1] == 1:
        return class_logits.squeeze(-1)
    pneumonia = class_logits[:, 1:]
    top = pneumonia.amax(dim=1, keepdim=True)
    any_pneumonia = top.squeeze(1) + torch.log(torch.exp(pneumonia - top).sum(dim=1))
    return any_pneumonia - class_logits[:, 0]


def border_fade_mask(height: int, width: int, fade: float) -> torch.Tensor:
    """A ``(height, width)`` weight that is 1 inside and falls to 0 at the image edge along a
    cosine ramp ``fade`` of each side wide (``fade`` 0.1 at 160 px: the outer 16 px)."""

    def ramp(n: int) -> torch.Tensor:
        index = torch.arange(n, dtype=torch.float32) + 0.5
        distance = torch.minimum(index, n - index) / n  # to the nearest edge, as a share of n
        return 0.5 - 0.5 * torch.cos(torch.pi * (distance / fade).clamp(max=1.0))

    return ramp(height)[:, None] * ramp(width)[None, :]


def scope_stage(backbone: Backbone) -> int | None:
    """The stage (index into timm's ``feature_info``) whose mean activations describe an input
    for the scope gate: the last one at 1/16 of the input resolution. None when the backbone
    cannot return intermediate stages; the pooled features serve then."""
    if not hasattr(backbone, "forward_intermediates") or not hasattr(backbone, "feature_info"):
        return None
    matches = [i for i, info in enumerate(backbone.feature_info) if info["reduction"] == 16]
    return matches[-1] if matches else None


class XrayClassifier(nn.Module):
    """Wrap an RGB backbone so it takes ``(B, 1, H, W)`` grayscale in [0, 1] and returns ``(B,)`` logits.

    Grayscale is replicated to three channels rather than folding the stem into one channel:
    it reproduces the ImageNet features exactly, costs nothing measurable, and keeps every
    timm model usable unchanged. Normalisation lives inside the module, so exported models
    (ONNX) carry it and callers only supply pixels scaled to [0, 1].

    The output is always the pneumonia logit, so thresholds, calibration, Grad-CAM and export
    work the same for the binary and the three-class (NORMAL / BACTERIAL / VIRAL) task;
    :meth:`class_logits` gives the per-class logits.

    ``border_fade`` > 0 suppresses the border inside the module (so exported models carry it
    too): the outer ``border_fade`` of each side fades to black (:func:`border_fade_mask`), after
    augmentation in training, so the network cannot read collimation, markers or framing there.
    """

    backbone: Backbone
    mean: torch.Tensor
    std: torch.Tensor

    def __init__(
        self,
        backbone: nn.Module,
        mean: Sequence[float],
        std: Sequence[float],
        border_fade: float = 0.0,
    ) -> None:
        super().__init__()
        if not 0.0 <= border_fade < 0.5:
            raise ValueError(f"border_fade must be in [0, 0.5), not {border_fade}")
        self.backbone = backbone
        self.border_fade = border_fade
        self.scope_stage = scope_stage(backbone)
        """The backbone stage the scope descriptor reads (:func:`scope_stage`)."""
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))

    def _backbone_input(self, x: torch.Tensor) -> torch.Tensor:
        if self.border_fade > 0:
            x = x * border_fade_mask(x.shape[-2], x.shape[-1], self.border_fade).to(x)
        x = (x.expand(-1, self.mean.shape[1], -1, -1) - self.mean) / self.std
        # channels-last runs oneDNN's fastest convolution kernels on CPU (~1.3x in training)
        return x.contiguous(memory_format=torch.channels_last)

    def class_logits(self, x: torch.Tensor) -> torch.Tensor:
        """The backbone's raw ``(B, K)`` logits (K = 1: pneumonia; K = 3: the subtypes)."""
        return self.backbone(self._backbone_input(x))

    def check_input_size(self, name: str, image_size: int) -> None:
        """ModelError where the network ``name`` cannot take ``image_size`` px images (a ViT
        built for 224 px, an Inception too small for its pooling): one forward pass of a blank
        image, before anything is trained or written."""
        mode = self.training
        try:
            with torch.no_grad():
                self.eval()(torch.zeros(1, 1, image_size, image_size))
        except Exception as exc:  # timm raises AssertionError, torch RuntimeError...
            raise ModelError(
                f"{name} cannot take {image_size} x {image_size} px images "
                f"({type(exc).__name__}: {exc}); choose another --image-size or model"
            ) from None
        finally:
            self.train(mode)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B,)`` logits of pneumonia, whatever the number of classes."""
        return pneumonia_logit(self.class_logits(x))

    def features_and_scope(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """From one forward pass: the ``(B, D)`` pooled features the classifier reads, and the
        scope gate's ``(B, C)`` descriptor (mean activations of :attr:`scope_stage`). Mid-level
        statistics separate X-rays from other images far better than the pooled features of a
        network fine-tuned to convergence (benchmarks/README.md, "Which features should the OOD
        score read?")."""
        backbone, inputs, stage = self.backbone, self._backbone_input(x), self.scope_stage
        if stage is None:
            pooled = backbone.forward_head(backbone.forward_features(inputs), pre_logits=True)
            return pooled, pooled
        final, (middle,) = backbone.forward_intermediates(inputs, indices=[stage])
        return backbone.forward_head(final, pre_logits=True), middle.float().mean(dim=(2, 3))

    def scope_features(self, x: torch.Tensor) -> torch.Tensor:
        """The scope gate's descriptor alone (see :meth:`features_and_scope`): the forward pass
        stops at :attr:`scope_stage` (trained Xception at 160 px: about 10% faster on a CPU)."""
        if self.scope_stage is None:
            return self.features(x)
        (middle,) = self.backbone.forward_intermediates(
            self._backbone_input(x),
            indices=[self.scope_stage],
            intermediates_only=True,
            stop_early=True,
        )
        return middle.float().mean(dim=(2, 3))

    def feature_map(self, x: torch.Tensor) -> torch.Tensor:
        """The backbone's last ``(B, C, h, w)`` feature map (timm's ``forward_features``): what
        its head (pooling, VGG's fc6/fc7 ``pre_logits``, the classifier) reads."""
        return self.backbone.forward_features(self._backbone_input(x))

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The ``(B, D)`` features the final classifier sees (timm's ``pre_logits``)."""
        return self.backbone.forward_head(self.feature_map(x), pre_logits=True)
