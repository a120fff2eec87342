"""Build classifiers by name: any timm model, plus pneumolab's own CNNs (registered with timm).

Pretrained ImageNet weights come from a local file (a path, or a folder searched for
``<architecture>.<ext>`` or ``<architecture>.<tag>.<ext>``, ext one of safetensors, pth, pt, bin)
or, failing that, from timm's usual hub download.
Offline, the hub is not waited on: the error says how to supply a local file.
"""

from __future__ import annotations

import difflib
import logging
import os
import socket
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlparse

import timm
import torch
from torch import nn

from pneumolab.choices import HeadInit
from pneumolab.errors import ModelError, brief
from pneumolab.models import custom as _custom  # noqa: F401  (registers the custom CNNs with timm)
from pneumolab.models.classifier import Backbone, XrayClassifier

log = logging.getLogger(__name__)

WEIGHT_SUFFIXES = (".safetensors", ".pth", ".pt", ".bin")
WEIGHTS_DIR_ENV = "PNEUMOLAB_WEIGHTS_DIR"


def check_model_name(name: str) -> None:
    """Raise ModelError, with the closest known names, when timm has no architecture ``name``
    (or, for ``architecture.tag``, no such tag)."""
    if not timm.models.is_model(name):
        close = difflib.get_close_matches(name, timm.list_models(), n=5, cutoff=0.6)
        hint = f" Did you mean: {', '.join(close)}?" if close else " See `timm.list_models()`."
        raise ModelError(f"unknown model '{name}'.{hint}")
    try:
        timm.models.get_pretrained_cfg(name)
    except RuntimeError:  # is_model strips the tag: "resnet18.bogus" passes it
        architecture = name.split(".", 1)[0]
        tags = timm.list_pretrained(f"{architecture}.*")
        known = f"; its tags: {', '.join(tags)}" if tags else "; it has none"
        raise ModelError(f"unknown model '{name}': timm has no tag like that{known}") from None


def published_source(name: str) -> str | None:
    """Where timm knows ImageNet weights for ``name`` are published (a hub id, a URL or a file);
    None where nowhere (many architectures have a configuration without any)."""
    cfg = timm.models.get_pretrained_cfg(name)
    source = cfg and (cfg.hf_hub_id or cfg.url or cfg.file)
    return str(source) if source else None


def published_weights(name: str) -> bool:
    """Whether timm knows where ImageNet weights for ``name`` are published."""
    return published_source(name) is not None


def find_local_weights(name: str, weights: str | Path | None) -> Path | None:
    """The local weights file for ``name``: ``weights`` itself if it is a file, else the one file
    for it in the folder ``weights`` (or ``$PNEUMOLAB_WEIGHTS_DIR``), ``NAME.*`` or ``NAME.TAG.*``;
    None when no folder is given. ModelError where the folder holds several (the first by name
    was taken silently, and not recorded)."""
    location = weights or os.environ.get(WEIGHTS_DIR_ENV)
    if not location:
        return None
    location = Path(location).expanduser()
    if location.is_file():
        return location
    if not location.is_dir():
        raise ModelError(f"{location}: weights file or folder not found")
    candidates = sorted(
        p
        for p in location.iterdir()
        if p.suffix in WEIGHT_SUFFIXES and (p.stem == name or p.stem.startswith(name + "."))
    )
    if len(candidates) > 1:
        names = ", ".join(p.name for p in candidates)
        raise ModelError(
            f"{location}: several weights files for {name} ({names}); give --weights the file "
            "to start from"
        )
    return candidates[0] if candidates else None


def hub_offline() -> bool:
    """Whether ``HF_HUB_OFFLINE`` asks for no model-hub access."""
    return os.environ.get("HF_HUB_OFFLINE", "0").lower() in {"1", "true", "yes"}


def _hub_host_reachable(timeout: float = 3.0) -> bool:
    if hub_offline():
        return False
    from huggingface_hub import constants

    host = urlparse(constants.ENDPOINT).hostname or "huggingface.co"
    try:
        with socket.create_connection((host, 443), timeout=timeout):
            return True
    except OSError:
        return False


