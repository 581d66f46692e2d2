"""Sandbox latency (tools/sandbox.py) and HumanEval grading throughput (envs/code.py), issue 5.

Usage: python benchmarks/sandbox_latency.py [--runs 50] [--workers 1,4] [--skip-humaneval]

(a) launch latency: N sequential runs of `print(1)`, bwrap sandbox vs the rlimit-only unsandboxed fallback (the
    same bootstrap and rlimits in a plain subprocess): median and p90 wall time of `Sandbox.run`, which includes
    starting the process tree, Python's start-up, writing the code, and reaping.
(b) HumanEval: all 164 reference solutions (prompt + canonical_solution) graded in the sandbox exactly as Code-v0
    grades an answer (set-up, answer and every split assert in one sandboxed process), with a thread pool of each
    --workers size; reports how many pass and problems checked per second.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
import warnings
from concurrent.futures import ThreadPoolExecutor

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from agentrl.envs.code import grade, humaneval_tasks  # noqa: E402
from agentrl.tools.sandbox import Sandbox, bwrap_available  # noqa: E402


def latency(sandbox: Sandbox, n: int) -> tuple[float, float]:
    """(median, p90) seconds of n sequential `print(1)` runs (after 3 warm-up runs)."""
    for _ in range(3):
        sandbox.run("print(1)")
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        r = sandbox.run("print(1)")
        times.append(time.perf_counter() - t0)
        assert r.ok and r.output == "1\n", r
    times.sort()
    return statistics.median(times), times[min(n - 1, int(0.9 * n))]


def humaneval_rate(sandbox: Sandbox, workers: int) -> tuple[int, int, float]:
    """(passed, total, seconds) grading every reference solution with `workers` threads."""
    tasks = humaneval_tasks()

    def check(t: dict) -> bool:
        g = grade(sandbox, t["solution"], t["tests"], t["setup"])
        return g.passed == g.total

    t0 = time.perf_counter()
    with ThreadPoolExecutor(max_workers=workers) as pool:
        ok = list(pool.map(check, tasks))
    return sum(ok), len(tasks), time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=50)
    ap.add_argument("--workers", default="1,4", help="thread-pool sizes for the HumanEval pass, comma-separated")
    ap.add_argument("--skip-humaneval", action="store_true")
    args = ap.parse_args()
    print(f"cpus: {os.cpu_count()}, load average: {', '.join(f'{x:.2f}' for x in os.getloadavg())}")
    rows = []
    if bwrap_available():
        rows.append(("bwrap sandbox", Sandbox()))
    else:
        print("bwrap not found: only the unsandboxed fallback is measured")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # the fallback's loud warning, expected here
        rows.append(("unsandboxed fallback", Sandbox(bwrap="/nonexistent/bwrap", allow_unsandboxed=True)))
        for name, sandbox in rows:
            med, p90 = latency(sandbox, args.runs)
            print(f"launch latency, {name:22s}: median {med * 1e3:6.1f} ms   p90 {p90 * 1e3:6.1f} ms   (n={args.runs})")
    if args.skip_humaneval or not bwrap_available():
        return
    sandbox = Sandbox(timeout_s=20.0, cpu_s=20)
    for w in (int(x) for x in args.workers.split(",")):
        passed, total, secs = humaneval_rate(sandbox, w)
        print(f"HumanEval reference solutions, sandboxed, {w} worker(s): {passed}/{total} pass, "
              f"{total / secs:.1f} problems/s ({secs:.1f} s)")


if __name__ == "__main__":
    main()
