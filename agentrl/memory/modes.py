"""The three ways the lesson library is used (docs/memory.md):

- `run_reflect(cfg)` (`agentrl reflect`): training-free GRPO. `memory.epochs` passes over `memory.train_tasks`
  training tasks in batches of `memory.batch_size`: G = `memory.group_size` rollouts per task at
  `memory.temperature` with the current lessons injected, then one reflector update per batch. Finally the
  held-out tasks are evaluated (agentrl/eval/harness.py `run_eval`) without and with the lessons.
- `MemoryHook` (`memory.enabled: true` in `agentrl train`): rollouts carry the lessons; every `memory.every`
  steps the reflector updates the library from the step's groups.
- `run_distill(cfg)` (`agentrl distill`): lesson-guided rollouts on the training tasks, the successful ones kept,
  their prompts rebuilt without the lessons (the sampled actions unchanged), SFT on them (`sft.*`), then held-out
  evaluation without lessons: how much of the lessons' gain survives in the weights.
"""
from __future__ import annotations

import copy
import json
import os
import time
from typing import Optional, Sequence

import numpy as np

from ..types import Trajectory
from .library import LessonLibrary
from .reflector import Reflector

LESSONS = "lessons"


def db_path(cfg) -> str:
    return cfg.memory.db or os.path.join(cfg.train.run_dir, "memory.sqlite")


def lessons_spec(cfg, record: bool = True) -> dict:
    m = cfg.memory
    spec = {"name": LESSONS, "db": db_path(cfg), "top_k": m.top_k, "retrieve_above": m.retrieve_above,
            "record": record}
    if m.embedding_model:
        spec["embedding_model"] = m.embedding_model
    return spec


def with_lessons(cfg, record: bool = True):
    """A copy of cfg whose env wrappers end with the lessons wrapper (replacing a configured one)."""
    out = copy.deepcopy(cfg)
    out.env.wrappers = [w for w in out.env.wrappers if w.get("name") != LESSONS] + [lessons_spec(cfg, record)]
    return out


def without_lessons(cfg):
    out = copy.deepcopy(cfg)
    out.env.wrappers = [w for w in out.env.wrappers if w.get("name") != LESSONS]
    return out


def make_reflector(cfg, llm=None) -> Reflector:
    from .llm import make_chat_model

    m = cfg.memory
    return Reflector(llm if llm is not None else make_chat_model(cfg), max_lessons=m.max_lessons,
                     max_words=m.max_words, workers=m.reflector_workers)


def _log(run_dir: str, record: dict) -> None:
    with open(os.path.join(run_dir, "metrics.jsonl"), "a") as f:
        f.write(json.dumps(record) + "\n")


class MemoryHook:
    """RL training with memory: `wrappers(cfg)` for the collector, `after_step(step, trajs)` -> metrics."""

    def __init__(self, cfg, llm=None):
        self.cfg, self.library = cfg, LessonLibrary(db_path(cfg))
        self.reflector = make_reflector(cfg, llm)

    def wrappers(self) -> list:
        return with_lessons(self.cfg).env.wrappers

    def after_step(self, step: int, trajs: Sequence[Trajectory]) -> dict:
        if self.cfg.memory.every <= 0 or step % self.cfg.memory.every:
            return {"memory/lessons": len(self.library)}
        report = self.reflector.reflect(trajs, self.library, step)
        return {**report.metrics(), "memory/lessons": len(self.library)}


# ---------------------------------------------------------------------------------------------- shared plumbing
class _Policy:
    """The policy, its generator and the training/held-out tasks of a reflect or distill run."""

    def __init__(self, cfg, model=None, tokenizer=None, generator=None):
        from ..models import load_model
        from ..rollout.chain import make_env
        from ..trainer import ensure_model, make_generator, pick_device, validate

        validate(cfg)
        if tokenizer is None:
            model, tokenizer = load_model(ensure_model(cfg), dtype=cfg.model.dtype,
                                          device=pick_device(cfg.backend.device))
        self.cfg, self.model, self.tok = cfg, model, tokenizer
        self.gen = generator if generator is not None else make_generator(cfg, model, tokenizer)
        env = make_env(cfg.env.id, cfg.env.kwargs, cfg.rollout.max_turns)
        self.train_tasks = env.unwrapped.make_tasks("train", cfg.memory.train_tasks, cfg.env.train_seed)
        env.close()

    def collector(self, cfg):
        from ..rollout import ChatTokenizer
        from ..rollout.chain import ChainCollector

        return ChainCollector(cfg.env.id, cfg.env.kwargs, self.gen, ChatTokenizer(self.tok), cfg.rollout,
                              wrappers=cfg.env.wrappers)

    def evaluate(self, cfg, seed: int = 0) -> dict:
        from ..eval.harness import run_eval

        n = self.cfg.memory.eval_n_tasks or self.cfg.eval.n_tasks
        return run_eval(cfg, model=self.model, tokenizer=self.tok, generator=self.gen, n_tasks=n, seed=seed,
                        temperature=self.cfg.eval.temperature)

    def close(self) -> None:
        getattr(self.gen, "close", lambda: None)()


