"""Grad-CAM heat maps (pytorch-grad-cam) of the evidence for a class, as arrays, overlays and
figures: for pneumonia the pneumonia logit, for NORMAL its negative. An image is explained by
the class it was called: the pneumonia logit's map of an image called NORMAL is usually empty
(Grad-CAM keeps only what raised the score), which showed a false negative as a bare X-ray."""

from __future__ import annotations

import difflib
import io
import math
import os
import textwrap
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, get_args

import cv2
import matplotlib
import numpy as np
import torch
from matplotlib.figure import Figure
from PIL import Image
from pytorch_grad_cam import GradCAM
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
from torch import nn

from pneumolab.data.imageio import (
    DEFAULT_MAX_PIXELS,
    array_to_image,
    image_to_grayscale,
    load_image,
)
from pneumolab.data.subtypes import SUBTYPE_NAMES
from pneumolab.data.transforms import normalize_intensity
from pneumolab.errors import ModelError, OutputError, PneumolabError, printable
from pneumolab.evaluation.figures import save_figure
from pneumolab.files import folder_for
from pneumolab.inference.inputs import ImageInput, expand_paths, file_header_checks
from pneumolab.inference.prediction import CLASS_PROBABILITY_FIELDS, Prediction
from pneumolab.inference.predictor import Predictor
from pneumolab.models.classifier import XrayClassifier, passes_lock
from pneumolab.outputs import check_apart, check_output
from pneumolab.scope.checks import ScopeChecks

OVERLAY_ALPHA = 0.6
"""Opacity of the colour map where the heat is highest; it fades to 0 where there is none."""
FIGURE_PIXELS = 600
"""Width of the ``explain`` figures: images are decoded for display at least this large."""
TALLEST_FIGURE = 3
"""An ``explain`` image is drawn at most this many times as tall as the figure is wide, the
title above it (a 1x2000-pixel image made a figure of 1.2 million pixels' height, which ran the
machine out of memory)."""


ExplainedClass = Literal["PNEUMONIA", "NORMAL"]
"""The class whose evidence a heat map shows."""


class _Evidence(nn.Module):
    """The classifier's evidence for ``towards`` as a ``(B, 1)`` column, the shape grad-cam
    expects: the pneumonia logit, or its negative for NORMAL."""

    def __init__(self, model: XrayClassifier, towards: ExplainedClass) -> None:
        super().__init__()
        self.model = model
        self.sign = 1.0 if towards == "PNEUMONIA" else -1.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.sign * self.model(x)[:, None]


def _contains_conv(module: nn.Module) -> bool:
    return any(isinstance(m, nn.Conv2d) for m in module.modules())


@torch.no_grad()
def feature_map_layers(model: XrayClassifier, image_size: int = 224) -> dict[str, tuple[int, int]]:
    """The modules of the backbone's feature extractor (timm's ``forward_features``, not its
    head) that contain a convolution and output a 4-D feature map, by their names in
    ``model.named_modules()``, in execution order, with their map's height and width (found
    with one pass of an ``image_size`` input).

    The head is left out: VGG's ``pre_logits`` (fc6/fc7 as convolutions) outputs a 2 x 2 map at
    256 px, which was chosen over ``features`` and explained the classifier head."""
    found: dict[str, tuple[int, int]] = {}
    names = {module: name for name, module in model.named_modules()}

    def record(module: nn.Module, _: object, output: object) -> None:
        if isinstance(output, torch.Tensor) and output.ndim == 4 and _contains_conv(module):
            found[names[module]] = (int(output.shape[-2]), int(output.shape[-1]))

    backbone = model.backbone
    handles = [m.register_forward_hook(record) for m in backbone.modules() if m is not backbone]
    try:
        was_training = model.training
        model.eval().feature_map(
            torch.zeros(1, 1, image_size, image_size, device=model.mean.device)
        )
        model.train(was_training)
    finally:
        for handle in handles:
            handle.remove()
    return found


