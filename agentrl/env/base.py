"""ToolEnv: a text-in / text-out `gymnasium.Env` for multi-turn tool use (DESIGN.md §3).

Observation and action spaces are `gymnasium.spaces.Text` over printable ASCII plus whitespace; every
observation is sanitised into that charset and length, so `observation_space.contains(obs)` always holds.

Subclass once and implement: `tools()`, `sample_task(rng, split)`, `task_prompt(task)`, `score_answer(answer)`,
`expert_action()`; optionally `system_prompt()`, `build_task(options)`, `corrupt_action(rng)`, `anchor()`,
`on_reset()`, `on_tool_results(results)`, `validate_action(parsed)`, `episode_outcome()`, `format_hint()`.

Episode: reset -> (task prompt, info) ; step(reply) parses the reply with the configured parser, then lets
`validate_action` reject it (an error text makes it invalid; default: accept everything that parsed):
- tool calls -> run them (concurrently, with timeouts) -> obs = tool results, reward 0; then, if
  `episode_outcome()` returns (reward, success) (default None), the episode ends there: terminated=True with that
  reward (environments whose state, not an answer, decides the end: a goal reached, a hole fallen into);
- an answer  -> reward from `score_answer`, terminated=True;
- anything else (malformed, random text, rejected by `validate_action`) -> an error observation explaining the
  format (`format_hint()`), action_valid=False, reward `invalid_penalty`, nothing runs.
truncated=True when `max_turns` steps pass without termination. `step` never raises on any action string;
stepping a finished episode raises RuntimeError. `last_info` holds the info of the last reset/step.

Branching: by default (`supports_snapshot = False`) a copy of an episode is made by reset(seed, options) + replay
of the actions; the checker verifies that replay is deterministic. A subclass with cheap state may set
`supports_snapshot = True` and implement `snapshot()` -> a small picklable state taken after a step, and
`restore(state)` -> info: called right after reset(seed, options) of the same task, it puts the episode back into
`state` (turn, done, last observation, subclass state, RNG) and returns the info of the step that produced it
(messages = that step's observation messages, anchor = the current anchor, action_valid, success, turn, ...), so
that stepping on gives the same observations as the original episode.
"""
from __future__ import annotations

import hashlib
import json
import re
import string
import unicodedata
from dataclasses import fields, replace
from typing import Any, Callable, Hashable, Optional, Union

import gymnasium
import numpy as np

from ..types import Message, Task
from .parsers import Parser, ParsedAction, make_parser
from .tools import ToolCall, ToolResult, ToolSet

CHARSET = string.printable  # letters, digits, punctuation and whitespace (space \t \n \r \x0b \x0c)
MAX_TEXT_CHARS = 8192
TRUNCATION_MARKER = "\n... [truncated]"
_OUTSIDE_CHARSET = re.compile(r"[^\x20-\x7e\t\n\r\x0b\x0c]")

TRAIN, TEST = "train", "test"
_HELD_OUT_ALIASES = {"test", "eval", "val", "valid", "validation", "heldout", "held_out", "held-out"}


def sanitize(text: str, max_length: int = MAX_TEXT_CHARS) -> str:
    """Map `text` into CHARSET (accents stripped, other characters -> '?') and cut it to `max_length`."""
    text = str(text)
    if _OUTSIDE_CHARSET.search(text):
        text = unicodedata.normalize("NFKD", text)
        text = "".join(c if c in CHARSET else ("" if unicodedata.combining(c) else "?") for c in text)
    if len(text) > max_length:
        text = text[: max(0, max_length - len(TRUNCATION_MARKER))] + TRUNCATION_MARKER[:max_length]
    return text


def canonical_split(split: str) -> str:
    """"train" -> "train"; "test" and its aliases (eval, val, validation, heldout) -> "test"."""
    s = str(split).lower()
    if s == TRAIN:
        return TRAIN
    if s in _HELD_OUT_ALIASES:
        return TEST
    raise ValueError(f"unknown split {split!r}; use 'train' or 'test' (aliases: {', '.join(sorted(_HELD_OUT_ALIASES))})")