def _row(name: str, res: dict, lessons: Optional[int] = None) -> dict:
    m = res["metrics"]
    return {"setting": name, "success": m.get("success", float("nan")), "reward": m.get("reward", float("nan")),
            "invalid_rate": m.get("invalid_rate", float("nan")), "action_tokens": m.get("action_tokens", 0.0),
            "episodes": m.get("episodes", 0), "lessons": lessons}


def table(rows: Sequence[dict]) -> str:
    out = ["| setting | success | reward | invalid rate | action tokens | episodes | library |",
           "|---|---|---|---|---|---|---|"]
    for r in rows:
        lib = "-" if r.get("lessons") is None else str(r["lessons"])
        out.append(f"| {r['setting']} | {r['success']:.3f} | {r['reward']:.3f} | {r['invalid_rate']:.3f} | "
                   f"{r['action_tokens']:.1f} | {r['episodes']} | {lib} |")
    return "\n".join(out) + "\n"


def _write(out_dir: str, results: dict, md: str) -> None:
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, "results.json"), "w") as f:
        json.dump(results, f, indent=1, default=str)
    with open(os.path.join(out_dir, "results.md"), "w") as f:
        f.write(md)


# ---------------------------------------------------------------------------------------------- reflect
def run_reflect(cfg, llm=None, model=None, tokenizer=None, generator=None, progress=None) -> dict:
    """Training-free epochs, then held-out evaluation without and with lessons. Returns the results dict (also
    written to <run_dir>/reflect/results.{json,md})."""
    m = cfg.memory
    os.makedirs(cfg.train.run_dir, exist_ok=True)
    library = LessonLibrary(db_path(cfg))
    reflector = make_reflector(cfg, llm)
    pol = _Policy(cfg, model, tokenizer, generator)
    collector = pol.collector(with_lessons(cfg))
    epochs, step = [], library_step(library)
    try:
        for epoch in range(m.epochs):
            successes, used = [], 0
            for b in range(0, len(pol.train_tasks), max(1, m.batch_size)):
                step += 1
                t0 = time.perf_counter()
                batch = pol.train_tasks[b:b + max(1, m.batch_size)]
                trajs = collector.collect(batch, m.group_size, seed=cfg.train.seed * 7_919 + step,
                                          group_prefix=f"r{step}:", temperature=m.temperature)
                report = reflector.reflect(trajs, library, step)
                successes += [t.success for t in trajs]
                used += report.used
                rec = {"memory/step": step, "memory/epoch": epoch + 1, **report.metrics(),
                       "memory/rollout_success": float(np.mean([t.success for t in trajs])),
                       "memory/lessons": len(library), "perf/reflect_step_s": time.perf_counter() - t0}
                _log(cfg.train.run_dir, rec)
                if progress:
                    progress(rec)
            epochs.append({"epoch": epoch + 1, "rollout_success": float(np.mean(successes)) if successes else 0.0,
                           "groups_used": used, "lessons": len(library)})
    finally:
        collector.close()
    try:
        without = pol.evaluate(without_lessons(cfg))
        with_ = pol.evaluate(with_lessons(cfg, record=False))
    finally:
        pol.close()
    rows = [_row("held-out, without lessons", without), _row("held-out, with lessons", with_, len(library))]
    md = table(rows) + "\n| epoch | rollout success (with lessons) | groups used | library size |\n|---|---|---|---|\n"
    md += "".join(f"| {e['epoch']} | {e['rollout_success']:.3f} | {e['groups_used']} | {e['lessons']} |\n"
                  for e in epochs)
    results = {"rows": rows, "epochs": epochs, "db": db_path(cfg), "lessons": [x.text for x in library.lessons()],
               "without": without["metrics"], "with": with_["metrics"]}
    _write(os.path.join(cfg.train.run_dir, "reflect"), results, md)
    results["markdown"] = md
    return results