def find_target_layer(model: XrayClassifier, image_size: int = 224) -> nn.Module:
    """The backbone module to explain: the last one of :func:`feature_map_layers` (the
    feature extractor's, never the head's) with a map larger than 1x1.

    Found with one pass of an ``image_size`` input; ModelError when there is none (a 1x1 map
    is one number per channel: its Grad-CAM, stretched per image, is empty for every image), or
    when the backbone's one convolution is its stem (a vision transformer's patch embedding).
    """
    backbone = model.backbone
    if sum(isinstance(m, nn.Conv2d) for m in backbone.modules()) == 1:
        raise ModelError(
            f"{type(backbone).__name__}: its only convolution is the input stem (a "
            "transformer's patch embedding), so Grad-CAM would explain the stem, not the model"
        )
    found = feature_map_layers(model, image_size)
    if not found:
        raise ModelError(
            f"{type(backbone).__name__}: no convolutional layer with a 2-D feature map found, "
            "so Grad-CAM has nothing to explain"
        )
    spatial = [name for name, size in found.items() if size != (1, 1)]
    if not spatial:
        raise _one_cell(next(reversed(found)), image_size, [])
    return model.get_submodule(spatial[-1])


def _one_cell(name: str, image_size: int, larger: list[str] | None) -> ModelError:
    """The error for layer ``name``, whose feature map is 1x1 at ``image_size`` px; ``larger``:
    the layers to offer instead (None: not looked up)."""
    if larger is None:
        instead = "choose a layer with a larger map (feature_map_layers gives their sizes)"
    else:
        instead = f"choose one of {', '.join(larger)}" if larger else "no layer has a larger map"
    return ModelError(
        f"layer {name!r}: its feature map is 1x1 at {image_size} px, one value per image, so "
        f"its Grad-CAM (stretched per image) would be empty for every image; {instead}"
    )


def layer_named(model: XrayClassifier, name: str, image_size: int = 224) -> nn.Module:
    """The module called ``name`` in ``model.named_modules()``, where it outputs a convolutional
    feature map larger than 1x1 (:func:`feature_map_layers`); ModelError otherwise: for a 1x1
    map, naming the layer and its size; else naming close names and, for each map size, the
    last layer with a map of that size (what ``explain --layer`` may take)."""
    found = feature_map_layers(model, image_size)
    last_of_size = {size: layer for layer, size in found.items()}  # a later layer replaces
    listed = [f"{layer} ({h}x{w})" for (h, w), layer in reversed(last_of_size.items())]
    if found.get(name) == (1, 1):
        raise _one_cell(name, image_size, [line for line in listed if not line.endswith("(1x1)")])
    if name in found:
        return model.get_submodule(name)
    close = difflib.get_close_matches(name, list(found), n=3)
    hint = f" (did you mean {' or '.join(close)}?)" if close else ""
    raise ModelError(
        f"layer {name!r}: not a layer of the model with a convolutional feature map before its "
        f"head{hint}; "
        f"the last layer of each map size at {image_size} px: {', '.join(listed) or 'none'}"
    )


@dataclass(frozen=True)
class GradCamMaps:
    """One image's Grad-CAM at its input size ``(S, S)``, as measured and as shown."""

    raw: np.ndarray
    """The map as grad-cam computes it before scaling: the channel-weighted activations of the
    layer, negatives set to 0, resized (bilinear) to the input. Region shares are fractions of
    its sum; all zero where no region raised the evidence."""
    stretched: np.ndarray
    """``raw`` stretched per image to [0, 1] (its minimum to 0, its maximum to 1), as grad-cam
    scales it: for display only, since the minimum subtracted and the scale differ from image
    to image (a map spread evenly, its minimum its maximum, is all zero here: see
    :meth:`blank`)."""

    def blank(self, towards: ExplainedClass) -> str:
        """Why the map shown is blank, in words, or "" where it shows regions: ``raw`` all zero
        (no region raised the evidence for ``towards``), or the same everywhere (every region
        raised it alike, which the stretch takes to 0: an even map is not an empty one)."""
        if not self.raw.any():
            return f"heat map empty: no region raised the evidence for {towards}"
        if not self.stretched.any():
            return (
                f"heat spread evenly: every region raised the evidence for {towards} alike, so "
                "none stands out"
            )
        return ""


