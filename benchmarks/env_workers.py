"""Env-bound rollout throughput: envs in the trainer process vs in 1 or 2 Ray env workers (rollout.workers), issue 8.

Usage: python benchmarks/env_workers.py [--tasks 16] [--group 4] [--repeats 3] [--threads 8,1]

The Code env (agentrl/Code-v0, every tool call and every grade runs in a fresh bwrap sandbox) driven by a scripted
expert, so generation costs nothing and the env is the whole cost: turn 1 runs the reference solution with the
`python` tool, turn 2 answers it (graded in the sandbox), i.e. 2 sandboxed processes per episode. One collect() of
tasks x group episodes is timed per configuration; each configuration is warmed up with one untimed collect (which
starts its Ray actors) and the configurations alternate over the repeats (the machine may be shared). Rows:
in-process envs (rollout.tool_workers threads), then N workers x T threads per worker (rollout.worker_threads).
Reports episodes/s (median over repeats), the success rate (all must succeed), and the load average. Never gates CI.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def expert_script(tasks, make_env):
    """prompt text -> the expert's next action (tool call with the solution first, then the answer)."""
    env = make_env()
    actions = {}
    for t in tasks:
        env.reset(options={"task": t})
        first = env.unwrapped.expert_action()  # the tool call (expert_uses_tool)
        actions[t.options["prompt"]] = (first, f"<answer>\n{t.options['solution']}\n</answer>")

    def script(prompt: str) -> str:
        for key, (call, answer) in actions.items():
            if key in prompt:
                return answer if "<|im_start|>tool\n" in prompt else call
        raise KeyError("unknown task prompt")
    return script


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tasks", type=int, default=16)
    ap.add_argument("--group", type=int, default=4)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", default="8,1", help="worker_threads values to try for the worker rows")
    args = ap.parse_args()

    import gymnasium

    import agentrl  # noqa: F401
    from agentrl.backends.scripted import ScriptedGenerator
    from agentrl.config import RolloutConfig
    from agentrl.models import init_model, load_model
    from agentrl.rollout.chain import ChainCollector, make_env
    from agentrl.rollout.template import ChatTokenizer
    from agentrl.backends.cluster import init_ray

    env_id, kwargs = "agentrl/Code-v0", {"expert_uses_tool": True}
    import tempfile

    _, tok = load_model(init_model("tiny", tempfile.mkdtemp() + "/tiny", seed=0))
    tasks = gymnasium.make(env_id, **kwargs).unwrapped.make_tasks("train", args.tasks, seed=0)
    script = expert_script(tasks, lambda: make_env(env_id, kwargs, 3))
    init_ray()
    configs = [("in-process", 0, 0)] + [(f"{n} worker{'s' * (n > 1)} x {t} thread{'s' * (t > 1)}", n, t)
                                         for t in (int(x) for x in args.threads.split(",")) for n in (1, 2)]
    collectors = {}
    for name, n, t in configs:
        rc = RolloutConfig(max_turns=3, max_new_tokens=512, max_total_tokens=4096, workers=n,
                           worker_threads=max(1, t), worker_cpus=0.01)
        col = ChainCollector(env_id, kwargs, ScriptedGenerator(tok, script), ChatTokenizer(tok), rc)
        col.collect(tasks, args.group, seed=0)  # warm-up: starts the actors, first sandbox runs
        collectors[name] = col
    rates: dict = {name: [] for name, _, _ in configs}
    success: dict = {name: [] for name, _, _ in configs}
    for r in range(args.repeats):
        for name, _, _ in configs:
            t0 = time.perf_counter()
            trajs = collectors[name].collect(tasks, args.group, seed=r + 1)
            rates[name].append(len(trajs) / (time.perf_counter() - t0))
            success[name].append(sum(t.success for t in trajs) / len(trajs))
    for col in collectors.values():
        col.close()
    base = statistics.median(rates["in-process"])
    print(f"\nCode-v0, {args.tasks} tasks x {args.group} episodes per collect, 2 sandboxed runs per episode, "
          f"{args.repeats} repeats, {os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f}\n")
    print("| envs | episodes/s (median) | min..max | vs in-process | success |")
    print("|---|---|---|---|---|")
    for name, _, _ in configs:
        v = rates[name]
        print(f"| {name} | {statistics.median(v):.2f} | {min(v):.2f}..{max(v):.2f} | "
              f"{statistics.median(v) / base:.2f}x | {statistics.mean(success[name]):.2f} |")


if __name__ == "__main__":
    main()
