"""Chat models the reflector talks to: anything with `chat(messages: list[dict]) -> str`.

- `OpenAIChat`: an OpenAI-compatible `/v1/chat/completions` endpoint (a hosted model, `vllm serve`) through the
  `openai` backend's `OpenAIGenerator.chat` (retries, timeouts, bounded concurrency).
- `HFChat`: a local transformers model with a chat template, greedy or sampled.
- `ScriptedChat`: a Python function (messages -> str); tests and benchmarks.
`make_chat_model(cfg)` builds the one `memory.reflector` names: openai | hf | a registered name | "pkg.mod:attr"
(a factory called with the Config, returning a chat model).
"""
from __future__ import annotations

import threading
from typing import Callable, Optional, Protocol

from ..registry import Registry


class ChatModel(Protocol):
    def chat(self, messages: list[dict]) -> str: ...


CHAT_MODELS: Registry = Registry("reflector chat model")  # name -> factory(cfg) -> ChatModel


class ScriptedChat:
    """Answers with `fn(messages)`; records every call (tests inspect `calls`)."""

    def __init__(self, fn: Callable[[list[dict]], str]):
        self.fn, self.calls = fn, []
        self._lock = threading.Lock()

    def chat(self, messages: list[dict]) -> str:
        with self._lock:
            self.calls.append(list(messages))
        return self.fn(list(messages))


class OpenAIChat:
    """Chat through an `OpenAIGenerator` (or anything with its `chat(messages, **params) -> message dict`)."""

    def __init__(self, generator, temperature: float = 0.0, max_tokens: int = 1024):
        self.gen, self.temperature, self.max_tokens = generator, float(temperature), int(max_tokens)

    def chat(self, messages: list[dict]) -> str:
        msg = self.gen.chat(messages, temperature=self.temperature, max_tokens=self.max_tokens)
        return str(msg.get("content") or "")

    def close(self) -> None:
        getattr(self.gen, "close", lambda: None)()


class HFChat:
    """A local causal LM with a chat template (e.g. a Qwen instruct model on disk). One call at a time."""

    def __init__(self, path: str, temperature: float = 0.0, max_tokens: int = 1024, device: str = "cpu"):
        from ..models import load_model

        self.model, self.tok = load_model(path, device=device)
        self.temperature, self.max_tokens = float(temperature), int(max_tokens)
        self._lock = threading.Lock()

    def chat(self, messages: list[dict]) -> str:
        import torch

        text = self.tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        ids = self.tok(text, return_tensors="pt", add_special_tokens=False)["input_ids"].to(self.model.device)
        kw = {"do_sample": self.temperature > 0, "max_new_tokens": self.max_tokens}
        if self.temperature > 0:
            kw["temperature"] = self.temperature
        with self._lock, torch.no_grad():
            out = self.model.generate(ids, attention_mask=torch.ones_like(ids), **kw)
        return self.tok.decode(out[0, ids.shape[1]:], skip_special_tokens=True)


@CHAT_MODELS.register("openai")
def _openai(cfg) -> OpenAIChat:
    from ..backends.openai import OpenAIGenerator

    m = cfg.memory
    gen = OpenAIGenerator(cfg=cfg, base_url=m.reflector_base_url or cfg.backend.openai_base_url,
                          model_name=m.reflector_model or None, sync="none",
                          concurrency=max(1, m.reflector_workers),
                          api_key=_api_key(m.reflector_api_key_env))
    return OpenAIChat(gen, m.reflector_temperature, m.reflector_max_tokens)


@CHAT_MODELS.register("hf")
def _hf(cfg) -> HFChat:
    m = cfg.memory
    if not m.reflector_path:
        raise ValueError("memory.reflector=hf needs memory.reflector_path (a local chat model directory)")
    from ..trainer import pick_device

    return HFChat(m.reflector_path, m.reflector_temperature, m.reflector_max_tokens, pick_device(cfg.backend.device))


def _api_key(env_name: str) -> Optional[str]:
    import os

    return os.environ.get(env_name) if env_name else None


def make_chat_model(cfg) -> ChatModel:
    """The chat model `cfg.memory.reflector` names (see the module docstring)."""
    return CHAT_MODELS.get(cfg.memory.reflector)(cfg)
