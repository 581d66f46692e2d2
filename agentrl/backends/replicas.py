"""R generator replicas behind one Generator: least-loaded routing, sticky per task group, fanned-out weight sync.

Routing (one `generate` call; docs/replicas.md):
  * A request whose `route_key` was routed before goes to the same replica (sticky: the rollouts of one task group,
    and every later turn of them, hit one replica's prefix cache; tree rollouts share long prefixes). The key map is
    an LRU of `sticky_capacity` keys, so it cannot grow without bound.
  * New keys (all requests of one key together) and keyless requests go to the least-loaded replica, largest first.
    Load = token budget in flight: sum of len(prompt_ids) + max_new_tokens over requests routed to a replica and not
    yet answered, across ALL concurrent calls (the async prefetch thread, the main thread's eval, pipelined chunks)
    plus the requests already placed in this call. Ties go to the replica given the fewest tokens so far.
  * The per-replica sub-batches run concurrently (threads); completions come back in request order. The first
    exception raises at once (its replica index is noted on it); the other sub-batches finish in the background and
    release their load; the failed sub-batch's new keys are forgotten, so a retry is routed afresh.
  * Replica r > 0 samples with a seed mixed from (params.seed, r): per-request seeds derive from a request's index
    inside its sub-batch, which restarts at 0 on every replica.

Weight sync fans out to all replicas concurrently; `prepare_sync` turns the weights into what every replica
loads, once (openai: one checkpoint export; Ray: one `ray.put` of the CPU state_dict). Per-replica wall seconds go
into `pop_metrics()`.

Builders: `make_replicas(cfg, model, tokenizer)` -- openai: one OpenAIGenerator per URL; vllm: R Ray actors, each
holding a VLLMGenerator (1 GPU each on CUDA). `import agentrl.backends.replicas` imports neither ray nor vllm.
"""
from __future__ import annotations

import collections
import concurrent.futures as cf
import dataclasses
import threading
import time
from typing import Any, Callable, Optional, Sequence

from .base import Completion, GenRequest, Generator, SamplingParams

SCALE_HINT = 'backend.replicas > 1 with the vllm backend runs the engines as Ray actors: pip install "agentrl[scale]"'
PREFIX = "perf/replica"
_SEED_MOD = 2 ** 31 - 1


def replica_params(params: SamplingParams, r: int) -> SamplingParams:
    """Replica 0 keeps the caller's seed; replica r > 0 gets one mixed from (seed, r)."""
    if r == 0:
        return params
    return dataclasses.replace(params, seed=(int(params.seed) * 1_000_003 + r * 7_919 + 1) % _SEED_MOD)


