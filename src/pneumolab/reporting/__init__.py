"""Reporting: a run's model card (MODEL_CARD.md) and a self-contained HTML evaluation report."""

from pneumolab.reporting.model_card import write_model_card

__all__ = ["write_model_card"]
