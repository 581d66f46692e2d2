"""Chain collector: G independent multi-turn episodes per task, all active episodes generated in one batched call
per turn, env steps (tool calls) run concurrently in threads. Tokens are kept exactly as sampled."""
from __future__ import annotations

import copy
import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Optional, Sequence

import gymnasium

from ..backends.base import GenRequest, SamplingParams
from ..config import RolloutConfig
from ..types import Message, Task, Trajectory, Turn
from .template import ChatTokenizer

log = logging.getLogger(__name__)


@dataclass
class _Episode:
    traj: Trajectory
    env: gymnasium.Env
    context: list[int]
    done: bool = False
    info: dict = field(default_factory=dict)
    reset_seed: int = 0
    snapshots: list = field(default_factory=list)  # env state after each turn (envs with supports_snapshot only)


def make_env(env_id: str, kwargs: dict, max_turns: int, wrappers: Sequence[dict] = ()) -> gymnasium.Env:
    """gymnasium.make(env_id, max_turns=max_turns, **kwargs), then the configured wrappers (env.wrappers)."""
    from ..env.feedback import apply_wrappers

    kw = dict(kwargs)
    kw.setdefault("max_turns", max_turns)
    try:
        return apply_wrappers(gymnasium.make(env_id, **kw), wrappers, max_turns)
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


def can_snapshot(env: gymnasium.Env) -> bool:
    """The env supports snapshot()/restore() and no wrapper keeps state of its own (such wrappers set
    supports_snapshot = False; branching then replays actions)."""
    while isinstance(env, gymnasium.Wrapper):
        if getattr(type(env), "supports_snapshot", True) is False:
            return False
        env = env.env
    return bool(getattr(env, "supports_snapshot", False))


