"""Supervised warm start from an env's expert demonstrations, with a configurable share of corrupted demos
(one expert action replaced by the env's `corrupt_action`), so RL has mistakes left to fix."""
from __future__ import annotations

import math
from typing import Callable, Optional, Sequence

import numpy as np
import torch

from .backends.learner import token_logprobs
from .config import SFTConfig
from .rollout.chain import make_env, template_tools
from .rollout.template import ChatTokenizer
from .types import Task, Trajectory, Turn


def demonstration(env, task: Task, chat: ChatTokenizer, max_turns: int, corrupt_at: int = -1,
                  rng: Optional[np.random.Generator] = None, render_tools: Optional[bool] = None) -> Trajectory:
    """Run the expert on `task` (the action at turn `corrupt_at` replaced by a corrupted one); tokens as the
    collector would build them."""
    _, info = env.reset(options={"task": task})
    traj = Trajectory(id=f"demo/{task.id}", group_id=task.id, task=task,
                      prompt_ids=chat.prompt_ids(info["messages"], tools=template_tools(env, info, render_tools)))
    for k in range(max_turns):
        base = env.unwrapped
        text = base.corrupt_action(rng) if k == corrupt_at else base.expert_action()
        ids = chat.encode(text)
        _, reward, term, trunc, info = env.step(text)
        turn = Turn(action_ids=ids, action_logprobs=[0.0] * len(ids), action_text=text, reward=float(reward),
                    terminated=term, truncated=trunc, obs_messages=list(info.get("messages", [])),
                    action_valid=bool(info.get("action_valid", True)), n_tool_calls=int(info.get("n_tool_calls", 0)))
        traj.turns.append(turn)
        if term or trunc:
            break
        turn.obs_ids = chat.obs_ids(ids, turn.obs_messages)
    traj.success = bool(info.get("success", False))
    traj.reward = float(sum(t.reward for t in traj.turns))
    return traj


def make_demonstrations(env_id: str, env_kwargs: dict, tasks: Sequence[Task], chat: ChatTokenizer,
                        max_turns: int, corrupt_share: float, seed: int,
                        render_tools: Optional[bool] = None, corrupt_turn: int = -1,
                        wrappers: Sequence[dict] = ()) -> list[Trajectory]:
    """One expert demonstration per task. A `corrupt_share` of them has one action replaced by the env's
    corrupt_action: at turn `corrupt_turn` (clipped to the demo's last turn), or at a uniformly random turn when
    corrupt_turn is -1."""
    env = make_env(env_id, env_kwargs, max_turns, wrappers)
    rng = np.random.default_rng(seed)
    demos = []
    for task in tasks:
        corrupt_at = -1
        if rng.random() < corrupt_share:
            n = demonstration(env, task, chat, max_turns, render_tools=render_tools).num_turns
            corrupt_at = int(rng.integers(n)) if corrupt_turn < 0 else min(corrupt_turn, n - 1)
        demos.append(demonstration(env, task, chat, max_turns, corrupt_at, rng, render_tools))
    env.close()
    return demos


def _pad(seqs: list[list[int]], pad: int) -> torch.Tensor:
    out = torch.full((len(seqs), max(map(len, seqs))), pad, dtype=torch.long)
    for i, s in enumerate(seqs):
        out[i, : len(s)] = torch.tensor(s)
    return out


def lr_factor(step: int, total: int, warmup_ratio: float, min_lr_ratio: float) -> float:
    """Multiplier of the peak lr at optimizer step `step` (0-based) of `total`: linear warm-up over
    warmup_ratio * total steps, then cosine decay to min_lr_ratio at the last step."""
    warmup = max(1, round(warmup_ratio * total))
    if step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return min_lr_ratio + (1 - min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def sft_train(model, demos: Sequence[Trajectory], cfg: SFTConfig, pad_id: int,
              log: Optional[Callable[[dict], None]] = None) -> dict:
    """Token-mean cross-entropy on action tokens (loss_mask 1), AdamW with linear warm-up and cosine decay.
    Returns the last epoch's metrics."""
    device = next(model.parameters()).device
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr)
    total = cfg.epochs * -(-len(demos) // cfg.batch_size)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_factor(s, total, cfg.warmup_ratio, cfg.min_lr_ratio))
    gen = torch.Generator().manual_seed(cfg.seed)
    model.train()
    metrics: dict = {}
    for epoch in range(cfg.epochs):
        order = torch.randperm(len(demos), generator=gen).tolist()
        tot_loss = tot_tok = tot_acc = 0.0
        for s in range(0, len(order), cfg.batch_size):
            rows = [demos[i] for i in order[s:s + cfg.batch_size]]
            ids = _pad([t.token_ids() for t in rows], pad_id).to(device)
            mask = _pad([t.loss_mask() for t in rows], 0).float().to(device)
            attn = _pad([[1] * len(t.token_ids()) for t in rows], 0).to(device)
            lp = token_logprobs(model, ids, attn)
            loss = -(lp * mask).sum() / mask.sum()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            sched.step()
            n = float(mask.sum())
            tot_loss += loss.item() * n
            tot_tok += n
            tot_acc += float(((lp.detach() > np.log(0.5)).float() * mask).sum())
        metrics = {"sft/epoch": epoch + 1, "sft/loss": tot_loss / tot_tok, "sft/confident_share": tot_acc / tot_tok,
                   "sft/lr": sched.get_last_lr()[0]}
        if log:
            log(metrics)
    model.eval()
    return metrics
