"""reflect and distill end to end on the tiny model (policy replies scripted where a learned policy is needed),
RL training with memory.enabled, and the CLI subcommands."""
import json
import re

import pytest

from agentrl.backends.scripted import ScriptedGenerator
from agentrl.cli import main
from agentrl.config import load_config
from agentrl.memory import LessonLibrary, ScriptedChat
from agentrl.memory.modes import run_distill, run_reflect

_LESSON = re.compile(r"\[G\d+\]\. For '([^']+)' the answer is (\d+)\.")


def reflector_fn(messages):
    """A scripted reflector: the lesson is the reference answer of the group's task."""
    user = messages[1]["content"]
    if "## Agent's attempt" in user:
        return "The agent gave an answer."
    if "semantic advantage" in user:
        task = user.split("## Task\n")[1].split("\n\n## Reference")[0]
        ref = user.split("## Reference answer\n")[1].split("\n")[0]
        return json.dumps({"experiences": [f"For '{task}' the answer is {ref}."]})
    if "Decide how each new experience" in user:
        new = json.loads(user.split("## New experiences\n")[1].split("\n\nAnswer")[0])
        return json.dumps({"operations": [{"op": "ADD", "text": t} for t in new]})
    ops = json.loads(user.split("## Proposed operations\n")[1].split("\n\nAnswer")[0])
    return json.dumps({"operations": ops})


def scripted_reflector(cfg):  # memory.reflector: "tests.memory.test_modes:scripted_reflector"
    return ScriptedChat(reflector_fn)


def policy(tokenizer):
    """Copies the answer from a lesson about its problem; otherwise alternates 1, 2 (so groups are mixed)."""
    state = {"k": 0}

    def reply(prompt):
        for problem, answer in _LESSON.findall(prompt):
            if prompt.count(problem) > 1:  # in a lesson and in the question
                return f"<answer>{answer}</answer>"
        state["k"] += 1
        return f"<answer>{1 + state['k'] % 2}</answer>"

    return ScriptedGenerator(tokenizer, reply)


@pytest.fixture
def cfg(tmp_path, tiny_dir):
    data = tmp_path / "qa.jsonl"
    data.write_text("".join(json.dumps({"problem": f"How many stars does box zor{i} hold?", "answer": 1 + i % 2}) + "\n"
                            for i in range(40)))
    return load_config(None, [
        f"model.path={tiny_dir}", "model.init=null", "env.id=agentrl/Math-v0", f"env.kwargs={{data_path: {data}}}",
        "rollout.max_turns=1", "rollout.max_new_tokens=12", f"train.run_dir={tmp_path / 'run'}",
        "memory.reflector=tests.memory.test_modes:scripted_reflector", "memory.epochs=2", "memory.train_tasks=8",
        "memory.batch_size=4", "memory.group_size=4", "memory.temperature=1.0", "memory.top_k=2",
        "memory.retrieve_above=0", "eval.n_tasks=8", "sft.epochs=2", "sft.batch_size=8", "sft.lr=1e-3"])


def test_reflect_end_to_end(cfg, tiny):
    model, tok = tiny
    res = run_reflect(cfg, model=model, tokenizer=tok, generator=policy(tok))
    lib = LessonLibrary(res["db"])
    assert len(lib) >= 4 and all(_LESSON.match(f"[G0]. {x.text}") for x in lib.lessons())
    e1, e2 = res["epochs"]
    assert e1["groups_used"] > 0 and e2["rollout_success"] > e1["rollout_success"]  # the lessons are used
    assert e2["rollout_success"] == 1.0 and e2["groups_used"] == 0  # all-correct groups: skipped
    assert [r["setting"] for r in res["rows"]] == ["held-out, without lessons", "held-out, with lessons"]
    assert "| held-out, with lessons |" in res["markdown"]
    steps = [json.loads(x) for x in open(f"{cfg.train.run_dir}/metrics.jsonl")]
    assert [s["memory/step"] for s in steps] == [1, 2, 3, 4] and steps[0]["memory/llm_calls"] > 0
    assert lib.lessons()[0].n_injected > 0  # rollouts recorded their injected lessons
    assert len(lib.at_step(2)) == len([o for o in lib.ops_log() if o["step"] <= 2 and o["op"] == "ADD"])