def zero_head(backbone: Backbone) -> Backbone:
    """Set the classifier head's weights and bias to zero (BiT's fine-tuning init), so training
    starts from logits of 0 instead of the architecture's random head; returns ``backbone``."""
    with torch.no_grad():
        for parameter in backbone.get_classifier().parameters():
            parameter.zero_()
    return backbone


def fan_in_head(backbone: Backbone) -> Backbone:
    """Re-draw the classifier head with PyTorch's own layer init (weights and bias
    U(-1/sqrt(fan_in), 1/sqrt(fan_in))): small random logits, whatever the architecture's init
    (timm's MobileNet/EfficientNet init scales with fan-out instead); returns ``backbone``."""
    for layer in backbone.get_classifier().modules():
        if isinstance(layer, (nn.Linear, nn.Conv2d)):
            layer.reset_parameters()
    return backbone


def timm_head(backbone: Backbone) -> Backbone:
    """Keep the head as the architecture initialised it in timm; returns ``backbone``."""
    return backbone


HEAD_INITS: dict[HeadInit, Callable[[Backbone], Backbone]] = {
    "fan_in": fan_in_head,
    "zero": zero_head,
    "timm": timm_head,
}
"""Every ``head_init`` choice and the function that starts the head that way."""


def create_backbone(
    name: str,
    pretrained: bool = False,
    weights: str | Path | None = None,
    num_classes: int = 1,
    head_init: HeadInit = "fan_in",
) -> nn.Module:
    """Create timm model ``name`` with a fresh ``num_classes`` head, ImageNet-initialised if asked;
    on pretrained weights the head starts as ``head_init`` says (:data:`HEAD_INITS`)."""
    check_model_name(name)
    if not pretrained:
        return timm.create_model(name, pretrained=False, num_classes=num_classes)
    local = find_local_weights(name, weights)
    if local is None and not published_weights(name):
        raise ModelError(
            f"'{name}' has no published ImageNet weights: train it from scratch with "
            "--no-pretrained, or pass --weights FILE (its own weights, in timm's layout)"
        )
    folder = weights or os.environ.get(WEIGHTS_DIR_ENV)
    searched = f" in {folder} (no {name}.* or {name}.TAG.* file there)" if folder else ""
    if local is None and not _hub_host_reachable():
        raise ModelError(
            f"no local weights for '{name}'{searched} and the model hub is unreachable "
            f"(offline). Pass --weights PATH (a .safetensors/.pth file in timm layout, or a "
            f"folder holding '{name}.*.safetensors'), set ${WEIGHTS_DIR_ENV}, or use "
            "--no-pretrained."
        )
    if local is None and folder:  # a folder for the other models of a study, say
        log.warning(
            "no weights file for '%s'%s: its ImageNet weights come from the hub", name, searched
        )
    initial_state = torch.get_rng_state()  # the init that _check_loaded replays
    try:
        if local is not None and timm.models.get_pretrained_cfg(name) is None:
            backbone = _with_local_weights(name, num_classes, local)  # timm would not load it
        else:
            overlay = {"file": str(local)} if local else None
            backbone = timm.create_model(
                name, pretrained=True, num_classes=num_classes, pretrained_cfg_overlay=overlay
            )
    except Exception as exc:  # any file can be given: torch, pickle and safetensors errors
        source = local or "the model hub"
        raise ModelError(
            f"could not load ImageNet weights for '{name}' from {source} (a .safetensors or "
            f"PyTorch state-dict file in timm layout is expected): {type(exc).__name__}: "
            f"{brief(str(exc))}"
        ) from None
    if local is not None:
        _check_loaded(backbone, name, num_classes, local, initial_state)
    return HEAD_INITS[head_init](backbone)


