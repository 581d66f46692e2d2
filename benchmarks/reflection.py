"""Reflection memory (issue 7): `agentrl reflect` and `agentrl distill` on the tiny model with a scripted reflector.

There is no instruct model on this machine, so the reflector is scripted (`FactReflector`), and the task is one
whose lessons carry real information that a tiny model can use once it has learned to read a lessons block:

Task ("moons"): Math-v0 over a generated JSONL. N_PLANETS invented planets (random-syllable names, so nothing is
guessable) each have 1, 2 or 3 moons; each planet is asked about in 4 phrasings ("How many moons does the planet
Zorvak have?", "Count the moons of the planet Zorvak.", ...). Math-v0 splits questions into train / held-out by a
hash of their text, so a held-out question is a new phrasing about a planet that training questions also ask
about. Without knowing the planet's moons, a policy can only guess (1/3).

Policy: the tiny model (agentrl init-model tiny), warm-started by SFT to read lessons: demonstrations about a
disjoint set of planets whose system prompt holds the lesson about the asked planet (P_LESSON = 75%) or no
lessons (25%), always answering with the true count. So it learns to copy the count from a lesson and to guess
without one; it never sees the evaluation planets before reflect. (It is not taught to tell a matching lesson
from another planet's: with one lesson retrieved per task, a retrieval miss makes it copy a wrong count, which is
still right 1/3 of the time, like a guess.)

FactReflector (a chat model answering the reflector's real prompts, prompts.py v1):
  SUMMARY -> "The agent answered <its answer>."
  CRITIQUE -> reads the planet from "## Task" and the reference from "## Reference answer" and states
              ["Planet <name> has <reference> moons."]  (what comparing a partially-correct group against the
              reference teaches; all-correct and all-wrong groups never reach it)
  GROUP_OPS -> NONE when the library already holds that sentence, UPDATE G<i> when a lesson about the planet says
              another count, else ADD
  BATCH_MERGE -> the groups' operations unchanged (the deterministic rules then merge duplicate ADDs).
Retrieval: top_k = 1 lesson per task by BM25 once the library is non-empty (retrieve_above = 0).

Run: python benchmarks/reflection.py [--quick]   (CPU, a few minutes; prints the tables; run dir runs/bench_reflection)
"""
from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

TEMPLATES = ("How many moons does the planet {x} have?", "Count the moons of the planet {x}.",
             "The planet {x} is orbited by some moons. How many moons are there?",
             "What is the number of moons around {x}?")
_SYL = ("ka", "zor", "vel", "mi", "tan", "qui", "dro", "bel", "nys", "ox", "ra", "lu", "fen", "gar", "shi", "pol")
SYSTEM = "Answer with <answer>number</answer>."  # Math-v0's system prompt here (short: a tiny model, CPU)
P_LESSON = 0.75  # warm-start demos with the asked planet's lesson in the prompt (the rest have none)
_PLANET = re.compile(r"(?:planet|around) ([A-Z][a-z]+)")


def planets(n: int, seed: int, exclude: set = frozenset()) -> dict[str, int]:
    rng = np.random.default_rng(seed)
    out: dict[str, int] = {}
    while len(out) < n:
        name = "".join(_SYL[int(i)] for i in rng.integers(len(_SYL), size=3)).capitalize()
        if name not in out and name not in exclude:
            out[name] = int(rng.integers(1, 4))
    return out


def lesson(name: str, moons: int) -> str:
    return f"Planet {name} has {moons} moons."


