"""The parity check that accepts a faster backend against fp32."""

from __future__ import annotations

import numpy as np
import pytest

from pneumolab.evaluation.parity import LOGIT_MARGIN, MAX_AUC_CHANGE, score_parity

LABELS = np.array([0] * 50 + [1] * 50)
REFERENCE = np.concatenate([np.linspace(0.01, 0.4, 50), np.linspace(0.3, 0.99, 50)])


def test_identical_scores_are_accepted():
    parity = score_parity(REFERENCE, REFERENCE.copy(), LABELS, threshold=0.35)
    assert parity.accepted and parity.auc_change == 0 and parity.label_flips == 0
    assert parity.to_dict()["accepted"] is True and parity.logit_margin == LOGIT_MARGIN


def test_a_flip_near_the_threshold_is_tolerated_one_far_from_it_is_not():
    threshold = 0.35
    near = REFERENCE.copy()
    i = int(np.argmin(np.abs(REFERENCE - threshold)))
    near[i] = threshold - 0.01 if REFERENCE[i] >= threshold else threshold + 0.01
    parity = score_parity(REFERENCE, near, LABELS, threshold)
    assert parity.label_flips == 1 and parity.flips_outside_margin == 0
    far = REFERENCE.copy()
    far[0] = 0.99  # a confident normal becomes a confident pneumonia
    parity = score_parity(REFERENCE, far, LABELS, threshold)
    assert parity.flips_outside_margin == 1 and not parity.accepted
    assert "1 of them outside" in parity.summary()


def test_an_auc_change_beyond_the_limit_is_refused():
    noisy = REFERENCE + np.random.default_rng(0).normal(0, 0.1, len(REFERENCE))
    parity = score_parity(REFERENCE, noisy.clip(0, 1), LABELS, threshold=0.999)
    assert abs(parity.auc_change) > MAX_AUC_CHANGE and not parity.accepted
    assert parity.auc_change == pytest.approx(parity.auc - parity.reference_auc)


def test_a_scope_verdict_may_flip_near_the_ood_threshold_only():
    from pneumolab.evaluation.parity import OOD_MARGIN, OodScores

    ood = np.linspace(10.0, 90.0, 100)  # fp32 OOD scores; threshold 100: all in scope
    near = ood.copy()
    near[-1] = 101.0  # 90 → 101: flips, but 90 is within the margin of 100
    parity = score_parity(REFERENCE, REFERENCE, LABELS, 0.35, ood=OodScores(ood, near, 100.0))
    assert (parity.scope_flips, parity.scope_flips_outside_margin) == (1, 0) and parity.accepted
    assert parity.max_ood_change == pytest.approx(11 / 90)
    far = ood.copy()
    far[0] = 150.0  # a typical X-ray (10) called out of scope
    parity = score_parity(REFERENCE, REFERENCE, LABELS, 0.35, ood=OodScores(ood, far, 100.0))
    assert parity.scope_flips_outside_margin == 1 and not parity.accepted
    assert f"1 of them outside ±{OOD_MARGIN:.0%} of the OOD threshold" in parity.summary()
    assert score_parity(REFERENCE, REFERENCE, LABELS, 0.35).max_ood_change is None
