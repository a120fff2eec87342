"""Explain predictions: Grad-CAM heat maps of the evidence for the class an image was called."""

from pneumolab.explain.gradcam import explain_paths, find_target_layer, gradcam, overlay_png

__all__ = ["explain_paths", "find_target_layer", "gradcam", "overlay_png"]