class ReplicaGenerator:
    """A Generator over `replicas` (each a Generator). Thread-safe: any number of threads may call `generate` at
    once. `model` + `auto_sync`: before generating, sync when `model`'s parameters changed since the last sync
    (or, with auto_sync False, only when nothing was synced yet) -- mirrors the vllm backend's lazy sync."""

    def __init__(self, replicas: Sequence[Generator], *, prepare_sync: Optional[Callable[[Any], Any]] = None,
                 model: Any = None, auto_sync: bool = False, sticky_capacity: int = 65_536,
                 names: Optional[Sequence[str]] = None):
        if not replicas:
            raise ValueError("ReplicaGenerator needs at least one replica")
        self.replicas = list(replicas)
        self.names = list(names) if names is not None else [f"replica {i}" for i in range(len(self.replicas))]
        self.prepare_sync = prepare_sync
        self.model, self.auto_sync = model, bool(auto_sync)
        self.sticky_capacity = max(1, int(sticky_capacity))
        self._sticky: collections.OrderedDict[str, int] = collections.OrderedDict()
        self._lock = threading.Lock()  # routing state and metrics
        self._sync_lock = threading.Lock()  # one fan-out at a time
        self._load = [0] * len(self.replicas)  # token budget in flight per replica
        self._routed = [0] * len(self.replicas)  # tokens ever routed (tie-break)
        self._synced_version: Optional[int] = None
        self._pool = cf.ThreadPoolExecutor(max_workers=2 * len(self.replicas) + 2, thread_name_prefix="agentrl-rep")
        self._closed = False
        self._reset_metrics()

    def __len__(self) -> int:
        return len(self.replicas)

    # ------------------------------------------------------------------ routing
    def _route(self, requests: Sequence[GenRequest], params: SamplingParams) -> tuple[list[int], list[int]]:
        """(replica per request, token cost per request); adds the costs to the in-flight load. Call under _lock."""
        cost = [len(r.prompt_ids) + int(r.max_new_tokens if r.max_new_tokens is not None else params.max_new_tokens)
                for r in requests]
        where = [-1] * len(requests)
        keyed: dict[str, list[int]] = {}
        units: list[tuple[int, str, list[int]]] = []  # (cost, key or "", request indices) still to place
        for i, r in enumerate(requests):
            if r.route_key:
                keyed.setdefault(r.route_key, []).append(i)
            else:
                units.append((cost[i], "", [i]))
        for key, idx in keyed.items():
            rep = self._sticky.get(key)
            if rep is None:
                units.append((sum(cost[i] for i in idx), key, idx))
                continue
            self._sticky.move_to_end(key)
            self._m_sticky += len(idx)
            for i in idx:
                where[i] = rep
            self._load[rep] += sum(cost[i] for i in idx)
        units.sort(key=lambda u: -u[0])  # largest first (stable): a greedy LPT schedule
        n = len(self.replicas)
        for c, key, idx in units:
            rep = min(range(n), key=lambda j: (self._load[j], self._routed[j], j))
            self._load[rep] += c
            self._routed[rep] += c
            for i in idx:
                where[i] = rep
            if key:
                self._sticky[key] = rep
                if len(self._sticky) > self.sticky_capacity:
                    self._sticky.popitem(last=False)
        return where, cost

    # ------------------------------------------------------------------ generation
    def generate(self, requests: Sequence[GenRequest], params: SamplingParams) -> list[Completion]:
        if self._closed:
            raise RuntimeError("ReplicaGenerator is closed")
        requests = list(requests)
        if not requests:
            return []
        self._maybe_sync()
        with self._lock:
            where, cost = self._route(requests, params)
            self._m_calls += 1
            self._m_requests += len(requests)
        parts: dict[int, list[int]] = {}
        for i, rep in enumerate(where):
            parts.setdefault(rep, []).append(i)
        out: list[Optional[Completion]] = [None] * len(requests)
        if len(parts) == 1:  # one replica: no thread hop
            [(rep, idx)] = parts.items()
            self._run_part(rep, idx, requests, cost, params, out)
            return out  # type: ignore[return-value]
        futures = {self._pool.submit(self._run_part, rep, idx, requests, cost, params, out): rep
                   for rep, idx in parts.items()}
        done, _ = cf.wait(futures, return_when=cf.FIRST_EXCEPTION)
        failed = sorted((f for f in done if f.exception() is not None), key=lambda f: futures[f])
        if failed:  # the others finish in the background and release their load themselves
            raise failed[0].exception()  # type: ignore[misc]
        return out  # type: ignore[return-value]

    def _run_part(self, rep: int, idx: list[int], requests: list[GenRequest], cost: list[int],
                  params: SamplingParams, out: list) -> None:
        t0 = time.perf_counter()
        load = sum(cost[i] for i in idx)
        ok = False
        try:
            comps = self.replicas[rep].generate([requests[i] for i in idx], replica_params(params, rep))
            if len(comps) != len(idx):
                raise RuntimeError(f"{self.names[rep]} returned {len(comps)} completions for {len(idx)} requests")
            for i, c in zip(idx, comps):
                out[i] = c
            ok = True
        except BaseException as e:
            if hasattr(e, "add_note"):
                e.add_note(f"(in {self.names[rep]} of {len(self.replicas)}, {len(idx)} requests)")
            raise
        finally:
            with self._lock:
                self._load[rep] -= load
                self._m_req[rep] += len(idx)
                self._m_tok[rep] += load
                self._m_busy[rep] += time.perf_counter() - t0
                if not ok:  # forget this sub-batch's keys: a retry is routed afresh
                    for key in {requests[i].route_key for i in idx if requests[i].route_key}:
                        if self._sticky.get(key) == rep:
                            del self._sticky[key]

    def chat(self, messages: list[dict], tools: Optional[list[dict]] = None, **params) -> dict:
        """The chat path (evaluation, reflection) on the least-loaded replica that has one."""
        able = [j for j, g in enumerate(self.replicas) if hasattr(g, "chat")]
        if not able:
            raise AttributeError("none of the generator replicas has a chat() method (use the openai backend)")
        cost = int(params.get("max_tokens") or 512)
        with self._lock:
            rep = min(able, key=lambda j: (self._load[j], self._routed[j], j))
            self._load[rep] += cost
            self._routed[rep] += cost
        try:
            return self.replicas[rep].chat(messages, tools, **params)
        finally:
            with self._lock:
                self._load[rep] -= cost

    # ------------------------------------------------------------------ weights
    def _maybe_sync(self) -> None:
        if self.model is None or (self._synced_version is not None and not self.auto_sync):
            return
        from .vllm import _weights_version

        with self._sync_lock:
            if self._synced_version is None or _weights_version(self.model) != self._synced_version:
                self._sync(self.model)

    def sync_weights(self, weights: Any) -> None:
        """Prepare `weights` once, then load them into every replica concurrently; per-replica seconds recorded."""
        with self._sync_lock:
            self._sync(weights)

    def _sync(self, weights: Any) -> None:
        version = None
        if weights is not None and weights is self.model:
            from .vllm import _weights_version

            version = _weights_version(weights)
        t0 = time.perf_counter()
        shared = self.prepare_sync(weights) if self.prepare_sync is not None and weights is not None else weights
        prep = time.perf_counter() - t0
        secs = list(self._fan_out(lambda g: g.sync_weights(shared)))
        with self._lock:
            self._m_syncs += 1
            self._m_prep_s += prep
            self._m_sync_s.append(secs)
        if weights is not None and weights is self.model:
            self._synced_version = version

    def _fan_out(self, fn: Callable[[Any], Any]) -> list[float]:
        """fn(replica) on all replicas at once; wall seconds per replica; the first error (by index) raises after
        all have finished (a half-synced set of replicas must not keep generating unnoticed)."""
        def timed(j):
            t0 = time.perf_counter()
            try:
                fn(self.replicas[j])
            except BaseException as e:
                if hasattr(e, "add_note"):
                    e.add_note(f"(in {self.names[j]} of {len(self.replicas)})")
                raise
            return time.perf_counter() - t0

        futures = [self._pool.submit(timed, j) for j in range(len(self.replicas))]
        cf.wait(futures)
        for f in futures:
            if f.exception() is not None:
                raise f.exception()  # type: ignore[misc]
        return [f.result() for f in futures]

    def sleep(self) -> None:
        """vllm on a shared GPU: every replica that can sleeps while the learner updates."""
        self._fan_out(lambda g: getattr(g, "sleep", lambda: None)())

    # ------------------------------------------------------------------ metrics and lifecycle
    def _reset_metrics(self) -> None:
        n = len(self.replicas)
        self._m_req, self._m_tok, self._m_busy = [0] * n, [0] * n, [0.0] * n
        self._m_calls = self._m_requests = self._m_sticky = self._m_syncs = 0
        self._m_prep_s = 0.0
        self._m_sync_s: list[list[float]] = []

    def pop_metrics(self) -> dict:
        """Metrics since the last call (docs/replicas.md#metrics)."""
        with self._lock:
            m: dict = {}
            for j in range(len(self.replicas)):
                m[f"{PREFIX}/{j}/requests"] = float(self._m_req[j])
                m[f"{PREFIX}/{j}/tokens"] = float(self._m_tok[j])
                m[f"{PREFIX}/{j}/busy_s"] = self._m_busy[j]
            if self._m_requests:
                m[f"{PREFIX}/sticky_share"] = self._m_sticky / self._m_requests
                mean = sum(self._m_tok) / len(self._m_tok)
                m[f"{PREFIX}/imbalance"] = max(self._m_tok) / mean if mean else 1.0
            if self._m_syncs:
                flat = [s for secs in self._m_sync_s for s in secs]
                m[f"{PREFIX}/syncs"] = float(self._m_syncs)
                m[f"{PREFIX}/sync_max_s"] = max(flat)
                m[f"{PREFIX}/sync_mean_s"] = sum(flat) / len(flat)
                m[f"{PREFIX}/sync_prepare_s"] = self._m_prep_s
                for j in range(len(self.replicas)):
                    m[f"{PREFIX}/{j}/sync_s"] = sum(secs[j] for secs in self._m_sync_s)
            self._reset_metrics()
        return m

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        errors = []
        for g in self.replicas:
            try:
                g.close()
            except Exception as e:  # noqa: BLE001 -- close every replica, then report
                errors.append(e)
        self._pool.shutdown(wait=False, cancel_futures=True)
        if errors:
            raise errors[0]


