"""Records passed between the pieces of agentrl (DESIGN.md §3b). Dataclasses only, no I/O.

Shapes: B = sequences in a batch, T = tokens, N = trajectories, K = turns (padded).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Hashable, Optional

import numpy as np
import torch


@dataclass(frozen=True)
class Message:
    """One chat message. role: system | user | assistant | tool."""

    role: str
    content: str
    name: Optional[str] = None  # tool name for role "tool"
    tool_call_id: Optional[str] = None

    def to_dict(self) -> dict:
        d = {"role": self.role, "content": self.content}
        if self.name is not None:
            d["name"] = self.name
        if self.tool_call_id is not None:
            d["tool_call_id"] = self.tool_call_id
        return d


@dataclass(frozen=True)
class Task:
    """One task instance. `options` is what env.reset receives; `answer` is never shown to the policy."""

    id: str
    env_id: str
    options: dict = field(default_factory=dict)
    answer: Any = None
    split: str = "train"
    seed: Optional[int] = None


@dataclass
class Turn:
    """One agent step: the sampled action tokens and the observation tokens the env appended after them."""

    action_ids: list[int]  # sampled tokens (loss_mask 1)
    action_logprobs: list[float]  # sampler logprobs of action_ids
    obs_ids: list[int] = field(default_factory=list)  # env/tool/feedback tokens (loss_mask 0)
    action_text: str = ""
    obs_messages: list[Message] = field(default_factory=list)
    reward: float = 0.0
    terminated: bool = False
    truncated: bool = False
    anchor: Hashable = None  # raw env state the action was taken in (GiGPO)
    action_valid: bool = True
    n_tool_calls: int = 0
    policy_version: int = 0
    top_logprobs: Optional[np.ndarray] = None  # [len(action_ids), k]
    node_id: Optional[int] = None  # tree node (unique within a collect call); trajectories sharing a turn share it


@dataclass
class Trajectory:
    """A whole episode: prompt tokens, then turns. reward None = unscorable (excluded and counted)."""

    id: str
    group_id: str
    task: Task
    prompt_ids: list[int]
    turns: list[Turn] = field(default_factory=list)
    reward: Optional[float] = None
    reward_parts: dict[str, float] = field(default_factory=dict)
    success: bool = False
    tree_id: Optional[str] = None  # the tree (within its group) this trajectory is a leaf of; None for chains

    @property
    def num_turns(self) -> int:
        return len(self.turns)

    def token_ids(self) -> list[int]:
        ids = list(self.prompt_ids)
        for t in self.turns:
            ids += t.action_ids + t.obs_ids
        return ids

    def loss_mask(self) -> list[int]:
        mask = [0] * len(self.prompt_ids)
        for t in self.turns:
            mask += [1] * len(t.action_ids) + [0] * len(t.obs_ids)
        return mask

    def sampler_logprobs(self) -> list[float]:
        """Sampler logprobs aligned with token_ids() (0.0 where loss_mask is 0)."""
        lp = [0.0] * len(self.prompt_ids)
        for t in self.turns:
            lp += list(t.action_logprobs) + [0.0] * len(t.obs_ids)
        return lp

    def turn_index(self) -> list[int]:
        """Per token: the index of the turn whose action it belongs to, -1 for prompt/observation tokens."""
        idx = [-1] * len(self.prompt_ids)
        for k, t in enumerate(self.turns):
            idx += [k] * len(t.action_ids) + [-1] * len(t.obs_ids)
        return idx

    @property
    def n_tool_calls(self) -> int:
        return sum(t.n_tool_calls for t in self.turns)

    @property
    def n_action_tokens(self) -> int:
        return sum(len(t.action_ids) for t in self.turns)


@dataclass
class Node:
    """A tree node: one Turn plus structure (ints, not pointers)."""

    id: int
    turn: Optional[Turn]  # None for the root (prompt only)
    parent: int = -1
    children: list[int] = field(default_factory=list)


@dataclass
class Tree:
    """Rollouts of one task that share prefixes. Tree.id == group_id."""

    id: str
    task: Task
    prompt_ids: list[int]
    nodes: list[Node] = field(default_factory=list)

    def leaves(self) -> list[int]:
        return [n.id for n in self.nodes if not n.children and n.turn is not None]

    def path(self, node_id: int) -> list[int]:
        out = []
        while node_id >= 0 and self.nodes[node_id].turn is not None:
            out.append(node_id)
            node_id = self.nodes[node_id].parent
        return out[::-1]


@dataclass(frozen=True)
class AdvantageInput:
    """What an advantage estimator sees (DESIGN.md §5). Arrays are numpy."""

    rewards: np.ndarray  # [N] outcome score per trajectory
    group_ids: np.ndarray  # [N] same task instance -> same id
    turn_rewards: np.ndarray  # [N, K] per-turn env rewards (0 on padding)
    turn_mask: np.ndarray  # [N, K] 1 for real turns
    action_valid: Optional[np.ndarray] = None  # [N, K] bool
    anchors: Optional[list[list[Hashable]]] = None  # N lists of per-turn anchor keys
    tree_parent: Optional[list[list[int]]] = None  # per group: parent index per node
    # [N, K] int: tree node each turn is (the same node = the same tokens, shared by every trajectory through it);
    # ids are unique within (group, tree); -1 = padding or a turn no other trajectory shares. ARPO hard attribution.
    tree_node: Optional[np.ndarray] = None
    # [N] hashable: the tree (within its group) a trajectory is a leaf of; Tree-GRPO's intra-tree group.
    tree_ids: Optional[np.ndarray] = None


@dataclass(frozen=True)
class Batch:
    """Padded training batch. Advantages are already broadcast onto action tokens."""

    input_ids: torch.Tensor  # [B, T] long
    attention_mask: torch.Tensor  # [B, T] long
    loss_mask: torch.Tensor  # [B, T] float, 1 on sampled action tokens
    old_logprobs: torch.Tensor  # [B, T] float, logprob of input_ids[:, t] (0 off-mask)
    advantages: torch.Tensor  # [B, T] float
    group_ids: torch.Tensor  # [B] long
    rewards: torch.Tensor  # [B] float
    ref_logprobs: Optional[torch.Tensor] = None  # [B, T]
    position_ids: Optional[torch.Tensor] = None  # [B, T]
    behaviour_logprobs: Optional[torch.Tensor] = None  # [B, T] sampler logprobs, set when TIS is on (algos/tis.py)

    @property
    def size(self) -> int:
        return int(self.input_ids.shape[0])

    def select(self, idx) -> "Batch":
        """Rows idx (a slice, list or tensor of indices) as a new Batch."""
        def pick(x):
            return None if x is None else x[idx]
        return Batch(*(pick(getattr(self, f)) for f in self.__dataclass_fields__))
