"""Registered agentrl environments (gymnasium ids "agentrl/<Name>-v<N>", string entry points).

Importing this package registers the ids; it imports only gymnasium (entry points load on `gymnasium.make`).
Bump an id's version when its observations or rewards change.
"""
from __future__ import annotations

import gymnasium

_ENVS = {
    "agentrl/Calculator-v0": "agentrl.envs.calculator:CalculatorEnv",
    "agentrl/FrozenLake-v0": "agentrl.envs.frozenlake:FrozenLakeTextEnv",
    "agentrl/SearchQA-v0": "agentrl.envs.searchqa:SearchQAEnv",
    "agentrl/Math-v0": "agentrl.envs.mathword:MathEnv",
    "agentrl/Code-v0": "agentrl.envs.code:CodeEnv",
    "agentrl/MiniWoB-v0": "agentrl.envs.miniwob:MiniWoBEnv",
}

for _id, _entry in _ENVS.items():
    if _id not in gymnasium.registry:
        gymnasium.register(id=_id, entry_point=_entry, max_episode_steps=None)


def registered_ids() -> list[str]:
    """Every registered gymnasium id in the agentrl/ namespace (including ones registered by plugins)."""
    return sorted(i for i in gymnasium.registry if i.startswith("agentrl/"))


def describe(env_id: str) -> dict:
    """{"id", "description" (first docstring line), "tools" (tool names)} for an `agentrl envs` listing."""
    env = gymnasium.make(env_id)
    try:
        unwrapped = env.unwrapped
        doc = (type(unwrapped).__doc__ or "").strip().splitlines()
        tools = list(unwrapped.toolset.names) if hasattr(unwrapped, "toolset") else []
        return {"id": env_id, "description": doc[0].strip() if doc else "", "tools": tools}
    finally:
        env.close()
