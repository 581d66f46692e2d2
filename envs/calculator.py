"""Arithmetic with a calculator tool: compute an integer expression such as (37*49)+12 and answer with the number."""
from __future__ import annotations

import ast
import json
import re
from dataclasses import dataclass
from typing import Callable, Optional, Union

import numpy as np

from agentrl.env.base import ToolEnv, content_id, split_of
from agentrl.env.tools import ToolResult
from agentrl.tools.calculator import calc, format_number, safe_eval
from agentrl.types import Task

OPS = ("+", "-", "*")


@dataclass(frozen=True)
class _Expr:
    """A binary expression tree: a leaf holds `value`; an inner node holds op, left, right."""

    value: Optional[int] = None
    op: Optional[str] = None
    left: Optional["_Expr"] = None
    right: Optional["_Expr"] = None

    def render(self, top: bool = True) -> str:
        """Every compound sub-expression is parenthesised, e.g. (37*49)+12."""
        if self.op is None:
            return str(self.value)
        text = f"{self.left.render(False)}{self.op}{self.right.render(False)}"
        return text if top else f"({text})"


def _random_expr(rng: np.random.Generator, n_ops: int, max_operand: int) -> _Expr:
    if n_ops == 0:
        return _Expr(value=int(rng.integers(1, max_operand + 1)))
    n_left = int(rng.integers(0, n_ops))
    op = OPS[int(rng.integers(0, len(OPS)))]
    return _Expr(op=op, left=_random_expr(rng, n_left, max_operand),
                 right=_random_expr(rng, n_ops - 1 - n_left, max_operand))


_AST_OPS = {ast.Add: "+", ast.Sub: "-", ast.Mult: "*"}


def _parse_expr(text: str) -> _Expr:
    """Inverse of render() for expressions of non-negative integers and + - * (used by the stepwise expert)."""

    def conv(node: ast.AST) -> _Expr:
        if isinstance(node, ast.Constant) and isinstance(node.value, int) and not isinstance(node.value, bool):
            return _Expr(value=node.value)
        if isinstance(node, ast.BinOp) and type(node.op) in _AST_OPS:
            return _Expr(op=_AST_OPS[type(node.op)], left=conv(node.left), right=conv(node.right))
        raise ValueError(f"not a + - * integer expression: {text!r}")

    return conv(ast.parse(text, mode="eval").body)


def _norm(expression: str) -> str:
    return re.sub(r"\s+", "", expression)


def _operand(v: int) -> str:
    return f"({v})" if v < 0 else str(v)


def parse_number(text: str) -> Optional[Union[int, float]]:
    """"1,825" / " 1825 " / "1825." / "-3" -> a number; None when the text is not a single number."""
    t = re.sub(r"[\s,_]", "", text).rstrip(".").replace("\u2212", "-")
    if not re.fullmatch(r"[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d{1,3})?", t) or len(t) > 400:
        return None
    try:
        return int(t)
    except ValueError:
        return float(t)