def gradcam_maps(
    model: XrayClassifier,
    pixels: torch.Tensor,
    intensity: str,
    layer: nn.Module | str | None = None,
    towards: ExplainedClass = "PNEUMONIA",
) -> GradCamMaps:
    """Grad-CAM of the evidence for ``towards`` for one image's uint8 pixels ``(1, 1, S, S)``
    or ``(1, S, S)`` (what :meth:`Predictor.preprocess` gives), raw and stretched, from one
    pass.

    ``intensity`` normalisation (the run's, :attr:`Predictor.intensity`) is applied first, as in
    training and prediction; ``layer`` (a module of ``model``, or its name) defaults to
    :func:`find_target_layer`'s choice. The model's train/eval mode is kept (grad-cam switches
    it to eval). ValueError for another ``towards``, a batch of several images or a module not
    of ``model``; ModelError for a name that is not one of its feature-map layers
    (:func:`layer_named`) and for a layer whose map is 1x1 (its stretched map is always
    empty); TypeError for pixels that are not uint8 (0..1 floats would be divided by 255
    again). :func:`explain_image` takes a predictor instead. Safe across threads: one model's
    maps and predictions run one at a time (:func:`~pneumolab.models.classifier.passes_lock`).
    """
    if towards not in get_args(ExplainedClass):
        raise ValueError(f"towards is 'PNEUMONIA' or 'NORMAL', not {towards!r}")
    if not isinstance(pixels, torch.Tensor):
        raise TypeError(
            "Grad-CAM takes a torch tensor of uint8 pixels (torch.from_numpy of "
            f"Predictor.preprocess's array), not {type(pixels).__name__}"
        )
    if pixels.dtype != torch.uint8:
        raise TypeError(f"Grad-CAM takes uint8 pixels (Predictor.preprocess), not {pixels.dtype}")
    if pixels.ndim == 3:
        pixels = pixels[None]
    if pixels.ndim != 4 or tuple(pixels.shape[:2]) != (1, 1):
        raise ValueError(
            f"Grad-CAM explains one image: pixels of shape (1, 1, S, S) or (1, S, S), not "
            f"{tuple(pixels.shape)}"
        )
    size = int(pixels.shape[-1])
    with passes_lock(model):  # the hooks see every pass through the model, any thread's
        layer = _target_layer(model, layer, size)  # a pass of its own
        device = model.mean.device
        inputs = normalize_intensity(pixels, intensity).to(device).float() / 255.0
        was_training = model.training
        cam = GradCAM(_Evidence(model, towards), [layer])
        targets = [ClassifierOutputTarget(0)]
        try:
            with torch.enable_grad():
                stretched = cam(inputs, targets=targets)
            stored = cam.activations_and_grads
            activations, gradients = stored.activations[0], stored.gradients[0]
            if activations.shape[-2:] == (1, 1):  # a module given: not checked by name
                name = next(n for n, m in model.named_modules() if m is layer)
                raise _one_cell(name, size, None)
            weighted = cam.get_cam_image(
                inputs, layer, targets, activations.numpy(), gradients.numpy()
            )
        finally:
            cam.activations_and_grads.release()
            model.zero_grad(set_to_none=True)
            model.train(was_training)
    width_height = (int(pixels.shape[-1]), int(pixels.shape[-2]))  # grad-cam's resize, unscaled
    raw = cv2.resize(np.maximum(weighted[0], 0.0).astype(np.float32), width_height)
    return GradCamMaps(raw, np.clip(stretched[0], 0.0, 1.0).astype(np.float32))


def gradcam(
    model: XrayClassifier,
    pixels: torch.Tensor,
    intensity: str,
    layer: nn.Module | str | None = None,
    towards: ExplainedClass = "PNEUMONIA",
) -> np.ndarray:
    """The map :func:`gradcam_maps` shows: ``(S, S)`` in [0, 1], stretched per image, all
    zero where no region raised the evidence for ``towards`` or every region raised it alike
    (:meth:`GradCamMaps.blank` tells which)."""
    return gradcam_maps(model, pixels, intensity, layer, towards).stretched


def _target_layer(model: XrayClassifier, layer: nn.Module | str | None, size: int) -> nn.Module:
    """``layer`` as a module of ``model`` (a module, or its name as ``named_modules`` gives
    it: :func:`layer_named`), else :func:`find_target_layer`'s choice; ValueError for a module
    of another model (pytorch-grad-cam failed on it, and on unknown names, with AttributeErrors)."""
    if layer is None:
        return find_target_layer(model, size)
    if isinstance(layer, str):
        return layer_named(model, layer, size)
    if not any(module is layer for module in model.modules()):
        raise ValueError(f"layer {type(layer).__name__}: not a module of the model")
    return layer


def called(prediction: Prediction) -> ExplainedClass:
    """The class ``prediction``'s probability falls on at its threshold (whatever its scope
    label), the one its heat map explains."""
    return "PNEUMONIA" if prediction.probability >= prediction.threshold else "NORMAL"


