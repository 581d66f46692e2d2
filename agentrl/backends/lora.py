"""LoRA adapters through peft, and the policy's weights as a plain model for generators.

* `apply_lora` wraps the learner's causal LM in a peft LoRA model (learner.lora); only adapter weights train.
* `policy_state_dict` gives the weights a generator must sample with: for a LoRA policy the base weights with
  every adapter merged in (W + (alpha / r) B A), under the base model's own keys, computed without touching the
  policy (no merge/unmerge round trip, so the frozen base never drifts by rounding).
* `plain_copy` / `copy_policy_into` keep a separate adapter-free model in step with the policy: what vLLM,
  OpenAI-compatible servers and the async (one-step-off) generator are synced from.
* Checkpoints of a LoRA run hold the adapter (`save_pretrained` of the peft model: adapter_config.json,
  adapter_model.safetensors); the base stays at model.path. `save_merged` writes a full merged model (the trainer
  does so under `merged/` in the final checkpoint) for evaluation and serving.
"""
from __future__ import annotations

import copy
import os
from typing import Any

import torch

INSTALL_HINT = 'learner.lora needs peft: pip install "agentrl[scale]"'


def require_peft() -> None:
    try:
        import peft  # noqa: F401
    except ImportError:
        raise ImportError(INSTALL_HINT) from None


def is_lora(model: Any) -> bool:
    return hasattr(model, "peft_config") and hasattr(model, "get_base_model")


def is_adapter_dir(path: str) -> bool:
    return os.path.exists(os.path.join(path, "adapter_config.json"))


def apply_lora(model: torch.nn.Module, cfg) -> torch.nn.Module:
    """Wrap `model` in a peft LoRA model (cfg: config.LoraConfig); base weights frozen, adapters trainable."""
    require_peft()
    from peft import LoraConfig, get_peft_model

    target = cfg.target_modules
    target = list(target) if isinstance(target, (list, tuple)) else str(target)
    pcfg = LoraConfig(r=int(cfg.r), lora_alpha=float(cfg.alpha), target_modules=target,
                      lora_dropout=float(cfg.dropout), bias="none", task_type="CAUSAL_LM")
    return get_peft_model(model, pcfg)


def load_lora(model: torch.nn.Module, adapter_dir: str) -> torch.nn.Module:
    """The base `model` with the trainable adapter saved in `adapter_dir` (resume)."""
    require_peft()
    from peft import PeftModel

    return PeftModel.from_pretrained(model, adapter_dir, is_trainable=True)


def _deltas(base: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Merged update of every LoRA-wrapped layer, by module name: sum over active adapters of (alpha / r) B A."""
    from peft.tuners.lora import LoraLayer

    out: dict[str, torch.Tensor] = {}
    for name, mod in base.named_modules():
        if not isinstance(mod, LoraLayer) or getattr(mod, "disable_adapters", False):
            continue
        for a in mod.active_adapters:
            if a in mod.lora_A:
                d = mod.get_delta_weight(a)
                out[name] = out[name] + d if name in out else d
    return out


@torch.no_grad()
def policy_state_dict(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The weights a generator samples with: the model's own state_dict, or for a LoRA model the merged weights
    under the base architecture's keys (no lora_* entries, no `.base_layer`)."""
    if not is_lora(model):
        return model.state_dict()
    base = model.get_base_model()
    deltas = _deltas(base)
    out: dict[str, torch.Tensor] = {}
    for key, value in base.state_dict().items():
        if ".lora_" in key:
            continue
        if ".base_layer." in key:
            module, _, leaf = key.partition(".base_layer.")
            if leaf == "weight" and module in deltas:
                value = value + deltas[module].to(value.dtype)
            key = f"{module}.{leaf}"
        out[key] = value.detach()
    return out


def _plain_base(model: torch.nn.Module) -> torch.nn.Module:
    return model.get_base_model() if is_lora(model) else model


@torch.no_grad()
def plain_copy(model: torch.nn.Module, device: Any = None) -> torch.nn.Module:
    """A new adapter-free model of the policy's architecture holding the policy's (merged) weights."""
    base = _plain_base(model)
    if not is_lora(model):
        out = copy.deepcopy(model)
    else:
        ref = next(base.parameters())
        out = type(base)(copy.deepcopy(base.config)).to(device=ref.device, dtype=ref.dtype)
        out.generation_config = copy.deepcopy(base.generation_config)
        out.load_state_dict(policy_state_dict(model))
    if device is not None:
        out = out.to(device)
    for p in out.parameters():
        p.requires_grad_(False)
    return out.eval()


@torch.no_grad()
def copy_policy_into(dst: torch.nn.Module, model: torch.nn.Module) -> None:
    """Overwrite `dst` (a plain_copy) with the policy's current (merged) weights, in place."""
    dst.load_state_dict(policy_state_dict(model))


def save_merged(model: torch.nn.Module, path: str, tokenizer=None) -> str:
    """A full model directory with the adapters merged in (loadable with from_pretrained, servable by vLLM)."""
    plain_copy(model, device="cpu").save_pretrained(path)
    if tokenizer is not None:
        tokenizer.save_pretrained(path)
    return path
