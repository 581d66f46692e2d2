"""Conformance with tests/fixtures/verl_losses.json (values produced by verl's own core_algos functions).

verl names are mapped explicitly onto ours. The one difference: verl's "seq-mean-token-sum-norm" is
Σ_i Σ_t l·m / loss_scale_factor (default T) with no 1/B, while our seq_sum_const (Dr. GRPO's oat code) divides by
B·T; so verl's value = seq_sum_const · n_seqs, and verl with loss_scale_factor = B·T equals seq_sum_const.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from agentrl.algos import ADVANTAGES, KL, SURROGATES, reduce, scale_for
from agentrl.config import AlgoConfig
from agentrl.types import AdvantageInput

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "verl_losses.json"
CASES = json.loads(FIXTURE.read_text())["cases"]
ATOL = 1e-5


def t(x) -> torch.Tensor:
    return torch.tensor(x, dtype=torch.float64)


def verl_agg(name: str, loss: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """verl agg_loss(loss_agg_mode=name) expressed with our reductions on the full batch."""
    scale = scale_for(mask)
    if name == "seq-mean-token-sum-norm":  # verl omits Dr. GRPO's 1/B (see module docstring)
        return reduce("seq_sum_const", loss, mask, scale) * scale.n_seqs
    ours = {
        "token-mean": "token_mean",
        "seq-mean-token-sum": "seq_mean_token_sum",
        "seq-mean-token-mean": "seq_mean_token_mean",
    }[name]
    return reduce(ours, loss, mask, scale)


# ---------------------------------------------------------------- advantages


def _adv_input() -> tuple[AdvantageInput, np.ndarray]:
    inp = CASES["advantages"]["inputs"]
    lengths = np.array(inp["response_lengths"])  # each response token plays the role of a turn
    k = inp["response_len_padded"]
    mask = (np.arange(k)[None, :] < lengths[:, None]).astype(np.float64)  # [N, K]
    n = len(lengths)
    return (
        AdvantageInput(
            rewards=np.array(inp["scalar_reward_per_response"], dtype=np.float64),
            group_ids=np.array(inp["uid"]),
            turn_rewards=np.zeros((n, k)),
            turn_mask=mask,
        ),
        mask,
    )


ADV_KEYS = {
    "grpo (norm_adv_by_std_in_grpo=True, eps=1e-6, torch.std unbiased)": "grpo",
    "dr_grpo (norm_adv_by_std_in_grpo=False)": "dr_grpo",
    "rloo (compute_rloo_outcome_advantage)": "rloo",
    "rloo_vectorized": "rloo",
}


def test_fixture_advantage_keys_are_all_covered():
    assert set(CASES["advantages"]["expected"]) == set(ADV_KEYS) | {"grpo_token_level"}


@pytest.mark.parametrize("key", sorted(ADV_KEYS))
def test_advantages_match_verl(key):
    inp, mask = _adv_input()
    adv = ADVANTAGES.get(ADV_KEYS[key])(inp, AlgoConfig())  # [N, K]
    expected = np.array(CASES["advantages"]["expected"][key])  # [N]
    assert adv.dtype == np.float64
    np.testing.assert_allclose(adv[:, 0], expected, atol=ATOL)
    np.testing.assert_allclose(adv, expected[:, None] * mask, atol=ATOL)


def test_grpo_token_level_matches_verl_broadcast():
    inp, _ = _adv_input()
    adv = ADVANTAGES.get("grpo")(inp, AlgoConfig())
    np.testing.assert_allclose(adv, np.array(CASES["advantages"]["expected"]["grpo_token_level"]), atol=ATOL)


# ---------------------------------------------------------------- policy losses


PL = CASES["policy_losses"]
PL_CASES = {  # fixture key -> (surrogate, cfg overrides, verl agg mode)
    "ppo_clip eps=0.2/0.2, agg=token-mean": ("ppo_clip", {}, "token-mean"),
    "ppo_clip eps=0.2/0.2, agg=seq-mean-token-sum": ("ppo_clip", {}, "seq-mean-token-sum"),
    "ppo_clip eps=0.2/0.2, agg=seq-mean-token-mean": ("ppo_clip", {}, "seq-mean-token-mean"),
    "ppo_clip eps=0.2/0.2, agg=seq-mean-token-sum-norm": ("ppo_clip", {}, "seq-mean-token-sum-norm"),
    "dapo clip-higher eps_low=0.2 eps_high=0.28, agg=token-mean": ("ppo_clip", {"clip_high": 0.28}, "token-mean"),
    "gspo eps_low=3e-4 eps_high=4e-4 (always seq-mean-token-mean)": ("gspo", {}, "seq-mean-token-mean"),
}
PL_MATRIX = "per_token_loss_matrix_eps0.2 (max(pg1,pg2), before dual-clip; masked later)"
PL_AGG = "agg_loss_on_matrix [[1,2,3,x],[4,6,x,x]]"
PL_AGG8 = "agg_loss seq-mean-token-sum-norm with loss_scale_factor=8"


def _pl_inputs():
    i = PL["inputs"]
    return t(i["log_prob"]), t(i["old_log_prob"]), t(i["advantages"]), t(i["response_mask"])


def test_fixture_policy_loss_keys_are_all_covered():
    assert set(PL["expected"]) == set(PL_CASES) | {PL_MATRIX, PL_AGG, PL_AGG8}


def masked_mean(x, m):
    return float((x * m).sum() / m.sum())


# verl's ppo loss always applies the dual clip with c = 3 (it never activates on these inputs), so ppo_clip must
# match with and without it; gspo has no dual clip.
PL_PARAMS = [(k, None) for k in sorted(PL_CASES)] + [(k, 3.0) for k in sorted(PL_CASES) if PL_CASES[k][0] != "gspo"]


@pytest.mark.parametrize("key,dual_clip", PL_PARAMS)
def test_policy_losses_match_verl(key, dual_clip):
    name, over, agg = PL_CASES[key]
    cfg = AlgoConfig(dual_clip=dual_clip, **over)
    logp, old, adv, mask = _pl_inputs()
    fn = SURROGATES.get(name)
    if fn.forced_reduce is not None:
        assert agg.replace("-", "_") == fn.forced_reduce
    loss, stats = fn(logp, old, adv, mask, cfg)
    exp = PL["expected"][key]
    assert float(verl_agg(agg, loss, mask)) == pytest.approx(exp["pg_loss"], abs=ATOL)
    assert masked_mean(stats["clipfrac"], mask) == pytest.approx(exp["actor/pg_clipfrac"], abs=ATOL)
    assert masked_mean(stats["ppo_kl"], mask) == pytest.approx(exp["actor/ppo_kl"], abs=ATOL)
    assert masked_mean(stats["clipfrac_lower"], mask) == pytest.approx(exp["actor/pg_clipfrac_lower"], abs=ATOL)
    if "seq_ratio s_i" in exp:
        torch.testing.assert_close(stats["ratio"][:, 0], t(exp["seq_ratio s_i"]), atol=ATOL, rtol=0)


def test_ppo_clip_loss_matrix_matches_verl():
    logp, old, adv, mask = _pl_inputs()
    loss, stats = SURROGATES.get("ppo_clip")(logp, old, adv, mask, AlgoConfig())
    torch.testing.assert_close(loss, t(PL["expected"][PL_MATRIX]), atol=ATOL, rtol=0)
    ratio = t(PL["inputs"]["token_ratio exp(log_prob-old_log_prob)"])
    torch.testing.assert_close(stats["ratio"], ratio, atol=ATOL, rtol=0)


def test_agg_loss_on_matrix_matches_verl():
    x = 99.0  # masked entries must not matter
    loss = t([[1, 2, 3, x], [4, 6, x, x]])
    mask = t([[1, 1, 1, 0], [1, 1, 0, 0]])
    for mode, value in PL["expected"][PL_AGG].items():
        assert float(verl_agg(mode, loss, mask)) == pytest.approx(value, abs=ATOL), mode
    # verl's seq-mean-token-sum-norm with loss_scale_factor = B·T (= 8) is exactly Dr. GRPO's seq_sum_const.
    assert float(reduce("seq_sum_const", loss, mask)) == pytest.approx(PL["expected"][PL_AGG8], abs=ATOL)


# ---------------------------------------------------------------- KL


KLC = CASES["kl_estimators"]
KL_MATRICES = {"k1": "k1", "abs": "abs", "k2": "k2", "k3": "k3", "low_var_kl": "k3", "k3+ (intended) forward": "k3+"}
KL_AGG = {
    "actor kl_loss agg token-mean (low_var_kl)": "k3",
    "actor kl_loss agg token-mean (k1)": "k1",
    "actor kl_loss agg token-mean (k2)": "k2",
}
KL_OTHER = {"k3+", "k3+ (intended) grad wrt log_prob"}


def _kl_inputs():
    i = KLC["inputs"]
    return t(i["log_prob"]), t(i["ref_log_prob"]), t(i["response_mask"])


def test_fixture_kl_keys_are_all_covered():
    assert set(KLC["expected"]) == set(KL_MATRICES) | set(KL_AGG) | KL_OTHER


@pytest.mark.parametrize("key", sorted(KL_MATRICES))
def test_kl_matrices_match_verl(key):
    logp, ref, _ = _kl_inputs()
    got = KL.get(KL_MATRICES[key])(logp, ref)
    torch.testing.assert_close(got, t(KLC["expected"][key]), atol=ATOL, rtol=0)


@pytest.mark.parametrize("key", sorted(KL_AGG))
def test_kl_loss_token_mean_matches_verl(key):
    logp, ref, mask = _kl_inputs()
    got = reduce("token_mean", KL.get(KL_AGG[key])(logp, ref), mask)
    assert float(got) == pytest.approx(KLC["expected"][key], abs=ATOL)


def test_k3_plus_gradient_matches_verl_intended():
    # At the pinned verl commit "k3+" raises NotImplementedError; the fixture holds the documented semantics.
    logp, ref, _ = _kl_inputs()
    logp.requires_grad_(True)
    KL.get("k3+")(logp, ref).sum().backward()
    torch.testing.assert_close(logp.grad, t(KLC["expected"]["k3+ (intended) grad wrt log_prob"]), atol=ATOL, rtol=0)
