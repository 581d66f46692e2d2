"""Generator replicas (backend.replicas): the router's own overhead, and generate throughput with 1 vs R replicas.

Usage:
  python benchmarks/replicas.py                                  # router overhead + simulated replicas (any CPU)
  python benchmarks/replicas.py --urls http://h0:8000/v1 http://h1:8000/v1 [--groups 32 --group-size 8 ...]
  python benchmarks/replicas.py --vllm 4 --model runs/model      # R vLLM engines as Ray actors (GPU box)

1. Router overhead: ReplicaGenerator over instant in-process replicas (they return canned completions) against
   calling one such replica directly; microseconds per call and per request, R = 1, 2, 4, 8, from one thread and
   from two threads at once (the async prefetch thread + eval). This is the cost the router adds to every call.
2. Simulated replicas: each replica takes `--sim-ms` per call plus `--sim-us-per-token` per routed token
   (prompt + max_new_tokens) and serves one call at a time (like one engine): throughput 1 vs R shows the
   sub-batches really run concurrently.
3. Real replicas (`--urls` for OpenAI-compatible servers, `--vllm R --model DIR` for vLLM engines in Ray actors,
   one GPU each): sampled tokens/s for one replica vs all R on `--groups` task groups of `--group-size` samples,
   turn 1 (new prompts) and turn 2 (each prompt extended: the sticky replica's prefix cache holds turn 1),
   with sticky routing and with route keys dropped (least-loaded only) for comparison.
Prints markdown tables; never gates CI.
"""
from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from agentrl.backends.base import Completion, GenRequest, SamplingParams  # noqa: E402
from agentrl.backends.replicas import ReplicaGenerator  # noqa: E402


class Instant:
    """A replica that answers at once with a canned completion."""

    def __init__(self):
        self.c = Completion(ids=[1, 2, 3], logprobs=[-0.1, -0.2, -0.3], text="abc", finish_reason="eos")

    def generate(self, requests, params):
        return [self.c] * len(requests)

    def sync_weights(self, weights):
        pass

    def close(self):
        pass


class Simulated(Instant):
    """One call at a time (an engine), taking fixed + per-token time."""

    def __init__(self, ms: float, us_per_token: float):
        super().__init__()
        self.ms, self.us = ms, us_per_token
        self.lock = threading.Lock()

    def generate(self, requests, params):
        tokens = sum(len(r.prompt_ids) + params.max_new_tokens for r in requests)
        with self.lock:
            time.sleep(self.ms / 1e3 + tokens * self.us / 1e6)
        return super().generate(requests, params)


def requests_for(groups: int, group_size: int, prompt_len: int, vocab: int, seed: int, key: bool = True,
                 extend: int = 0) -> list[GenRequest]:
    rng = random.Random(seed)
    out = []
    for g in range(groups):
        grng = random.Random(seed * 7919 + g)
        prompt = [grng.randrange(10, vocab) for _ in range(prompt_len)]
        for j in range(group_size):
            tail = [rng.randrange(10, vocab) for _ in range(extend)]  # turn 2: the sample's own continuation
            out.append(GenRequest(prompt + tail, route_key=f"g{g}" if key else ""))
    return out


def time_calls(fn, n: int, threads: int = 1) -> float:
    """Seconds per call of fn() over n calls in each of `threads` threads (wall / calls per thread)."""
    def loop():
        for _ in range(n):
            fn()

    ts = [threading.Thread(target=loop) for _ in range(threads)]
    t0 = time.perf_counter()
    [t.start() for t in ts]
    [t.join() for t in ts]
    return (time.perf_counter() - t0) / n


