"""Env step throughput of every registered agentrl/ environment, driven by its expert, one env in one process.

Usage: python benchmarks/env_step.py [--seconds 3] [--max-episodes 2000] [--timeout 180] [--only ID ...]
                                     [--kwargs '{"agentrl/SearchQA-v0": {"hops": 1}}']

For each id in `agentrl.envs.registered_ids()` (so envs added later are picked up), a child process builds the env
with `gymnasium.make(id, **kwargs)` (its module imported beforehand), times make + the first reset ("startup":
index builds, browser launches), then runs expert episodes (reset(seed=i), then `expert_action()` / `step()` until
the episode ends) for about `--seconds` (at least one episode, at most `--max-episodes`). Reported per env:
- reset: mean reset() latency after the first one, ms;
- step: mean step() latency (the env's own work: parsing, tools, scoring), ms; steps/s = 1000 / step;
- episodes/s: expert episodes per second of wall time, resets and expert_action() included;
- steps/ep and success: mean steps per expert episode and the expert's success rate (a sanity check).
An env that cannot start here (a missing browser or sandbox binary, a crash, a hang past --timeout) gets a
"skipped" row with the reason. Prints a markdown table (and the machine's load average, since other work on the
machine slows every figure).
"""
from __future__ import annotations

import argparse
import importlib
import json
import os
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

COLUMNS = ("env", "status", "startup (s)", "reset (ms)", "step (ms)", "steps/s", "episodes/s", "steps/ep",
           "success", "episodes")


def measure(env_id: str, kwargs: dict, seconds: float, max_episodes: int) -> dict:
    """Run expert episodes of one env in this process; returns the row's numbers (or raises)."""
    import gymnasium

    import agentrl.envs  # noqa: F401  (registers the ids)

    entry = gymnasium.spec(env_id).entry_point
    if isinstance(entry, str):  # import the env's module first: startup is construction + first reset only
        importlib.import_module(entry.split(":")[0])
    t0 = time.perf_counter()
    env = gymnasium.make(env_id, **kwargs)
    try:
        base = env.unwrapped
        env.reset(seed=0)
        startup = time.perf_counter() - t0
        if not hasattr(base, "expert_action"):
            raise RuntimeError("the env has no expert_action()")
        resets, steps, episodes, successes, n_steps = 0.0, 0.0, 0, 0, 0
        start = time.perf_counter()
        while episodes < max_episodes and (episodes == 0 or time.perf_counter() - start < seconds):
            t = time.perf_counter()
            env.reset(seed=episodes + 1)
            resets += time.perf_counter() - t
            done, info = False, {}
            while not done:
                action = base.expert_action()
                t = time.perf_counter()
                _, _, term, trunc, info = env.step(action)
                steps += time.perf_counter() - t
                n_steps += 1
                done = term or trunc
            episodes += 1
            successes += bool(info.get("success"))
        wall = time.perf_counter() - start
    finally:
        env.close()
    return {"startup_s": startup, "reset_ms": 1e3 * resets / episodes, "step_ms": 1e3 * steps / max(n_steps, 1),
            "steps_per_s": n_steps / steps if steps else float("inf"), "episodes_per_s": episodes / wall,
            "steps_per_episode": n_steps / episodes, "success": successes / episodes, "episodes": episodes}


def run_child(env_id: str, args) -> dict:
    """Measure one env in a child process, so a crash or a hang costs only its row."""
    cmd = [sys.executable, os.path.abspath(__file__), "--child", env_id, "--seconds", str(args.seconds),
           "--max-episodes", str(args.max_episodes), "--kwargs", json.dumps(args.kwargs)]
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout,
                           env={**os.environ, "HF_HUB_OFFLINE": "1"})
    except subprocess.TimeoutExpired:
        return {"status": f"skipped: no result within {args.timeout:g} s"}
    lines = [ln for ln in r.stdout.splitlines() if ln.startswith("{")]
    if r.returncode == 0 and lines:
        return json.loads(lines[-1])
    tail = [ln.strip() for ln in r.stderr.splitlines() if ln.strip()]
    return {"status": f"skipped: {(tail[-1] if tail else f'exit code {r.returncode}')[:160]}"}


def child(env_id: str, args) -> int:
    try:
        row = measure(env_id, args.kwargs.get(env_id, {}), args.seconds, args.max_episodes)
    except Exception as e:  # noqa: BLE001 - reported as the row's reason
        msg = " ".join(str(e).split()) or type(e).__name__
        row = {"status": f"skipped: {type(e).__name__}: {msg}"[:200]}
    print(json.dumps({"status": "ok", **row} if "status" not in row else row))
    return 0


def fmt_row(env_id: str, row: dict) -> str:
    if row.get("status") != "ok":
        cells = [env_id, row.get("status", "skipped").replace("|", "/")] + ["-"] * (len(COLUMNS) - 2)
    else:
        cells = [env_id, "ok", f"{row['startup_s']:.2f}", f"{row['reset_ms']:.2f}", f"{row['step_ms']:.3f}",
                 f"{row['steps_per_s']:,.0f}", f"{row['episodes_per_s']:,.1f}", f"{row['steps_per_episode']:.2f}",
                 f"{row['success']:.2f}", str(row["episodes"])]
    return "| " + " | ".join(cells) + " |"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seconds", type=float, default=3.0, help="time budget of expert episodes per env")
    p.add_argument("--max-episodes", type=int, default=2000)
    p.add_argument("--timeout", type=float, default=180.0, help="per-env limit (startup included), seconds")
    p.add_argument("--only", nargs="*", default=None, help="measure only these ids")
    p.add_argument("--kwargs", type=json.loads, default={}, help='JSON {"env id": {kwarg: value}}')
    p.add_argument("--child", metavar="ID", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        return child(args.child, args)

    from agentrl.envs import registered_ids

    ids = [i for i in registered_ids() if args.only is None or i in args.only]
    load = os.getloadavg() if hasattr(os, "getloadavg") else (float("nan"),) * 3
    print(f"env step throughput: expert episodes, one env per process, {args.seconds:g} s per env; "
          f"{os.cpu_count()} CPUs, load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f} at start\n")
    print("| " + " | ".join(COLUMNS) + " |")
    print("|" + "---|" * len(COLUMNS))
    for env_id in ids:
        print(fmt_row(env_id, run_child(env_id, args)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
