"""A safe arithmetic calculator tool (ast-based; no names, calls, attributes or unbounded numbers)."""
from __future__ import annotations

import ast
import math
import operator
from typing import Union

Number = Union[int, float]

MAX_EXPRESSION_CHARS = 200
MAX_NODES = 100
MAX_EXPONENT = 64
MAX_MAGNITUDE = 10**100

_BINARY = {
    ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv, ast.Mod: operator.mod, ast.Pow: operator.pow,
}
_UNARY = {ast.USub: operator.neg, ast.UAdd: operator.pos}
_HINTS = {ast.BitXor: " (use ** for powers)", ast.Name: " (variables and constants are not supported)",
          ast.Call: " (function calls are not supported)"}


class CalcError(ValueError):
    """A clear, agent-facing reason why an expression was rejected."""


def safe_eval(expression: str) -> Number:
    """Evaluate an arithmetic expression: numbers, + - * / // % **, unary minus and parentheses only."""
    if not isinstance(expression, str):
        raise CalcError("the expression must be a string")
    text = expression.strip().replace("\u00d7", "*").replace("\u2212", "-")
    if not text:
        raise CalcError("empty expression")
    if len(text) > MAX_EXPRESSION_CHARS:
        raise CalcError(f"expression too long ({len(text)} chars, max {MAX_EXPRESSION_CHARS})")
    try:
        tree = ast.parse(text, mode="eval")
    except (SyntaxError, ValueError, MemoryError, RecursionError):
        raise CalcError(f"invalid syntax in {text!r}") from None
    if sum(1 for _ in ast.walk(tree)) > MAX_NODES:
        raise CalcError(f"expression too complex (max {MAX_NODES} syntax nodes)")
    return _eval(tree.body)


def _eval(node: ast.AST) -> Number:
    if isinstance(node, ast.Constant):
        if isinstance(node.value, bool) or not isinstance(node.value, (int, float)):
            raise CalcError(f"unsupported literal {node.value!r}; only numbers are allowed")
        return _check(node.value)
    if isinstance(node, ast.UnaryOp) and type(node.op) in _UNARY:
        return _check(_UNARY[type(node.op)](_eval(node.operand)))
    if isinstance(node, ast.BinOp) and type(node.op) in _BINARY:
        left, right = _eval(node.left), _eval(node.right)
        if isinstance(node.op, ast.Pow):
            _check_power(left, right)
        try:
            return _check(_BINARY[type(node.op)](left, right))
        except ZeroDivisionError:
            raise CalcError("division by zero") from None
        except OverflowError:
            raise CalcError("result too large") from None
    kind = type(getattr(node, "op", node))
    raise CalcError(f"unsupported syntax: {kind.__name__}{_HINTS.get(kind, '')}; "
                    "allowed: numbers, + - * / // % **, unary minus and parentheses")


def _check_power(base: Number, exponent: Number) -> None:
    if abs(exponent) > MAX_EXPONENT:
        raise CalcError(f"exponent {exponent} too large (max {MAX_EXPONENT})")
    if base == 0 and exponent < 0:
        raise CalcError("division by zero")
    if base < 0 and not float(exponent).is_integer():
        raise CalcError("fractional power of a negative number")


def _check(value: Number) -> Number:
    if isinstance(value, complex):
        raise CalcError("complex results are not supported")
    if isinstance(value, float) and not math.isfinite(value):
        raise CalcError("result is not a finite number")
    if abs(value) > MAX_MAGNITUDE:
        raise CalcError("result too large (max 1e100)")
    return value


def format_number(value: Number) -> str:
    """Integers (and integral floats below 1e15) as plain digits; other floats with 12 significant digits."""
    if isinstance(value, float) and value.is_integer() and abs(value) < 1e15:
        value = int(value)
    if isinstance(value, int):
        return str(value)
    return format(value, ".12g")


def calc(expression: str) -> str:
    """Evaluate an arithmetic expression and return the result.

    Supports numbers, + - * / // % ** (small exponents), unary minus and parentheses.

    Args:
        expression: The arithmetic expression to evaluate, e.g. "(37*49)+12".
    """
    return format_number(safe_eval(expression))
