"""Config validation before anything starts: registry names, env id, backend, estimator requirements, and the
scale-out settings (learner.lora, train.async, learner.strategy, rollout.workers, backend.replicas)."""
from __future__ import annotations

import os

from .algos import ADVANTAGES, KL, REDUCTIONS, SURROGATES
from .backends.base import GENERATORS
from .config import Config, ConfigError
from .rollout import ROLLOUTS, ROLLOUTS_PROVIDE


def validate(cfg: Config) -> None:
    """Fail before the first rollout: registry names, env id, backend, estimator requirements."""
    import gymnasium

    from . import envs  # noqa: F401  (registers agentrl/* ids)

    for reg, name in [(ADVANTAGES, cfg.algo.advantage), (SURROGATES, cfg.algo.surrogate),
                      (REDUCTIONS, cfg.algo.reduce), (KL, cfg.algo.kl_type), (ROLLOUTS, cfg.rollout.strategy)]:
        try:
            reg.get(name)
        except KeyError as e:
            raise ConfigError(str(e).strip('"')) from None
    if cfg.env.id not in gymnasium.registry:
        from .registry import did_you_mean

        known = sorted(i for i in gymnasium.registry if i.startswith("agentrl/"))
        raise ConfigError(f"unknown env id {cfg.env.id!r}; registered: {', '.join(known)}."
                          + did_you_mean(cfg.env.id, known))
    if cfg.backend.generator not in ("hf",) and cfg.backend.generator not in GENERATORS:
        _import_backend(cfg.backend.generator)
    if cfg.backend.generator not in ("hf",) and cfg.backend.generator not in GENERATORS:
        raise ConfigError(f"unknown generator backend {cfg.backend.generator!r}; known: hf, "
                          + ", ".join(GENERATORS.names()))
    need = set(getattr(ADVANTAGES.get(cfg.algo.advantage), "requires", ()))
    missing = need - ROLLOUTS_PROVIDE.get(cfg.rollout.strategy, set())
    if missing:
        raise ConfigError(f"advantage {cfg.algo.advantage!r} needs {sorted(missing)}, which rollout strategy "
                          f"{cfg.rollout.strategy!r} does not provide")
    if cfg.algo.kl_in not in ("loss", "reward"):
        raise ConfigError(f"algo.kl_in must be 'loss' or 'reward', got {cfg.algo.kl_in!r}")
    if cfg.algo.old_logprobs not in ("learner", "sampler"):
        raise ConfigError(f"algo.old_logprobs must be 'learner' or 'sampler', got {cfg.algo.old_logprobs!r}")
    if not 0.0 < cfg.algo.std_filter_ratio <= 1.0:
        raise ConfigError(f"algo.std_filter_ratio must be in (0, 1], got {cfg.algo.std_filter_ratio!r}")
    from . import memory  # noqa: F401  (registers the "lessons" wrapper)
    from .env.feedback import WRAPPERS

    for i, w in enumerate(cfg.env.wrappers):
        if not isinstance(w, dict) or not isinstance(w.get("name"), str):
            raise ConfigError(f"env.wrappers[{i}] must be a mapping with a 'name' (e.g. {{name: unary_feedback}}), "
                              f"got {w!r}")
        try:
            WRAPPERS.get(w["name"])
        except KeyError as e:
            raise ConfigError(str(e).strip('"')) from None
    _validate_scale(cfg)
    from .rollout.workers import validate_workers

    validate_workers(cfg)
    if cfg.backend.replicas != 1 or cfg.backend.openai_base_urls:
        from .backends.replicas import validate_replicas

        validate_replicas(cfg)
    for name in ("corrupt_share", "warmup_ratio", "min_lr_ratio"):
        if not 0.0 <= getattr(cfg.sft, name) <= 1.0:
            raise ConfigError(f"sft.{name} must be in [0, 1], got {getattr(cfg.sft, name)!r}")


def async_mode(cfg: Config) -> str:
    """train.async normalised ("off" also arrives as YAML's false)."""
    mode = str(cfg.train.async_mode)
    return "off" if mode.lower() in ("off", "false", "none", "0", "") else mode


def _validate_scale(cfg: Config) -> None:
    """learner.lora and train.async (issue 8)."""
    if async_mode(cfg) not in ("off", "one_step_off"):
        raise ConfigError(f"train.async must be 'off' or 'one_step_off', got {cfg.train.async_mode!r}")
    if cfg.train.max_staleness < 0:
        raise ConfigError(f"train.max_staleness must be >= 0, got {cfg.train.max_staleness}")
    if async_mode(cfg) != "off" and cfg.algo.old_logprobs != "learner":
        raise ConfigError("train.async needs algo.old_logprobs=learner: the sampler's logprobs are from an older "
                          "policy, so the learner recomputes pi_old and TIS corrects for the difference")
    lora = cfg.learner.lora
    _validate_strategy(cfg)
    if lora.r < 0 or (lora.r > 0 and lora.alpha <= 0) or not 0.0 <= lora.dropout < 1.0:
        raise ConfigError(f"learner.lora needs r >= 0, alpha > 0 and dropout in [0, 1), got {lora}")
    if lora.r > 0:
        from .backends.lora import INSTALL_HINT, require_peft

        try:
            require_peft()
        except ImportError:
            raise ConfigError(INSTALL_HINT) from None


def _validate_strategy(cfg: Config) -> None:
    """learner.strategy: fsdp runs under torchrun (backends/fsdp.py)."""
    strategy = cfg.learner.strategy
    if strategy not in ("single", "fsdp"):
        raise ConfigError(f"unknown learner.strategy {strategy!r}; known: single, fsdp")
    if strategy == "fsdp" and "WORLD_SIZE" not in os.environ:
        raise ConfigError("learner.strategy=fsdp runs one process per device under torch.distributed: launch with "
                          "`torchrun --nproc_per_node N -m agentrl train CONFIG learner.strategy=fsdp ...` "
                          "(N = 1 works too)")
    if strategy == "fsdp" and cfg.learner.lora.r > 0:
        raise ConfigError("learner.lora is not supported with learner.strategy=fsdp yet: use learner.strategy=single "
                          "(LoRA already keeps the trainable state small)")


def tis_on(cfg: Config) -> bool:
    """TIS weights in the loss: algo.tis_cap > 0, or (tis_cap unset) under train.async."""
    cap = cfg.algo.tis_cap
    return (async_mode(cfg) != "off") if cap is None else cap > 0


def _import_backend(name: str) -> None:
    """Built-in backends register on import (agentrl.backends.<name>); their heavy deps load only when built."""
    import importlib

    if name in ("scripted", "vllm", "openai"):
        importlib.import_module(f"agentrl.backends.{name}")
