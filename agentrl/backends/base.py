"""Protocols between the loop and the engines: token-in / token-out generation, and weight sync."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional, Protocol, Sequence

import numpy as np

from ..registry import Registry


@dataclass(frozen=True)
class SamplingParams:
    max_new_tokens: int = 48
    temperature: float = 1.0  # 0 = greedy
    top_p: float = 1.0
    stop: tuple[str, ...] = ()  # stop strings; generation also stops at the tokenizer's EOS
    top_k_logprobs: int = 0
    seed: int = 0


@dataclass
class GenRequest:
    prompt_ids: list[int]
    max_new_tokens: Optional[int] = None  # overrides SamplingParams.max_new_tokens for this request
    route_key: str = ""  # requests with one key go to one generator replica (its prefix cache); "" = any


@dataclass
class Completion:
    ids: list[int]  # sampled tokens (EOS included when it was sampled)
    logprobs: list[float]  # logprob of each sampled token under the sampling distribution (logits / T)
    text: str = ""
    finish_reason: str = "length"  # stop | eos | length
    top_logprobs: Optional[np.ndarray] = None  # [len(ids), k]
    extra: dict = field(default_factory=dict)


class Generator(Protocol):
    def generate(self, requests: Sequence[GenRequest], params: SamplingParams) -> list[Completion]: ...

    def sync_weights(self, weights: Any) -> None: ...

    def close(self) -> None: ...


GENERATORS: Registry = Registry("generator backend")