class FactReflector:
    """See the module docstring. `chat(messages) -> str` over the reflector's prompts."""

    def chat(self, messages: list[dict]) -> str:
        user = messages[-1]["content"] if len(messages) == 2 else messages[1]["content"]
        if "## Agent's attempt" in user:
            m = re.search(r"<answer>(.*?)</answer>", user)
            return f"The agent answered {m.group(1) if m else 'nothing parsable'}."
        if "semantic advantage" in user:
            task = user.split("## Task\n")[1].split("\n\n## Reference")[0]
            ref = user.split("## Reference answer\n")[1].split("\n")[0].strip()
            m = _PLANET.search(task)
            return json.dumps({"experiences": [lesson(m.group(1), int(ref))] if m else []})
        if "Decide how each new experience" in user:
            lib = user.split("## Library\n")[1].split("\n\n## New experiences")[0]
            new = json.loads(user.split("## New experiences\n")[1].split("\n\nAnswer")[0])
            ops = []
            for text in new:
                name = text.split()[1]
                hit = re.search(rf"\[G(\d+)\]\. (Planet {name} has \d moons\.)", lib)
                ops.append({"op": "NONE"} if hit and hit.group(2) == text else
                           {"op": "UPDATE", "id": f"G{hit.group(1)}", "text": text} if hit else
                           {"op": "ADD", "text": text})
            return json.dumps({"operations": ops})
        ops = json.loads(user.split("## Proposed operations\n")[1].split("\n\nAnswer")[0])
        return json.dumps({"operations": ops})


def write_data(path: str, facts: dict[str, int]) -> None:
    with open(path, "w") as f:
        for name, moons in facts.items():
            for t in TEMPLATES:
                f.write(json.dumps({"problem": t.format(x=name), "answer": str(moons)}) + "\n")


