"""agentrl/Calculator-v0 and the ToolEnv base: expert, splits, robustness, truncation, info keys."""
import gymnasium
import numpy as np
import pytest

import agentrl  # noqa: F401  (registers the ids)
from agentrl.env.base import CHARSET, MAX_TEXT_CHARS, ToolEnv, canonical_split, sanitize
from agentrl.env.checker import nasty_actions
from agentrl.types import Message, Task

ID = "agentrl/Calculator-v0"
RESET_KEYS = {"messages", "tools", "system", "anchor", "task"}
STEP_KEYS = {"messages", "anchor", "action_valid", "n_tool_calls", "success", "turn"}


def run_expert(env, task):
    obs, info = env.reset(seed=0, options={"task": task})
    base, done, n = env.unwrapped, False, 0
    while not done:
        obs, reward, term, trunc, info = env.step(base.expert_action())
        done, n = term or trunc, n + 1
    return reward, info, n


@pytest.mark.parametrize("parser", ["tags", "hermes"])
@pytest.mark.parametrize("stepwise", [False, True])
@pytest.mark.parametrize("split", ["train", "test"])
def test_expert_solves_50_tasks(parser, stepwise, split):
    env = gymnasium.make(ID, parser=parser, expert_stepwise=stepwise, max_turns=4)
    tasks = env.unwrapped.make_tasks(split, 50, seed=1)
    assert len(tasks) == 50 and all(t.split == split for t in tasks)
    for task in tasks:
        reward, info, n = run_expert(env, task)
        assert reward == 1.0 and info["success"], task
        if not stepwise:
            assert n == 2


def test_stepwise_expert_innermost_first():
    env = gymnasium.make(ID, expert_stepwise=True, max_turns=5)
    obs, _ = env.reset(options={"task": {"options": {"expression": "24+(87*(4-10))"}}})
    assert obs == "Compute 24+(87*(4-10))."
    base, actions, observations = env.unwrapped, [], []
    for _ in range(4):
        actions.append(base.expert_action())
        observations.append(env.step(actions[-1])[0])
    assert actions == ["<calc>4-10</calc>", "<calc>87*(-6)</calc>", "<calc>24+(-522)</calc>", "<answer>-498</answer>"]
    assert observations == ["-6", "-522", "-498", ""]


def test_splits_disjoint_and_deterministic():
    base = gymnasium.make(ID).unwrapped
    train, test = base.make_tasks("train", 300, seed=0), base.make_tasks("test", 300, seed=0)
    assert {t.options["expression"] for t in train}.isdisjoint(t.options["expression"] for t in test)
    assert [t.id for t in train] == [t.id for t in base.make_tasks("train", 300, seed=0)]
    assert [t.id for t in train] != [t.id for t in base.make_tasks("train", 300, seed=1)]
    assert len({t.id for t in train}) == 300
    assert canonical_split("eval") == "test"
    with pytest.raises(ValueError, match="unknown split"):
        base.make_tasks("bogus", 1, 0)


def test_task_fields():
    base = gymnasium.make(ID).unwrapped
    task = base.build_task({"expression": "(37*49)+12"})
    assert task.answer == 1825 and task.options == {"expression": "(37*49)+12"}
    assert task.env_id == ID and task.id == base.build_task({"expression": "(37*49) + 12"}).id
    for t in base.make_tasks("train", 100, seed=3):
        n_ops = sum(t.options["expression"].count(c) for c in "+-*")
        assert 1 <= n_ops <= 2 and isinstance(t.answer, int)


def test_reset_info_and_messages():
    env = gymnasium.make(ID)
    obs, info = env.reset(seed=7)
    assert RESET_KEYS | STEP_KEYS <= set(info)
    system, user = info["messages"]
    assert system == Message("system", info["system"]) and user == Message("user", obs)
    assert "<calc>" in info["system"] and "<answer>" in info["system"]
    assert obs.startswith("Compute ") and obs.endswith(".")
    assert info["tools"][0]["function"]["name"] == "calc" and isinstance(info["task"], Task)
    assert env.reset(seed=7)[0] == obs


def test_step_info_and_tool_messages():
    env = gymnasium.make(ID)
    env.reset(options={"task": {"options": {"expression": "(37*49)+12"}}})
    obs, reward, term, trunc, info = env.step("Let me compute. <calc>(37*49)+12</calc>")
    assert STEP_KEYS <= set(info)
    assert (obs, reward, term, trunc) == ("1825", 0.0, False, False)
    assert info["messages"] == [Message("tool", "1825", name="calc", tool_call_id="call_0")]
    assert info["action_valid"] and info["n_tool_calls"] == 1 and info["turn"] == 1 and not info["success"]
    assert info["anchor"] == ("Compute (37*49)+12.", "1825")
    obs, reward, term, trunc, info = env.step("<answer>1,825</answer>")
    assert (obs, reward, term, trunc, info["messages"], info["success"]) == ("", 1.0, True, False, [], True)
    with pytest.raises(RuntimeError, match="reset"):
        env.step("<answer>1</answer>")


