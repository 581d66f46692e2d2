"""UnaryFeedback: turn a single-answer env into up to T attempts with "try again" feedback (UFO, ALGORITHMS.md).

Wraps any ToolEnv whose episode ends with an answer (Math-v0, SearchQA-v0, Code-v0). Per step of the wrapped env:
- a correct answer ends the episode (terminated) with reward 1/2^k, k = valid answers given before it;
- a wrong answer gives reward 0 and the observation `feedback` ("Incorrect. Please think again."), and the
  wrapped env is reset to the same task (same seed) so the next attempt starts clean; the chat history the policy
  sees is kept by the collector, so the model reads its earlier attempts and the feedback;
- a reply without a parsable answer or tool call is invalid: reward `format_penalty` (-0.1) with the wrapped env's
  error observation, and it is not counted as an attempt (it still uses a turn);
- tool calls pass through unchanged (reward 0): an attempt may use tools before answering; if the wrapped env
  runs out of its own turns without an answer, it is reset to the same task and the attempt goes on.
When the episode ends (correct, or `max_turns` turns used: truncated), the repetition penalty
lambda * (1 - E / V) is subtracted from the last turn's reward, E = distinct valid answers after normalisation
(strip, lowercase, whitespace removed), V = valid answers (no penalty when V = 0). The return used for training is
the sum of the turn rewards, as in the reference (use_turn_scores=False).

Deviation from the reference, documented: the reference's observation at a wrong final attempt says "Correct!"
(it reports `done`, not the verdict); here it is the feedback text. The observation of a last turn is never shown
to the policy, so rewards and training are identical.

info adds: "answer" (normalised answer of this step or None), "attempts" (valid answers so far),
"unique_answers_ratio" (E / V so far), "answers" (all normalised answers so far), and at the end
"repetition_penalty" and "final_reward" (the episode return).
"""
from __future__ import annotations

import re
from typing import Optional

import gymnasium

from ..registry import Registry
from ..types import Message

WRAPPERS: Registry = Registry("env wrapper")  # name -> gymnasium.Wrapper class; config: env.wrappers

DEFAULT_FEEDBACK = "Incorrect. Please think again."
_WS = re.compile(r"\s+")


def normalize_answer(answer: str) -> str:
    """The reference's answer identity for repetition: strip, lowercase, remove all whitespace."""
    return _WS.sub("", str(answer).strip().lower())


def attempt_reward(correct: bool, n_previous_valid: int, gamma: float = 0.5) -> float:
    """gamma^k for a correct answer after k valid answers (1, 1/2, 1/4, ...), else 0."""
    return float(gamma ** n_previous_valid) if correct else 0.0


def repetition_penalty(answers: list[str], lam: float = 0.5) -> float:
    """lam * (1 - distinct / total) over normalised answers; 0 when there is none."""
    if not answers:
        return 0.0
    norm = [normalize_answer(a) for a in answers]
    return float(lam * (1.0 - len(set(norm)) / len(norm)))


@WRAPPERS.register("unary_feedback")
class UnaryFeedback(gymnasium.Wrapper):
    """See the module docstring. kwargs: max_turns (T, default 5), feedback (text of a wrong-answer observation),
    penalty_lambda (0.5), format_penalty (-0.1), gamma (0.5; the per-attempt decay)."""

    supports_snapshot = False  # the attempt history lives here, not in the wrapped env: branch by replay

    def __init__(self, env: gymnasium.Env, max_turns: int = 5, feedback: str = DEFAULT_FEEDBACK,
                 penalty_lambda: float = 0.5, format_penalty: float = -0.1, gamma: float = 0.5):
        super().__init__(env)
        if max_turns < 1:
            raise ValueError(f"unary_feedback max_turns must be >= 1, got {max_turns}")
        if not 0 < gamma <= 1:
            raise ValueError(f"unary_feedback gamma must be in (0, 1], got {gamma}")
        self.max_turns, self.feedback = int(max_turns), str(feedback)
        self.penalty_lambda, self.format_penalty = float(penalty_lambda), float(format_penalty)
        self.gamma = float(gamma)
        self._reset_args: dict = {}
        self.turn, self.done, self.answers, self.total = 0, True, [], 0.0

    def reset(self, *, seed: Optional[int] = None, options: Optional[dict] = None):
        obs, info = self.env.reset(seed=seed, options=options)
        task = self.env.unwrapped.task
        # later re-resets replay exactly this task with the same seed (deterministic for replay-based branching)
        self._reset_args = {"seed": seed, "options": {**(options or {}), "task": task}}
        self.turn, self.done, self.answers, self.total = 0, False, [], 0.0
        info = {**info, "answer": None, "attempts": 0, "unique_answers_ratio": 1.0, "answers": []}
        return obs, info

    def step(self, action: str):
        if self.done:
            raise RuntimeError("step() called after the episode ended (terminated or truncated); call env.reset()")
        self.turn += 1
        obs, inner_reward, term, trunc, info = self.env.step(action)
        info = dict(info)
        answer = info.get("answer")
        reward, terminated, success = 0.0, False, False
        if not info.get("action_valid", True):
            reward = self.format_penalty
        elif term and answer is not None:
            success = bool(info.get("success", False))
            reward = attempt_reward(success, len(self.answers), self.gamma)
            self.answers.append(normalize_answer(answer))
            terminated = success
            if not success:
                obs, info["messages"] = self.feedback, [Message("user", self.feedback)]
        elif term:  # the wrapped env ended the episode by its own rule (no answer): pass it through
            reward, terminated, success = float(inner_reward), True, bool(info.get("success", False))
        truncated = not terminated and self.turn >= self.max_turns
        if not (terminated or truncated) and (term or trunc):
            self.env.reset(**self._reset_args)  # next attempt on the same task
        info.update({"answer": normalize_answer(answer) if answer is not None else None,
                     "attempts": len(self.answers), "answers": list(self.answers), "success": success,
                     "turn": self.turn,
                     "unique_answers_ratio": len(set(self.answers)) / len(self.answers) if self.answers else 1.0})
        if terminated or truncated:
            penalty = repetition_penalty(self.answers, self.penalty_lambda)
            reward -= penalty
            info["repetition_penalty"] = penalty
            self.done = True
        self.total += reward
        if self.done:
            info["final_reward"] = self.total  # the episode return (sum of turn rewards)
        info["anchor"] = (info.get("anchor"), len(self.answers))
        return obs, float(reward), terminated, truncated, info


def apply_wrappers(env: gymnasium.Env, wrappers, max_turns: int) -> gymnasium.Env:
    """Wrap `env` in the configured wrappers, innermost first. Each item: {"name": ..., **kwargs} (a registered
    name or "pkg.mod:Class"). A wrapper that takes max_turns gets the rollout's max_turns unless it sets its own."""
    import inspect

    for i, spec in enumerate(wrappers or ()):
        if not isinstance(spec, dict) or not isinstance(spec.get("name"), str):
            raise ValueError(f"env.wrappers[{i}] must be a mapping with a 'name', got {spec!r}")
        kwargs = {k: v for k, v in spec.items() if k != "name"}
        cls = WRAPPERS.get(spec["name"])
        if "max_turns" in inspect.signature(cls).parameters:
            kwargs.setdefault("max_turns", max_turns)
        try:
            env = cls(env, **kwargs)
        except TypeError as e:
            raise ValueError(f"env.wrappers[{i}] ({spec['name']}): {e}") from None
    return env