class ChainCollector:
    def __init__(self, env_id: str, env_kwargs: dict, generator, chat: ChatTokenizer, cfg: RolloutConfig,
                 wrappers: Sequence[dict] = ()):
        self.env_id, self.env_kwargs, self.wrappers = env_id, dict(env_kwargs), list(wrappers)
        self.gen, self.chat, self.cfg = generator, chat, cfg
        self.envs: list[gymnasium.Env] = []
        self.pool = ThreadPoolExecutor(max_workers=max(1, cfg.tool_workers))
        self.stats: dict = {}  # of the last collect(): env_errors, truncated_tokens, and rollout/* metrics
        self._n_envs = 0  # envs handed out in the current collect()
        self._next_node = 0  # Turn.node_id counter of the current collect()
        self.workers = None  # rollout.workers > 0: the EnvPool of Ray actors the envs live in (rollout/workers.py)
        self._restarts0 = 0

    def _env(self, i: int) -> gymnasium.Env:
        while len(self.envs) <= i:
            self.envs.append(self._make_env())
        return self.envs[i]

    def _make_env(self):
        if self.cfg.workers <= 0:
            return make_env(self.env_id, self.env_kwargs, self.cfg.max_turns, self.wrappers)
        if self.workers is None:
            from .workers import EnvPool

            c = self.cfg
            self.workers = EnvPool(c.workers, self.env_id, self.env_kwargs, c.max_turns, self.wrappers,
                                   cpus=c.worker_cpus, threads=c.worker_threads, timeout_s=c.worker_timeout_s,
                                   address=c.ray_address)
        return self.workers.env()

    def close(self) -> None:
        for e in self.envs:
            e.close()
        self.envs = []
        self.pool.shutdown(wait=False)
        if self.workers is not None:
            self.workers.close()
            self.workers = None

    def collect(self, tasks: Sequence[Task], group_size: int, seed: int, group_prefix: str = "",
                temperature: Optional[float] = None, policy_version: int = 0) -> list[Trajectory]:
        self._begin()
        episodes = self._start(tasks, group_size, seed, group_prefix)
        params = self._params(temperature)
        self._run(episodes, params, seed, policy_version)
        self._end([e.traj for e in episodes], len(tasks))
        return [e.traj for e in episodes]

    # ------------------------------------------------------------------ building blocks (tree / arpo reuse them)
    def _begin(self) -> None:
        self.stats = {"env_errors": 0, "truncated_tokens": 0, "gen_tokens": 0}
        self._n_envs, self._next_node = 0, 0
        self._restarts0 = self.workers.restarts if self.workers is not None else 0

    def _end(self, trajs: Sequence[Trajectory], n_tasks: int) -> None:
        """rollout/* metrics every strategy reports (tokens counted once however many trajectories share them)."""
        self.stats["rollout/gen_tokens"] = self.stats["gen_tokens"]
        self.stats["rollout/leaves_per_task"] = len(trajs) / max(1, n_tasks)
        self.stats["rollout/gen_tokens_per_leaf"] = self.stats["gen_tokens"] / max(1, len(trajs))
        if self.workers is not None:
            self.stats["rollout/worker_restarts"] = self.workers.restarts - self._restarts0

    def _params(self, temperature: Optional[float], top_k_logprobs: Optional[int] = None) -> SamplingParams:
        return SamplingParams(
            max_new_tokens=self.cfg.max_new_tokens,
            temperature=self.cfg.temperature if temperature is None else temperature,
            top_p=self.cfg.top_p, stop=tuple(stop_strings(self._env(0))),
            top_k_logprobs=self.cfg.top_k_logprobs if top_k_logprobs is None else top_k_logprobs,
        )

    def _new_env(self) -> gymnasium.Env:
        self._n_envs += 1
        return self._env(self._n_envs - 1)

    def _run(self, episodes: Sequence[_Episode], params: SamplingParams, seed: int, version: int) -> None:
        """Advance every unfinished episode one turn per round until all are done or out of turns.

        With rollout.pipeline_chunks = k > 1 the episodes are split into k chunks and their turns are pipelined:
        while one chunk's env steps (tool calls) run in the thread pool, the next chunk generates."""
        k = max(1, min(self.cfg.pipeline_chunks, len(episodes)))
        size = -(-len(episodes) // k) if episodes else 1
        chunks = [list(episodes[i:i + size]) for i in range(0, len(episodes), size)]
        pending: list = [None] * len(chunks)
        for r in range(self.cfg.max_turns):
            for c, chunk in enumerate(chunks):
                if pending[c] is not None:
                    self._end_turn(*pending[c], version)
                    pending[c] = None
                active = [e for e in chunk if not e.done and e.traj.num_turns < self.cfg.max_turns]
                if active:
                    pending[c] = self._begin_turn(active, params, seed * 7919 + r * len(chunks) + c)
        for p in pending:
            if p is not None:
                self._end_turn(*p, version)
        for e in episodes:
            if not e.done:  # ran out of turns without the env saying so
                e.traj.turns[-1].truncated = True
                e.traj.turns[-1].obs_ids = []
                self._finish(e)

    def _start(self, tasks, group_size, seed, prefix) -> list[_Episode]:
        return [self._fresh(task, f"{prefix}{task.id}#{t}", f"{prefix}{task.id}/{g}", seed)
                for t, task in enumerate(tasks) for g in range(group_size)]

    def _fresh(self, task: Task, group_id: str, traj_id: str, seed: int) -> _Episode:
        """A new episode of `task` from its reset."""
        env = self._new_env()
        reset_seed = seed * 100_003 + self._n_envs - 1
        info = self._reset(env, reset_seed, task, traj_id)
        if info is None:
            return self._unstarted(env, Trajectory(id=traj_id, group_id=group_id, task=task, prompt_ids=[]),
                                   reset_seed)
        prompt = self.chat.prompt_ids(info["messages"], tools=template_tools(env, info, self.cfg.render_tools))
        traj = Trajectory(id=traj_id, group_id=group_id, task=task, prompt_ids=prompt)
        return _Episode(traj=traj, env=env, context=list(prompt), info=info, reset_seed=reset_seed)

    def _reset(self, env, seed: int, task: Task, traj_id: str) -> Optional[dict]:
        """env.reset's info, or None when the env cannot start (a browser or sandbox that fails to launch, a lost
        worker): that episode fails (counted in env_errors), the collect goes on."""
        try:
            return env.reset(seed=seed, options={"task": task})[1]
        except Exception as exc:
            log.warning("%s: reset for %s failed, the episode is unscorable: %s: %s", self.env_id, traj_id,
                        type(exc).__name__, exc)
            self.stats["env_errors"] += 1
            return None

    @staticmethod
    def _unstarted(env, traj: Trajectory, reset_seed: int) -> _Episode:
        """A finished, unscorable (reward None) episode with no turns."""
        traj.reward_parts["env_error"] = 1.0
        return _Episode(traj=traj, env=env, context=[], done=True, reset_seed=reset_seed)

    def _fork(self, src: _Episode, depth: int, traj_id: str) -> _Episode:
        """A new episode that shares src's first `depth` turns (same tokens, same node ids) and continues from
        there: the env is restored from a snapshot when the env supports it, else reset with src's seed and the
        actions replayed (check-env verifies replay determinism; a mismatch here raises)."""
        env = self._new_env()
        base = env.unwrapped
        info = self._reset(env, src.reset_seed, src.traj.task, traj_id)
        if info is None:
            return self._unstarted(env, Trajectory(id=traj_id, group_id=src.traj.group_id, task=src.traj.task,
                                                   prompt_ids=[], tree_id=src.traj.tree_id), src.reset_seed)
        if depth and can_snapshot(env) and len(src.snapshots) >= depth:
            info = base.restore(src.snapshots[depth - 1])
        else:
            for k, turn in enumerate(src.traj.turns[:depth]):
                _, _, term, trunc, info = env.step(turn.action_text)
                if term or trunc or list(info.get("messages", [])) != list(turn.obs_messages):
                    raise RuntimeError(f"{self.env_id}: replaying turn {k} of {src.traj.id} did not reproduce its "
                                       "observation; the env is not replay-deterministic (run agentrl check-env)")
        turns = [copy.copy(t) for t in src.traj.turns[:depth]]
        # (a root whose own reset failed has no prompt: a fork from it at depth 0 is a fresh start)
        prompt = src.traj.prompt_ids or self.chat.prompt_ids(info["messages"],
                                                             tools=template_tools(env, info, self.cfg.render_tools))
        traj = Trajectory(id=traj_id, group_id=src.traj.group_id, task=src.traj.task, prompt_ids=prompt,
                          turns=turns, tree_id=src.traj.tree_id)
        context = list(prompt) + [x for t in turns for x in t.action_ids + t.obs_ids]
        return _Episode(traj=traj, env=env, context=context, info=info, reset_seed=src.reset_seed,
                        snapshots=list(src.snapshots[:depth]))

    def _turn(self, active: list[_Episode], params: SamplingParams, seed: int, version: int) -> None:
        """One synchronous turn for `active`: one batched generate call, then their env steps concurrently."""
        self._end_turn(*self._begin_turn(active, params, seed), version)

    def _begin_turn(self, active: list[_Episode], params: SamplingParams, seed: int):
        """Generate for `active` and submit their env steps to the pool; returns what _end_turn records."""
        budget = self.cfg.max_total_tokens
        reqs = [GenRequest(list(e.context), max_new_tokens=max(0, min(params.max_new_tokens, budget - len(e.context))),
                           route_key=e.traj.group_id) for e in active]
        comps = self.gen.generate(reqs, SamplingParams(**{**params.__dict__, "seed": seed}))
        decode = self.chat.tok.decode  # only for generators that return ids without text
        texts = [c.text or decode(list(c.ids), skip_special_tokens=True) for c in comps]
        futures = [self.pool.submit(_safe_step, e.env, text) for e, text in zip(active, texts)]
        return active, comps, texts, futures

    def _end_turn(self, active, comps, texts, futures, version: int) -> None:
        for e, c, text, fut in zip(active, comps, texts, futures):
            self._record(e, c, text, fut.result(), version)

    def _record(self, e: _Episode, comp, text: str, res, version: int) -> None:
        obs, reward, term, trunc, info, error = res
        turn = Turn(action_ids=list(comp.ids), action_logprobs=list(comp.logprobs), action_text=text,
                    top_logprobs=comp.top_logprobs, anchor=e.info.get("anchor"), policy_version=version,
                    node_id=self._next_node)
        self._next_node += 1
        self.stats["gen_tokens"] += len(turn.action_ids)
        if error is not None:  # the env itself broke: the episode is unscorable, never a silent 0
            turn.reward, turn.truncated = 0.0, True
            turn.obs_messages = [Message("system", f"env error: {error}")]  # the cause stays with the episode
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
        if can_snapshot(e.env) and not (term or trunc):
            e.snapshots.append(e.env.unwrapped.snapshot())
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
