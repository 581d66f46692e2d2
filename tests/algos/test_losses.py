"""Surrogates: hand-computed values, dual clip, GSPO sequence ratio and its gradient, stats contract."""
from __future__ import annotations

import math

import pytest
import torch

from agentrl.algos import REDUCTIONS, STAT_KEYS, SURROGATES, reduce
from agentrl.config import AlgoConfig


def t(x, grad=False) -> torch.Tensor:
    return torch.tensor(x, dtype=torch.float64, requires_grad=grad)


def ppo(logp, old, adv, mask=None, **cfg):
    mask = torch.ones_like(logp) if mask is None else mask
    return SURROGATES.get("ppo_clip")(logp, old, adv, mask, AlgoConfig(**cfg))


def test_ppo_clip_hand_computed():
    # ratios r = [1.5, 1.5, 0.5, 0.5, 1.1], A = [+1, −1, +1, −1, +1], ε = 0.2:
    #   r=1.5, A=+1: max(−1.5, −1.2) = −1.2 (clipped)      r=1.5, A=−1: max(1.5, 1.2) = 1.5
    #   r=0.5, A=+1: max(−0.5, −0.8) = −0.5               r=0.5, A=−1: max(0.5, 0.8) = 0.8 (clipped)
    #   r=1.1, A=+1: max(−1.1, −1.1) = −1.1 (inside the range)
    r = [1.5, 1.5, 0.5, 0.5, 1.1]
    logp = t([[math.log(x) for x in r]], grad=True)
    old = torch.zeros_like(logp)
    adv = t([[1, -1, 1, -1, 1]])
    loss, stats = ppo(logp, old, adv)
    torch.testing.assert_close(loss, t([[-1.2, 1.5, -0.5, 0.8, -1.1]]))
    torch.testing.assert_close(stats["clipfrac"], t([[1, 0, 0, 1, 0]]))
    torch.testing.assert_close(stats["ratio"], t([r]))
    # gradient: clipped tokens get 0, others d(−A·r)/dlogp = −A·r
    loss.sum().backward()
    torch.testing.assert_close(logp.grad, t([[0, 1.5, -0.5, 0, -1.1]]))


def test_ppo_clip_higher_asymmetric():
    # r = 1.25, A = +1: ε_high 0.2 clips (−1.2), ε_high 0.28 does not (−1.25)
    logp, old, adv = t([[math.log(1.25)]]), t([[0.0]]), t([[1.0]])
    assert float(ppo(logp, old, adv)[0]) == pytest.approx(-1.2)
    assert float(ppo(logp, old, adv, clip_high=0.28)[0]) == pytest.approx(-1.25)


def test_dual_clip_activates_only_for_negative_advantage():
    # c = 3. r=5, A=−1: max(5, 1.2) = 5 → min(5, 3) = 3 (dual clip active)
    #        r=2, A=−2: max(4, 2.4) = 4 < 6 → 4 (not active)
    #        r=5, A=+1: max(−5, −1.2) = −1.2 (positive advantage: untouched)
    logp = t([[math.log(5), math.log(2), math.log(5)]], grad=True)
    adv = t([[-1, -2, 1]])
    loss, stats = ppo(logp, torch.zeros_like(logp), adv, dual_clip=3.0)
    torch.testing.assert_close(loss, t([[3.0, 4.0, -1.2]]))
    torch.testing.assert_close(stats["clipfrac_lower"], t([[1, 0, 0]]))
    loss.sum().backward()  # the dual-clipped token is a constant −A·c: zero gradient
    torch.testing.assert_close(logp.grad, t([[0.0, 4.0, 0.0]]))
    no_dual, s = ppo(logp, torch.zeros_like(logp), adv)
    torch.testing.assert_close(no_dual, t([[5.0, 4.0, -1.2]]))
    assert float(s["clipfrac_lower"].sum()) == 0.0


def test_dual_clip_must_exceed_one():
    with pytest.raises(ValueError, match="dual_clip"):
        ppo(t([[0.0]]), t([[0.0]]), t([[-1.0]]), dual_clip=1.0)


def test_ppo_ratio_is_clamped():
    _, stats = ppo(t([[100.0, -100.0]]), t([[0.0, 0.0]]), t([[1.0, 1.0]]))
    torch.testing.assert_close(stats["ratio"], t([[math.exp(20), math.exp(-20)]]))


def test_gspo_hand_computed():
    # row 0: Δ = [0.2, −0.1, (masked 5.0)] → log s = 0.05, s = 1.051271 > 1 + 4e-4; A = +1 → −1.0004, clipped
    # row 1: Δ = [−0.3, −0.1, −0.2]        → log s = −0.2, s = 0.818731 < 1 − 3e-4; A = −1 → max(0.8187, 0.9997)
    logp = t([[0.2, -0.1, 5.0], [-0.3, -0.1, -0.2]])
    mask = t([[1, 1, 0], [1, 1, 1]])
    adv = t([[1, 1, 1], [-1, -1, -1]])
    loss, stats = SURROGATES.get("gspo")(logp, torch.zeros_like(logp), adv, mask, AlgoConfig())
    torch.testing.assert_close(loss, t([[-1.0004] * 3, [0.9997] * 3]))
    torch.testing.assert_close(stats["ratio"][:, 0], t([math.exp(0.05), math.exp(-0.2)]))
    torch.testing.assert_close(stats["clipfrac"] * mask, mask)


def test_gspo_gradient_equals_sequence_level_objective():
    # Unclipped, GSPO-token with seq_mean_token_mean has the gradient of the sequence objective
    # −(1/B) Σ_i A_i · exp(mean_t Δ_it): per token −A_i · s_i / |y_i| / B (GSPO §4.3).
    torch.manual_seed(0)
    old = -torch.rand(3, 5, dtype=torch.float64)
    base = old + 1e-5 * torch.randn(3, 5, dtype=torch.float64)  # stays inside (1 − 3e-4, 1 + 4e-4)
    mask = t([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 0, 0, 0, 0]])
    a = t([0.5, -1.0, 2.0])
    adv = a[:, None].expand(3, 5)
    fn = SURROGATES.get("gspo")
    logp = base.clone().requires_grad_(True)
    loss, stats = fn(logp, old, adv, mask, AlgoConfig())
    assert float(stats["clipfrac"].sum()) == 0.0
    reduce(fn.forced_reduce, loss, mask).backward()
    logp2 = base.clone().requires_grad_(True)
    seq = ((logp2 - old) * mask).sum(-1) / mask.sum(-1)
    (-(a * torch.exp(seq)).mean()).backward()
    torch.testing.assert_close(logp.grad, logp2.grad)


def test_forced_reduce_and_stats_contract():
    assert SURROGATES.get("ppo_clip").forced_reduce is None
    assert SURROGATES.get("gspo").forced_reduce == "seq_mean_token_mean"
    assert SURROGATES.get("gspo").forced_reduce in REDUCTIONS
    logp = t([[-0.5, -1.0], [-2.0, -0.1]], grad=True)
    for name in SURROGATES.names():
        loss, stats = SURROGATES.get(name)(logp, logp.detach() - 0.1, t([[1, 1], [-1, -1]]), t([[1, 1], [1, 0]]),
                                           AlgoConfig())
        assert loss.shape == (2, 2) and loss.requires_grad
        assert set(stats) == set(STAT_KEYS)
        for v in stats.values():
            assert v.shape == (2, 2) and not v.requires_grad