def warm_start(model_dir: str, out_dir: str, data: str, n_demos: int, epochs: int, exclude: set) -> dict:
    """SFT the tiny model to read a lessons block (module docstring)."""
    from agentrl.config import SFTConfig
    from agentrl.memory.inject import LessonsWrapper
    from agentrl.memory.library import Lesson
    from agentrl.models import load_model
    from agentrl.rollout import ChatTokenizer
    from agentrl.rollout.chain import make_env
    from agentrl.sft import demonstration, sft_train

    model, tok = load_model(model_dir)
    chat = ChatTokenizer(tok)
    warm = planets(max(50, n_demos // 8), seed=123, exclude=exclude)
    names = list(warm)
    env = LessonsWrapper(make_env("agentrl/Math-v0", {"data_path": data, "system": SYSTEM}, 1), lessons=[],
                         retrieve_above=99)
    rng = np.random.default_rng(0)
    demos = []
    for _ in range(n_demos):
        name = names[int(rng.integers(len(names)))]
        task = env.unwrapped.build_task({"problem": TEMPLATES[int(rng.integers(4))].format(x=name),
                                         "answer": str(warm[name])})
        env.fixed = [Lesson(-1, lesson(name, warm[name]))] if rng.random() < P_LESSON else []
        demos.append(demonstration(env, task, chat, 1))
    env.close()
    cfg = SFTConfig(epochs=epochs, lr=3e-3, batch_size=16)
    m = sft_train(model, demos, cfg, tok.pad_token_id)
    model.save_pretrained(out_dir)
    tok.save_pretrained(out_dir)
    return m


def library_check(overrides: list[str]) -> str:
    """Held-out success of a scripted *reader* given the same prompts: it answers with the count of an injected
    lesson that names the asked planet, else 1. It separates what the library and retrieval deliver from what the
    tiny model makes of it."""
    from agentrl.backends.scripted import ScriptedGenerator
    from agentrl.config import load_config
    from agentrl.eval.harness import run_eval
    from agentrl.memory.modes import with_lessons, without_lessons
    from agentrl.models import load_model

    cfg = load_config(None, overrides)
    _, tok = load_model(cfg.model.path)

    def read(prompt: str) -> str:
        question = prompt.rsplit("user\n", 1)[-1]
        m = _PLANET.search(question)
        hit = re.search(rf"Planet {m.group(1)} has (\d) moons\.", prompt) if m else None
        return f"<answer>{hit.group(1) if hit else 1}</answer>"

    rows = []
    for name, c in (("without lessons", without_lessons(cfg)), ("with lessons", with_lessons(cfg, record=False))):
        res = run_eval(c, tokenizer=tok, generator=ScriptedGenerator(tok, read), n_tasks=cfg.eval.n_tasks)
        rows.append(f"| scripted reader, {name} | {res['metrics']['success']:.3f} | {res['metrics']['episodes']} |")
    return "| setting | success | episodes |\n|---|---|---|\n" + "\n".join(rows) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="small sizes (a smoke run, not a measurement)")
    p.add_argument("--run-dir", default=os.path.join(ROOT, "runs", "bench_reflection"))
    p.add_argument("--check-only", action="store_true", help="only the scripted-reader table of an existing run")
    p.add_argument("--rewarm", action="store_true", help="redo the warm start even if RUN_DIR/warm exists")
    args = p.parse_args(argv)
    from agentrl.cli import main as cli
    from agentrl.memory.llm import CHAT_MODELS
    from agentrl.models import init_model

    n_planets, n_demos, sft_epochs, epochs = (12, 400, 2, 1) if args.quick else (100, 2400, 2, 2)
    run = os.path.abspath(args.run_dir)
    os.makedirs(run, exist_ok=True)
    for f in ("memory.sqlite", "memory.sqlite-wal", "memory.sqlite-shm", "metrics.jsonl"):
        if not args.check_only and os.path.exists(os.path.join(run, f)):
            os.remove(os.path.join(run, f))
    facts = planets(n_planets, seed=7)
    data = os.path.join(run, "moons.jsonl")
    write_data(data, facts)
    t0 = time.perf_counter()
    warm_m: dict = {"sft/loss": float("nan")}
    if args.rewarm or not os.path.exists(os.path.join(run, "warm", "config.json")):
        base = init_model("tiny", os.path.join(run, "tiny"), seed=0)
        warm_m = warm_start(base, os.path.join(run, "warm"), data, n_demos, sft_epochs, set(facts))
        with open(os.path.join(run, "warm", "warm_start.json"), "w") as f:
            json.dump({**warm_m, "seconds": time.perf_counter() - t0}, f)
    with open(os.path.join(run, "warm", "warm_start.json")) as f:
        warm_m = json.load(f)
    t_warm = warm_m["seconds"]
    if "fact_reflector" not in CHAT_MODELS.names():
        CHAT_MODELS.register("fact_reflector", lambda cfg: FactReflector())
    overrides = [f"model.path={run}/warm", "model.init=null", "env.id=agentrl/Math-v0",
                 f"env.kwargs={{data_path: {data}, system: '{SYSTEM}'}}", "rollout.max_turns=1",
                 "rollout.max_new_tokens=12",
                 f"train.run_dir={run}", "memory.reflector=fact_reflector", f"memory.epochs={epochs}",
                 "memory.train_tasks=1000", "memory.batch_size=64", "memory.group_size=4", "memory.temperature=1.0",
                 "memory.top_k=1", "memory.retrieve_above=0", "eval.n_tasks=1000", "eval.temperature=0",
                 "sft.epochs=2", "sft.lr=1e-3", "sft.batch_size=32"]
    if args.check_only:  # the reader table for an existing run (after a reflect)
        print(library_check(overrides))
        return 0
    print(f"# moons: {n_planets} planets x {len(TEMPLATES)} phrasings; warm start: {n_demos} lesson-reading demos, "
          f"{sft_epochs} epochs (final loss {warm_m.get('sft/loss', float('nan')):.3f}, {t_warm:.0f} s)\n")
    t1 = time.perf_counter()
    print(f"$ agentrl reflect {' '.join(overrides)}")
    rc = cli(["reflect", *overrides])
    t2 = time.perf_counter()
    print(f"(reflect: {t2 - t1:.0f} s)\n\nWhat the library delivers (same held-out prompts, a scripted reader):\n")
    print(library_check(overrides))
    t2 = time.perf_counter()
    print("$ agentrl distill (same overrides)")
    rc = rc or cli(["distill", *overrides])
    print(f"(distill: {time.perf_counter() - t2:.0f} s)")
    return rc


if __name__ == "__main__":
    sys.exit(main())
