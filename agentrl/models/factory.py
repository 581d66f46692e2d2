"""Tiny-model factory: locally trained byte-level BPE tokenizer + ChatML-like template + random Qwen2 model."""
from __future__ import annotations

import functools
import os
from dataclasses import dataclass

import torch
from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import (AutoModel, AutoModelForCausalLM, AutoTokenizer, PreTrainedTokenizerFast, Qwen2Config,
                          Qwen2ForCausalLM)

from agentrl.models.corpus import corpus

PAD, BOS_TURN, EOS = "<|endoftext|>", "<|im_start|>", "<|im_end|>"
SPECIAL_TOKENS = [PAD, BOS_TURN, EOS]
MAX_POSITIONS = 2048

# Plain concatenation of per-message renderings: render(messages[:k]) is a prefix of render(messages) and the
# generation prompt is a pure suffix, so multi-turn token contexts only ever grow (DESIGN.md §4).
CHAT_TEMPLATE = (
    "{%- if messages and (tools or messages[0]['role'] == 'system') -%}"
    "{%- if messages[0]['role'] == 'system' -%}"
    "{{- '<|im_start|>system\\n' + messages[0]['content'] -}}"
    "{%- else -%}"
    "{{- '<|im_start|>system\\nYou are a helpful assistant.' -}}"
    "{%- endif -%}"
    "{%- if tools -%}"
    "{{- '\\n\\n# Tools\\nYou may call these tools:\\n' -}}"
    "{%- for tool in tools -%}{{- tool | tojson -}}{{- '\\n' -}}{%- endfor -%}"
    "{%- endif -%}"
    "{{- '<|im_end|>\\n' -}}"
    "{%- endif -%}"
    "{%- for message in messages -%}"
    "{%- if not (loop.first and message['role'] == 'system') -%}"
    "{{- '<|im_start|>' + message['role'] + '\\n' -}}"
    "{{- message['content'] if message['content'] is string else '' -}}"
    "{{- '<|im_end|>\\n' -}}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '<|im_start|>assistant\\n' -}}{%- endif -%}"
)


@dataclass(frozen=True)
class ModelSize:
    """One size preset: tokenizer vocabulary (incl. 256 bytes + specials) and Qwen2 shape."""

    vocab_size: int
    hidden_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    intermediate_size: int
    corpus_lines: int


SIZES: dict[str, ModelSize] = {
    "tiny": ModelSize(512, 128, 4, 4, 2, 384, corpus_lines=4000),
    "small": ModelSize(2048, 256, 6, 8, 4, 1024, corpus_lines=8000),
    # ~100M parameters: throughput checks on a GPU (benchmarks/gpu_check.py); too slow to train on a 2-core CPU
    "base": ModelSize(2048, 768, 12, 12, 4, 3072, corpus_lines=8000),
}


def _preset(size: str) -> ModelSize:
    if size not in SIZES:
        raise ValueError(f"unknown model size {size!r}; choose one of {sorted(SIZES)}")
    return SIZES[size]


@functools.lru_cache(maxsize=8)
def _trained_tokenizer_json(size: str, seed: int) -> str:
    """Train the byte-level BPE once per (size, seed) and cache its serialisation."""
    return train_backend_tokenizer(size, seed).to_str()


def train_backend_tokenizer(size: str = "tiny", seed: int = 0) -> Tokenizer:
    """Train a raw `tokenizers.Tokenizer`: single-digit pre-split, then GPT-2 byte-level; deterministic per seed."""
    preset = _preset(size)
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Digits(individual_digits=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
    ])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=preset.vocab_size,
        special_tokens=[AddedToken(t, special=True, normalized=False) for t in SPECIAL_TOKENS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(corpus(seed, preset.corpus_lines), trainer=trainer)
    return tok


def build_tokenizer(size: str = "tiny", seed: int = 0) -> PreTrainedTokenizerFast:
    """A fresh `PreTrainedTokenizerFast` with the chat template, eos ``<|im_end|>``, pad ``<|endoftext|>``."""
    backend = Tokenizer.from_str(_trained_tokenizer_json(size, seed))
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        eos_token=EOS,
        pad_token=PAD,
        bos_token=None,
        unk_token=None,
        additional_special_tokens=[BOS_TURN],
        padding_side="left",
        model_max_length=MAX_POSITIONS,
        clean_up_tokenization_spaces=False,
        chat_template=CHAT_TEMPLATE,
    )


