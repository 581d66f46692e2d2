"""Algorithms as registered functions (DESIGN.md §5): advantages, surrogates, reductions, KL, DAPO shaping.

Imports nothing heavier than numpy and torch.
"""
from .advantages import ADVANTAGES, missing_inputs, register_advantage
from .arpo import branch_decision, branch_probability, segment_entropy
from .dapo import keep_groups_with_signal, overlong_penalty
from .gigpo import gigpo_terms
from .kl import KL, kl_penalty
from .losses import STAT_KEYS, SURROGATES, register_surrogate
from .reduce import REDUCTIONS, ReduceScale, reduce, scale_for
from .ufo import keep_top_std_groups
from . import tree_grpo  # noqa: F401  (registers the "tree_grpo" advantage)

__all__ = [
    "ADVANTAGES",
    "KL",
    "REDUCTIONS",
    "STAT_KEYS",
    "SURROGATES",
    "ReduceScale",
    "branch_decision",
    "branch_probability",
    "gigpo_terms",
    "keep_groups_with_signal",
    "keep_top_std_groups",
    "kl_penalty",
    "missing_inputs",
    "overlong_penalty",
    "reduce",
    "register_advantage",
    "register_surrogate",
    "scale_for",
    "segment_entropy",
]
