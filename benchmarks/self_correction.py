"""Self-correction benchmark (issue 6): single-turn GRPO against UFO multi-turn GRPO on Math-v0, same token budget.

Usage: python benchmarks/self_correction.py [--seeds 3] [--ufo-steps 20] [--quick] [--out docs/benchmarks.md]

1. One SFT warm start on single-turn expert demos (configs/ufo_math.yaml without the feedback wrapper), shared.
2. For each seed: (b) UFO: `--ufo-steps` GRPO steps with up to 5 turns of "Incorrect. Please think again."
   (configs/ufo_math.yaml as is); its generated tokens set the budget. (a) single-turn GRPO (no wrapper, one turn)
   runs steps until it has generated at least as many tokens (or 10x the UFO steps).
3. Both policies, and the SFT start, are evaluated greedily on the same held-out tasks with 5 turns of feedback
   (agentrl eval --feedback-turns 5): Succ@1, Succ@5, effective-answer ratio, collapse rate.
Prints a markdown table (mean ± std over seeds); --out appends it to that file. --quick: 1 seed, 2 UFO steps, a
small SFT: a smoke test of the pipeline only. Never gates CI.
"""
from __future__ import annotations

import argparse
import copy
import os
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from agentrl.config import load_config  # noqa: E402
from agentrl.eval.harness import run_eval  # noqa: E402
from agentrl.trainer import Trainer  # noqa: E402

CONFIG = "configs/ufo_math.yaml"
EVAL_TURNS = 5
METRICS = ("succ@1", f"succ@{EVAL_TURNS}", "effective_answer_ratio", "collapse_rate", "mean_turns")


def single_turn(cfg):
    cfg = copy.deepcopy(cfg)
    cfg.env.wrappers, cfg.rollout.max_turns = [], 1
    return cfg


def evaluate(cfg, tr: Trainer, n_tasks: int) -> dict:
    return run_eval(cfg, model=tr.model, tokenizer=tr.tokenizer, feedback_turns=EVAL_TURNS, n_tasks=n_tasks,
                    temperature=0.0, seed=0)["metrics"]


def train(cfg, run_dir: str, seed: int, max_steps: int, token_budget: float = float("inf")) -> tuple[Trainer, dict]:
    cfg = copy.deepcopy(cfg)
    cfg.train.run_dir, cfg.train.seed, cfg.sft.enabled = run_dir, seed, False
    cfg.train.progress, cfg.train.plot, cfg.train.save_every = False, False, 0
    tr = Trainer(cfg)
    tokens, step, t0 = 0.0, 0, time.time()
    while step < max_steps and tokens < token_budget:
        step += 1
        tokens += tr.step(step)["rollout/gen_tokens"]
    return tr, {"steps": step, "gen_tokens": tokens, "wall_s": time.time() - t0}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--ufo-steps", type=int, default=20)
    ap.add_argument("--eval-tasks", type=int, default=200)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--sft-model", help="reuse this warm start (made by step 1 with the same config) instead of SFT")
    ap.add_argument("--out", help="append the table to this markdown file")
    args = ap.parse_args()
    os.chdir(ROOT)
    tag = "quick" if args.quick else "full"
    base = f"runs/bench-ufo/{tag}"
    over = [f"model.path={base}/init"]
    if args.quick:
        args.seeds, args.ufo_steps, args.eval_tasks = 1, 2, 16
        over += ["sft.n_demos=64", "sft.epochs=1", "rollout.tasks_per_step=2"]
    ufo_cfg = load_config(CONFIG, over)
    t0 = time.time()

    # 1. shared SFT warm start on single-turn demos
    sft_cfg = single_turn(ufo_cfg)
    sft_cfg.train.run_dir, sft_cfg.train.steps, sft_cfg.train.progress = f"{base}/sft", 0, False
    if args.sft_model:
        sft_cfg.model.path, sft_cfg.model.init = args.sft_model, None
    tr = Trainer(sft_cfg)
    if args.sft_model:
        sft_dir = args.sft_model
    else:
        tr.sft()
        sft_dir = f"{base}/sft/model"
        tr.model.save_pretrained(sft_dir)
        tr.tokenizer.save_pretrained(sft_dir)
    rows = {"SFT start": [evaluate(ufo_cfg, tr, args.eval_tasks)]}
    budgets: dict[str, list[dict]] = {}
    print(f"SFT done ({time.time() - t0:.0f}s): {rows['SFT start'][0]}", file=sys.stderr, flush=True)
    for cfg in (ufo_cfg,):
        cfg.model.path, cfg.model.init = sft_dir, None

    for seed in range(args.seeds):
        tr_b, info_b = train(ufo_cfg, f"{base}/ufo-s{seed}", seed, args.ufo_steps)
        rows.setdefault("(b) UFO multi-turn GRPO", []).append(evaluate(ufo_cfg, tr_b, args.eval_tasks))
        budgets.setdefault("(b) UFO multi-turn GRPO", []).append(info_b)
        tr_a, info_a = train(single_turn(ufo_cfg), f"{base}/single-s{seed}", seed, 10 * args.ufo_steps,
                             info_b["gen_tokens"])
        rows.setdefault("(a) single-turn GRPO", []).append(evaluate(ufo_cfg, tr_a, args.eval_tasks))
        budgets.setdefault("(a) single-turn GRPO", []).append(info_a)
        print(f"seed {seed} done ({time.time() - t0:.0f}s): a {info_a} b {info_b}", file=sys.stderr, flush=True)

    def ms(values) -> str:
        v = np.array(values, dtype=np.float64)
        return f"{np.nanmean(v):.3f} ± {np.nanstd(v):.3f}" if len(v) > 1 else f"{v[0]:.3f}"

    lines = [f"### self-correction: `{CONFIG}`, {args.seeds} seed(s), greedy eval on {args.eval_tasks} held-out "
             f"tasks with {EVAL_TURNS} turns of feedback (whole benchmark {(time.time() - t0) / 60:.1f} min)", "",
             "| policy | RL steps | generated tokens | " + " | ".join(METRICS) + " |",
             "|---|---|---|" + "---|" * len(METRICS)]
    for label in ("SFT start", "(a) single-turn GRPO", "(b) UFO multi-turn GRPO"):
        b = budgets.get(label)
        steps = ms([x["steps"] for x in b]) if b else "0"
        toks = f"{np.mean([x['gen_tokens'] for x in b]):.0f}" if b else "0"
        lines.append(f"| {label} | {steps} | {toks} | " + " | ".join(ms([r[m] for r in rows[label]]) for m in METRICS)
                     + " |")
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        with open(args.out, "a") as f:
            f.write("\n" + text)


if __name__ == "__main__":
    main()
