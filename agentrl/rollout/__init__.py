"""Rollout strategies (ROLLOUTS registry): how trajectories for a batch of tasks are produced."""
from ..registry import Registry
from .chain import ChainCollector
from .template import ChatTokenizer

ROLLOUTS: Registry = Registry("rollout strategy")
ROLLOUTS.register("chain", ChainCollector)
# What each strategy fills in AdvantageInput beyond rewards/groups (checked against estimators' `requires`).
ROLLOUTS_PROVIDE = {"chain": {"turn_rewards", "turn_mask", "action_valid", "anchors"}}

__all__ = ["ROLLOUTS", "ROLLOUTS_PROVIDE", "ChainCollector", "ChatTokenizer"]