@dataclass(frozen=True)
class Explanation:
    """An image's prediction and the Grad-CAM maps of the class it was called."""

    prediction: Prediction
    maps: GradCamMaps
    towards: ExplainedClass

    @property
    def heat(self) -> np.ndarray:
        """The map shown, ``(S, S)`` in [0, 1], stretched per image (:attr:`GradCamMaps.stretched`):
        not comparable across images; all zero where it is blank (:attr:`caption` says why)."""
        return self.maps.stretched

    @property
    def caption(self) -> str:
        """What the map shows, in words."""
        if not math.isfinite(self.prediction.probability):
            return "no heat map: the model's output is not a number (no class was called)"
        return self.maps.blank(self.towards) or (
            f"heat: regions that raised the evidence for {self.towards}"
        )


def overlay(gray: np.ndarray, heat: np.ndarray) -> np.ndarray:
    """RGB uint8 image: grayscale ``gray`` (H, W) under the jet-coloured ``heat`` (any size,
    resized to H x W), opaque where the heat is high and transparent where it is zero."""
    height, width = gray.shape
    if heat.shape != gray.shape:
        resized = Image.fromarray(heat.astype(np.float32), mode="F").resize((width, height))
        heat = np.clip(np.asarray(resized), 0.0, 1.0)
    colours = matplotlib.colormaps["jet"](heat)[..., :3]
    alpha = OVERLAY_ALPHA * heat[..., None]
    base = np.repeat(gray[..., None].astype(np.float64) / 255.0, 3, axis=-1)
    return np.round(255 * ((1 - alpha) * base + alpha * colours)).astype(np.uint8)


def overlay_png(image: Image.Image | np.ndarray, heat: np.ndarray | None) -> bytes:
    """PNG bytes of :func:`overlay` for an image (PIL or array, made 8-bit grayscale as
    ``predict`` makes it: an RGB, 12-bit or 0..1 float image is not cut to bytes);
    ``heat=None``: the image alone."""
    pil = image_to_grayscale(image) if isinstance(image, Image.Image) else array_to_image(image)
    gray = np.asarray(pil.convert("L"))
    heat = np.zeros(gray.shape, dtype=np.float32) if heat is None else heat
    buffer = io.BytesIO()
    Image.fromarray(overlay(gray, heat)).save(buffer, "PNG")
    return buffer.getvalue()


TITLE_WIDTH = 80
"""Characters per line of an overlay's title: what a 600 px figure holds at 9 pt."""


def _subtype_text(result: Prediction) -> str:
    """A three-class run's class probabilities and subtype call, as ``predict`` gives them
    (none: the image was not called PNEUMONIA in scope); "" where the prediction has none (a
    binary run, an output that is not a number)."""
    probabilities = [getattr(result, field) for field in CLASS_PROBABILITY_FIELDS]
    if None in probabilities:
        return ""
    listed = ", ".join(
        f"P({name.lower()}) = {p:.3f}" for name, p in zip(SUBTYPE_NAMES, probabilities, strict=True)
    )
    return f"{listed} → subtype {result.subtype or 'none'}"


def _title(path: Path, explained: Explanation, layer: str | None = None) -> str:
    """An overlay's title: the image's path (files of one name in several folders are told
    apart by it; wrapped, never cut), the call (with a three-class run's subtype and class
    probabilities), what the heat shows (at ``layer``, where one was chosen), and why the
    input is out of scope or what it was warned of (as ``predict`` says). Non-UTF-8 bytes are
    shown as ``\\xNN`` before the lines are measured."""
    result = explained.prediction
    lines = textwrap.wrap(printable(str(path)), TITLE_WIDTH, break_on_hyphens=False)
    lines += [
        f"P(pneumonia) = {result.probability:.3f} → {result.label} "
        f"(threshold {result.threshold:.3f}) — research tool, not a diagnosis",
    ]
    lines += textwrap.wrap(_subtype_text(result), TITLE_WIDTH)
    at_layer = f" (layer {printable(layer)})" if layer else ""
    lines += textwrap.wrap(explained.caption + at_layer, TITLE_WIDTH, break_on_hyphens=False)
    for heading, notes in (("out of scope", result.reasons), ("warning", result.warnings)):
        if notes:
            lines += textwrap.wrap(printable(f"{heading}: {'; '.join(notes)}"), TITLE_WIDTH)
    return "\n".join(lines)


