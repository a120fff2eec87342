"""Evaluation: clinical metrics, threshold choice, figures and the ``evaluate`` function."""
