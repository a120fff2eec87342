"""Explain predictions: Grad-CAM heat maps of the evidence for the class an image was called."""

from pneumolab.explain.gradcam import (
    GradCamMaps,
    explain_paths,
    feature_map_layers,
    find_target_layer,
    gradcam,
    gradcam_maps,
    layer_named,
    overlay_png,
)

__all__ = [
    "GradCamMaps",
    "explain_paths",
    "feature_map_layers",
    "find_target_layer",
    "gradcam",
    "gradcam_maps",
    "layer_named",
    "overlay_png",
]
