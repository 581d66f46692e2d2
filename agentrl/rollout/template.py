"""Chat template <-> tokens without ever re-tokenizing a conversation (DESIGN.md §4).

A conversation's ids are built incrementally: prompt_ids (system, user, generation prompt), then per turn the
sampled action_ids followed by obs_ids = what the template adds after an assistant reply (its closing suffix, unless
the sampler already produced it) + the rendered observation messages + the next generation prompt. So
context(k+1) == context(k) + action_ids(k) + obs_ids(k) holds by construction; tests check that the decoded ids
equal the template's own rendering of the whole conversation.
"""
from __future__ import annotations

from typing import Sequence

from ..types import Message

_PROBE_USER = {"role": "user", "content": "\x00u"}
_PROBE_REPLY = "\x00a"


def _dicts(messages: Sequence[Message | dict]) -> list[dict]:
    return [m.to_dict() if isinstance(m, Message) else dict(m) for m in messages]


class ChatTokenizer:
    """Wraps a HF tokenizer that has a chat template; works for any template whose rendering of a conversation
    is the concatenation of its messages' renderings (checked at construction)."""

    def __init__(self, tokenizer):
        self.tok = tokenizer
        self.eos_id = tokenizer.eos_token_id
        self.eos_text = tokenizer.eos_token or ""
        base = self.render([_PROBE_USER], add_generation_prompt=True)
        full = self.render([_PROBE_USER, {"role": "assistant", "content": _PROBE_REPLY}])
        if not full.startswith(base + _PROBE_REPLY):
            raise ValueError("chat template does not render an assistant reply verbatim after the generation prompt")
        self.assistant_suffix = full[len(base) + len(_PROBE_REPLY):]  # e.g. "<|im_end|>\n"
        self._probe_conv = [_PROBE_USER, {"role": "assistant", "content": _PROBE_REPLY}]
        self._probe_text = full

    def render(self, messages, tools=None, add_generation_prompt: bool = False) -> str:
        return self.tok.apply_chat_template(
            _dicts(messages), tools=tools or None, tokenize=False, add_generation_prompt=add_generation_prompt
        )

    def encode(self, text: str) -> list[int]:
        return list(self.tok(text, add_special_tokens=False)["input_ids"])

    def decode(self, ids: Sequence[int]) -> str:
        return self.tok.decode(list(ids), skip_special_tokens=False)

    def prompt_ids(self, messages, tools=None) -> list[int]:
        return self.encode(self.render(messages, tools, add_generation_prompt=True))

    def closing_text(self, action_ids: Sequence[int]) -> str:
        """What the template puts after an assistant reply, minus an EOS the sampler already produced."""
        suffix = self.assistant_suffix
        if action_ids and action_ids[-1] == self.eos_id and suffix.startswith(self.eos_text):
            suffix = suffix[len(self.eos_text):]
        return suffix

    def observation_text(self, obs_messages) -> str:
        """Rendered observation messages plus the next generation prompt."""
        full = self.render(self._probe_conv + _dicts(obs_messages), add_generation_prompt=True)
        if not full.startswith(self._probe_text):
            raise ValueError("chat template is not prefix-stable: appending messages changed earlier text")
        return full[len(self._probe_text):]

    def obs_ids(self, action_ids: Sequence[int], obs_messages) -> list[int]:
        return self.encode(self.closing_text(action_ids) + self.observation_text(obs_messages))

    def stop_ids(self) -> list[int]:
        return [self.eos_id] if self.eos_id is not None else []