def test_wrong_answer_and_corrupt_action():
    env = gymnasium.make(ID)
    base, rng = env.unwrapped, np.random.default_rng(0)
    for task in base.make_tasks("train", 100, seed=2):
        env.reset(options={"task": task})
        _, reward, term, _, info = env.step(base.corrupt_action(rng))
        assert term and reward == 0.0 and not info["success"]
    env.reset(options={"task": {"options": {"expression": "2+2"}}})
    assert env.step("<answer> four </answer>")[1] == 0.0


def test_invalid_action_feedback_and_truncation():
    env = gymnasium.make(ID, max_turns=2, invalid_penalty=-0.1)
    env.reset(seed=0)
    obs, reward, term, trunc, info = env.step("I think it is 12")
    assert obs.startswith("Invalid action: no tool call or answer found.") and "<calc>...</calc>" in obs
    assert info["messages"] == [Message("user", obs)] and not info["action_valid"]
    assert (reward, term, trunc) == (-0.1, False, False)
    obs, reward, term, trunc, info = env.step("<calc>1+1</calc>")
    assert (term, trunc, info["turn"]) == (False, True, 2)
    with pytest.raises(RuntimeError):
        env.step("<answer>2</answer>")


def test_step_before_reset_raises():
    env = gymnasium.make(ID).unwrapped
    with pytest.raises(RuntimeError, match="reset"):
        env.step("<answer>1</answer>")


def test_random_strings_never_raise():
    env = gymnasium.make(ID, max_turns=3)
    env.action_space.seed(0)
    env.reset(seed=0)
    actions = nasty_actions(["calc"]) + [env.action_space.sample() for _ in range(200)]
    for a in actions:
        obs, reward, term, trunc, info = env.step(a)
        assert env.observation_space.contains(obs) and STEP_KEYS <= set(info)
        if term or trunc:
            env.reset()


def test_replay_is_deterministic():
    def play(seed):
        env = gymnasium.make(ID, max_turns=3)
        out = [env.reset(seed=seed)[0]]
        for a in ["hello", "<calc>2*21</calc>", "<answer>42</answer>"]:
            obs, r, term, trunc, info = env.step(a)
            out.append((obs, r, term, trunc, info["messages"], info["anchor"]))
        return out

    assert play(11) == play(11)


class EchoEnv(ToolEnv):
    """Echoes text through a tool that returns unicode and huge outputs."""

    def tools(self):
        def echo(text: str) -> str:
            """Echo text back."""
            return "\u00e9\u4e2d\U0001F600 " + text * 10

        return [echo]

    def sample_task(self, rng, split):
        return self.build_task({"text": "hi"})

    def task_prompt(self, task):
        return "Say h\u00e9llo \u2603"

    def score_answer(self, answer):
        return float(answer == "hi"), answer == "hi"

    def expert_action(self):
        return "<answer>hi</answer>"


def test_observations_sanitised_into_space():
    env = EchoEnv(max_tool_output_chars=100_000)
    obs, info = env.reset(seed=0)
    assert obs == "Say hello ?" and env.observation_space.contains(obs)
    obs, *_ = env.step("<echo>" + "x" * 2000 + "</echo>")
    assert env.observation_space.contains(obs) and obs.startswith("e?? ") and obs.endswith("[truncated]")
    assert len(obs) == MAX_TEXT_CHARS and set(obs) <= set(CHARSET)
    assert sanitize("a\u0301b\x00") == "ab?"


def test_reset_options_split_and_task_dict():
    env = gymnasium.make(ID)
    _, info = env.reset(seed=0, options={"split": "test"})
    assert info["task"].split == "test"
    _, info = env.reset(options={"task": {"options": {"expression": "3*4"}, "id": "mine"}})
    assert (info["task"].id, info["task"].answer, info["task"].env_id) == ("mine", 12, ID)
    with pytest.raises(ValueError, match="unknown Task fields"):
        env.reset(options={"task": {"expression": "3*4"}})


def test_import_is_light():
    import subprocess
    import sys

    code = ("import sys, agentrl.env, agentrl.envs, agentrl.envs.calculator, agentrl.tools; "
            "print([m for m in ('transformers', 'vllm', 'ray') if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
