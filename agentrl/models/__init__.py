"""Tiny-model factory: a locally trained byte-level BPE tokenizer with a ChatML-like chat template and a
randomly initialised Qwen2-architecture causal LM ("tiny" ~1M, "small" ~6M parameters); plus `load_model` for
any Hugging Face causal LM. Nothing here downloads anything unless given a hub id."""
from agentrl.models.factory import (
    CHAT_TEMPLATE,
    SIZES,
    ModelSize,
    build_config,
    build_model,
    build_tokenizer,
    init_model,
    load_encoder,
    load_model,
)

__all__ = [
    "CHAT_TEMPLATE", "SIZES", "ModelSize", "build_config", "build_model", "build_tokenizer", "init_model",
    "load_encoder", "load_model",
]
