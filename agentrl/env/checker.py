"""check_env: Gymnasium's checker plus agentrl's own checks (replay determinism, robustness to arbitrary text,
tool schemas, expert success, split disjointness). Every registered env must pass it (DESIGN.md §8.5)."""
from __future__ import annotations

import math
import warnings
from typing import Any

import gymnasium
import numpy as np
from gymnasium.utils.env_checker import check_env as gym_check_env

from .base import TEST, TRAIN, ToolEnv

INFO_KEYS_RESET = ("messages", "tools", "system", "anchor", "task")
INFO_KEYS_STEP = ("messages", "anchor", "action_valid", "n_tool_calls", "success", "turn")


class EnvCheckError(AssertionError):
    """An environment failed a check; the message says which and why."""


def _fail(what: str, detail: str) -> None:
    raise EnvCheckError(f"{what}: {detail}")


def nasty_actions(tool_names: list[str]) -> list[str]:
    """Hand-picked hostile replies: empty, unclosed tags, huge text, unicode, bad JSON, tool abuse."""
    t = tool_names[0] if tool_names else "tool"
    return [
        "", " ", "\n", "<", ">", "</>", "<answer>", "</answer>", "<answer></answer>", "<answer>  </answer>",
        f"<{t}>", f"<{t}>1+1", f"</{t}>", f"<{t}></{t}>", f"<{t}>" + "(" * 500 + f"</{t}>",
        "x" * 100_000, "<answer>" + "9" * 5000 + "</answer>", "<answer>1e999</answer>", "<answer>nan</answer>",
        "\u2211\u00e9\U0001F600 <answer>\u0661\u0662</answer>", "\x00\x01\x02\ud800",
        "<tool_call>{bad json</tool_call>", '<tool_call>{"name": 3}</tool_call>', "<tool_call>[]</tool_call>",
        '<tool_call>{"name": "nope", "arguments": {}}</tool_call>',
        f'<tool_call>{{"name": "{t}", "arguments": "{{oops"}}</tool_call>',
        f'<tool_call>{{"name": "{t}", "arguments": {{"zzz": 1}}}}</tool_call>',
        f'<tool_call>{{"name": "{t}"}}</tool_call>', "<tool_call>" + "[" * 10_000 + "</tool_call>",
        f"<{t}>__import__('os').system('echo hi')</{t}>", f"<{t}>9**9**9**9</{t}>", f"<{t}>1/0</{t}>",
        "<search>q</search>", "<think><answer>1</answer></think>", f"<{t}>1</{t}>" * 50,
    ]


def _rollout(env: gymnasium.Env, seed: int, actions: list[str]) -> list[tuple]:
    obs, info = env.reset(seed=seed)
    record = [(obs, info["messages"], info["anchor"])]
    for a in actions:
        obs, r, term, trunc, info = env.step(a)
        record.append((obs, r, term, trunc, info["messages"], info["anchor"], info["action_valid"]))
        if term or trunc:
            break
    return record


def _mixed_actions(env: gymnasium.Env, seed: int) -> list[str]:
    """Play an episode choosing expert / corrupt / random actions; return the actions taken."""
    base: ToolEnv = env.unwrapped
    rng = np.random.default_rng(seed)
    env.action_space.seed(seed)
    env.reset(seed=seed)
    actions = []
    for _ in range(base.max_turns):
        u = rng.random()
        a = base.expert_action() if u < 0.5 else (base.corrupt_action(rng) if u < 0.7 else env.action_space.sample())
        actions.append(a)
        _, _, term, trunc, _ = env.step(a)
        if term or trunc:
            break
    return actions


def check_replay(env: gymnasium.Env, seed: int, n_episodes: int = 5) -> int:
    """(b) reset(seed) + the same actions -> identical observations, rewards, flags, messages and anchors."""
    for k in range(n_episodes):
        actions = _mixed_actions(env, seed + k)
        first, second = _rollout(env, seed + k, actions), _rollout(env, seed + k, actions)
        if first != second:
            step = next(i for i, (a, b) in enumerate(zip(first, second)) if a != b)
            _fail("replay determinism", f"episode seed {seed + k} differs at step {step}: {first[step]!r} vs {second[step]!r}")
    return n_episodes


def _check_step(env: gymnasium.Env, action: str, obs: Any, reward: Any, term: Any, trunc: Any, info: dict) -> None:
    short = repr(action[:80])
    if not env.observation_space.contains(obs):
        _fail("random actions", f"observation after action {short} is outside observation_space: {str(obs)[:200]!r}")
    if not isinstance(reward, float) or not math.isfinite(reward):
        _fail("random actions", f"reward {reward!r} after action {short} is not a finite float")
    if not isinstance(term, bool) or not isinstance(trunc, bool):
        _fail("random actions", f"terminated/truncated must be bool, got {type(term)}, {type(trunc)}")
    missing = [k for k in INFO_KEYS_STEP if k not in info]
    if missing:
        _fail("random actions", f"step info lacks keys {missing}")
    if not info["action_valid"] and not info["messages"]:
        _fail("random actions", f"invalid action {short} gave no feedback message")


