"""DAPO reward shaping and dynamic sampling (Yu et al. 2025, "DAPO", arXiv:2503.14476; ALGORITHMS.md › DAPO)."""
from __future__ import annotations

import numpy as np


def overlong_penalty(lengths: np.ndarray, max_len: int, cache_len: int, factor: float = 1.0) -> np.ndarray:
    """Soft overlong punishment R_length(y) (DAPO §3.4, Eq. 13), added to the score. Returns [N] float64.

    0 if |y| ≤ L_max − L_cache; ((L_max − L_cache) − |y|) / L_cache · factor if L_max − L_cache < |y| ≤ L_max;
    −factor beyond L_max. (verl's DAPO reward manager has no explicit −factor cap beyond L_max because its
    responses cannot exceed it; the paper's −1 is used here.) cache_len = 0 gives a hard step at L_max.
    """
    y = np.asarray(lengths, dtype=np.float64)  # [N]
    if max_len <= 0 or cache_len < 0 or cache_len > max_len:
        raise ValueError(f"need 0 <= cache_len <= max_len, max_len > 0 (got {max_len}, {cache_len})")
    start = float(max_len - cache_len)
    ramp = (start - y) / max(float(cache_len), 1.0) * factor
    out = np.where(y <= start, 0.0, ramp)
    return np.where(y > max_len, -float(factor), out)


def keep_groups_with_signal(rewards: np.ndarray, group_ids: np.ndarray) -> np.ndarray:
    """Dynamic sampling filter (DAPO §3.2; the constraint
    0 < |{o_i correct}| < G of the DAPO objective, Eq. 8). Returns a bool mask [N].

    Keeps the trajectories whose group's reward std is > 0, i.e. max > min within the group (exact, no
    floating-point std). A group of one has std 0 and is dropped; NaN rewards are ignored within a group.
    """
    r = np.asarray(rewards, dtype=np.float64)  # [N]
    _, inv = np.unique(np.asarray(group_ids), return_inverse=True)
    inv = inv.reshape(-1)
    g = int(inv.max()) + 1 if inv.size else 0
    lo = np.full(g, np.inf)
    hi = np.full(g, -np.inf)
    ok = np.isfinite(r)
    np.minimum.at(lo, inv[ok], r[ok])
    np.maximum.at(hi, inv[ok], r[ok])
    return (hi > lo)[inv]