def split_of(key: str, held_out_fraction: float = 0.2) -> str:
    """Deterministic split of a task by hashing its content: disjoint train / test buckets."""
    bucket = int(hashlib.sha256(key.encode()).hexdigest()[:8], 16) % 10_000
    return TEST if bucket < held_out_fraction * 10_000 else TRAIN


def content_id(prefix: str, key: str) -> str:
    return f"{prefix}-{hashlib.sha256(key.encode()).hexdigest()[:12]}"


class ToolEnv(gymnasium.Env):
    """Base class for text tool-use environments. See the module docstring for the contract."""

    metadata = {"render_modes": []}
    default_env_id: Optional[str] = None  # used for Task.env_id when the env was not built by gymnasium.make
    held_out_fraction = 0.2
    supports_snapshot = False  # no snapshot()/restore(): branching replays actions after a seeded reset
    max_tool_calls = 8  # per turn; extra calls get an error result

    def __init__(self, max_turns: int = 4, parser: Union[str, Parser] = "tags", tool_timeout_s: float = 5.0,
                 invalid_penalty: float = 0.0, max_tool_output_chars: int = 2000, system: Optional[str] = None):
        if max_turns < 1:
            raise ValueError(f"max_turns must be >= 1, got {max_turns}")
        self.max_turns = int(max_turns)
        self.parser = make_parser(parser)
        self.tool_timeout_s = float(tool_timeout_s)
        self.invalid_penalty = float(invalid_penalty)
        self.max_tool_output_chars = int(max_tool_output_chars)
        self.system_override = system  # replaces system_prompt() when set (e.g. a short prompt for tiny models)
        self.observation_space = gymnasium.spaces.Text(MAX_TEXT_CHARS, min_length=0, charset=CHARSET)
        self.action_space = gymnasium.spaces.Text(MAX_TEXT_CHARS, min_length=0, charset=CHARSET)
        self._toolset: Optional[ToolSet] = None
        self.task: Optional[Task] = None
        self.turn = 0
        self.done = True
        self.last_obs = ""
        self.last_info: dict = {}
        self.prompt = ""

    # ------------------------------------------------------------------ subclass API
    def tools(self) -> list[Callable]:
        return []

    def system_prompt(self) -> str:
        return self.parser.format_instructions(self.toolset.schemas)

    def sample_task(self, rng: np.random.Generator, split: str) -> Task:
        """A random task of `split` ("train" or "test"); must be deterministic given rng's state."""
        raise NotImplementedError

    def build_task(self, options: dict) -> Task:
        """A Task from its reset options (computing the answer). Default: id and split from the content."""
        key = self.task_key(options)
        return Task(id=content_id(self._id_prefix(), key), env_id=self.env_id, options=dict(options),
                    split=split_of(key, self.held_out_fraction))

    def task_prompt(self, task: Task) -> str:
        raise NotImplementedError

    def score_answer(self, answer: str) -> tuple[float, bool]:
        """(reward, success) of a final answer for the current task."""
        raise NotImplementedError

    def expert_action(self) -> str:
        """The optimal next action (the whole reply text) in the current state."""
        raise NotImplementedError

    def corrupt_action(self, rng: np.random.Generator) -> str:
        """A plausible but wrong action (noisy SFT demos). Default: the expert action with 1-3 character edits."""
        chars = list(self.expert_action())
        for _ in range(int(rng.integers(1, 4))):
            pos, op = int(rng.integers(0, len(chars) + 1)), int(rng.integers(0, 3))
            ch = CHARSET[int(rng.integers(0, 94))]  # the non-whitespace part of CHARSET
            if op == 0 or not chars:
                chars.insert(pos, ch)
            elif op == 1:
                chars[min(pos, len(chars) - 1)] = ch
            else:
                del chars[min(pos, len(chars) - 1)]
        return "".join(chars)

    def anchor(self) -> Hashable:
        """Raw state the next action is taken in (no history, no template): task prompt + last observation."""
        return (self.prompt, self.last_obs)

    def on_reset(self) -> None:
        """Clear per-episode subclass state (called by reset after self.task is set)."""

    def on_tool_results(self, results: list[ToolResult]) -> None:
        """Observe the results of a turn's tool calls (e.g. to track progress for the expert)."""

    def validate_action(self, parsed: ParsedAction) -> Optional[str]:
        """Reject a reply that parsed but is not a legal action here (e.g. more than one move, an answer in an env
        without answers): return the error text (-> invalid action, nothing runs), or None to accept it."""
        return None

    def episode_outcome(self) -> Optional[tuple[float, bool]]:
        """Checked after each turn's tool results: (reward, success) ends the episode (terminated=True) with that
        reward; None (the default) lets it go on."""
        return None

    def format_hint(self) -> str:
        """The line appended to error observations that reminds the agent of the action format."""
        return self.parser.format_hint(self.toolset.names)

    def snapshot(self) -> Any:
        """A small picklable state of the current episode (only for `supports_snapshot = True`)."""
        raise NotImplementedError(f"{type(self).__name__} does not support snapshot(); branching replays actions")

    def restore(self, state: Any) -> dict:
        """Called after reset(seed, options) of the same task: return to `state` (from snapshot()) and return the
        info of the step that led to it (see the module docstring)."""
        raise NotImplementedError(f"{type(self).__name__} does not support restore(); branching replays actions")

    def format_observation(self, results: list[ToolResult]) -> str:
        if len(results) == 1:
            return results[0].content
        return "\n\n".join(f"[{r.call.id} {r.call.name}]\n{r.content}" for r in results)

    def task_key(self, options: dict) -> str:
        """Canonical text of a task's content (hashed for its id and split)."""
        return json.dumps(options, sort_keys=True, default=str)

    # ------------------------------------------------------------------ helpers
    @property
    def toolset(self) -> ToolSet:
        if self._toolset is None:
            self._toolset = ToolSet(self.tools(), self.tool_timeout_s, self.max_tool_output_chars)
        return self._toolset

    @property
    def env_id(self) -> str:
        if self.spec is not None:
            return self.spec.id
        return self.default_env_id or type(self).__name__

    def stop_strings(self) -> list[str]:
        """Where generation should stop so a tool can run (the parser's close tags)."""
        return self.parser.stop_strings(self.toolset.names)

    @property
    def turns_left(self) -> int:
        return self.max_turns - self.turn

    def _id_prefix(self) -> str:
        return self.env_id.split("/")[-1].split("-")[0].lower()

    def make_tasks(self, split: str, n: int, seed: int) -> list[Task]:
        """n distinct tasks of `split`, deterministic in (split, n, seed); fewer if the split is too small."""
        split = canonical_split(split)
        rng = np.random.default_rng(seed)
        tasks: dict[str, Task] = {}
        for _ in range(100 * n + 1000):
            if len(tasks) >= n:
                break
            task = self.sample_task(rng, split)
            # The split is a property of the task's content (hash of task_key), so train and test never overlap
            # whatever sample_task does; tasks of the other split are rejected.
            actual = split_of(self.task_key(task.options), self.held_out_fraction)
            if actual != split:
                continue
            if task.split != actual:
                task = replace(task, split=actual)
            tasks.setdefault(task.id, task)
        return list(tasks.values())

    def _coerce_task(self, task: Any) -> Task:
        if isinstance(task, Task):
            return task
        if not isinstance(task, dict):
            raise TypeError(f"options['task'] must be a Task or a dict of Task fields, got {type(task).__name__}")
        names = {f.name for f in fields(Task)}
        unknown = set(task) - names
        if unknown:
            raise ValueError(f"unknown Task fields {sorted(unknown)}; known: {sorted(names)}")
        built = self.build_task(dict(task.get("options", {})))
        return Task(**{**{f.name: getattr(built, f.name) for f in fields(Task)}, **task})

    # ------------------------------------------------------------------ gymnasium API
    def reset(self, *, seed: Optional[int] = None, options: Optional[dict] = None) -> tuple[str, dict]:
        super().reset(seed=seed)
        options = options or {}
        if options.get("task") is not None:
            self.task = self._coerce_task(options["task"])
        else:
            self.task = self.sample_task(self.np_random, canonical_split(options.get("split", TRAIN)))
        self.turn, self.done, self.last_obs = 0, False, ""
        self.prompt = sanitize(self.task_prompt(self.task))
        self.on_reset()
        system = self.system_override if self.system_override is not None else self.system_prompt()
        messages = ([Message("system", system)] if system else []) + [Message("user", self.prompt)]
        info = {"messages": messages, "tools": self.toolset.schemas, "system": system, "anchor": self.anchor(),
                "task": self.task, "action_valid": True, "n_tool_calls": 0, "success": False, "turn": 0}
        self.last_info = info
        return self.prompt, info

    def step(self, action: str) -> tuple[str, float, bool, bool, dict]:
        if self.task is None:
            raise RuntimeError("step() called before reset(); call env.reset() first")
        if self.done:
            raise RuntimeError("step() called after the episode ended (terminated or truncated); call env.reset()")
        self.turn += 1
        parsed = self._parse(action)
        if parsed.error is None:
            rejected = self.validate_action(parsed)
            if rejected is not None:
                parsed = ParsedAction(error=str(rejected))
        reward, terminated, success, n_calls = self.invalid_penalty, False, False, 0
        if parsed.error is not None:
            obs = sanitize(f"Invalid action: {parsed.error}. {self.format_hint()}")
            messages = [Message("user", obs)]
        elif parsed.answer is not None:
            reward, success = self.score_answer(parsed.answer)
            obs, messages, terminated = "", [], True
        else:
            obs, messages = self._run_tools(parsed.tool_calls)
            reward, n_calls = 0.0, len(parsed.tool_calls)
            outcome = self.episode_outcome()
            if outcome is not None:
                (reward, success), terminated = outcome, True
        truncated = not terminated and self.turn >= self.max_turns
        self.done, self.last_obs = terminated or truncated, obs
        info = {"messages": messages, "anchor": self.anchor(), "action_valid": parsed.error is None,
                "n_tool_calls": n_calls, "success": bool(success), "turn": self.turn, "parse_error": parsed.error,
                "answer": parsed.answer if parsed.error is None else None}
        self.last_info = info
        return obs, float(reward), terminated, truncated, info

    def _parse(self, action: Any) -> ParsedAction:
        if not isinstance(action, str):
            return ParsedAction(error=f"the action must be text, got {type(action).__name__}")
        try:
            return self.parser.parse(action, self.toolset.names)
        except Exception as e:  # noqa: BLE001 - a parser bug must not crash an episode; it is reported as invalid
            return ParsedAction(error=f"could not parse the reply ({type(e).__name__}: {e})")

    def _run_tools(self, calls: list[ToolCall]) -> tuple[str, list[Message]]:
        results = self.toolset.run(calls[: self.max_tool_calls])
        results += [ToolResult(c, f"Error: too many tool calls in one reply (max {self.max_tool_calls})", False)
                    for c in calls[self.max_tool_calls:]]
        results = [ToolResult(r.call, sanitize(r.content), r.ok) for r in results]
        self.on_tool_results(results)
        messages = [Message("tool", r.content, name=r.call.name, tool_call_id=r.call.id) for r in results]
        return sanitize(self.format_observation(results)), messages
