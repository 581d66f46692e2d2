"""Policy-gradient surrogates: per-token loss matrices, not yet reduced (ALGORITHMS.md › Surrogates).

Every entry of `SURROGATES` has the signature

    fn(logp, old_logp, advantages, mask, cfg: AlgoConfig) -> (loss [B, T], stats: dict[str, Tensor])

with all inputs [B, T] (mask float 0/1, 1 on sampled action tokens). The loss matrix is reduced afterwards by a
REDUCTIONS entry (reduce.py); `fn.forced_reduce` names the reduction the method requires (None = cfg.reduce).

Stats are detached [B, T] matrices, to be reduced by the caller with the mask (masked mean):
    "ratio"          importance ratio used in the loss (token r_t for ppo_clip, sequence s_i for gspo)
    "clipfrac"       1 where the clipped term is the active one (verl `actor/pg_clipfrac`)
    "clipfrac_lower" 1 where the dual clip bound is active, A < 0 (verl `actor/pg_clipfrac_lower`)
    "ppo_kl"         old_logp − logp, the per-token approximate KL (verl `actor/ppo_kl`)
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Callable, Optional

import torch

from ..registry import Registry

if TYPE_CHECKING:
    from ..config import AlgoConfig

SurrogateFn = Callable[..., tuple[torch.Tensor, dict[str, torch.Tensor]]]

SURROGATES: Registry[SurrogateFn] = Registry("surrogate")

STAT_KEYS = ("ratio", "clipfrac", "clipfrac_lower", "ppo_kl")


def register_surrogate(name: str, forced_reduce: Optional[str] = None):
    """Decorator: set `fn.forced_reduce` and register `fn` under `name` in SURROGATES."""

    def deco(fn: SurrogateFn) -> SurrogateFn:
        fn.forced_reduce = forced_reduce  # type: ignore[attr-defined]
        return SURROGATES.register(name, fn)

    return deco


def clipped_objective(adv: torch.Tensor, ratio: torch.Tensor, low: float, high: float):
    """PPO clipped loss max(−A·r, −A·clip(r, 1−low, 1+high)) and the 0/1 matrix where clipping is active."""
    unclipped = -adv * ratio  # [B, T]
    clipped = -adv * torch.clamp(ratio, 1.0 - low, 1.0 + high)  # [B, T]
    loss = torch.maximum(unclipped, clipped)  # [B, T]
    return loss, (clipped > unclipped).to(ratio.dtype)


def _stats(ratio, clipfrac, clipfrac_lower, logp, old_logp) -> dict[str, torch.Tensor]:
    return {
        "ratio": ratio.detach(),
        "clipfrac": clipfrac.detach(),
        "clipfrac_lower": clipfrac_lower.detach(),
        "ppo_kl": (old_logp - logp).detach(),
    }


@register_surrogate("ppo_clip")
def ppo_clip(logp, old_logp, advantages, mask, cfg: "AlgoConfig"):
    """PPO clipped surrogate (Schulman et al. 2017, Eq. 7), token level, with optional dual clip.

    r_t = exp(clamp(logp − old_logp, −20, 20)); L_t = max(−A·r, −A·clip(r, 1−ε_low, 1+ε_high)) with
    ε_low = cfg.clip_low, ε_high = cfg.clip_high (DAPO "clip-higher", Yu et al. 2025, §3.1 and Eq. 8:
    0.2 / 0.28).
    Dual clip (Ye et al. 2020, "Mastering Complex Control in MOBA Games", Eq. 5), when cfg.dual_clip = c:
    for A < 0, L_t = min(L_t, −A·c). Matches verl `compute_policy_loss_vanilla` except that verl always applies
    the dual clip (clip_ratio_c = 3); here it is off unless configured. `mask` is unused (the caller reduces).
    Returns (loss [B, T], stats) — see the module docstring for the stat keys.
    """
    del mask
    ratio = torch.exp(torch.clamp(logp - old_logp, -20.0, 20.0))  # [B, T]
    loss, clipfrac = clipped_objective(advantages, ratio, cfg.clip_low, cfg.clip_high)  # [B, T]
    lower = torch.zeros_like(loss)  # [B, T]
    if cfg.dual_clip is not None:
        c = float(cfg.dual_clip)
        if c <= 1.0:
            raise ValueError(f"algo.dual_clip must be > 1 (got {c})")
        bound = -advantages * c  # [B, T]
        neg = advantages < 0
        lower = (neg & (loss > bound)).to(loss.dtype)
        loss = torch.where(neg, torch.minimum(loss, bound), loss)
    return loss, _stats(ratio, clipfrac, lower, logp, old_logp)


def masked_row_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Σ_t x·m / Σ_t m per row [B]; rows with no mask give 0 (with a finite gradient)."""
    n = mask.sum(-1)  # [B]
    safe = torch.where(n > 0, n, torch.ones_like(n))
    return (x * mask).sum(-1) / safe


@register_surrogate("gspo", forced_reduce="seq_mean_token_mean")
def gspo(logp, old_logp, advantages, mask, cfg: "AlgoConfig"):
    """GSPO-token (Zheng et al. 2025, "Group Sequence Policy Optimization", Eq. 5-7 and §4.3 GSPO-token).

    log s_i = (1/|y_i|) Σ_t (logp_t − old_logp_t) over the row's action tokens (mask); the token form
    log s_it = sg(log s_i) + logp_t − sg(logp_t) has value s_i and per-token gradient s_i·∇logp_t. The log ratio
    is clamped at ≤ 10 (verl `compute_policy_loss_gspo`). L_it = max(−A·s_it, −A·clip(s_it, 1−3e-4, 1+4e-4)) with
    cfg.gspo_clip_low / cfg.gspo_clip_high; no dual clip. `forced_reduce` is seq_mean_token_mean, which gives the
    paper's 1/|y_i| length normalisation. The token-level advantage A_it is used as verl does (it equals A_i
    for outcome advantages). Returns (loss [B, T], stats); "ratio" holds s_i on every token of row i.
    """
    delta = logp - old_logp  # [B, T]
    log_seq = masked_row_mean(delta, mask)  # [B]
    log_tok = log_seq.detach()[:, None] + logp - logp.detach()  # [B, T], value log s_i
    ratio = torch.exp(torch.clamp(log_tok, max=10.0))  # [B, T]
    loss, clipfrac = clipped_objective(advantages, ratio, cfg.gspo_clip_low, cfg.gspo_clip_high)
    return loss, _stats(ratio, clipfrac, torch.zeros_like(loss), logp, old_logp)
