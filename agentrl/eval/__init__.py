"""Multi-turn evaluation on held-out tasks: success rate, mean turns, tool calls, tokens per episode."""
from __future__ import annotations

from typing import Sequence

import numpy as np

from ..types import Task, Trajectory


def summarize(trajs: Sequence[Trajectory], prefix: str = "eval/") -> dict:
    if not trajs:
        return {}
    ok = [t for t in trajs if t.reward is not None]
    return {
        f"{prefix}success": float(np.mean([t.success for t in trajs])),
        f"{prefix}reward": float(np.mean([t.reward for t in ok])) if ok else float("nan"),
        f"{prefix}mean_turns": float(np.mean([t.num_turns for t in trajs])),
        f"{prefix}tool_calls": float(np.mean([t.n_tool_calls for t in trajs])),
        f"{prefix}action_tokens": float(np.mean([t.n_action_tokens for t in trajs])),
        f"{prefix}invalid_rate": float(np.mean([not u.action_valid for t in trajs for u in t.turns] or [0.0])),
        f"{prefix}n": len(trajs),
    }


def evaluate(collector, tasks: Sequence[Task], temperature: float = 0.0, samples: int = 1,
             seed: int = 0) -> tuple[dict, list[Trajectory]]:
    """Run the policy on `tasks` (no weight updates) and summarise. Greedy when temperature == 0."""
    trajs = collector.collect(tasks, samples, seed=seed, group_prefix="eval:", temperature=temperature)
    return summarize(trajs), trajs
