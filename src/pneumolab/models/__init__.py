"""Models: the classifier wrapper, pneumolab's CNNs and the timm-backed registry."""