def build_config(size: str, tokenizer) -> Qwen2Config:
    """Qwen2 config for a preset; vocabulary and special ids come from the tokenizer."""
    p = _preset(size)
    return Qwen2Config(
        vocab_size=len(tokenizer),
        hidden_size=p.hidden_size,
        num_hidden_layers=p.num_hidden_layers,
        num_attention_heads=p.num_attention_heads,
        num_key_value_heads=p.num_key_value_heads,
        intermediate_size=p.intermediate_size,
        max_position_embeddings=MAX_POSITIONS,
        tie_word_embeddings=True,
        bos_token_id=None,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )


def build_model(size: str, tokenizer, seed: int = 0) -> Qwen2ForCausalLM:
    """Randomly initialised Qwen2ForCausalLM (float32, eval mode); the global torch RNG is left untouched."""
    config = build_config(size, tokenizer)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = Qwen2ForCausalLM(config)
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.bos_token_id = None
    return model.eval()


def init_model(size: str, out_dir: str, seed: int = 0) -> str:
    """Build tokenizer + model for ``size`` and save both (safetensors) into ``out_dir``; returns the path."""
    tokenizer = build_tokenizer(size, seed)
    model = build_model(size, tokenizer, seed)
    os.makedirs(out_dir, exist_ok=True)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    return str(out_dir)


def _looks_local(path: str) -> bool:
    """Hub ids are ``name`` or ``org/name``; anything absolute, relative-dotted, ``~`` or deeper is a path."""
    return (os.path.isabs(path) or path.startswith((".", "~")) or path.count("/") > 1
            or os.sep != "/" and os.sep in path)


def _missing(path: str, cause: Exception | None = None) -> FileNotFoundError:
    msg = (f"model path {path!r} does not exist (and is not a loadable hub id). "
           f"Create a tiny local model with: agentrl init-model --size tiny {path}")
    err = FileNotFoundError(msg)
    err.__cause__ = cause
    return err


def _torch_dtype(dtype: str | torch.dtype):
    if isinstance(dtype, torch.dtype) or dtype == "auto":
        return dtype
    value = getattr(torch, str(dtype), None)
    if not isinstance(value, torch.dtype):
        raise ValueError(f"unknown dtype {dtype!r}; use e.g. 'float32', 'bfloat16', 'float16' or 'auto'")
    return value


def load_model(path: str, dtype: str = "float32", device: str = "cpu"):
    """Load any HF causal LM + tokenizer (local dir or hub id); pad falls back to eos, padding on the left."""
    path = os.fspath(path)
    if not os.path.isdir(os.path.expanduser(path)) and _looks_local(path):
        raise _missing(path)
    path = os.path.expanduser(path) if os.path.isdir(os.path.expanduser(path)) else path
    try:
        tokenizer = AutoTokenizer.from_pretrained(path)
        model = AutoModelForCausalLM.from_pretrained(path, dtype=_torch_dtype(dtype))
    except OSError as exc:
        if os.path.isdir(path):
            raise
        raise _missing(path, exc) from exc
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"
    if model.generation_config.pad_token_id is None:
        model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model.to(device).eval(), tokenizer


def load_encoder(path: str):
    """A local encoder (any `transformers.AutoModel` directory, e.g. a sentence-transformers model) + tokenizer,
    in eval mode on the CPU; pad falls back to eos or unk. Never downloads: `path` must be a directory."""
    path = os.path.expanduser(os.fspath(path))
    if not os.path.isdir(path):
        raise ValueError(f"encoder {path!r} is not a local directory (config.json, weights and tokenizer files; "
                         "nothing is downloaded)")
    tokenizer = AutoTokenizer.from_pretrained(path)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token
    return AutoModel.from_pretrained(path).eval(), tokenizer