def _figure(
    image: Image.Image, heat: np.ndarray, title: str, out_file: Path, overwrite: bool
) -> None:
    """Save the overlay with ``title`` (a pyplot-free figure: no global state), the image
    first shrunk to twice the figure's width (a 50-megapixel PNG need not be drawn in full)."""
    if max(image.size) > 2 * FIGURE_PIXELS:  # at least 1 px each way (contain rounds to 0)
        scale = 2 * FIGURE_PIXELS / max(image.size)
        image = image.resize(
            (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
        )
    width = FIGURE_PIXELS / 100
    lines = title.count("\n") + 1
    height = width * min(image.height / image.width, TALLEST_FIGURE) + 0.3 + 0.2 * lines
    figure = Figure(figsize=(width, height), dpi=100)
    axes = figure.subplots()
    axes.imshow(overlay(np.asarray(image), heat))
    axes.set_title(printable(title), fontsize=9)  # a name that is not UTF-8: its bytes as \xNN
    axes.axis("off")
    save_figure(figure, out_file, replace=overwrite)  # atomic: a rerun never keeps a cut PNG


def explain_image(
    predictor: Predictor,
    layer: nn.Module | str | None,
    image: ImageInput,
    header_checks: ScopeChecks | None = None,
    scope_verdict: bool | None = None,
) -> Explanation:
    """The prediction for ``image`` and the Grad-CAM map of ``layer`` (None:
    :func:`find_target_layer`'s choice) for the class it was called, from one decoding and
    resizing; ``header_checks`` and ``scope_verdict``: see :meth:`Predictor.predict`."""
    model = predictor.require_model("Grad-CAM")
    result, pixels = predictor.predict_with_pixels(image, header_checks, scope_verdict)
    towards = called(result)
    if not math.isfinite(result.probability):  # its gradients are not numbers either: no map
        none = np.zeros(pixels.shape[-2:], np.float32)
        return Explanation(result, GradCamMaps(none, none), towards)
    tensor = torch.from_numpy(pixels)[None]
    maps = gradcam_maps(model, tensor, predictor.intensity, layer, towards)
    return Explanation(result, maps, towards)


def explain_paths(
    run_dir: str | Path,
    paths: Sequence[str | Path],
    out_dir: str | Path,
    overwrite: bool = False,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    layer: str | None = None,
) -> Iterator[Path | PneumolabError]:
    """Write one PNG per image (folders expanded) into ``out_dir``: the X-ray under its Grad-CAM
    heat map, probability and label (and a three-class run's subtype) in the title. Unreadable
    images, and PNGs already in ``out_dir`` (unless ``overwrite``), yield their error instead;
    OutputError where ``out_dir`` is an input folder or inside one. Images over ``max_pixels``
    are refused from their header. ``layer``: the module to explain, by name
    (:func:`layer_named`; named in each title), else :func:`find_target_layer`'s choice."""
    predictor = Predictor.from_run(run_dir, max_pixels=max_pixels)
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise OutputError(f"{out_dir}: is a file; --out is the folder for the PNGs")
    check_apart(out_dir, paths)  # --overwrite replaced the X-rays themselves
    images = expand_paths(paths)
    real_out = os.path.realpath(out_dir)  # a link to an image, or to --out, is followed
    beside = next((i for i in images if os.path.dirname(os.path.realpath(i)) == real_out), None)
    if beside is not None:  # its PNGs would sit among (and replace) the X-rays
        raise OutputError(
            f"{out_dir}: holds {beside.name}, an image to explain; give --out another folder"
        )
    model = predictor.require_model("Grad-CAM")  # refused before the folder is made
    target = _target_layer(model, layer, predictor.image_size)
    with folder_for(out_dir):  # removed again where no PNG was written in it
        written: set[Path] = set()
        sources = {os.path.realpath(path) for path in images}
        for path in images:
            out_file, n = out_dir / f"{path.stem}.png", 1
            while out_file in written:
                n += 1
                out_file = out_dir / f"{path.stem}-{n}.png"
            written.add(out_file)
            try:
                if os.path.realpath(out_file) in sources:  # --overwrite replaced the X-ray itself
                    raise OutputError(
                        f"{out_file}: is one of the images to explain; give --out another folder"
                    )
                check_output(out_file, overwrite)
                image = load_image(path, predictor.image_size, max_pixels, colour=True)
            except PneumolabError as exc:
                yield exc
                continue
            explained = explain_image(
                predictor, target, image, file_header_checks(path, max_pixels)
            )
            title = _title(path, explained, layer)
            try:  # a PNG another process wrote meanwhile is kept, as one found before
                figure_image = load_image(path, FIGURE_PIXELS, max_pixels)
                _figure(figure_image, explained.heat, title, out_file, overwrite)
            except OutputError as exc:
                yield exc
                continue
            yield out_file
