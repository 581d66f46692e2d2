"""`agentrl eval`: run a policy on an env's held-out tasks (optionally with T turns of unary feedback), k samples
per task, and report self-correction metrics; `--compare` puts two stored runs side by side with bootstrap CIs.

Metrics (docs/metrics.md, "eval harness"):
- succ@t (t = 1..T): share of episodes solved within t turns.
- pass@k: the unbiased estimator 1 - C(n-c, k) / C(n, k) per task (n samples, c solved), averaged over tasks.
- effective_answer_ratio: answers not given before in the same episode / all answers (answers normalised by strip,
  lowercase, whitespace removed, as UFO's repetition penalty does).
- collapse_rate: share of failed episodes of >= 2 turns whose every turn gave the same answer (NaN without any).
- mean_turns, tool_calls, action_tokens (per episode), invalid_rate (turns), reward (mean episode return).
Evaluation never updates weights; tasks come from `env.eval_seed` and sampling from `--seed`, so a run is
reproducible (greedy at temperature 0).
"""
from __future__ import annotations

import copy
import json
import math
import os
from dataclasses import dataclass, field
from typing import Optional, Sequence

import numpy as np

from ..env.feedback import normalize_answer
from ..types import Trajectory

RESULTS = "results.json"


@dataclass
class Episode:
    task_id: str
    success: bool
    turns: int
    answers: list = field(default_factory=list)  # normalised answers, one per answering turn
    tool_calls: int = 0
    action_tokens: int = 0
    invalid_turns: int = 0
    reward: Optional[float] = None

    @property
    def solved_turn(self) -> Optional[int]:
        return self.turns if self.success else None


