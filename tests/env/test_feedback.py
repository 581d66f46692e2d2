"""UnaryFeedback (UFO) against tests/fixtures/ufo.json (a copy of ../shared/fixtures/ufo.json), plus the cases
the fixture does not cover."""
import json
from pathlib import Path

import numpy as np
import pytest

import agentrl  # noqa: F401  (registers the ids)
from agentrl.algos import keep_top_std_groups
from agentrl.config import ConfigError, load_config
from agentrl.env.feedback import DEFAULT_FEEDBACK, UnaryFeedback, attempt_reward, normalize_answer, repetition_penalty
from agentrl.rollout.chain import can_snapshot, make_env

FIXTURE = json.loads((Path(__file__).resolve().parents[1] / "fixtures" / "ufo.json").read_text())
UFO = [{"name": "unary_feedback"}]


def _env(**kw):
    spec = [{"name": "unary_feedback", **kw}]
    return make_env("agentrl/Math-v0", {}, 5, spec)


def _reset(env, question="What is 3*4?", gold="12", seed=0):
    return env.reset(seed=seed, options={"task": {"options": {"problem": question, "answer": gold}}})


def _play(env, actions, question="What is 3*4?", gold="12"):
    _reset(env, question, gold)
    out = []
    for a in actions:
        out.append(env.step(a))
        if out[-1][2] or out[-1][3]:
            break
    return out


@pytest.mark.parametrize("name", sorted(FIXTURE["cases"]))
def test_fixture_cases_step_by_step(name):
    case = FIXTURE["cases"][name]
    steps = _play(_env(), [f"<answer>{a}</answer>" for a in case["actions"]], case["question"], case["gold"])
    assert len(steps) == len(case["steps"])
    for (obs, r, term, trunc, info), ref in zip(steps, case["steps"]):
        assert r == pytest.approx(ref["reward"], abs=1e-6)
        assert (term or trunc) == ref["done"]
        assert info["success"] == ref["info"]["success"]
        assert info["unique_answers_ratio"] == pytest.approx(ref["info"]["per_question_unique_answers_ratio"], abs=1e-6)
        if "global_repetition_penalty" in ref["info"]:
            assert info["repetition_penalty"] == pytest.approx(ref["info"]["global_repetition_penalty"], abs=1e-6)
            assert info["final_reward"] == pytest.approx(ref["info"]["final_total_reward"], abs=1e-6)
        if not ref["done"]:
            assert obs == FIXTURE["config"]["feedback_wrong"]
    ret = sum(s[1] for s in steps)
    key = next(k for k in case if k.startswith("episode_return"))
    assert ret == pytest.approx(case[key], abs=1e-6)


# The reference logs each per-step info key averaged over the episode's turns (es_manager.get_rollout_states);
# these action lists reproduce the fixture's named rollouts, including the ones without a step-by-step case.
_METRIC_ACTIONS = {
    "correct_first_try": ["12"],
    "wrong_wrong_correct (one repeat)": ["5", "5", "12"],
    "wrong_distinct_then_correct_4th": ["5", "6", "7", "12"],
    "five_distinct_wrong": ["1", "2", "3", "4", "5"],
    "same_wrong_answer_5x": ["5"] * 5,
    "case_and_space_normalisation": ["Twelve Dollars", " twelvedollars ", "12"],
}


@pytest.mark.parametrize("name", sorted(_METRIC_ACTIONS))
def test_fixture_rollout_metrics(name):
    expected = FIXTURE["metrics_from_es_manager.get_rollout_states"]["expected"][name]
    steps = _play(_env(), [f"<answer>{a}</answer>" for a in _METRIC_ACTIONS[name]])
    n = len(steps)
    infos = [s[4] for s in steps]
    assert expected["MetamathQA/num_actions"] == n
    assert expected["MetamathQA/success"] == float(infos[-1]["success"])
    mean = lambda key: sum(i.get(key, 0.0) for i in infos) / n  # noqa: E731
    assert mean("unique_answers_ratio") == pytest.approx(expected["MetamathQA/per_question_unique_answers_ratio"], abs=1e-6)
    assert mean("repetition_penalty") == pytest.approx(expected["MetamathQA/global_repetition_penalty"], abs=1e-6)
    assert mean("final_reward") == pytest.approx(expected["MetamathQA/final_total_reward"], abs=1e-6)


def test_pure_functions():
    assert normalize_answer("  Twelve Dollars \n") == "twelvedollars"
    assert [attempt_reward(True, k) for k in range(4)] == [1.0, 0.5, 0.25, 0.125]
    assert attempt_reward(False, 0) == 0.0
    assert repetition_penalty([]) == 0.0
    assert repetition_penalty(["a", "A ", "b"]) == pytest.approx(0.5 * (1 - 2 / 3))


