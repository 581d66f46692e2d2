"""UFO's rollout filter (RAGEN `rollout_filter_ratio`, used by lichengliu03/unary-feedback): train only the groups
whose rewards vary most. The UFO rewards themselves live in agentrl/env/feedback.py (they are env rewards)."""
from __future__ import annotations

import numpy as np


def keep_top_std_groups(rewards: np.ndarray, group_ids: np.ndarray, ratio: float) -> np.ndarray:
    """Bool mask [N] keeping every trajectory of the max(1, round(ratio * n_groups)) groups with the largest
    reward std (population std over the group's finite rewards; ties keep the group seen first). ratio >= 1 keeps
    all. The reference keeps 0.25."""
    if not 0.0 < ratio:
        raise ValueError(f"std_filter_ratio must be in (0, 1], got {ratio}")
    gids = np.asarray(group_ids)
    if ratio >= 1.0 or gids.size == 0:
        return np.ones(gids.shape[0], dtype=bool)
    r = np.asarray(rewards, dtype=np.float64)
    order = list(dict.fromkeys(gids.tolist()))  # groups in first-seen order
    stds = []
    for g in order:
        x = r[(gids == g) & np.isfinite(r)]
        stds.append(float(x.std()) if x.size else 0.0)
    n_keep = max(1, int(round(ratio * len(order))))
    ranked = sorted(range(len(order)), key=lambda i: (-stds[i], i))[:n_keep]
    keep = {order[i] for i in ranked}
    return np.array([g in keep for g in gids.tolist()], dtype=bool)