# ---------------------------------------------------------------------- Ray actors


class _ReplicaActor:
    """Holds one generator inside a Ray actor process (wrapped with ray.remote in `ray_replicas`)."""

    def __init__(self, factory: Callable[..., Any], kwargs: dict):
        t0 = time.perf_counter()
        self.gen = factory(**kwargs)
        self.start_s = time.perf_counter() - t0

    def generate(self, requests, params):
        return self.gen.generate(requests, params)

    def sync_weights(self, weights):  # an ObjectRef argument arrives resolved: the object store holds it once
        self.gen.sync_weights(weights)

    def sleep(self):
        getattr(self.gen, "sleep", lambda: None)()

    def attr(self, name: str):
        return getattr(self.gen, name, None) if name != "start_s" else self.start_s

    def close(self):
        self.gen.close()


class RayReplica:
    """Client side of one replica actor: the Generator protocol over blocking ray.get calls."""

    def __init__(self, actor):
        self.actor = actor

    def generate(self, requests, params):
        import ray

        return ray.get(self.actor.generate.remote(list(requests), params))

    def sync_weights(self, weights) -> None:
        import ray

        ray.get(self.actor.sync_weights.remote(weights))

    def sleep(self) -> None:
        import ray

        ray.get(self.actor.sleep.remote())

    def attr(self, name: str):
        import ray

        return ray.get(self.actor.attr.remote(name))

    def close(self) -> None:
        import ray

        try:
            ray.get(self.actor.close.remote(), timeout=60)
        finally:
            ray.kill(self.actor)


