"""Advantage estimators: AdvantageInput -> per-turn advantages [N, K] (DESIGN.md §5, ALGORITHMS.md › Group baselines).

Every entry of `ADVANTAGES` has the signature `fn(inp: AdvantageInput, cfg: AlgoConfig) -> np.ndarray` and returns
float64 advantages of shape [N, K], exactly 0 where `inp.turn_mask == 0`. Each function carries `fn.requires`, the
frozenset of optional AdvantageInput fields it reads (e.g. {"anchors"}); the trainer checks it at config load.
Outcome estimators (grpo, dr_grpo, rloo) put the same value on every real turn of a trajectory.

Unscorable trajectories: a NaN reward is excluded from its group's statistics and gets advantage 0 everywhere
(DESIGN.md §7: "excluded from baselines and counted"). Counting is the caller's job.
"""
from __future__ import annotations

from dataclasses import fields
from typing import TYPE_CHECKING, Callable, Iterable

import numpy as np

from ..registry import Registry
from ..types import AdvantageInput

if TYPE_CHECKING:  # only for annotations; keeps the import graph small
    from ..config import AlgoConfig

AdvantageFn = Callable[[AdvantageInput, "AlgoConfig"], np.ndarray]

ADVANTAGES: Registry[AdvantageFn] = Registry("advantage")

_INPUT_FIELDS = frozenset(f.name for f in fields(AdvantageInput))


def register_advantage(name: str, requires: Iterable[str] = ()):
    """Decorator: set `fn.requires = frozenset(requires)` and register `fn` under `name` in ADVANTAGES."""
    req = frozenset(requires)
    unknown = req - _INPUT_FIELDS
    if unknown:
        raise ValueError(f"advantage {name!r}: requires unknown AdvantageInput fields {sorted(unknown)}")

    def deco(fn: AdvantageFn) -> AdvantageFn:
        fn.requires = req  # type: ignore[attr-defined]
        return ADVANTAGES.register(name, fn)

    return deco


def missing_inputs(fn: AdvantageFn, inp: AdvantageInput) -> list[str]:
    """Names in `fn.requires` that are None in `inp` (empty list = the estimator can run)."""
    return sorted(r for r in getattr(fn, "requires", ()) if getattr(inp, r) is None)


# ---------------------------------------------------------------- group statistics (vectorised)


def group_index(group_ids) -> tuple[np.ndarray, int]:
    """Dense group index per trajectory [N] and the number of groups; ids may be str or int."""
    _, inv = np.unique(np.asarray(group_ids), return_inverse=True)
    inv = inv.reshape(-1)
    return inv, int(inv.max()) + 1 if inv.size else 0


def group_stats(scores: np.ndarray, group_ids) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per trajectory: (n, mean, unbiased std) of its group over finite scores, each [N] float64.

    Groups with a single finite score get mean 0 and std 1 (verl `compute_grpo_outcome_advantage`), so that
    (s - mean) / (std + eps) is the raw score up to the 1/(1+eps) factor verl also applies.
    """
    s = np.asarray(scores, dtype=np.float64)  # [N]
    inv, g = group_index(group_ids)
    ok = np.isfinite(s)  # [N]
    s0 = np.where(ok, s, 0.0)
    n = np.bincount(inv, weights=ok.astype(np.float64), minlength=g)  # [G]
    mean = np.bincount(inv, weights=s0, minlength=g) / np.maximum(n, 1.0)  # [G]
    dev2 = np.where(ok, (s0 - mean[inv]) ** 2, 0.0)  # [N]
    var = np.bincount(inv, weights=dev2, minlength=g) / np.maximum(n - 1.0, 1.0)  # [G]
    std = np.sqrt(var)
    single = n <= 1
    mean = np.where(single, 0.0, mean)
    std = np.where(single, 1.0, std)
    return n[inv], mean[inv], std[inv]


def broadcast_to_turns(adv: np.ndarray, turn_mask: np.ndarray) -> np.ndarray:
    """Outcome advantage [N] -> [N, K]: the same value on every real turn, exactly 0 on padding."""
    mask = np.asarray(turn_mask) > 0  # [N, K]
    adv = np.asarray(adv, dtype=np.float64)  # [N]
    return np.where(mask, adv[:, None], 0.0).astype(np.float64)


# ---------------------------------------------------------------- outcome estimators


def grpo_scores(rewards: np.ndarray, group_ids, epsilon: float, scale_by_std: bool) -> np.ndarray:
    """GRPO outcome advantage per trajectory [N] (NaN reward -> 0)."""
    s = np.asarray(rewards, dtype=np.float64)  # [N]
    _, mean, std = group_stats(s, group_ids)
    adv = s - mean
    if scale_by_std:
        adv = adv / (std + epsilon)
    return np.where(np.isfinite(s), adv, 0.0)


@register_advantage("grpo")
def grpo(inp: AdvantageInput, cfg: "AlgoConfig") -> np.ndarray:
    """GRPO outcome supervision (Shao et al. 2024, DeepSeekMath, §4.1.2): A_i = (s_i − mean_g) / (std_g + ε).

    std is unbiased (torch.std, as in verl `compute_grpo_outcome_advantage`); ε = cfg.epsilon (1e-6). With
    cfg.scale_by_std False this is Dr. GRPO (A_i = s_i − mean_g). A group of one uses mean 0, std 1 like verl,
    i.e. A = s/(1+ε) ≈ raw score. Same value on every real turn. Returns [N, K] float64.
    """
    adv = grpo_scores(inp.rewards, inp.group_ids, cfg.epsilon, cfg.scale_by_std)  # [N]
    return broadcast_to_turns(adv, inp.turn_mask)


@register_advantage("dr_grpo")
def dr_grpo(inp: AdvantageInput, cfg: "AlgoConfig") -> np.ndarray:
    """Dr. GRPO (Liu et al. 2025, "Understanding R1-Zero-Like Training", Eq. 3-4): A_i = s_i − mean_g.

    GRPO without the std division whatever cfg.scale_by_std says (verl `norm_adv_by_std_in_grpo=False`).
    A group of one gives the raw score. Returns [N, K] float64.
    """
    adv = grpo_scores(inp.rewards, inp.group_ids, cfg.epsilon, scale_by_std=False)  # [N]
    return broadcast_to_turns(adv, inp.turn_mask)


@register_advantage("rloo")
def rloo(inp: AdvantageInput, cfg: "AlgoConfig") -> np.ndarray:
    """RLOO (Kool et al. 2019; Ahmadian et al. 2024, "Back to Basics", leave-one-out baseline):
    A_i = s_i − mean_{j≠i} s_j.

    Computed as n/(n−1)·(s_i − mean_g) over the group's finite scores; a group of one gives the raw score
    (verl `compute_rloo_outcome_advantage`). Returns [N, K] float64.
    """
    s = np.asarray(inp.rewards, dtype=np.float64)  # [N]
    n, mean, _ = group_stats(s, inp.group_ids)
    loo = n / np.maximum(n - 1.0, 1.0) * (s - mean)  # single groups: mean is 0 -> raw score
    adv = np.where(np.isfinite(s), loo, 0.0)
    return broadcast_to_turns(adv, inp.turn_mask)
