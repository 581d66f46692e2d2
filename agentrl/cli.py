"""agentrl train | sft | eval | reflect | distill | envs | check-env | init-model | print-config"""
from __future__ import annotations

import argparse
import json
import os
import sys


def _config(args):
    from .config import load_config

    config, overrides = args.config, list(args.overrides)
    if config and "=" in config and not os.path.exists(config):  # no config file, only a.b=c overrides
        config, overrides = None, [config] + overrides
    return load_config(config, overrides)


def cmd_print_config(args) -> int:
    from .config import dump_config

    print(dump_config(_config(args)), end="")
    return 0


def cmd_train(args) -> int:
    from .trainer import Trainer

    cfg = _config(args)
    if args.resume:
        cfg.train.run_dir = args.resume
    if cfg.learner.strategy == "fsdp":  # one process per rank under torchrun; rank 0 runs the loop
        from .backends.fsdp import train

        final = train(cfg, resume=bool(args.resume))
        if final is None:  # a worker rank
            return 0
    else:
        trainer = Trainer(cfg, resume=bool(args.resume))
        try:
            final = trainer.run()
        finally:
            trainer.close()
    print(json.dumps({"run_dir": cfg.train.run_dir, **final}, indent=1))
    return 0


def cmd_sft(args) -> int:
    """SFT only: warm-start from expert demos, save the model to RUN_DIR/sft and evaluate it."""
    from .trainer import Trainer

    cfg = _config(args)
    cfg.sft.enabled = True
    cfg.train.steps = 0
    cfg.train.plot = False
    tr = Trainer(cfg)
    tr.sft()
    out = os.path.join(cfg.train.run_dir, "sft")
    tr.model.save_pretrained(out)
    tr.tokenizer.save_pretrained(out)
    m = tr.log_eval(0)
    print(json.dumps({"model": out, **m}, indent=1))
    return 0


def cmd_eval(args) -> int:
    """Evaluate a policy on held-out tasks (agentrl/eval/harness.py), or compare two stored evaluations."""
    from .eval.harness import compare, markdown_table, run_eval

    if args.compare:
        print(compare(args.compare[0], args.compare[1], n_boot=args.n_boot, seed=args.seed), end="")
        return 0
    cfg = _config(args)
    ks = [int(k) for k in args.k.split(",")] if args.k else [1]
    res = run_eval(cfg, model_path=args.model, feedback_turns=args.feedback_turns, samples=args.samples,
                   n_tasks=args.n_tasks, temperature=args.temperature, seed=args.seed, ks=ks, out_dir=args.out)
    print(markdown_table(res), end="")
    if args.out:
        print(f"wrote {args.out}/results.json, results.md, succ_at_turn.png")
    return 0


def cmd_reflect(args) -> int:
    """Training-free GRPO: epochs of G rollouts per task with the current lessons, reflector updates of the lesson
    library, then held-out evaluation without and with lessons (docs/memory.md)."""
    from .memory.modes import run_reflect

    cfg = _config(args)
    res = run_reflect(cfg, progress=_reflect_progress if args.verbose else None)
    print(res["markdown"], end="")
    print(f"library: {res['db']} ({len(res['lessons'])} lessons); results: {cfg.train.run_dir}/reflect/")
    return 0


def _reflect_progress(rec: dict) -> None:
    print(json.dumps(rec), file=sys.stderr)


def cmd_distill(args) -> int:
    """SFT the policy on successful lesson-guided trajectories with the lessons removed from the prompt, then
    evaluate without lessons (docs/memory.md)."""
    from .memory.modes import run_distill

    res = run_distill(_config(args))
    print(res["markdown"], end="")
    print(f"distilled model: {res['model']}")
    return 0


def cmd_envs(args) -> int:
    from .envs import describe, registered_ids

    for env_id in registered_ids():
        d = describe(env_id)
        tools = ", ".join(d.get("tools", [])) or "-"
        print(f"{env_id:28s} {d.get('description', '')}\n{'':28s} tools: {tools}")
    return 0


def cmd_check_env(args) -> int:
    from .env.checker import check_env

    report = check_env(args.env_id, n_random=args.n_random, seed=args.seed)
    print(json.dumps(report, indent=1, default=str))
    print(f"{args.env_id}: all checks passed")
    return 0


def cmd_init_model(args) -> int:
    from .models import init_model

    path = init_model(args.size, args.out, seed=args.seed)
    print(f"saved a {args.size} model to {path}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="agentrl", description="Multi-turn RL for LLM agents.")
    sub = p.add_subparsers(dest="cmd", required=True)

    def with_config(name, fn, help_):
        s = sub.add_parser(name, help=help_)
        s.add_argument("config", nargs="?", help="YAML config (partial override of the defaults)")
        s.add_argument("overrides", nargs="*", help="a.b=value overrides")
        s.set_defaults(fn=fn)
        return s

    t = with_config("train", cmd_train, "SFT warm start (if enabled) then RL")
    t.add_argument("--resume", metavar="RUN_DIR", help="continue a run from its latest checkpoint")
    with_config("sft", cmd_sft, "SFT on expert demonstrations only")
    e = with_config("eval", cmd_eval, "evaluate a policy on held-out tasks (or --compare two evaluations)")
    e.add_argument("--model", help="model path (overrides model.path)")
    e.add_argument("--n-tasks", type=int, default=0, help="held-out tasks (default eval.n_tasks)")
    e.add_argument("--feedback-turns", type=int, default=None,
                   help="T turns with unary feedback ('Incorrect. Please think again.'); 1 = one "
                        "turn; 0 = no feedback wrapper (the env's own episode)")
    e.add_argument("--samples", type=int, default=0, help="samples per task (default eval.samples_per_task)")
    e.add_argument("--k", default="", help="pass@k values, e.g. 1,4 (k <= samples)")
    e.add_argument("--temperature", type=float, default=None, help="default eval.temperature (0 = greedy)")
    e.add_argument("--seed", type=int, default=0, help="sampling seed (tasks come from env.eval_seed)")
    e.add_argument("--out", help="directory for results.json, results.md, succ_at_turn.png")
    e.add_argument("--compare", nargs=2, metavar=("RUN_A", "RUN_B"), help="compare two --out directories")
    e.add_argument("--n-boot", type=int, default=2000, help="bootstrap resamples for --compare")
    r = with_config("reflect", cmd_reflect, "training-free GRPO: build a lesson library, evaluate with/without it")
    r.add_argument("--verbose", action="store_true", help="print each reflection step's metrics to stderr")
    with_config("distill", cmd_distill, "SFT on lesson-guided successes without the lessons; evaluate without")
    with_config("print-config", cmd_print_config, "print the resolved config")
    s = sub.add_parser("envs", help="list registered environments")
    s.set_defaults(fn=cmd_envs)
    c = sub.add_parser("check-env", help="Gymnasium's check_env plus agentrl's checks")
    c.add_argument("env_id")
    c.add_argument("--n-random", type=int, default=1000)
    c.add_argument("--seed", type=int, default=0)
    c.set_defaults(fn=cmd_check_env)
    m = sub.add_parser("init-model", help="build a local Qwen2-architecture model + tokenizer")
    m.add_argument("out")
    m.add_argument("--size", choices=["tiny", "small"], default="tiny")
    m.add_argument("--seed", type=int, default=0)
    m.set_defaults(fn=cmd_init_model)
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    from .config import ConfigError

    try:
        return args.fn(args)
    except (ConfigError, FileNotFoundError, KeyError, ValueError) as e:
        msg = e.args[0] if isinstance(e, KeyError) and e.args else str(e)
        print(f"agentrl {args.cmd}: error: {msg}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
