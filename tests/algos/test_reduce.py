"""Reductions: hand-computed 2×3 values, empty rows, and gradient-accumulation invariance."""
from __future__ import annotations

import pytest
import torch

from agentrl.algos import REDUCTIONS, SURROGATES, ReduceScale, reduce, scale_for
from agentrl.config import AlgoConfig


def t(x) -> torch.Tensor:
    return torch.tensor(x, dtype=torch.float64)


# loss [[1, 2, 3], [4, 5, 6]], mask [[1, 1, 0], [1, 0, 0]]: kept entries 1, 2 | 4; n_tokens 3, n_seqs 2, max_len 3
LOSS = t([[1, 2, 3], [4, 5, 6]])
MASK = t([[1, 1, 0], [1, 0, 0]])
HAND = {
    "token_mean": (1 + 2 + 4) / 3,  # 7/3
    "seq_mean_token_mean": ((1 + 2) / 2 + 4 / 1) / 2,  # (1.5 + 4) / 2 = 2.75
    "seq_mean_token_sum": ((1 + 2) + 4) / 2,  # 3.5
    "seq_sum_const": ((1 + 2) + 4) / 3 / 2,  # 7/6 (Dr. GRPO: / L_max / B)
}


def test_scale_for_counts():
    assert scale_for(MASK) == ReduceScale(n_tokens=3.0, n_seqs=2, max_len=3)


def test_registry_holds_exactly_the_documented_reductions():
    assert set(REDUCTIONS.names()) == set(HAND)


@pytest.mark.parametrize("name", sorted(HAND))
def test_reductions_hand_computed(name):
    assert float(reduce(name, LOSS, MASK)) == pytest.approx(HAND[name])
    assert float(REDUCTIONS.get(name)(LOSS, MASK, scale_for(MASK))) == pytest.approx(HAND[name])


@pytest.mark.parametrize("name", sorted(HAND))
def test_empty_rows_contribute_nothing_and_stay_finite(name):
    # an appended all-padding row changes neither the value nor the gradient of the real rows
    loss = torch.cat([LOSS, t([[7, 8, 9]])]).requires_grad_(True)
    mask = torch.cat([MASK, t([[0, 0, 0]])])
    assert scale_for(mask).n_seqs == 2
    value = reduce(name, loss, mask)
    assert float(value.detach()) == pytest.approx(HAND[name])
    value.backward()
    assert torch.isfinite(loss.grad).all() and float(loss.grad[2].abs().sum()) == 0.0


@pytest.mark.parametrize("name", sorted(HAND))
def test_all_masked_batch_gives_zero_not_nan(name):
    loss = LOSS.clone().requires_grad_(True)
    value = reduce(name, loss, torch.zeros_like(MASK))
    value.backward()
    assert float(value.detach()) == 0.0 and torch.isfinite(loss.grad).all()


# ---------------------------------------------------------------- gradient-accumulation invariance


def _batch(b=8, T=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    old = -torch.rand(b, T, generator=g, dtype=torch.float64) * 2
    logp = old + 0.3 * torch.randn(b, T, generator=g, dtype=torch.float64)  # ratios in and out of the clip range
    adv = torch.randn(b, 1, generator=g, dtype=torch.float64).expand(b, T).clone()
    lengths = torch.tensor([6, 1, 3, 0, 5, 2, 6, 4])[:b]  # different lengths, one empty row
    mask = (torch.arange(T)[None, :] < lengths[:, None]).to(torch.float64)
    return logp, old, adv, mask


def _loss_and_grad(surrogate, name, splits, cfg):
    logp0, old, adv, mask = _batch()
    logp = logp0.clone().requires_grad_(True)
    scale = scale_for(mask)  # global counts of the whole update
    fn = SURROGATES.get(surrogate)
    total = torch.zeros((), dtype=torch.float64)
    start = 0
    for size in splits:
        rows = slice(start, start + size)
        loss, _ = fn(logp[rows], old[rows], adv[rows], mask[rows], cfg)
        part = REDUCTIONS.get(name)(loss, mask[rows], scale)
        part.backward()  # gradients accumulate in logp.grad, like micro-batches
        total = total + part.detach()
        start += size
    assert start == logp.shape[0]
    return total, logp.grad


@pytest.mark.parametrize("splits", [[1] * 8, [3, 5], [2, 2, 4]])
@pytest.mark.parametrize("name", sorted(HAND))
@pytest.mark.parametrize("surrogate", ["ppo_clip", "gspo"])
def test_grad_accumulation_invariance(surrogate, name, splits):
    cfg = AlgoConfig(dual_clip=3.0, clip_high=0.28)
    full_loss, full_grad = _loss_and_grad(surrogate, name, [8], cfg)
    acc_loss, acc_grad = _loss_and_grad(surrogate, name, splits, cfg)
    assert torch.allclose(full_loss, acc_loss, rtol=1e-12, atol=1e-12)
    assert torch.allclose(full_grad, acc_grad, rtol=1e-12, atol=1e-12)
    assert float(full_grad.abs().sum()) > 0  # the comparison is not vacuous


def test_full_batch_equals_reduce_with_default_scale():
    logp, old, adv, mask = _batch()
    loss, _ = SURROGATES.get("ppo_clip")(logp, old, adv, mask, AlgoConfig())
    for name in HAND:
        assert torch.equal(reduce(name, loss, mask), REDUCTIONS.get(name)(loss, mask, scale_for(mask)))
