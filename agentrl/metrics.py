"""Metric sinks (metrics.jsonl, stdout progress, tensorboard/wandb when installed), phase timers and plots.
Every key is defined in docs/metrics.md."""
from __future__ import annotations

import json
import math
import os
import time
from contextlib import contextmanager
from typing import Optional


def _clean(v):
    if hasattr(v, "item"):
        v = v.item()
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return v


class MetricsLogger:
    """Appends one JSON line per record to RUN_DIR/metrics.jsonl; optional tensorboard (`tensorboard: true`)."""

    def __init__(self, run_dir: str, tensorboard: bool = False):
        self.path = os.path.join(run_dir, "metrics.jsonl")
        self.tb = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.tb = SummaryWriter(os.path.join(run_dir, "tb"))
            except ImportError:
                raise ImportError('tensorboard logging needs: pip install "agentrl[tensorboard]"') from None

    def log(self, record: dict) -> None:
        rec = {k: _clean(v) for k, v in record.items()}
        with open(self.path, "a") as f:
            f.write(json.dumps(rec) + "\n")
        if self.tb is not None:
            step = rec.get("train/step", 0)
            for k, v in rec.items():
                if isinstance(v, (int, float)) and not isinstance(v, bool):
                    self.tb.add_scalar(k, v, step)

    def truncate_after(self, step: int) -> None:
        """Drop records past `step` (a resumed run rewrites them)."""
        if not os.path.exists(self.path):
            return
        with open(self.path) as f:
            keep = [ln for ln in f if json.loads(ln).get("train/step", 0) <= step]
        with open(self.path, "w") as f:
            f.writelines(keep)


def read_metrics(run_dir: str) -> list[dict]:
    path = os.path.join(run_dir, "metrics.jsonl")
    with open(path) as f:
        return [json.loads(ln) for ln in f if ln.strip()]


class PhaseTimer:
    """`with timer("collect"):` accumulates wall time into perf/time/collect for the current step."""

    def __init__(self):
        self.times: dict[str, float] = {}

    @contextmanager
    def __call__(self, name: str):
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.times[f"perf/time/{name}"] = self.times.get(f"perf/time/{name}", 0.0) + time.perf_counter() - t0

    def pop(self) -> dict:
        out, self.times = self.times, {}
        return out


def plot_curves(run_dir: str, out: Optional[str] = None) -> str:
    """Reward/success curves of a run as a PNG (matplotlib, headless)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    recs = read_metrics(run_dir)
    train = [r for r in recs if "rollout/success" in r]
    evals = [r for r in recs if "eval/success" in r]
    fig, ax = plt.subplots(figsize=(7, 4))
    if train:
        steps = [r["train/step"] for r in train]
        ax.plot(steps, [r["rollout/success"] for r in train], label="train success (sampled)")
        ax.plot(steps, [r["rollout/reward_mean"] for r in train], label="train reward", alpha=0.6)
    if evals:
        ax.plot([r["train/step"] for r in evals], [r["eval/success"] for r in evals], "o-",
                label="held-out success (greedy)")
    ax.set_xlabel("RL step")
    ax.set_ylim(-0.05, 1.05)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
    out = out or os.path.join(run_dir, "curves.png")
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out