def test_distill_end_to_end(cfg, tiny):
    import copy

    import torch

    model, tok = tiny
    model = copy.deepcopy(model)
    with pytest.raises(ValueError, match="empty"):
        run_distill(cfg, model=model, tokenizer=tok, generator=policy(tok))
    run_reflect(cfg, model=model, tokenizer=tok, generator=policy(tok))
    before = [p.detach().clone() for p in model.parameters()]
    res = run_distill(cfg, model=model, tokenizer=tok, generator=policy(tok))
    assert res["demos"] > 0 and res["rollouts"] == 8 * 4
    assert [r["setting"] for r in res["rows"]] == ["before, without lessons", "before, with lessons",
                                                   "distilled, without lessons"]
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters()))  # SFT changed the tiny model
    assert "of the gain survives" in res["markdown"] or "n/a" in res["markdown"]
    from agentrl.models import load_model

    load_model(res["model"])  # the distilled model was saved


def test_strip_lessons_removes_the_block(cfg, tiny):
    from agentrl.memory.modes import strip_lessons, with_lessons
    from agentrl.rollout import ChatTokenizer
    from agentrl.rollout.chain import ChainCollector

    model, tok = tiny
    cfg.memory.retrieve_above = 16  # a small library is injected whole
    LessonLibrary(f"{cfg.train.run_dir}/memory.sqlite").add("For 'x' the answer is 1.")
    wl = with_lessons(cfg)
    col = ChainCollector(wl.env.id, wl.env.kwargs, policy(tok), ChatTokenizer(tok), wl.rollout,
                         wrappers=wl.env.wrappers)
    from agentrl.rollout.chain import make_env

    tasks = make_env(cfg.env.id, cfg.env.kwargs, 1).unwrapped.make_tasks("train", 2, 0)
    trajs = col.collect(tasks, 1, seed=0)
    col.close()
    chat = ChatTokenizer(tok)
    assert all("[G0]" in chat.decode(t.prompt_ids) for t in trajs)
    stripped = strip_lessons(trajs, cfg, chat)
    assert all("[G0]" not in chat.decode(t.prompt_ids) and "experiences" not in chat.decode(t.prompt_ids)
               for t in stripped)
    assert [t.turns for t in stripped] == [t.turns for t in trajs]


def test_training_with_memory(cfg, tiny):
    from agentrl.trainer import Trainer

    cfg.backend.generator = "scripted"
    cfg.train.steps, cfg.train.save_every, cfg.train.plot, cfg.train.progress = 2, 0, False, False
    cfg.rollout.tasks_per_step, cfg.rollout.group_size, cfg.eval.n_tasks = 3, 4, 4
    cfg.memory.enabled, cfg.memory.every = True, 1
    tr = Trainer.__new__(Trainer)
    import agentrl.trainer as T

    orig = T.make_generator
    T.make_generator = lambda c, m, t: policy(t)
    try:
        Trainer.__init__(tr, cfg)
        tr.run()
    finally:
        T.make_generator = orig
    recs = [json.loads(x) for x in open(f"{cfg.train.run_dir}/metrics.jsonl")]
    steps = [r for r in recs if "memory/lessons" in r]
    assert len(steps) == 2 and steps[-1]["memory/lessons"] > 0 and "perf/time/memory" in steps[0]
    assert any(w["name"] == "lessons" for w in tr.collector.wrappers)


def test_cli_reflect_and_distill_tiny_hf(cfg, capsys):
    """The real CLI on the tiny model with the hf generator (an untrained policy: groups are all wrong, so the
    library stays empty and distill says so)."""
    args = ["memory.reflector=tests.memory.test_modes:scripted_reflector", f"model.path={cfg.model.path}",
            "model.init=null", "env.id=agentrl/Math-v0", f"env.kwargs={json.dumps(cfg.env.kwargs)}",
            "rollout.max_turns=1", "rollout.max_new_tokens=8", f"train.run_dir={cfg.train.run_dir}",
            "memory.epochs=1", "memory.train_tasks=4", "memory.batch_size=4", "memory.group_size=2",
            "eval.n_tasks=4"]
    assert main(["reflect", *args]) == 0
    out = capsys.readouterr().out
    assert "| held-out, without lessons |" in out and "memory.sqlite" in out
    assert main(["distill", *args]) == 2  # empty library: a clear error, exit code 2
    assert "run `agentrl reflect` first" in capsys.readouterr().err