def check_random_actions(env: gymnasium.Env, n_random: int, seed: int) -> dict:
    """(c) arbitrary text never raises and every observation lies in observation_space."""
    base: ToolEnv = env.unwrapped
    env.action_space.seed(seed)
    actions = nasty_actions(base.toolset.names) + [env.action_space.sample() for _ in range(n_random)]
    obs, info = env.reset(seed=seed)
    counts = {"actions": 0, "episodes": 1, "invalid": 0}
    for i, action in enumerate(actions):
        try:
            obs, reward, term, trunc, info = env.step(action)
        except Exception as e:  # noqa: BLE001 - turned into a clear check failure
            _fail("random actions", f"step({action[:80]!r}) raised {type(e).__name__}: {e}")
        _check_step(env, action, obs, reward, term, trunc, info)
        counts["actions"] += 1
        counts["invalid"] += int(not info["action_valid"])
        if term or trunc:
            env.reset(seed=seed + i + 1)
            counts["episodes"] += 1
    return counts


def check_schemas(schemas: list[dict]) -> int:
    """(d) each schema is {"type": "function", "function": {name, description, parameters{object...}}}."""
    for s in schemas:
        fn = s.get("function") if isinstance(s, dict) else None
        if s.get("type") != "function" or not isinstance(fn, dict):
            _fail("tool schemas", f"not an OpenAI function schema: {s!r}")
        if not isinstance(fn.get("name"), str) or not fn["name"] or not isinstance(fn.get("description"), str):
            _fail("tool schemas", f"name and description must be strings: {fn!r}")
        params = fn.get("parameters")
        if not isinstance(params, dict) or params.get("type") != "object":
            _fail("tool schemas", f"{fn['name']}: parameters must be a JSON-schema object")
        props, required = params.get("properties"), params.get("required")
        if not isinstance(props, dict) or not isinstance(required, list) or not set(required) <= set(props):
            _fail("tool schemas", f"{fn['name']}: properties must be a dict and required a subset of it")
    return len(schemas)


def check_expert(env: gymnasium.Env, seed: int, n_tasks: int = 3) -> int:
    """(e) the expert solves tasks of both splits."""
    base: ToolEnv = env.unwrapped
    solved = 0
    for split in (TRAIN, TEST):
        for task in base.make_tasks(split, n_tasks, seed):
            env.reset(seed=seed, options={"task": task})
            term = trunc = False
            while not (term or trunc):
                _, reward, term, trunc, info = env.step(base.expert_action())
            if not info["success"]:
                _fail("expert", f"the expert failed task {task.id} ({task.options}); last reward {reward}")
            solved += 1
    return solved


def check_splits(env: gymnasium.Env, seed: int, n: int = 30) -> dict:
    base: ToolEnv = env.unwrapped
    train, test = base.make_tasks(TRAIN, n, seed), base.make_tasks(TEST, n, seed)
    if [t.id for t in train] != [t.id for t in base.make_tasks(TRAIN, n, seed)]:
        _fail("splits", "make_tasks is not deterministic")
    overlap = {t.id for t in train} & {t.id for t in test}
    if overlap:
        _fail("splits", f"train and test share tasks {sorted(overlap)[:5]}")
    return {"train": len(train), "test": len(test)}


def _gymnasium_checks(env: gymnasium.Env) -> bool:
    """(a) Gymnasium's own checker on the unwrapped env."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # its warnings (e.g. about render modes) are advisory; errors still raise
        gym_check_env(env.unwrapped, skip_render_check=True)
    return True


def _reset_checks(env: gymnasium.Env, seed: int) -> int:
    obs, info = env.reset(seed=seed)
    missing = [k for k in INFO_KEYS_RESET if k not in info]
    if missing or not env.observation_space.contains(obs):
        _fail("reset", f"missing info keys {missing} or observation outside the space: {str(obs)[:200]!r}")
    return check_schemas(info["tools"])


def check_env(env_id: str, n_random: int = 1000, seed: int = 0, **make_kwargs) -> dict:
    """Run every check on `gymnasium.make(env_id, **make_kwargs)`; raise EnvCheckError on the first failure.

    Returns a report: {"id", "gymnasium": True, "schemas": n_tools, "replay_episodes": n,
    "random": {"actions", "episodes", "invalid"}, "expert_solved": n, "splits": {"train": n, "test": n}}.
    """
    env = gymnasium.make(env_id, **make_kwargs)
    stages = [
        ("gymnasium", "gymnasium check_env", lambda: _gymnasium_checks(env)),
        ("schemas", "reset / tool schemas", lambda: _reset_checks(env, seed)),
        ("replay_episodes", "replay determinism", lambda: check_replay(env, seed)),
        ("random", "random actions", lambda: check_random_actions(env, n_random, seed)),
        ("expert_solved", "expert", lambda: check_expert(env, seed)),
        ("splits", "splits", lambda: check_splits(env, seed)),
    ]
    report: dict[str, Any] = {"id": env_id}
    try:
        if not isinstance(env.unwrapped, ToolEnv):
            _fail("type", f"{env_id} is not an agentrl.env.ToolEnv")
        for key, what, run in stages:
            try:
                report[key] = run()
            except EnvCheckError:
                raise
            except Exception as e:  # noqa: BLE001 - any crash is a failed check, named by stage
                _fail(what, f"raised {type(e).__name__}: {e}")
        return report
    finally:
        env.close()
