"""One-step-off-policy rollouts (train.async = one_step_off): step k+1's batch is collected in a background thread
while step k updates.

Version bookkeeping: the policy version is the number of updates applied. The trainer calls
`take(step, version)` at the start of a step (version = updates so far), which returns the batch collected in the
background (or collects one now when none is pending) and then `submit(step + 1, version)`: the generator copy,
synced to `version` at the end of the previous step, generates the next batch while this step updates. `wait()`
(before the next sync) blocks until that generation is done, so the generator's weights are never replaced
mid-batch. Each Turn records the version that produced it (Turn.policy_version); a batch older than
`max_staleness` updates at take() time is dropped (counted) and collected again with the current policy.
"""
from __future__ import annotations

from concurrent.futures import Future, ThreadPoolExecutor
from typing import Callable, Optional

import numpy as np

from ..types import Trajectory

CollectFn = Callable[[int, int], tuple[list[Trajectory], dict]]  # (step, policy_version) -> (trajs, metrics)


class Prefetcher:
    def __init__(self, collect: CollectFn, max_staleness: int = 1):
        self.collect = collect
        self.max_staleness = int(max_staleness)
        self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="agentrl-rollout")
        self.pending: Optional[tuple[int, int, Future]] = None  # (step, version it was generated with, future)
        self.dropped = 0  # batches discarded for exceeding max_staleness

    def submit(self, step: int, version: int) -> None:
        """Start collecting `step`'s batch with the generator as it is now (policy `version`)."""
        if self.pending is not None:
            raise RuntimeError(f"a batch (step {self.pending[0]}) is already being collected")
        self.pending = (step, version, self.pool.submit(self.collect, step, version))

    def wait(self) -> None:
        """Block until the background batch (if any) is generated; re-raises its exception."""
        if self.pending is not None:
            self.pending[2].result()

    def take(self, step: int, version: int) -> tuple[list[Trajectory], dict]:
        """`step`'s batch: the prefetched one when it is fresh enough, else collected now with `version`."""
        if self.pending is not None:
            pstep, pversion, fut = self.pending
            self.pending = None
            out = fut.result()
            if pstep == step and version - pversion <= self.max_staleness:
                return out
            self.dropped += 1
        return self.collect(step, version)

    def close(self) -> None:
        try:
            self.wait()
        finally:
            self.pending = None
            self.pool.shutdown(wait=True)


def staleness_metrics(trajs: list[Trajectory], version: int, max_staleness: int) -> dict:
    """Staleness (updates between the policy that sampled a turn and the one being updated) over action turns:
    mean, max, and the share at each value 0..max_staleness (a histogram)."""
    s = np.array([version - t.policy_version for tr in trajs for t in tr.turns], dtype=np.int64)
    if s.size == 0:
        return {"rollout/staleness_mean": 0.0, "rollout/staleness_max": 0.0}
    out = {"rollout/staleness_mean": float(s.mean()), "rollout/staleness_max": float(s.max())}
    for v in range(max(0, max_staleness) + 1):
        out[f"rollout/staleness_{v}"] = float((s == v).mean())
    return out
