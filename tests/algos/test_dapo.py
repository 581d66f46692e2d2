"""DAPO soft overlong punishment and dynamic-sampling group filter (hand-computed)."""
from __future__ import annotations

import numpy as np
import pytest

from agentrl.algos import keep_groups_with_signal, overlong_penalty


def test_overlong_penalty_hand_computed():
    # L_max 20, L_cache 4 → free up to 16; 17 → (16 − 17)/4 = −0.25; 18 → −0.5; 20 → −1; beyond → −1
    got = overlong_penalty(np.array([10, 16, 17, 18, 20, 21, 100]), max_len=20, cache_len=4)
    np.testing.assert_allclose(got, [0, 0, -0.25, -0.5, -1, -1, -1])
    half = overlong_penalty(np.array([17, 30]), max_len=20, cache_len=4, factor=0.5)
    np.testing.assert_allclose(half, [-0.125, -0.5])


def test_overlong_penalty_zero_cache_is_a_step():
    np.testing.assert_allclose(overlong_penalty(np.array([20, 21]), max_len=20, cache_len=0), [0, -1])


def test_overlong_penalty_rejects_bad_lengths():
    with pytest.raises(ValueError):
        overlong_penalty(np.array([1]), max_len=10, cache_len=20)


def test_keep_groups_with_signal_hand_computed():
    # a: [1, 0] varies → keep; b: [1, 1] → drop; c: [0.5, 0.5] → drop; d: single → drop
    rewards = np.array([1, 0, 1, 1, 0.5, 0.5, 0.3])
    groups = np.array(["a", "a", "b", "b", "c", "c", "d"])
    expected = [True, True, False, False, False, False, False]
    np.testing.assert_array_equal(keep_groups_with_signal(rewards, groups), expected)
    ints = np.array([5, 5, 1, 1, 9, 9, 2])
    np.testing.assert_array_equal(keep_groups_with_signal(rewards, ints), expected)
    assert keep_groups_with_signal(rewards, groups).dtype == bool
