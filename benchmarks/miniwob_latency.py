"""MiniWoB-v0 latency: browser start, reset and step (median / p90, milliseconds) per task, real headless Chromium.

Usage: python benchmarks/miniwob_latency.py [--tasks click-test-2,enter-text,click-checkboxes,login-user]
                                            [--episodes 20] [--screenshots]

Per task: one env (its Chromium starts on the first reset, timed separately as "start"), then --episodes episodes
played by the expert: "reset" times env.reset (load the task page if needed, seed it, read the DOM) and "step"
times env.step of one expert action (parse, run the action in the browser, read the new DOM, render the page
text). "invalid" times a step whose reply does not parse (no browser work). With --screenshots every reset and
step also saves a PNG. Prints a markdown table; numbers depend on the machine and its load.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

import gymnasium
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import agentrl  # noqa: E402,F401
from agentrl.envs.miniwob import find_browser  # noqa: E402


def _ms(xs: list[float]) -> str:
    return f"{1000 * np.median(xs):.1f} / {1000 * np.percentile(xs, 90):.1f}"


def measure(task: str, episodes: int, screenshot_dir: str | None) -> dict:
    env = gymnasium.make("agentrl/MiniWoB-v0", tasks=task, screenshot_dir=screenshot_dir)
    base = env.unwrapped
    t0 = time.perf_counter()
    env.reset(seed=0)
    start = time.perf_counter() - t0
    resets, steps, invalid, successes = [], [], [], 0
    for ep in range(episodes):
        t0 = time.perf_counter()
        env.reset(seed=ep + 1)
        resets.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        env.step("not an action")
        invalid.append(time.perf_counter() - t0)
        done = False
        while not done:
            action = base.expert_action()
            t0 = time.perf_counter()
            _, reward, term, trunc, info = env.step(action)
            steps.append(time.perf_counter() - t0)
            done = term or trunc
        successes += int(info["success"])
    t0 = time.perf_counter()
    env.close()
    close = time.perf_counter() - t0
    return {"task": task, "start": start, "close": close, "reset": resets, "step": steps, "invalid": invalid,
            "success": successes / episodes}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tasks", default="click-test-2,enter-text,click-checkboxes,login-user")
    ap.add_argument("--episodes", type=int, default=20)
    ap.add_argument("--screenshots", action="store_true")
    args = ap.parse_args()
    if find_browser() is None:
        sys.exit("chromium and chromedriver are needed: apt-get install chromium chromium-driver")
    shots = tempfile.mkdtemp(prefix="miniwob-shots-") if args.screenshots else None
    print(f"MiniWoB-v0 latency, {args.episodes} expert episodes per task, screenshots {'on' if shots else 'off'}, "
          f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}")
    print("| task | start (s) | reset ms median / p90 | step ms median / p90 | invalid step ms | close (s) | expert success |")
    print("|---|---|---|---|---|---|---|")
    for task in args.tasks.split(","):
        r = measure(task.strip(), args.episodes, shots)
        print(f"| {r['task']} | {r['start']:.2f} | {_ms(r['reset'])} | {_ms(r['step'])} | {_ms(r['invalid'])} "
              f"| {r['close']:.2f} | {r['success']:.2f} |")


if __name__ == "__main__":
    main()
