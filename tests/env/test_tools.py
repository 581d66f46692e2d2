"""tool_schema from typed functions; ToolSet execution, errors, timeouts, truncation."""
import threading
import time
from typing import Optional

import pytest

from agentrl.env.tools import ToolCall, ToolSet, parse_docstring, tool_schema


def search(query: str, k: int = 3, site: Optional[str] = None, tags: list[str] = None, exact: bool = False,
           weight: float = 1.0) -> str:
    """Search the web for a query.

    Returns the top results as text.

    Args:
        query: What to look for.
        k (int): How many results
            to return.
        site: Restrict to one site.
        tags: Filter tags.
        exact: Exact match only.
        weight: Ranking weight.

    Returns:
        The results.
    """
    return f"{query}:{k}"


def test_schema_from_signature_and_docstring():
    s = tool_schema(search)
    assert s["type"] == "function"
    fn = s["function"]
    assert fn["name"] == "search"
    assert fn["description"] == "Search the web for a query."
    params = fn["parameters"]
    assert params["type"] == "object" and params["required"] == ["query"]
    props = params["properties"]
    assert props["query"] == {"type": "string", "description": "What to look for."}
    assert props["k"] == {"type": "integer", "description": "How many results to return."}
    assert props["site"]["type"] == "string"
    assert props["tags"] == {"type": "array", "items": {"type": "string"}, "description": "Filter tags."}
    assert props["exact"]["type"] == "boolean" and props["weight"]["type"] == "number"
    assert "Returns" not in str(props)


def test_schema_no_docstring_and_optional_required():
    def f(a: int, b: Optional[int]):
        return a

    s = tool_schema(f)["function"]
    assert s["description"] == "" and s["parameters"]["required"] == ["a"]
    assert s["parameters"]["properties"]["b"] == {"type": "integer"}


def test_parse_docstring_without_args():
    assert parse_docstring("One line.\nmore.\n\nDetails.") == ("One line. more.", {})


def add(a: int, b: int) -> int:
    """Add two integers."""
    return a + b


def boom(x: str) -> str:
    """Always fails."""
    raise ZeroDivisionError("division by zero")


@pytest.fixture
def sleepy():
    release = threading.Event()

    def sleepy(x: str) -> str:
        """Hangs until released."""
        release.wait(10)
        return "late"

    yield sleepy
    release.set()  # let the abandoned thread finish


def test_run_ok_and_coercion_and_binding():
    ts = ToolSet([add, search], timeout_s=1.0)
    assert ts.names == ["add", "search"] and len(ts.schemas) == 2
    out = ts.run([ToolCall("add", {"a": 2, "b": "3"}, "call_0"), ToolCall("search", {}, "call_1", raw="cats")])
    assert [(r.ok, r.content) for r in out] == [(True, "5"), (True, "cats:3")]
    assert out[1].call.arguments == {"query": "cats"}


def test_errors_are_observations():
    ts = ToolSet([add, boom], timeout_s=1.0)
    r_unknown, r_missing, r_extra, r_type, r_exc = ts.run([
        ToolCall("foo", {}, "call_0"), ToolCall("add", {"a": 1}, "call_1"),
        ToolCall("add", {"a": 1, "b": 2, "c": 3}, "call_2"), ToolCall("add", {"a": "x", "b": 1}, "call_3"),
        ToolCall("boom", {"x": "1"}, "call_4"),
    ])
    assert not any(r.ok for r in (r_unknown, r_missing, r_extra, r_type, r_exc))
    assert r_unknown.content == "Error: unknown tool 'foo'; available: add, boom"
    assert "missing a required argument: 'b'" in r_missing.content
    assert "unexpected keyword argument 'c'" in r_extra.content
    assert r_type.content.startswith("Error: bad arguments for tool 'add'")
    assert r_exc.content == "Error: ZeroDivisionError: division by zero"


def test_hung_tool_times_out_without_blocking(sleepy):
    ts = ToolSet([sleepy, add], timeout_s=0.2)
    t0 = time.monotonic()
    hung, ok = ts.run([ToolCall("sleepy", {"x": "a"}, "call_0"), ToolCall("add", {"a": 1, "b": 1}, "call_1")])
    elapsed = time.monotonic() - t0
    assert elapsed < 0.6, elapsed
    assert not hung.ok and hung.content == "Error: tool 'sleepy' timed out after 0.2s"
    assert ok.ok and ok.content == "2"


def test_calls_run_concurrently():
    def nap(s: float) -> str:
        """Sleep."""
        time.sleep(s)
        return "done"

    ts = ToolSet([nap], timeout_s=2.0)
    t0 = time.monotonic()
    out = ts.run([ToolCall("nap", {"s": 0.2}, f"call_{i}") for i in range(6)])
    assert all(r.ok for r in out) and time.monotonic() - t0 < 0.8


def test_output_truncated_with_marker():
    def big(n: int) -> str:
        """Big output."""
        return "a" * n

    (r,) = ToolSet([big], timeout_s=1.0, max_output_chars=100).run([ToolCall("big", {"n": 1000})])
    assert r.ok and r.content.startswith("a" * 100) and "[truncated 900 chars]" in r.content
    assert len(r.content) < 140


def test_duplicate_tool_names_raise():
    with pytest.raises(ValueError, match="duplicate"):
        ToolSet([add, add])
