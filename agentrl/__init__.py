"""agentrl: multi-turn reinforcement learning for LLM agents."""
__version__ = "0.1.0"

from . import envs as _envs  # registers agentrl/* gymnasium ids