def test_invalid_reply_costs_format_penalty_and_is_not_an_attempt():
    steps = _play(_env(), ["no answer here", "<answer>5</answer>", "<answer>12</answer>"])
    assert steps[0][1] == pytest.approx(-0.1) and not steps[0][4]["action_valid"]
    assert "Invalid action" in steps[0][0] and steps[0][4]["attempts"] == 0
    assert steps[1][4]["attempts"] == 1 and steps[1][0] == DEFAULT_FEEDBACK
    # correct after ONE valid answer: 1/2, not 1/4 (the invalid reply did not count)
    assert steps[2][1] == pytest.approx(0.5) and steps[2][2] and steps[2][4]["success"]


def test_turn_budget_counts_every_turn_and_truncates():
    steps = _play(_env(max_turns=3), ["junk", "junk", "<answer>5</answer>", "<answer>12</answer>"])
    assert len(steps) == 3 and steps[-1][3] and not steps[-1][2]
    assert sum(s[1] for s in steps) == pytest.approx(-0.2)  # two format penalties, one wrong answer, no repeats


def test_feedback_text_and_lambda_configurable():
    steps = _play(_env(feedback="Try again.", penalty_lambda=1.0, max_turns=2), ["<answer>5</answer>"] * 2)
    assert steps[0][0] == "Try again." and steps[0][4]["messages"][0].content == "Try again."
    assert steps[-1][1] == pytest.approx(-0.5)  # 1.0 * (1 - 1/2)


def test_stepping_after_the_end_raises_and_reset_starts_over():
    env = _env()
    _play(env, ["<answer>12</answer>"])
    with pytest.raises(RuntimeError):
        env.step("<answer>12</answer>")
    _reset(env)
    assert env.step("<answer>12</answer>")[1] == 1.0


def test_replay_is_deterministic_and_wrapper_disables_snapshots():
    env = _env()
    assert not can_snapshot(env)
    acts = ["<answer>5</answer>", "oops", "<answer>7</answer>", "<answer>12</answer>"]
    a = [(o, r, t, u) for o, r, t, u, _ in _play(env, acts)]
    b = [(o, r, t, u) for o, r, t, u, _ in _play(_env(), acts)]
    assert a == b


def test_wraps_a_tool_env_searchqa():
    env = make_env("agentrl/SearchQA-v0", {"hops": 1}, 5, UFO)
    obs, info = env.reset(seed=3, options={"split": "train"})
    base = env.unwrapped
    o, r, term, trunc, info = env.step("<search>anything</search>")  # a tool call passes through, reward 0
    assert r == 0.0 and not term and info["attempts"] == 0
    o, r, term, trunc, info = env.step("<answer>certainly wrong</answer>")
    assert o == DEFAULT_FEEDBACK and r == 0.0 and not (term or trunc) and info["attempts"] == 1
    o, r, term, trunc, info = env.step(f"<answer>{base.task.answer[0]}</answer>")
    assert term and info["success"] and r == pytest.approx(0.5)


def test_config_validation_and_unknown_wrapper():
    from agentrl.trainer import validate

    cfg = load_config(None, ["env.id=agentrl/Math-v0"])
    cfg.env.wrappers = [{"name": "unary_feedbak"}]
    with pytest.raises(ConfigError, match="Did you mean 'unary_feedback'"):
        validate(cfg)
    cfg.env.wrappers = ["unary_feedback"]
    with pytest.raises(ConfigError, match="mapping with a 'name'"):
        validate(cfg)
    cfg.env.wrappers = []
    cfg.algo.std_filter_ratio = 0.0
    with pytest.raises(ConfigError, match="std_filter_ratio"):
        validate(cfg)
    with pytest.raises(ValueError, match="unexpected keyword|got an unexpected"):
        make_env("agentrl/Math-v0", {}, 5, [{"name": "unary_feedback", "bogus": 1}])


def test_keep_top_std_groups():
    rewards = np.array([0, 1, 0, 0, 1, 1, 0.5, 0, 1, 0.2, 0.2, 0.2])
    gids = np.array(["a"] * 3 + ["b"] * 3 + ["c"] * 3 + ["d"] * 3)
    # population std: a 0.471, b 0.471, c 0.408, d 0 -> top 2 are a and b (tie broken by first seen)
    assert keep_top_std_groups(rewards, gids, 0.5).tolist() == [True] * 6 + [False] * 6
    assert keep_top_std_groups(rewards, gids, 0.25).tolist() == [True] * 3 + [False] * 9
    assert keep_top_std_groups(rewards, gids, 1.0).all()
    assert keep_top_std_groups(rewards, gids, 0.01).sum() == 3  # at least one group
    # brute force against numpy on random data
    rng = np.random.default_rng(0)
    r = rng.random(40).round(1)
    g = np.repeat(np.arange(10), 4)
    mask = keep_top_std_groups(r, g, 0.3)
    kept = sorted(set(g[mask].tolist()))
    stds = [r[g == i].std() for i in range(10)]
    assert len(kept) == 3 and min(stds[i] for i in kept) >= max(stds[i] for i in range(10) if i not in kept)