def overhead(args) -> None:
    params = SamplingParams(max_new_tokens=64)
    print(f"## Router overhead (instant replicas; {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f})\n")
    print("| requests / call (groups x size) | replicas | threads | direct us/call | router us/call "
          "| router overhead us/request |\n|---|---|---|---|---|---|")
    for groups, size in ((1, 8), (8, 8), (64, 8)):
        reqs = requests_for(groups, size, 256, 32_000, seed=0)
        for r in (1, 2, 4, 8):
            for threads in (1, 2):
                one = Instant()
                n = max(20, args.calls // max(1, groups))
                direct = min(time_calls(lambda: one.generate(reqs, params), n, threads) for _ in range(3))
                gen = ReplicaGenerator([Instant() for _ in range(r)])
                gen.generate(reqs, params)  # keys are sticky from here on (the steady state of a multi-turn run)
                routed = min(time_calls(lambda: gen.generate(reqs, params), n, threads) for _ in range(3))
                gen.close()
                print(f"| {len(reqs)} ({groups} x {size}) | {r} | {threads} | {direct * 1e6:.0f} | "
                      f"{routed * 1e6:.0f} | {(routed - direct) * 1e6 / len(reqs):.1f} |")
    # new keys every call (turn 1 of every step): routing by load, LRU insertions
    print("\n| new keys every call: requests / call | replicas | router us/call | us/request |\n|---|---|---|---|")
    for groups, size in ((8, 8), (64, 8)):
        for r in (2, 8):
            batches = [requests_for(groups, size, 256, 32_000, seed=s) for s in range(40)]
            dt = float("inf")
            for rep in range(3):  # best of 3 (fresh keys each time)
                for s, b in enumerate(batches):
                    for q in b:
                        q.route_key = f"{rep}-{s}-{q.route_key.split('-')[-1]}"
                gen = ReplicaGenerator([Instant() for _ in range(r)])
                t0 = time.perf_counter()
                for b in batches:
                    gen.generate(b, params)
                dt = min(dt, (time.perf_counter() - t0) / len(batches))
                gen.close()
            print(f"| {groups * size} | {r} | {dt * 1e6:.0f} | {dt * 1e6 / (groups * size):.1f} |")


def simulated(args) -> None:
    params = SamplingParams(max_new_tokens=64)
    reqs = requests_for(args.groups, args.group_size, 128, 32_000, seed=1)
    print(f"\n## Simulated replicas ({args.sim_ms:g} ms + {args.sim_us_per_token:g} us/token per call, one call "
          f"at a time per replica; {len(reqs)} requests per call)\n")
    print("| replicas | s/call | speedup vs 1 |\n|---|---|---|")
    base = None
    for r in (1, 2, 4):
        gen = ReplicaGenerator([Simulated(args.sim_ms, args.sim_us_per_token) for _ in range(r)])
        dt = min(time_calls(lambda: gen.generate(reqs, params), 3) for _ in range(2))
        gen.close()
        base = base or dt
        print(f"| {r} | {dt:.3f} | {base / dt:.2f}x |")


def real(args, build, label: str, vocab: int) -> None:
    params = SamplingParams(max_new_tokens=args.max_new_tokens, temperature=1.0, seed=0)
    print(f"\n## {label}: {args.groups} groups x {args.group_size} samples, prompt {args.prompt_len} tokens "
          f"(+{args.extend} in turn 2), {args.max_new_tokens} new tokens\n")
    print("| replicas | routing | turn 1 tokens/s | turn 2 tokens/s | imbalance | sync max s |\n"
          "|---|---|---|---|---|---|")
    gens: dict = {}  # one build per replica count (engines start once); fresh prompts per row (cold caches)
    try:
        for row, (r, sticky) in enumerate(args.plan):
            if r not in gens:
                gens[r] = build(r)
                gens[r].generate(requests_for(2, 2, 16, vocab, seed=10_000), params)  # warm-up: lazy sync, compile
            gen = gens[r]
            gen.pop_metrics()
            rates = []
            for turn, extend in ((1, 0), (2, args.extend)):
                reqs = requests_for(args.groups, args.group_size, args.prompt_len, vocab, seed=args.seed + row,
                                    key=sticky, extend=extend)
                t0 = time.perf_counter()
                out = gen.generate(reqs, params)
                rates.append(sum(len(c.ids) for c in out) / (time.perf_counter() - t0))
            m = gen.pop_metrics()
            sync = ""
            if args.sync_model:
                if "model" not in gens:
                    from agentrl.models import load_model

                    gens["model"] = load_model(args.sync_model)[0]
                gen.sync_weights(gens["model"])
                sync = f"{gen.pop_metrics()['perf/replica/sync_max_s']:.2f}"
            print(f"| {r} | {'sticky' if sticky else 'least-loaded'} | {rates[0]:.0f} | {rates[1]:.0f} | "
                  f"{m.get('perf/replica/imbalance', float('nan')):.2f} | {sync} |")
    finally:
        for r, gen in gens.items():
            if r != "model":
                gen.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--calls", type=int, default=400, help="calls per overhead measurement (scaled by batch)")
    ap.add_argument("--sim-ms", type=float, default=20.0)
    ap.add_argument("--sim-us-per-token", type=float, default=5.0)
    ap.add_argument("--urls", nargs="*", default=[], help="OpenAI-compatible servers (one per replica)")
    ap.add_argument("--vllm", type=int, default=0, help="R vLLM engines as Ray actors (needs --model)")
    ap.add_argument("--model", default="", help="model directory for --vllm (and its vocabulary size)")
    ap.add_argument("--sync-model", default="", help="also time one weight sync from this model directory")
    ap.add_argument("--groups", type=int, default=32)
    ap.add_argument("--group-size", type=int, default=8)
    ap.add_argument("--prompt-len", type=int, default=512)
    ap.add_argument("--extend", type=int, default=64)
    ap.add_argument("--max-new-tokens", type=int, default=128)
    ap.add_argument("--vocab", type=int, default=0, help="prompt token ids are drawn below this (0 = the model's)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--skip-overhead", action="store_true")
    a = ap.parse_args()
    if not a.skip_overhead:
        overhead(a)
        simulated(a)
    n = len(a.urls) or a.vllm
    if not n:
        return
    a.plan = [(1, True), (n, True), (n, False)]
    vocab = a.vocab
    if not vocab and a.model:
        from transformers import AutoConfig

        vocab = AutoConfig.from_pretrained(a.model).get_text_config().vocab_size
    vocab = vocab or 1000
    if a.urls:
        from agentrl.backends.openai import OpenAIGenerator

        def build(r):
            return ReplicaGenerator([OpenAIGenerator(base_url=u, sync="none", concurrency=256) for u in a.urls[:r]])

        real(a, build, f"OpenAI-compatible servers ({len(a.urls)})", vocab)
    else:
        from agentrl.backends.replicas import ray_put_state, ray_replicas
        from agentrl.backends.vllm import VLLMGenerator

        def build(r):
            import torch

            gpus = 1 if torch.cuda.is_available() else 0
            reps = ray_replicas(VLLMGenerator, [dict(path=a.model, seed=j) for j in range(r)], num_gpus=gpus)
            return ReplicaGenerator(reps, prepare_sync=ray_put_state)

        real(a, build, f"vLLM engines in Ray actors (up to {a.vllm})", vocab)


if __name__ == "__main__":
    main()