class CalculatorEnv(ToolEnv):
    """Arithmetic with a calculator tool: compute an integer expression such as (37*49)+12 and answer with the number.

    kwargs: min_ops/max_ops (operators per expression, + - *), max_operand (operands in 1..max_operand),
    expert_stepwise (the expert evaluates one operation per calc call, innermost first), plus ToolEnv's
    max_turns, parser, tool_timeout_s, invalid_penalty. Reward 1.0 for the exact value, else 0.0.
    """

    default_env_id = "agentrl/Calculator-v0"

    def __init__(self, min_ops: int = 1, max_ops: int = 2, max_operand: int = 99, expert_stepwise: bool = False,
                 **kwargs):
        super().__init__(**kwargs)
        if not 1 <= min_ops <= max_ops:
            raise ValueError(f"need 1 <= min_ops <= max_ops, got min_ops={min_ops}, max_ops={max_ops}")
        if max_operand < 1:
            raise ValueError(f"max_operand must be >= 1, got {max_operand}")
        self.min_ops, self.max_ops, self.max_operand = int(min_ops), int(max_ops), int(max_operand)
        self.expert_stepwise = bool(expert_stepwise)
        self.computed: dict[str, str] = {}  # normalised expression -> result text, from successful calc calls

    # ------------------------------------------------------------------ tasks
    def tools(self) -> list[Callable]:
        return [calc]

    def system_prompt(self) -> str:
        return ("You are a careful assistant that solves arithmetic problems with a calculator tool.\n"
                + self.parser.format_instructions(self.toolset.schemas)
                + "\nThe answer must be a single number, e.g. <answer>42</answer>.")

    def sample_task(self, rng: np.random.Generator, split: str) -> Task:
        for _ in range(10_000):
            n_ops = int(rng.integers(self.min_ops, self.max_ops + 1))
            task = self.build_task({"expression": _random_expr(rng, n_ops, self.max_operand).render()})
            if task.split == split:
                return task
        raise RuntimeError(f"could not sample a {split!r} task; widen max_ops/max_operand")

    def task_key(self, options: dict) -> str:
        return _norm(str(options["expression"]))

    def build_task(self, options: dict) -> Task:
        expression = str(options["expression"])
        key = self.task_key(options)
        return Task(id=content_id("calc", key), env_id=self.env_id, options={"expression": expression},
                    answer=int(safe_eval(expression)), split=split_of(key, self.held_out_fraction))

    def task_prompt(self, task: Task) -> str:
        return f"Compute {task.options['expression']}."

    # ------------------------------------------------------------------ episode
    def on_reset(self) -> None:
        self.computed = {}

    def on_tool_results(self, results: list[ToolResult]) -> None:
        for r in results:
            expression = r.call.arguments.get("expression")
            if r.ok and r.call.name == "calc" and isinstance(expression, str):
                self.computed[_norm(expression)] = r.content.strip()

    def score_answer(self, answer: str) -> tuple[float, bool]:
        value = parse_number(answer)
        ok = value is not None and abs(value - self.task.answer) < 1e-9
        return (1.0 if ok else 0.0), ok

    # ------------------------------------------------------------------ demonstrations
    def _answer(self, value: Union[int, float]) -> str:
        return f"<answer>{format_number(value)}</answer>"

    def _call(self, expression: str) -> str:
        if self.parser.name == "hermes":
            return "<tool_call>" + json.dumps({"name": "calc", "arguments": {"expression": expression}}) + "</tool_call>"
        return f"<calc>{expression}</calc>"

    def expert_action(self) -> str:
        """Call calc on the full expression (or one operation at a time, innermost first) until it is computed,
        then answer. With a single turn left, answer directly (a tool call would be cut off by truncation)."""
        expression = self.task.options["expression"]
        if _norm(expression) in self.computed or self.turns_left <= 1:
            return self._answer(self.task.answer)
        if not self.expert_stepwise:
            return self._call(expression)
        step = self._reduce(_parse_expr(expression))
        return self._answer(self.task.answer) if isinstance(step, int) else self._call(step)

    def _reduce(self, node: _Expr) -> Union[int, str]:
        """The value of `node` if every operation in it was computed, else the next operation to compute."""
        if node.op is None:
            return node.value
        left, right = self._reduce(node.left), self._reduce(node.right)
        if isinstance(left, str) or isinstance(right, str):
            return left if isinstance(left, str) else right
        step = f"{_operand(left)}{node.op}{_operand(right)}"
        known = parse_number(self.computed.get(_norm(step), ""))
        return int(known) if isinstance(known, int) else step

    def corrupt_action(self, rng: np.random.Generator) -> str:
        """Answer directly, without the tool, with a wrong number (true value + a nonzero offset)."""
        offset = int(rng.integers(1, 11)) * (1 if rng.random() < 0.5 else -1)
        return self._answer(self.task.answer + offset)
