"""Every registered agentrl/ env passes Gymnasium's check_env and agentrl's check_env (DESIGN.md §8.5)."""
import warnings

import gymnasium
import pytest
from gymnasium.utils.env_checker import check_env as gym_check_env

import agentrl  # noqa: F401  (registers the ids)
from agentrl.env.checker import EnvCheckError, check_env
from agentrl.envs import describe, registered_ids

IDS = registered_ids()


def _skip_without_browser(env_id):
    """agentrl/MiniWoB-v0 drives a real Chromium; skip (clearly) where it is not installed. CI installs it."""
    if env_id == "agentrl/MiniWoB-v0":
        from agentrl.envs.miniwob import find_browser

        if find_browser() is None:
            pytest.skip("MiniWoB-v0 needs chromium and chromedriver (apt-get install chromium chromium-driver)")


def test_calculator_is_registered():
    assert "agentrl/Calculator-v0" in IDS


@pytest.mark.parametrize("env_id", IDS)
def test_gymnasium_check_env(env_id):
    _skip_without_browser(env_id)
    env = gymnasium.make(env_id)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no warning from Gymnasium's checker either
        gym_check_env(env.unwrapped, skip_render_check=True)
    env.close()


@pytest.mark.parametrize("parser", ["tags", "hermes"])
@pytest.mark.parametrize("env_id", IDS)
def test_agentrl_check_env(env_id, parser):
    _skip_without_browser(env_id)
    report = check_env(env_id, n_random=150, seed=0, parser=parser)
    n_tools = len(gymnasium.make(env_id).unwrapped.toolset.names)  # 0 for tool-free envs (agentrl/Math-v0)
    assert report["gymnasium"] and report["schemas"] == n_tools and report["expert_solved"] >= 2
    assert report["random"]["actions"] > 150


@pytest.mark.parametrize("env_id", IDS)
def test_describe(env_id):
    d = describe(env_id)
    assert d["id"] == env_id and d["description"] and isinstance(d["tools"], list)


class _FlakyCalc:
    """Entry points for deliberately broken envs (the checker must catch them)."""

    @staticmethod
    def nondeterministic(**kw):
        from agentrl.envs.calculator import CalculatorEnv

        class Nondet(CalculatorEnv):
            calls = 0

            def format_observation(self, results):
                Nondet.calls += 1
                return f"{results[0].content} #{Nondet.calls}"

        return Nondet(**kw)

    @staticmethod
    def raising(**kw):
        from agentrl.envs.calculator import CalculatorEnv

        class Raising(CalculatorEnv):
            def score_answer(self, answer):
                if "9" in answer:
                    raise ValueError("boom")
                return super().score_answer(answer)

        return Raising(**kw)

    @staticmethod
    def bad_expert(**kw):
        from agentrl.envs.calculator import CalculatorEnv

        class BadExpert(CalculatorEnv):
            def expert_action(self):
                return "<answer>-1</answer>"

        return BadExpert(**kw)


@pytest.mark.parametrize("kind, fragment", [
    ("nondeterministic", "replay determinism"), ("raising", "replay determinism|random actions"), ("bad_expert", "expert"),
])
def test_checker_catches_broken_envs(kind, fragment):
    env_id = f"agentrl_test/Broken{kind}-v0"
    gymnasium.register(id=env_id, entry_point=getattr(_FlakyCalc, kind))
    try:
        with pytest.raises(EnvCheckError, match=fragment):
            check_env(env_id, n_random=100)
    finally:
        del gymnasium.registry[env_id]
