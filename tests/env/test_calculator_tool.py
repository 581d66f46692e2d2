"""The safe calculator evaluator."""
import pytest

from agentrl.tools.calculator import CalcError, calc, safe_eval


@pytest.mark.parametrize("expr, expected", [
    ("(37*49)+12", "1825"), ("2+3*4", "14"), ("-(3-10)", "7"), ("7/2", "3.5"), ("6/3", "2"), ("7//2", "3"),
    ("7%3", "1"), ("2**10", "1024"), ("2**-1", "0.5"), (" 1 + 1 ", "2"), ("1.5*2", "3"), ("(-2)**3", "-8"),
    ("1/3", "0.333333333333"),
])
def test_results(expr, expected):
    assert calc(expr) == expected


@pytest.mark.parametrize("expr, fragment", [
    ("x+1", "Name"), ("abs(-1)", "Call"), ("__import__('os')", "Call"), ("(1).real", "Attribute"),
    ("'a'*3", "literal"), ("True+1", "literal"), ("2**1000", "exponent"), ("9**9**9**9", "exponent"),
    ("10**64*10**64", "too large"), ("1/0", "division by zero"), ("0**-1", "division by zero"),
    ("2^3", "use **"), ("1+", "syntax"), ("", "empty"), ("1+" * 150 + "1", "too long"),
    ("(-8)**0.5", "negative"), ("[1,2]", "List"), ("1 if 1 else 2", "IfExp"), ("1e308*10", "too large"), ("1e99*1e99", "too large"),
])
def test_rejects(expr, fragment):
    with pytest.raises(CalcError, match=None) as e:
        safe_eval(expr)
    assert fragment in str(e.value), str(e.value)


def test_deep_nesting_is_bounded():
    with pytest.raises(CalcError):
        safe_eval("(" * 150 + "1" + ")" * 150)
