"""Transfer strategies: which backbone parameters train, and at which learning rate.

Stages are timm's coarse parameter groups (``model.group_matcher(coarse=True)``: stem, then
one group per stage or block), without the classifier, which is always trained.
"""

from __future__ import annotations

from typing import Any

from timm.models import group_parameters
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from pneumolab.choices import STRATEGIES
from pneumolab.errors import ConfigError
from pneumolab.models.classifier import Backbone


def head_parameters(backbone: Backbone) -> list[nn.Parameter]:
    """The parameters of the final classifier (timm's ``get_classifier()``)."""
    return list(backbone.get_classifier().parameters())


def stage_parameter_groups(backbone: Backbone) -> list[list[nn.Parameter]]:
    """Backbone parameters by stage, input side first, classifier excluded."""
    if not hasattr(backbone, "group_matcher"):
        raise ConfigError(
            f"{type(backbone).__name__} does not describe its stages (no group_matcher): "
            "use strategy 'finetune' or 'frozen'"
        )
    named = dict(backbone.named_parameters())
    head = {id(p) for p in head_parameters(backbone)}
    groups = group_parameters(backbone, backbone.group_matcher(coarse=True))
    stages = [[named[n] for n in names if id(named[n]) not in head] for names in groups.values()]
    return [stage for stage in stages if stage]


def apply_strategy(backbone: Backbone, strategy: str, unfreeze_stages: int = 2) -> None:
    """Set ``requires_grad``: everything (finetune), the head only (frozen), or the head and the
    last ``unfreeze_stages`` stages (partial)."""
    if strategy not in STRATEGIES:
        raise ConfigError(f"unknown strategy {strategy!r}; choose from {STRATEGIES}")
    if strategy == "finetune":
        backbone.requires_grad_(True)
        return
    backbone.requires_grad_(False)
    trainable = head_parameters(backbone)
    if strategy == "partial":
        stages = stage_parameter_groups(backbone)
        if unfreeze_stages > len(stages):
            raise ConfigError(
                f"unfreeze_stages={unfreeze_stages}, but the model has {len(stages)} stages"
            )
        trainable += [p for stage in stages[-unfreeze_stages:] for p in stage]
    for parameter in trainable:
        parameter.requires_grad_(True)


def train_unfrozen_batch_norms(model: nn.Module) -> None:
    """Put each batch-norm layer in training mode where any of its parameters trains, in eval
    mode where all are frozen (their running statistics are part of the frozen backbone)."""
    for module in model.modules():
        if isinstance(module, _BatchNorm):
            module.train(any(p.requires_grad for p in module.parameters()))


def trainable_body_parameters(backbone: Backbone) -> list[nn.Parameter]:
    """The trainable parameters of the backbone outside its classifier head."""
    head = {id(p) for p in head_parameters(backbone)}
    return [p for p in backbone.parameters() if p.requires_grad and id(p) not in head]


def optimizer_groups(
    backbone: Backbone, lr: float, backbone_lr_scale: float
) -> list[dict[str, Any]]:
    """Parameter groups of the trainable parameters: the head at ``lr``, the rest of the backbone
    at ``lr * backbone_lr_scale``."""
    body = trainable_body_parameters(backbone)
    groups = [{"params": [p for p in head_parameters(backbone) if p.requires_grad], "lr": lr}]
    if body:
        groups.append({"params": body, "lr": lr * backbone_lr_scale})
    return groups
