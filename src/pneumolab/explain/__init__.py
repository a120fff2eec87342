"""Explain predictions: Grad-CAM heat maps of the pneumonia logit."""

from pneumolab.explain.gradcam import explain_paths, find_target_layer, gradcam, overlay_png

__all__ = ["explain_paths", "find_target_layer", "gradcam", "overlay_png"]
