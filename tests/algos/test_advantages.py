"""Advantage estimators: hand-computed values, vectorised == loop reference, permutation property."""
from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agentrl.algos import ADVANTAGES, missing_inputs, register_advantage
from agentrl.config import AlgoConfig
from agentrl.types import AdvantageInput

OUTCOME = ["grpo", "dr_grpo", "rloo"]


def make_input(rewards, group_ids, turn_mask=None) -> AdvantageInput:
    rewards = np.asarray(rewards, dtype=np.float64)
    n = len(rewards)
    mask = np.ones((n, 1)) if turn_mask is None else np.asarray(turn_mask, dtype=np.float64)
    return AdvantageInput(rewards=rewards, group_ids=np.asarray(group_ids), turn_rewards=np.zeros_like(mask),
                          turn_mask=mask)


def run(name, inp, **cfg):
    return ADVANTAGES.get(name)(inp, AlgoConfig(**cfg))


# ---------------------------------------------------------------- loop reference (simple, obviously correct)


def reference(name: str, rewards, group_ids, turn_mask, eps=1e-6, scale_by_std=True) -> np.ndarray:
    n, k = turn_mask.shape
    out = np.zeros((n, k))
    for i in range(n):
        if not math.isfinite(rewards[i]):
            continue
        group = [rewards[j] for j in range(n) if group_ids[j] == group_ids[i] and math.isfinite(rewards[j])]
        s, g = rewards[i], len(group)
        if name == "rloo":
            others = list(group)
            others.remove(s)
            a = s - sum(others) / len(others) if others else s
        else:
            mean = sum(group) / g if g > 1 else 0.0
            std = math.sqrt(sum((r - mean) ** 2 for r in group) / (g - 1)) if g > 1 else 1.0
            a = s - mean
            if name == "grpo" and scale_by_std:
                a = a / (std + eps)
        for t in range(k):
            if turn_mask[i, t]:
                out[i, t] = a
    return out


# ---------------------------------------------------------------- hand-computed values


def test_grpo_hand_computed():
    # one group [1, 0, 0, 1]: mean 0.5, unbiased std sqrt((4 · 0.25) / 3) = 0.577350; A = ±0.5 / 0.577351 = ±0.866024
    adv = run("grpo", make_input([1, 0, 0, 1], ["a"] * 4))
    np.testing.assert_allclose(adv[:, 0], [0.866024, -0.866024, -0.866024, 0.866024], atol=1e-6)


def test_dr_grpo_and_scale_by_std_false_hand_computed():
    # A = s − mean = ±0.5; grpo with scale_by_std=False is the same; dr_grpo ignores scale_by_std=True
    inp = make_input([1, 0, 0, 1], ["a"] * 4)
    np.testing.assert_allclose(run("dr_grpo", inp)[:, 0], [0.5, -0.5, -0.5, 0.5])
    np.testing.assert_allclose(run("grpo", inp, scale_by_std=False)[:, 0], [0.5, -0.5, -0.5, 0.5])


def test_rloo_hand_computed():
    # s_0 = 1, others [0, 0, 1] mean 1/3 → 2/3; s_1 = 0, others [1, 0, 1] mean 2/3 → −2/3
    adv = run("rloo", make_input([1, 0, 0, 1], [7] * 4))
    np.testing.assert_allclose(adv[:, 0], [2 / 3, -2 / 3, -2 / 3, 2 / 3])


def test_multi_turn_broadcast_and_padding():
    # group [1, 0]: mean 0.5, std sqrt(0.5) = 0.707107 → ±0.707106 on every real turn, exactly 0 on padding
    mask = [[1, 1, 1], [1, 0, 0]]
    adv = run("grpo", make_input([1, 0], ["g", "g"], mask))
    a = 0.5 / (math.sqrt(0.5) + 1e-6)
    np.testing.assert_allclose(adv, [[a, a, a], [-a, 0, 0]])
    assert adv.shape == (2, 3) and adv.dtype == np.float64
    assert np.all(adv[np.asarray(mask) == 0] == 0.0)


