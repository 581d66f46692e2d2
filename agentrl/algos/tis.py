"""Truncated importance sampling (TIS) for rollouts sampled by a different policy than the one being updated.

Yao, Liu, Zhang et al. 2025, "Your Efficient RL Framework Secretly Brings You Off-Policy RL Training" (blog;
verl `actor.tis_imp_ratio_cap`). The behaviour policy mu is whatever produced the tokens: the sampler's logprobs
(Turn.action_logprobs), which differ from the learner's pi_old because of a different engine/precision (vLLM vs
the trainer) and, under train.async = one_step_off, because mu is one update behind. The per-token loss is

    L_t = w_t * max(-A_t r_t, -A_t clip(r_t, 1 - eps_low, 1 + eps_high)),
    r_t = pi_theta(y_t) / pi_old(y_t),     w_t = min(pi_old(y_t) / mu(y_t), C)   (w_t is a constant: no gradient)

i.e. the decoupled PPO objective (Hilton et al. 2022, "Batch size-invariance for policy optimization", Eq. 6: the
proximal policy pi_old anchors the clip, the behaviour policy mu only enters through the importance weight) with
the weight truncated at C (Ionides 2008's truncated IS: bias for bounded variance). Deviation from verl: the
weight multiplies the token loss of any surrogate (verl applies it inside its vanilla PPO loss) and pi_old is always
the learner's recompute (algo.old_logprobs: learner; with `sampler` pi_old = mu and w = 1). The log ratio is
clamped to [-20, 20] before exp, as the PPO ratio is in losses.py. Default C = 2.0 (TIS_DEFAULT_CAP).
"""
from __future__ import annotations

import torch

TIS_DEFAULT_CAP = 2.0


def tis_weights(old_logp: torch.Tensor, behaviour_logp: torch.Tensor, cap: float):
    """[B, T] inputs -> (w = min(exp(old - behaviour), cap) [B, T], the untruncated ratio [B, T]); detached."""
    ratio = torch.exp(torch.clamp(old_logp - behaviour_logp, -20.0, 20.0)).detach()  # [B, T]
    return torch.clamp(ratio, max=float(cap)), ratio


def tis_stats(old_logp: torch.Tensor, behaviour_logp: torch.Tensor, mask: torch.Tensor, cap: float) -> dict:
    """Over masked (action) tokens: mean and max of pi_old / mu, and the share of tokens whose weight was cut."""
    _, ratio = tis_weights(old_logp, behaviour_logp, cap)
    m = mask > 0
    if not bool(m.any()):
        return {"actor/is_ratio_mean": 1.0, "actor/is_ratio_max": 1.0, "actor/is_clipped_share": 0.0}
    r = ratio[m]
    return {"actor/is_ratio_mean": float(r.mean()), "actor/is_ratio_max": float(r.max()),
            "actor/is_clipped_share": float((r > cap).float().mean())}
