"""Chain collector: G independent multi-turn episodes per task, all active episodes generated in one batched call
per turn, env steps (tool calls) run concurrently in threads. Tokens are kept exactly as sampled."""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Optional, Sequence

import gymnasium

from ..backends.base import GenRequest, SamplingParams
from ..config import RolloutConfig
from ..types import Task, Trajectory, Turn
from .template import ChatTokenizer


@dataclass
class _Episode:
    traj: Trajectory
    env: gymnasium.Env
    context: list[int]
    done: bool = False
    info: dict = field(default_factory=dict)


def make_env(env_id: str, kwargs: dict, max_turns: int) -> gymnasium.Env:
    kw = dict(kwargs)
    kw.setdefault("max_turns", max_turns)
    try:
        return gymnasium.make(env_id, **kw)
    except gymnasium.error.Error as e:
        from ..registry import did_you_mean

        known = [i for i in gymnasium.registry if i.startswith("agentrl/")]
        raise ValueError(f"cannot make env {env_id!r}: {e}." + did_you_mean(env_id, known)) from None


def template_tools(env: gymnasium.Env, info: dict, render_tools: Optional[bool]) -> Optional[list]:
    """The tool schemas to render into the prompt (see RolloutConfig.render_tools)."""
    if render_tools is None:
        from ..env.parsers import TagParser

        render_tools = not isinstance(getattr(env.unwrapped, "parser", None), TagParser)
    return info.get("tools") if render_tools else None


def stop_strings(env: gymnasium.Env) -> list[str]:
    """The env's tool-call close tags (generation stops there so the tool can run)."""
    return list(env.unwrapped.stop_strings())


class ChainCollector:
    def __init__(self, env_id: str, env_kwargs: dict, generator, chat: ChatTokenizer, cfg: RolloutConfig):
        self.env_id, self.env_kwargs = env_id, dict(env_kwargs)
        self.gen, self.chat, self.cfg = generator, chat, cfg
        self.envs: list[gymnasium.Env] = []
        self.pool = ThreadPoolExecutor(max_workers=max(1, cfg.tool_workers))
        self.stats: dict = {}

    def _env(self, i: int) -> gymnasium.Env:
        while len(self.envs) <= i:
            self.envs.append(make_env(self.env_id, self.env_kwargs, self.cfg.max_turns))
        return self.envs[i]

    def close(self) -> None:
        for e in self.envs:
            e.close()
        self.envs = []
        self.pool.shutdown(wait=False)

    def collect(self, tasks: Sequence[Task], group_size: int, seed: int, group_prefix: str = "",
                temperature: Optional[float] = None, policy_version: int = 0) -> list[Trajectory]:
        episodes = self._start(tasks, group_size, seed, group_prefix)
        params = SamplingParams(
            max_new_tokens=self.cfg.max_new_tokens,
            temperature=self.cfg.temperature if temperature is None else temperature,
            top_p=self.cfg.top_p, stop=tuple(stop_strings(episodes[0].env)) if episodes else (),
            top_k_logprobs=self.cfg.top_k_logprobs,
        )
        self.stats = {"env_errors": 0, "truncated_tokens": 0}
        for turn in range(self.cfg.max_turns):
            active = [e for e in episodes if not e.done]
            if not active:
                break
            self._turn(active, params, seed * 7919 + turn, policy_version)
        for e in episodes:
            if not e.done:  # ran out of turns without the env saying so
                e.traj.turns[-1].truncated = True
                e.traj.turns[-1].obs_ids = []
                self._finish(e)
        return [e.traj for e in episodes]

    def _start(self, tasks, group_size, seed, prefix) -> list[_Episode]:
        episodes = []
        for t, task in enumerate(tasks):
            for g in range(group_size):
                i = len(episodes)
                env = self._env(i)
                _, info = env.reset(seed=seed * 100_003 + i, options={"task": task})
                prompt = self.chat.prompt_ids(info["messages"], tools=template_tools(env, info, self.cfg.render_tools))
                traj = Trajectory(id=f"{prefix}{task.id}/{g}", group_id=f"{prefix}{task.id}#{t}", task=task,
                                  prompt_ids=prompt)
                episodes.append(_Episode(traj=traj, env=env, context=list(prompt), info=info))
        return episodes

    def _turn(self, active: list[_Episode], params: SamplingParams, seed: int, version: int) -> None:
        budget = self.cfg.max_total_tokens
        reqs = [GenRequest(e.context, max_new_tokens=max(0, min(params.max_new_tokens, budget - len(e.context))))
                for e in active]
        comps = self.gen.generate(reqs, SamplingParams(**{**params.__dict__, "seed": seed}))
        decode = self.chat.tok.decode  # only for generators that return ids without text
        texts = [c.text or decode(list(c.ids), skip_special_tokens=True) for c in comps]
        results = list(self.pool.map(_safe_step, [e.env for e in active], texts))
        for e, c, text, res in zip(active, comps, texts, results):
            self._record(e, c, text, res, version)

    def _record(self, e: _Episode, comp, text: str, res, version: int) -> None:
        obs, reward, term, trunc, info, error = res
        turn = Turn(action_ids=list(comp.ids), action_logprobs=list(comp.logprobs), action_text=text,
                    top_logprobs=comp.top_logprobs, anchor=e.info.get("anchor"), policy_version=version)
        if error is not None:  # the env itself broke: the episode is unscorable, never a silent 0
            turn.reward, turn.truncated = 0.0, True
            e.traj.reward_parts["env_error"] = 1.0
            e.traj.turns.append(turn)
            self.stats["env_errors"] += 1
            e.done = True
            e.traj.reward = None
            return
        turn.reward, turn.terminated, turn.truncated = float(reward), bool(term), bool(trunc)
        turn.action_valid = bool(info.get("action_valid", True))
        turn.n_tool_calls = int(info.get("n_tool_calls", 0))
        turn.obs_messages = list(info.get("messages", []))
        e.traj.turns.append(turn)
        e.info = info
        if term or trunc:
            self._finish(e)
            return
        turn.obs_ids = self.chat.obs_ids(turn.action_ids, turn.obs_messages)
        e.context += turn.action_ids + turn.obs_ids
        if len(e.context) >= self.cfg.max_total_tokens:
            turn.truncated, turn.obs_ids = True, []
            self.stats["truncated_tokens"] += 1
            self._finish(e)

    def _finish(self, e: _Episode) -> None:
        e.done = True
        e.traj.success = bool(e.info.get("success", False))
        if e.traj.reward_parts.get("env_error"):
            return
        e.traj.reward = float(sum(t.reward for t in e.traj.turns))
        e.traj.reward_parts["env"] = e.traj.reward


def _safe_step(env: gymnasium.Env, action: str):
    try:
        obs, reward, term, trunc, info = env.step(action)
        return obs, reward, term, trunc, info, None
    except Exception as exc:  # a broken env or reward function: recorded, never crashes the run
        return None, None, True, False, {}, f"{type(exc).__name__}: {exc}"
