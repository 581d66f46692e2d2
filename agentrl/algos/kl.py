"""Per-token KL estimators between the policy and the reference (ALGORITHMS.md › Surrogates, reductions, KL).

Every entry of `KL` has the signature `fn(logp [B, T], ref_logp [B, T]) -> [B, T]`, unreduced and unmasked.
With δ = logp − ref_logp (Schulman 2020, "Approximating KL Divergence"; verl `kl_penalty`):
    k1 = δ;  k2 = ½δ²;  k3 = exp(x) − x − 1 with x = clamp(−δ, −20, 20), clamped to [−10, 10] (verl "low_var_kl");
    abs = |δ|;  k3+ = value of k3 with the gradient of k2 (straight-through, unbiased gradient).
In the loss the caller adds coef · reduce(kl); in the reward it subtracts β·kl_t from each token reward.
"""
from __future__ import annotations

from typing import Callable

import torch

from ..registry import Registry

KLFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

KL: Registry[KLFn] = Registry("kl")


@KL.register("k1")
def k1(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    """k1 = logp − ref_logp (unbiased, high variance; verl "kl")."""
    return logp - ref_logp  # [B, T]


@KL.register("abs")
def kl_abs(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    """|logp − ref_logp| (verl "abs")."""
    return (logp - ref_logp).abs()  # [B, T]


@KL.register("k2")
def k2(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    """k2 = ½(logp − ref_logp)² (verl "mse")."""
    return 0.5 * (logp - ref_logp).square()  # [B, T]


@KL.register("k3")
def k3(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    """k3 = exp(x) − x − 1, x = clamp(ref_logp − logp, −20, 20), clamped to [−10, 10] (verl "low_var_kl").

    The estimator GRPO uses (Shao et al. 2024, DeepSeekMath Eq. 4).
    """
    x = torch.clamp(ref_logp - logp, -20.0, 20.0)  # [B, T]
    return torch.clamp(torch.exp(x) - x - 1.0, -10.0, 10.0)


@KL.register("k3+")
def k3_plus(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    """Value of k3, gradient of k2 (straight-through): ∂/∂logp = logp − ref_logp.

    verl documents "k3+" with these semantics; at the pinned verl commit calling it raises NotImplementedError
    (the "+" suffix is not stripped), so the fixture holds the intended values.
    """
    quad = k2(logp, ref_logp)  # [B, T]
    return quad + (k3(logp, ref_logp) - quad).detach()


def kl_penalty(logp: torch.Tensor, ref_logp: torch.Tensor, kind: str = "k3") -> torch.Tensor:
    """Per-token KL estimate [B, T] of the named kind (KL registry)."""
    return KL.get(kind)(logp, ref_logp)