def test_group_of_one_gives_raw_score():
    inp = make_input([0.7, 1.0, 0.0], ["solo", "pair", "pair"])
    assert run("grpo", inp)[0, 0] == pytest.approx(0.7 / (1 + 1e-6))  # verl: mean 0, std 1, then / (1 + eps)
    assert run("dr_grpo", inp)[0, 0] == pytest.approx(0.7)
    assert run("rloo", inp)[0, 0] == pytest.approx(0.7)


def test_nan_reward_is_excluded_from_baseline_and_gets_zero():
    # group [1, 0, NaN]: stats over [1, 0] only → ±0.5/0.707107; the unscorable trajectory gets 0
    adv = run("grpo", make_input([1, 0, np.nan], ["a", "a", "a"]))
    a = 0.5 / (math.sqrt(0.5) + 1e-6)
    np.testing.assert_allclose(adv[:, 0], [a, -a, 0.0])


def test_string_and_int_group_ids_agree():
    r = [1, 0, 0.5, 0.2, 0.9]
    for name in OUTCOME:
        a = run(name, make_input(r, ["x", "y", "x", "y", "y"]))
        b = run(name, make_input(r, [3, 10, 3, 10, 10]))
        np.testing.assert_array_equal(a, b)


def test_requires_is_declared_and_checked():
    inp = make_input([1, 0], [0, 0])
    for name in OUTCOME:
        fn = ADVANTAGES.get(name)
        assert fn.requires == frozenset()
        assert missing_inputs(fn, inp) == []

    def needs_anchors(inp, cfg):
        return np.zeros_like(inp.turn_mask, dtype=np.float64)

    needs_anchors.requires = frozenset({"anchors"})
    assert missing_inputs(needs_anchors, inp) == ["anchors"]
    with pytest.raises(ValueError, match="unknown AdvantageInput"):
        register_advantage("_bad_for_test", requires={"not_a_field"})


# ---------------------------------------------------------------- vectorised == reference, properties


@pytest.mark.parametrize("name", OUTCOME)
@pytest.mark.parametrize("seed", range(5))
def test_vectorised_matches_loop_reference(name, seed):
    rng = np.random.default_rng(seed)
    n, k = 40, 5
    rewards = rng.choice([0.0, 0.5, 1.0, rng.normal()], size=n)
    rewards[rng.random(n) < 0.1] = np.nan
    groups = rng.integers(0, 9, size=n)  # includes groups of one
    mask = (rng.random((n, k)) < 0.7).astype(np.float64)
    got = run(name, make_input(rewards, groups, mask))
    np.testing.assert_allclose(got, reference(name, rewards, groups, mask), rtol=1e-9, atol=1e-9)


@st.composite
def batches(draw):
    n = draw(st.integers(1, 10))
    k = draw(st.integers(1, 4))
    rewards = draw(st.lists(st.sampled_from([0.0, 0.25, 1.0, -2.0, 3.5]), min_size=n, max_size=n))
    groups = draw(st.lists(st.sampled_from(["a", "b", "c"]), min_size=n, max_size=n))
    mask = draw(st.lists(st.lists(st.integers(0, 1), min_size=k, max_size=k), min_size=n, max_size=n))
    perm = draw(st.permutations(list(range(n))))
    return np.array(rewards), np.array(groups), np.array(mask, dtype=np.float64), np.array(perm)


@settings(max_examples=60, deadline=None)
@given(batches())
def test_permutation_equivariance_and_zero_padding(batch):
    rewards, groups, mask, perm = batch
    for name in OUTCOME:
        adv = run(name, make_input(rewards, groups, mask))
        adv_p = run(name, make_input(rewards[perm], groups[perm], mask[perm]))
        np.testing.assert_allclose(adv_p, adv[perm], rtol=1e-9, atol=1e-9)
        assert np.all(adv[mask == 0] == 0.0)
        np.testing.assert_allclose(adv, reference(name, rewards, groups, mask), rtol=1e-9, atol=1e-9)
