"""Loss reductions [b, T] -> scalar, additive over micro-batches (ALGORITHMS.md › Surrogates, reductions, KL).

Every entry of `REDUCTIONS` has the signature `fn(loss [b, T], mask [b, T], scale: ReduceScale) -> scalar`.
`scale` holds GLOBAL counts of the whole update (all micro-batches, all ranks), so every reduction is a plain sum
of per-row terms divided by global constants: summing the results over any split of the rows into micro-batches
gives exactly the full-batch value and therefore the same gradient (no per-micro-batch renormalisation, which is
what makes naive gradient accumulation of a token mean wrong).

Use `scale_for(mask_of_the_whole_update)` once per update, then `reduce(name, loss_mb, mask_mb, scale)` per
micro-batch and backward each; the gradients add up to the full-batch gradient.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

import torch

from ..registry import Registry

ReduceFn = Callable[[torch.Tensor, torch.Tensor, "ReduceScale"], torch.Tensor]

REDUCTIONS: Registry[ReduceFn] = Registry("reduction")


@dataclass(frozen=True)
class ReduceScale:
    """Global normalisers of one update.

    n_tokens: Σ mask over the whole update; n_seqs: rows with at least one action token (empty/padding rows are
    not counted, so adding them changes nothing); max_len: padded length T (L_max of Dr. GRPO's constant).
    """

    n_tokens: float
    n_seqs: int
    max_len: int


def scale_for(mask: torch.Tensor) -> ReduceScale:
    """Counts of a full-batch mask [B, T] (concatenate the micro-batches' masks, or sum counts across ranks)."""
    row = mask.detach().sum(-1)  # [B]
    return ReduceScale(
        n_tokens=float(row.sum().item()),
        n_seqs=int((row > 0).sum().item()),
        max_len=int(mask.shape[-1]),
    )


def _pos(x: float) -> float:
    """Denominator guard: an empty update gives loss 0, not NaN."""
    return float(x) if x > 0 else 1.0


def _row_sums(loss: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return (loss * mask).sum(-1)  # [b]


@REDUCTIONS.register("token_mean")
def token_mean(loss, mask, scale: ReduceScale) -> torch.Tensor:
    """Σ l·m / n_tokens — DAPO token-level policy gradient loss (Yu et al. 2025, §3.3); verl "token-mean"."""
    return _row_sums(loss, mask).sum() / _pos(scale.n_tokens)


@REDUCTIONS.register("seq_mean_token_mean")
def seq_mean_token_mean(loss, mask, scale: ReduceScale) -> torch.Tensor:
    """Σ_i (Σ_t l·m / Σ_t m) / n_seqs — GRPO (Shao et al. 2024, Eq. 3) and GSPO; verl "seq-mean-token-mean".

    Rows with zero mask contribute 0 (and are not counted by scale_for).
    """
    n = mask.sum(-1)  # [b]
    safe = torch.where(n > 0, n, torch.ones_like(n))
    return (_row_sums(loss, mask) / safe).sum() / _pos(scale.n_seqs)


@REDUCTIONS.register("seq_mean_token_sum")
def seq_mean_token_sum(loss, mask, scale: ReduceScale) -> torch.Tensor:
    """Σ_i Σ_t l·m / n_seqs — verl "seq-mean-token-sum"."""
    return _row_sums(loss, mask).sum() / _pos(scale.n_seqs)


@REDUCTIONS.register("seq_sum_const")
def seq_sum_const(loss, mask, scale: ReduceScale) -> torch.Tensor:
    """Σ_i Σ_t l·m / max_len / n_seqs — Dr. GRPO (Liu et al. 2025, Eq. 4 and the official oat code).

    The constant L_max (= scale.max_len) replaces the per-sequence length. verl's "seq-mean-token-sum-norm"
    computes Σ_i Σ_t l·m / loss_scale_factor (default T) and omits the 1/B; it equals this reduction with
    loss_scale_factor = B·T.
    """
    return _row_sums(loss, mask).sum() / _pos(scale.max_len) / _pos(scale.n_seqs)


def reduce(name: str, loss: torch.Tensor, mask: torch.Tensor, scale: Optional[ReduceScale] = None):
    """REDUCTIONS[name](loss, mask, scale); scale defaults to scale_for(mask) (loss and mask are the full batch)."""
    return REDUCTIONS.get(name)(loss, mask, scale if scale is not None else scale_for(mask))