def import_ray():
    from .cluster import require_ray

    try:
        return require_ray("backend.replicas > 1 with the vllm backend")
    except ImportError as e:
        raise ImportError(SCALE_HINT) from e


def ray_replicas(factory: Callable[..., Any], kwargs_list: Sequence[dict], *, num_gpus: float = 0,
                 num_cpus: float = 1, address: str = "") -> list[RayReplica]:
    """One actor per kwargs in `kwargs_list`, each building `factory(**kwargs)` (an importable callable)."""
    from .cluster import init_ray

    ray = import_ray()
    init_ray(address, min_cpus=num_cpus * len(kwargs_list))
    cls = ray.remote(num_gpus=num_gpus, num_cpus=num_cpus)(_ReplicaActor)
    return [RayReplica(cls.remote(factory, kw)) for kw in kwargs_list]


def ray_put_state(weights: Any) -> Any:
    """`prepare_sync` for Ray replicas: a module's state_dict on CPU, put in the object store once (a checkpoint
    directory passes through: every actor reads it, so it must be on a filesystem they share)."""
    import ray
    import torch

    if isinstance(weights, str):
        return weights
    if isinstance(weights, torch.nn.Module):
        weights = weights.state_dict()
    return ray.put({k: v.detach().to("cpu") for k, v in weights.items()})


