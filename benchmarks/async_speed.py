"""Steps per minute: synchronous training vs one-step-off async (train.async=one_step_off) on the quickstart config.

Usage: python benchmarks/async_speed.py [--steps N] [--repeats R] [--quick] [a.b=c ...]
Both modes start from the same SFT warm start (a shortened quickstart SFT, built once into a temp dir) and run N
training steps in-process, alternating sync / async R times (the machine may be shared: alternation spreads load
changes over both). Reported: steps/minute over all N steps and over steps 2..N (async generates step 1's batch
without overlap, and its last step has nothing to prefetch), CPU seconds per step of this process (all threads:
on a contended machine more runnable threads also win a larger share of the cores), mean phase times, and the
load average. Eval and
checkpoints are left out of the timing. Prints a table; never gates CI.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

PHASES = ("collect", "update", "old_logprobs", "rollout_wait", "sync")


def warm_start(config: str, overrides: list[str], out: str, quick: bool) -> str:
    from agentrl.config import load_config
    from agentrl.trainer import Trainer

    sft = ["sft.n_demos=300", "sft.epochs=2"] if quick else ["sft.n_demos=1000", "sft.epochs=3"]
    cfg = load_config(config, [*overrides, f"model.path={out}/base", f"train.run_dir={out}/sft", *sft,
                               "train.progress=false", "eval.n_tasks=1"])
    tr = Trainer(cfg)
    tr.sft()
    tr.model.save_pretrained(f"{out}/warm")
    tr.tokenizer.save_pretrained(f"{out}/warm")
    return f"{out}/warm"


def run_mode(config: str, overrides: list[str], model: str, mode: str, steps: int, out: str) -> dict:
    from agentrl.config import load_config
    from agentrl.trainer import Trainer

    cfg = load_config(config, [*overrides, f"model.path={model}", "sft.enabled=false", f"train.steps={steps}",
                               f"train.async={mode}", f"train.run_dir={out}/{mode}-{time.time_ns()}",
                               "train.progress=false", "train.plot=false", "eval.n_tasks=1", "train.save_every=0"])
    tr = Trainer(cfg)
    ends, recs = [], []
    t0, c0 = time.perf_counter(), time.process_time()
    for step in range(1, steps + 1):
        recs.append(tr.step(step))
        ends.append(time.perf_counter())
    if tr.prefetch is not None:
        tr.prefetch.close()
    total, cpu = ends[-1] - t0, time.process_time() - c0
    steady = ends[-1] - ends[0]
    return {"total_spm": 60 * steps / total, "steady_spm": 60 * (steps - 1) / steady if steps > 1 else float("nan"),
            "cpu_per_step": cpu / steps,
            "phases": {p: statistics.mean(r.get(f"perf/time/{p}", 0.0) for r in recs[1:] or recs) for p in PHASES},
            "success": statistics.mean(r["rollout/success"] for r in recs)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default="configs/quickstart.yaml")
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--quick", action="store_true", help="a smaller warm start and batch (smoke test of the script)")
    ap.add_argument("overrides", nargs="*")
    a = ap.parse_args()
    os.chdir(ROOT)
    overrides = list(a.overrides)
    if a.quick:
        overrides = ["rollout.tasks_per_step=4", "rollout.group_size=4", *overrides]
    import torch

    load0 = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="agentrl-async-bench-") as tmp:
        model = warm_start(a.config, overrides, tmp, a.quick)
        res: dict = {"off": [], "one_step_off": []}
        for _ in range(a.repeats):
            for mode in ("off", "one_step_off"):
                res[mode].append(run_mode(a.config, overrides, model, mode, a.steps, tmp))
    load1 = os.getloadavg()
    print(f"config {a.config} {' '.join(overrides)}; {a.steps} steps x {a.repeats} repeats per mode; "
          f"torch threads {torch.get_num_threads()}, {os.cpu_count()} CPUs; load average "
          f"{load0[0]:.1f} before, {load1[0]:.1f} after\n")
    cols = ["mode", "steps/min (all)", "steps/min (2..N)", "CPU s/step", *[f"{p} s" for p in PHASES], "rollout success"]
    print("| " + " | ".join(cols) + " |\n|" + "---|" * len(cols))
    for mode, runs in res.items():
        def ms(xs):
            return f"{statistics.mean(xs):.2f}" + (f" ± {statistics.stdev(xs):.2f}" if len(xs) > 1 else "")
        row = [mode, ms([r["total_spm"] for r in runs]), ms([r["steady_spm"] for r in runs]),
               ms([r["cpu_per_step"] for r in runs]),
               *[ms([r["phases"][p] for r in runs]) for p in PHASES], ms([r["success"] for r in runs])]
        print("| " + " | ".join(row) + " |")
    base = statistics.mean(r["steady_spm"] for r in res["off"])
    fast = statistics.mean(r["steady_spm"] for r in res["one_step_off"])
    print(f"\nspeedup (steps 2..N): {fast / base:.2f}x")


if __name__ == "__main__":
    main()
