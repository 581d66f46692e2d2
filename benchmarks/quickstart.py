"""Measure the quickstart: held-out success before RL (after SFT) and after RL, wall time, peak memory.

Usage: python benchmarks/quickstart.py [CONFIG] [a.b=c ...]     (default configs/quickstart.yaml)
Prints a table; never gates CI. Peak memory is the max RSS of the training process (Linux ru_maxrss).
"""
import json
import os
import resource
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def main() -> None:
    args = sys.argv[1:] or ["configs/quickstart.yaml"]
    config, overrides = args[0], args[1:]
    run_dir = f"runs/bench-quickstart-{int(time.time())}"
    cmd = [sys.executable, "-m", "agentrl.cli", "train", config, f"train.run_dir={run_dir}",
           f"model.path={run_dir}/model", "train.progress=false", *overrides]
    t0 = time.time()
    subprocess.run(cmd, cwd=ROOT, check=True, stdout=subprocess.DEVNULL)
    wall = time.time() - t0
    peak_gb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024 ** 2
    with open(os.path.join(ROOT, run_dir, "metrics.jsonl")) as f:
        recs = [json.loads(ln) for ln in f]
    evals = [r for r in recs if "eval/success" in r]
    start, end = evals[0], evals[-1]
    rows = [
        ("held-out success after SFT (step 0)", f"{start['eval/success']:.3f}"),
        (f"held-out success after RL (step {end['train/step']})", f"{end['eval/success']:.3f}"),
        ("gain (points)", f"{100 * (end['eval/success'] - start['eval/success']):+.1f}"),
        ("tool calls / episode before -> after", f"{start['eval/tool_calls']:.2f} -> {end['eval/tool_calls']:.2f}"),
        ("held-out tasks", str(end["eval/n"])),
        ("wall time (s)", f"{wall:.0f}"),
        ("peak RSS (GB)", f"{peak_gb:.2f}"),
        ("run dir", run_dir),
    ]
    width = max(len(k) for k, _ in rows)
    print(f"{'metric':<{width}} | value\n{'-' * width}-|------")
    for k, v in rows:
        print(f"{k:<{width}} | {v}")


if __name__ == "__main__":
    main()