def episodes_from(trajs: Sequence[Trajectory], env) -> list[Episode]:
    """Per-episode records; answers are recovered by parsing each reply with the env's own parser."""
    base = env.unwrapped
    names = base.toolset.names
    out = []
    for t in trajs:
        answers = []
        for turn in t.turns:
            try:
                parsed = base.parser.parse(turn.action_text, names)
            except Exception:  # noqa: BLE001 - an unparsable reply has no answer
                continue
            if parsed.error is None and parsed.answer is not None:
                answers.append(normalize_answer(parsed.answer))
        out.append(Episode(task_id=t.task.id, success=bool(t.success), turns=t.num_turns, answers=answers,
                           tool_calls=t.n_tool_calls, action_tokens=t.n_action_tokens,
                           invalid_turns=sum(not u.action_valid for u in t.turns), reward=t.reward))
    return out


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k (Chen et al., 2021): the chance that k of the n samples, drawn without replacement,
    contain at least one of the c correct ones."""
    if not 0 <= c <= n or not 1 <= k <= n:
        raise ValueError(f"need 0 <= c <= n and 1 <= k <= n, got n={n} c={c} k={k}")
    if n - c < k:
        return 1.0
    return 1.0 - math.comb(n - c, k) / math.comb(n, k)


def _by_task(episodes: Sequence[Episode]) -> dict[str, list[Episode]]:
    groups: dict[str, list[Episode]] = {}
    for e in episodes:
        groups.setdefault(e.task_id, []).append(e)
    return groups


def compute_metrics(episodes: Sequence[Episode], max_turns: int, ks: Sequence[int] = (1,)) -> dict:
    if not episodes:
        return {}
    m: dict = {}
    for t in range(1, max_turns + 1):
        m[f"succ@{t}"] = float(np.mean([e.success and e.turns <= t for e in episodes]))
    groups = _by_task(episodes)
    n_min = min(len(g) for g in groups.values())
    for k in ks:
        if k <= n_min:
            m[f"pass@{k}"] = float(np.mean([pass_at_k(len(g), sum(e.success for e in g), k) for g in groups.values()]))
    n_answers = sum(len(e.answers) for e in episodes)
    distinct = sum(len(set(e.answers)) for e in episodes)
    m["effective_answer_ratio"] = distinct / n_answers if n_answers else float("nan")
    failed = [e for e in episodes if not e.success and e.turns >= 2]
    collapsed = [e for e in failed if len(e.answers) == e.turns and len(set(e.answers)) == 1]
    m["collapse_rate"] = len(collapsed) / len(failed) if failed else float("nan")
    m["success"] = float(np.mean([e.success for e in episodes]))
    m["mean_turns"] = float(np.mean([e.turns for e in episodes]))
    m["tool_calls"] = float(np.mean([e.tool_calls for e in episodes]))
    m["action_tokens"] = float(np.mean([e.action_tokens for e in episodes]))
    m["invalid_rate"] = sum(e.invalid_turns for e in episodes) / max(1, sum(e.turns for e in episodes))
    rewards = [e.reward for e in episodes if e.reward is not None]
    m["reward"] = float(np.mean(rewards)) if rewards else float("nan")
    m["episodes"], m["tasks"] = len(episodes), len(groups)
    return m


def _with_feedback(cfg, feedback_turns: Optional[int]):
    """cfg with the unary_feedback wrapper set to `feedback_turns` turns (1 = a single attempt in one turn; 0 = no
    wrapper: the env's own episode; None = as configured)."""
    cfg = copy.deepcopy(cfg)
    if feedback_turns is None:
        return cfg
    others = [w for w in cfg.env.wrappers if w.get("name") != "unary_feedback"]
    if feedback_turns >= 1:
        cfg.env.wrappers = others + [{"name": "unary_feedback", "max_turns": int(feedback_turns)}]
        cfg.rollout.max_turns = max(cfg.rollout.max_turns, int(feedback_turns))
    else:
        cfg.env.wrappers = others
    return cfg


def eval_turns(cfg) -> int:
    """T: the feedback wrapper's turn budget when configured, else rollout.max_turns."""
    for w in cfg.env.wrappers:
        if w.get("name") == "unary_feedback":
            return int(w.get("max_turns", cfg.rollout.max_turns))
    return int(cfg.rollout.max_turns)


def run_eval(cfg, *, model_path: Optional[str] = None, feedback_turns: Optional[int] = None,
             samples: Optional[int] = None, n_tasks: Optional[int] = None, temperature: Optional[float] = None,
             seed: int = 0, ks: Sequence[int] = (1,), out_dir: Optional[str] = None, model=None,
             tokenizer=None, generator=None) -> dict:
    """Evaluate and (with out_dir) write results.json, results.md and succ_at_turn.png. `model`/`tokenizer`
    reuse an already loaded policy (benchmarks), `generator` an already built one (tests: a scripted policy);
    else the model is loaded from model_path or cfg.model.path and its generator built from cfg.backend."""
    from ..models import load_model
    from ..rollout import ChatTokenizer
    from ..rollout.chain import ChainCollector, make_env
    from ..trainer import ensure_model, make_generator, pick_device, validate

    cfg = _with_feedback(cfg, feedback_turns)
    if model_path:
        cfg.model.path, cfg.model.init = model_path, None
    validate(cfg)
    samples = int(samples or cfg.eval.samples_per_task)
    temperature = cfg.eval.temperature if temperature is None else float(temperature)
    n_tasks = int(n_tasks or cfg.eval.n_tasks)
    if samples > 1 and temperature == 0:
        raise ValueError("samples > 1 at temperature 0 would repeat one greedy episode; set --temperature > 0")
    if tokenizer is None:
        model, tokenizer = load_model(ensure_model(cfg), dtype=cfg.model.dtype, device=pick_device(cfg.backend.device))
    if generator is None:
        generator = make_generator(cfg, model, tokenizer)
    collector = ChainCollector(cfg.env.id, cfg.env.kwargs, generator, ChatTokenizer(tokenizer), cfg.rollout,
                               wrappers=cfg.env.wrappers)
    env = make_env(cfg.env.id, cfg.env.kwargs, cfg.rollout.max_turns, cfg.env.wrappers)
    try:
        tasks = env.unwrapped.make_tasks("test", n_tasks, cfg.env.eval_seed)
        was_training = getattr(model, "training", False)
        if hasattr(model, "eval"):
            model.eval()
        trajs = collector.collect(tasks, samples, seed=seed, group_prefix="eval:", temperature=temperature)
        if was_training:
            model.train()
        episodes = episodes_from(trajs, env)
    finally:
        env.close()
        collector.close()
    T = eval_turns(cfg)
    ks = sorted({int(k) for k in ks if int(k) >= 1} | {1})
    results = {
        "setup": {"env": cfg.env.id, "env_kwargs": cfg.env.kwargs, "wrappers": cfg.env.wrappers,
                  "model": cfg.model.path, "generator": cfg.backend.generator, "turns": T, "samples": samples,
                  "temperature": temperature, "n_tasks": len(tasks), "eval_seed": cfg.env.eval_seed, "seed": seed,
                  "env_errors": collector.stats.get("env_errors", 0)},
        "metrics": compute_metrics(episodes, T, ks),
        "episodes": [e.__dict__ for e in episodes],
    }
    if out_dir:
        write_results(results, out_dir)
    return results


def load_results(path: str) -> dict:
    p = os.path.join(path, RESULTS) if os.path.isdir(path) else path
    if not os.path.exists(p):
        raise FileNotFoundError(f"no {RESULTS} at {path!r} (run `agentrl eval ... --out DIR` first)")
    with open(p) as f:
        return json.load(f)


def _fmt(x) -> str:
    if isinstance(x, float):
        return "nan" if math.isnan(x) else f"{x:.3f}"
    return str(x)


def markdown_table(results: dict) -> str:
    s, m = results["setup"], results["metrics"]
    lines = [f"{s['env']} | model {s['model']} | {s['turns']} turn(s) | {s['samples']} sample(s) x "
             f"{s['n_tasks']} tasks | temperature {s['temperature']} | seed {s['seed']}", "",
             "| metric | value |", "|---|---|"]
    lines += [f"| {k} | {_fmt(v)} |" for k, v in m.items()]
    return "\n".join(lines) + "\n"


def plot_succ_at_turn(runs: dict, out: str) -> str:
    """Succ@t against t for one or more labelled results."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.5))
    for label, res in runs.items():
        T = res["setup"]["turns"]
        ax.plot(range(1, T + 1), [res["metrics"][f"succ@{t}"] for t in range(1, T + 1)], "o-", label=label)
    ax.set_xlabel("turns allowed (t)")
    ax.set_ylabel("Succ@t")
    ax.set_ylim(-0.02, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out


def write_results(results: dict, out_dir: str) -> None:
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, RESULTS), "w") as f:
        json.dump(results, f, indent=1, default=str)
    with open(os.path.join(out_dir, "results.md"), "w") as f:
        f.write(markdown_table(results))
    plot_succ_at_turn({os.path.basename(os.path.abspath(out_dir)): results}, os.path.join(out_dir, "succ_at_turn.png"))


def _episodes(res: dict) -> list[Episode]:
    return [Episode(**e) for e in res["episodes"]]


def bootstrap_diff(a: dict, b: dict, metrics: Sequence[str], n_boot: int = 2000, seed: int = 0,
                   level: float = 0.95) -> dict[str, tuple[float, float]]:
    """Percentile CIs of metric(B) - metric(A), resampling tasks with replacement: paired on task ids when both
    runs evaluated the same tasks, else each run's tasks independently. Returns {metric: (lo, hi)}."""
    ea, eb = _by_task(_episodes(a)), _by_task(_episodes(b))
    Ta, Tb = a["setup"]["turns"], b["setup"]["turns"]
    ks = sorted({int(m.split("@")[1]) for m in metrics if m.startswith("pass@")} | {1})
    rng = np.random.default_rng(seed)
    paired = set(ea) == set(eb)
    ids_a, ids_b = sorted(ea), sorted(eb)
    diffs: dict[str, list[float]] = {m: [] for m in metrics}
    for _ in range(n_boot):
        pick_a = rng.integers(len(ids_a), size=len(ids_a))
        pick_b = pick_a if paired else rng.integers(len(ids_b), size=len(ids_b))
        ma = compute_metrics([e for i in pick_a for e in ea[ids_a[i]]], Ta, ks)
        mb = compute_metrics([e for i in pick_b for e in eb[ids_b[i]]], Tb, ks)
        for m in metrics:
            diffs[m].append(mb.get(m, float("nan")) - ma.get(m, float("nan")))
    out = {}
    for m, values in diffs.items():
        d = np.array(values, dtype=np.float64)
        d = d[np.isfinite(d)]
        out[m] = ((float(np.quantile(d, (1 - level) / 2)), float(np.quantile(d, 1 - (1 - level) / 2)))
                  if d.size else (float("nan"), float("nan")))
    return out


COMPARED = ("success", "succ@1", "pass@1", "effective_answer_ratio", "collapse_rate", "mean_turns", "reward",
            "action_tokens")


def compare(path_a: str, path_b: str, n_boot: int = 2000, seed: int = 0) -> str:
    """Markdown table of A, B, B - A and the bootstrap 95% CI of B - A for the shared metrics."""
    a, b = load_results(path_a), load_results(path_b)
    T = min(a["setup"]["turns"], b["setup"]["turns"])
    names = list(COMPARED[:2]) + [f"succ@{T}"] * (T > 1) + list(COMPARED[2:])
    names = [n for n in dict.fromkeys(names) if n in a["metrics"] and n in b["metrics"]]
    lines = [f"A = {path_a} ({a['setup']['turns']} turns), B = {path_b} ({b['setup']['turns']} turns); "
             f"95% CI by bootstrap over tasks ({n_boot} resamples)", "",
             "| metric | A | B | B - A | 95% CI |", "|---|---|---|---|---|"]
    cis = bootstrap_diff(a, b, names, n_boot, seed)
    for n in names:
        va, vb = a["metrics"][n], b["metrics"][n]
        lo, hi = cis[n]
        lines.append(f"| {n} | {_fmt(va)} | {_fmt(vb)} | {_fmt(vb - va)} | [{_fmt(lo)}, {_fmt(hi)}] |")
    return "\n".join(lines) + "\n"