def library_step(library: LessonLibrary) -> int:
    """The last step recorded in the ops log (a rerun continues numbering after it)."""
    log = library.ops_log()
    return max((o["step"] for o in log), default=0)


# ---------------------------------------------------------------------------------------------- distill
def strip_lessons(trajs: Sequence[Trajectory], cfg, chat) -> list[Trajectory]:
    """The same trajectories with prompts rebuilt from a reset of the env without the lessons wrapper (the
    sampled turns are kept as they are)."""
    from ..rollout.chain import make_env, template_tools

    plain = without_lessons(cfg)
    env = make_env(plain.env.id, plain.env.kwargs, plain.rollout.max_turns, plain.env.wrappers)
    out = []
    try:
        for t in trajs:
            _, info = env.reset(options={"task": t.task})
            prompt = chat.prompt_ids(info["messages"], tools=template_tools(env, info, cfg.rollout.render_tools))
            out.append(Trajectory(id=t.id, group_id=t.group_id, task=t.task, prompt_ids=prompt, turns=t.turns,
                                  reward=t.reward, reward_parts=dict(t.reward_parts), success=t.success))
    finally:
        env.close()
    return out


def run_distill(cfg, model=None, tokenizer=None, generator=None) -> dict:
    """Distil the library into the weights (module docstring). Returns the results (also written to
    <run_dir>/distill/results.{json,md}); the distilled model is saved to <run_dir>/distill/model."""
    from ..rollout import ChatTokenizer
    from ..sft import sft_train

    m = cfg.memory
    library = LessonLibrary(db_path(cfg))
    n_lessons = len(library)
    if n_lessons == 0:
        raise ValueError(f"the lesson library {db_path(cfg)} is empty: run `agentrl reflect` first (same "
                         "train.run_dir or memory.db)")
    pol = _Policy(cfg, model, tokenizer, generator)
    try:
        before_without = pol.evaluate(without_lessons(cfg))
        before_with = pol.evaluate(with_lessons(cfg, record=False))
        collector = pol.collector(with_lessons(cfg))
        try:
            trajs = collector.collect(pol.train_tasks, m.group_size, seed=cfg.train.seed * 7_919 + 1,
                                      group_prefix="distill:", temperature=m.temperature)
        finally:
            collector.close()
        good = [t for t in trajs if t.success and t.reward is not None]
        demos = strip_lessons(good, cfg, ChatTokenizer(pol.tok))
        sft_m = sft_train(pol.model, demos, cfg.sft, pol.tok.pad_token_id) if demos else {}
        pol.gen.sync_weights(pol.model)
        after_without = pol.evaluate(without_lessons(cfg))
    finally:
        pol.close()
    out_dir = os.path.join(cfg.train.run_dir, "distill")
    pol.model.save_pretrained(os.path.join(out_dir, "model"))
    pol.tok.save_pretrained(os.path.join(out_dir, "model"))
    rows = [_row("before, without lessons", before_without), _row("before, with lessons", before_with, n_lessons),
            _row("distilled, without lessons", after_without)]
    gain = rows[1]["success"] - rows[0]["success"]
    kept = rows[2]["success"] - rows[0]["success"]
    survived = kept / gain if gain > 0 else float("nan")
    md = table(rows) + (f"\nlesson gain {gain:+.3f}; after distillation {kept:+.3f} without lessons "
                        f"({'n/a' if gain <= 0 else f'{100 * survived:.0f}%'} of the gain survives); "
                        f"SFT on {len(demos)} successful lesson-guided trajectories of {len(trajs)}.\n")
    results = {"rows": rows, "gain": gain, "kept": kept, "survived_share": survived, "demos": len(demos),
               "rollouts": len(trajs), "sft": sft_m, "model": os.path.join(out_dir, "model")}
    _write(out_dir, results, md)
    results["markdown"] = md
    return results