def _with_local_weights(name: str, num_classes: int, local: Path) -> Backbone:
    """Model ``name`` (one timm has no pretrained configuration for: pneumolab's own CNNs) with
    the tensors of ``local`` loaded, its classifier's left out."""
    backbone = timm.create_model(name, num_classes=num_classes)
    head = _classifier_keys(backbone)
    state = {k: v for k, v in timm.models.load_state_dict(str(local)).items() if k not in head}
    backbone.load_state_dict(state, strict=False)
    return backbone


def _classifier_keys(backbone: Backbone) -> set[str]:
    """The state-dict keys of ``backbone``'s classifier head (a new head: never loaded)."""
    head = {id(t) for t in backbone.get_classifier().state_dict(keep_vars=True).values()}
    return {k for k, t in backbone.state_dict(keep_vars=True).items() if id(t) in head}


def _check_loaded(
    backbone: Backbone, name: str, num_classes: int, local: Path, initial_state: torch.Tensor
) -> None:
    """ModelError when parameters of ``backbone`` (outside the head) are still at the random
    initialisation they got before ``local`` was loaded: another architecture's file, which a
    lenient load (timm's, with a new head) leaves silently unused. The initialisation is
    replayed from ``initial_state``, so any layout timm maps (torchvision's too) counts. Batch
    norms, which start constant, are refused where their running statistics are still exactly
    at their start (a file without them)."""
    with torch.random.fork_rng(devices=[]):
        torch.set_rng_state(initial_state)
        fresh = timm.create_model(name, num_classes=num_classes).state_dict()
    head, loaded = _classifier_keys(backbone), backbone.state_dict()
    # randomly initialised tensors only: a constant init (ones, zeros) may be a true value too
    drawn = [k for k, _ in backbone.named_parameters() if k not in head and _varies(fresh[k])]
    unloaded = [k for k in drawn if torch.equal(fresh[k], loaded[k])]
    if unloaded:
        raise ModelError(
            f"{local}: gave no weights to {len(unloaded)} of the {len(drawn)} randomly "
            f"initialised tensors of '{name}' (first: {', '.join(unloaded[:3])}); is it this "
            "architecture's weights file, in timm's layout?"
        )
    # batch norms start constant (mean 0, variance 1): an unloaded statistic is still exactly so
    norms = [n for n, m in backbone.named_modules() if _has_statistics(m)]
    stale = [
        n
        for n in norms
        if f"{n}.running_var" not in head
        and any(torch.equal(fresh[f"{n}.{s}"], loaded[f"{n}.{s}"]) for s in STATISTICS)
    ]
    if stale:
        raise ModelError(
            f"{local}: gave no statistics to {len(stale)} of the {len(norms)} batch norms of "
            f"'{name}' (first: {', '.join(stale[:3])}); a file of its ImageNet weights holds "
            "them all"
        )


STATISTICS = ("running_mean", "running_var")
"""A batch norm's running statistics, as its state dict names them."""


def _has_statistics(module: nn.Module) -> bool:
    """A batch norm that tracks running statistics (its ``running_var`` in the state dict)."""
    return isinstance(module, nn.modules.batchnorm._BatchNorm) and module.track_running_stats


def _varies(tensor: torch.Tensor) -> bool:
    return tensor.numel() > 1 and bool((tensor != tensor.flatten()[0]).any())


def create_classifier(
    name: str,
    pretrained: bool = False,
    weights: str | Path | None = None,
    num_classes: int = 1,
    border_fade: float = 0.0,
    head_init: HeadInit = "fan_in",
) -> XrayClassifier:
    """Create a grayscale X-ray classifier around timm architecture ``name``: one pneumonia logit,
    or ``num_classes`` logits (NORMAL first) for the three-class task; ``border_fade``: see
    :class:`XrayClassifier`; ``head_init``: see :func:`create_backbone`."""
    backbone = create_backbone(name, pretrained, weights, num_classes, head_init)
    cfg = timm.data.resolve_data_config(model=backbone)
    model = XrayClassifier(backbone, mean=cfg["mean"], std=cfg["std"], border_fade=border_fade)
    return model.to(memory_format=torch.channels_last)
