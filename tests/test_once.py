"""A key claimed once (:class:`pneumolab.once.Once`), its check and claim under one lock."""

from __future__ import annotations

import pytest

from conftest import held_only
from pneumolab.once import Once


def test_each_key_is_first_once_and_checked_and_claimed_under_the_lock():
    once = Once()
    steps = held_only(once)
    firsts = [once.first(), once.first(), once.first("a"), once.first("a"), once.first()]
    assert firsts == [True, False, True, False, False]
    assert steps == ["check", "claim", "check", "check", "claim", "check", "check"]


def test_the_stand_in_refuses_a_check_or_claim_without_the_lock():
    """:func:`held_only`'s own check (else the tests that use it could not fail)."""
    once = Once()
    held_only(once)
    with pytest.raises(AssertionError, match="checked without the lock"):
        assert "a" not in once._claimed
    with pytest.raises(AssertionError, match="claimed without the lock"):
        once._claimed.add("a")
