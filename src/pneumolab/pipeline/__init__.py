"""Workflows that span the layers: training a run end to end (fit, then the post-training step)
and building ensembles, both finished by :mod:`pneumolab.pipeline.finalise`."""
