"""Explain predictions: Grad-CAM heat maps of the evidence for the class an image was called."""

from pneumolab.explain.gradcam import (
    explain_paths,
    feature_map_layers,
    find_target_layer,
    gradcam,
    layer_named,
    overlay_png,
)

__all__ = [
    "explain_paths",
    "feature_map_layers",
    "find_target_layer",
    "gradcam",
    "layer_named",
    "overlay_png",
]