# ---------------------------------------------------------------------- config


def replica_urls(cfg) -> list[str]:
    b = cfg.backend
    return list(b.openai_base_urls) if b.openai_base_urls else [b.openai_base_url]


def validate_replicas(cfg) -> None:
    """ConfigError for settings no replica set can run."""
    from ..config import ConfigError

    b = cfg.backend
    r = b.replicas
    if not isinstance(r, int) or isinstance(r, bool) or r < 1:
        raise ConfigError(f"backend.replicas must be an integer >= 1, got {r!r}")
    urls = list(b.openai_base_urls or [])
    if urls and b.generator != "openai":
        raise ConfigError(f"backend.openai_base_urls is for backend.generator=openai (got {b.generator!r})")
    if b.generator == "openai":
        if any(not isinstance(u, str) or not u.strip() for u in urls):
            raise ConfigError(f"backend.openai_base_urls must be a list of URLs, got {urls!r}")
        if len(set(urls)) != len(urls):
            raise ConfigError(f"backend.openai_base_urls lists a server twice: {urls!r}")
        if urls and len(urls) != r:
            raise ConfigError(f"backend.replicas={r} but backend.openai_base_urls holds {len(urls)} URL(s); "
                              "give exactly one server URL per replica")
        if r > 1 and not urls:
            raise ConfigError(f"backend.replicas={r} with the openai backend needs {r} server URLs in "
                              "backend.openai_base_urls (one per replica)")
    elif r > 1 and b.generator == "vllm":
        try:
            import_ray()
        except ImportError:
            raise ConfigError(SCALE_HINT) from None
    elif r > 1:
        raise ConfigError(f"backend.replicas={r} needs backend.generator=vllm (Ray actors) or openai (one server "
                          f"per URL); {b.generator!r} runs one generator in the trainer's process")


def make_replicas(cfg, model, tokenizer) -> Any:
    """The generator for cfg.backend.replicas / openai_base_urls: a ReplicaGenerator, or a plain OpenAIGenerator
    for one URL."""
    validate_replicas(cfg)
    b = cfg.backend
    if b.generator == "openai":
        from . import openai as oa

        urls = replica_urls(cfg)
        gens = [oa.OpenAIGenerator(cfg=cfg, model=model, tokenizer=tokenizer, base_url=u) for u in urls]
        if len(gens) == 1:
            return gens[0]
        first = gens[0]

        def export_once(w):  # one checkpoint on disk, reloaded by every server (openai_sync=reload / endpoint)
            return first._save(w) if first.sync_mode != "none" else w

        return ReplicaGenerator(gens, prepare_sync=export_once, model=model, auto_sync=False, names=urls)
    if b.generator == "vllm":
        import torch

        from .vllm import VLLMGenerator

        gpus = 1 if b.device != "cpu" and torch.cuda.is_available() else 0
        kwargs = [dict(cfg=cfg, seed=int(cfg.train.seed) + j) for j in range(b.replicas)]
        reps = ray_replicas(VLLMGenerator, kwargs, num_gpus=gpus, num_cpus=1, address=cfg.rollout.ray_address)
        return ReplicaGenerator(reps, prepare_sync=ray_put_state, model=model, auto_sync=b.vllm_auto_sync,
                                names=[f"vllm replica {j}" for j in range(b.replicas)])
    raise AssertionError("unreachable: validate_replicas refuses other backends")  # pragma: no cover
