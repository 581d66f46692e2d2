"""Tools: JSON schemas from typed functions, tool calls/results, and a ToolSet that runs calls with timeouts.

A tool is a plain typed Python function; its signature, type hints and Google-style docstring give the
OpenAI-style schema. `ToolSet.run` executes a turn's calls concurrently on daemon threads with a per-call
wall-clock timeout; a hung tool is abandoned (its thread keeps running in the background but never blocks an
episode or interpreter shutdown).
"""
from __future__ import annotations

import inspect
import json
import queue
import re
import threading
import time
import typing
from concurrent.futures import Future
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Optional

_JSON_TYPES = {str: "string", int: "integer", float: "number", bool: "boolean", list: "array", dict: "object"}


# ----------------------------------------------------------------------------------------------- schemas
def _json_type(hint: Any) -> dict:
    """Python type hint -> JSON-schema fragment (str/int/float/bool/list[X]/dict/Optional[X])."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is typing.Union or (origin is not None and getattr(origin, "__name__", "") == "UnionType"):
        rest = [a for a in args if a is not type(None)]
        return _json_type(rest[0]) if len(rest) == 1 else {}
    if origin in (list, tuple, set) or hint in (list, tuple, set):
        out: dict = {"type": "array"}
        if args and args[0] is not Ellipsis:
            out["items"] = _json_type(args[0])
        return out
    if origin is dict or hint is dict:
        return {"type": "object"}
    if hint in _JSON_TYPES:
        return {"type": _JSON_TYPES[hint]}
    return {}  # Any / unknown: no constraint


def _is_optional(hint: Any) -> bool:
    return type(None) in typing.get_args(hint)


_SECTIONS = ("Args:", "Arguments:", "Parameters:")
_PARAM_LINE = re.compile(r"^(\*{0,2}\w+)\s*(\([^)]*\))?\s*:\s*(.*)$")


def parse_docstring(doc: Optional[str]) -> tuple[str, dict[str, str]]:
    """Google-style docstring -> (description = first paragraph, {param: description} from "Args:")."""
    lines = inspect.cleandoc(doc or "").splitlines()
    description = " ".join(_first_paragraph(lines))
    params: dict[str, str] = {}
    try:
        start = next(i for i, ln in enumerate(lines) if ln.strip() in _SECTIONS) + 1
    except StopIteration:
        return description, params
    body = lines[start:]
    indent = next((_indent(ln) for ln in body if ln.strip()), 0)
    current = None
    for line in body:
        if not line.strip():
            continue
        if _indent(line) < indent or indent == 0:
            break  # the next section (Returns:, Raises:, ...)
        m = _PARAM_LINE.match(line.strip())
        if _indent(line) == indent and m:
            current = m.group(1).lstrip("*")
            params[current] = m.group(3).strip()
        elif current is not None:
            params[current] = (params[current] + " " + line.strip()).strip()
    return description, params


def _first_paragraph(lines: list[str]) -> list[str]:
    out = []
    for line in lines:
        if not line.strip() or line.strip() in _SECTIONS:
            break
        out.append(line.strip())
    return out


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip())


def tool_schema(fn: Callable) -> dict:
    """OpenAI-style function schema from a typed function's signature, hints and docstring."""
    sig = inspect.signature(fn)
    hints = typing.get_type_hints(fn)
    description, param_docs = parse_docstring(fn.__doc__)
    properties: dict[str, dict] = {}
    required: list[str] = []
    for name, p in sig.parameters.items():
        if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            continue
        hint = hints.get(name, Any)
        prop = _json_type(hint)
        if name in param_docs:
            prop["description"] = param_docs[name]
        properties[name] = prop
        if p.default is p.empty and not _is_optional(hint):
            required.append(name)
    return {
        "type": "function",
        "function": {
            "name": fn.__name__,
            "description": description,
            "parameters": {"type": "object", "properties": properties, "required": required},
        },
    }


# ----------------------------------------------------------------------------------------------- records
@dataclass(frozen=True)
class ToolCall:
    """One requested tool call. `raw` is positional text (tag parsers) that ToolSet binds to the tool's first
    required parameter when `arguments` does not already set it."""

    name: str
    arguments: dict = field(default_factory=dict)
    id: str = "call_0"
    raw: Optional[str] = None


@dataclass(frozen=True)
class ToolResult:
    call: ToolCall
    content: str
    ok: bool


# ----------------------------------------------------------------------------------------------- executor
class _DaemonPool:
    """A growing pool of daemon worker threads: idle workers are reused, a new one starts when none is idle.

    Unlike ThreadPoolExecutor, its threads are daemons and are never joined at exit, so a hung tool cannot
    block shutdown. At most `max_workers` threads; beyond that, calls queue (and time out if all are hung).
    """

    def __init__(self, max_workers: int = 256):
        self.max_workers = max_workers
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._idle = threading.Semaphore(0)
        self._lock = threading.Lock()
        self._n_threads = 0

    def submit(self, fn: Callable, *args, **kwargs) -> Future:
        fut: Future = Future()
        self._queue.put((fut, fn, args, kwargs))
        if not self._idle.acquire(timeout=0):
            with self._lock:
                if self._n_threads < self.max_workers:
                    self._n_threads += 1
                    threading.Thread(target=self._worker, daemon=True, name="agentrl-tool").start()
        return fut

    def _worker(self) -> None:
        while True:
            fut, fn, args, kwargs = self._queue.get()
            if fut.set_running_or_notify_cancel():
                try:
                    fut.set_result(fn(*args, **kwargs))
                except BaseException as e:  # noqa: BLE001 - delivered to the caller as an error result
                    fut.set_exception(e)
            del fut, fn, args, kwargs
            self._idle.release()


_POOL = _DaemonPool()


# ----------------------------------------------------------------------------------------------- ToolSet
def truncate(text: str, max_chars: int) -> str:
    if len(text) <= max_chars:
        return text
    return text[:max_chars] + f"\n... [truncated {len(text) - max_chars} chars]"


def _coerce(value: Any, hint: Any) -> Any:
    """Convert string values to int/float/bool when the hint asks for them; raise ValueError otherwise."""
    target = _json_type(hint).get("type")
    if not isinstance(value, str) or target in (None, "string"):
        return value
    if target == "integer":
        return int(value.strip())
    if target == "number":
        return float(value.strip())
    if target == "boolean" and value.strip().lower() in ("true", "false"):
        return value.strip().lower() == "true"
    raise ValueError(f"expected {target}, got a string")


class ToolSet:
    """The tools an env exposes. `run(calls)` executes them concurrently with a per-call timeout."""

    def __init__(self, tools: list[Callable], timeout_s: float = 5.0, max_output_chars: int = 2000):
        self.tools: dict[str, Callable] = {}
        for fn in tools:
            if fn.__name__ in self.tools:
                raise ValueError(f"duplicate tool name {fn.__name__!r}")
            self.tools[fn.__name__] = fn
        self.timeout_s = float(timeout_s)
        self.max_output_chars = int(max_output_chars)
        self._schemas = [tool_schema(fn) for fn in tools]
        self._hints = {name: typing.get_type_hints(fn) for name, fn in self.tools.items()}

    @property
    def schemas(self) -> list[dict]:
        return json.loads(json.dumps(self._schemas))  # a fresh deep copy each time

    @property
    def names(self) -> list[str]:
        return list(self.tools)

    def schema(self, name: str) -> dict:
        return next(s for s in self._schemas if s["function"]["name"] == name)

    def bind(self, call: ToolCall) -> ToolCall:
        """Put `call.raw` into the tool's first required parameter (or first parameter)."""
        if call.raw is None or call.name not in self.tools:
            return call
        params = self.schema(call.name)["function"]["parameters"]
        target = (params["required"] or list(params["properties"]) or [None])[0]
        if target is None or target in call.arguments:
            return call
        return replace(call, arguments={**call.arguments, target: call.raw})

    def _prepare(self, call: ToolCall) -> tuple[Optional[Callable], Any]:
        """-> (bound zero-arg callable, None) or (None, error text)."""
        if call.name not in self.tools:
            return None, f"Error: unknown tool {call.name!r}; available: {', '.join(self.names) or '(none)'}"
        fn, hints = self.tools[call.name], self._hints[call.name]
        if not isinstance(call.arguments, dict):
            return None, f"Error: bad arguments for tool {call.name!r}: arguments must be an object"
        try:
            args = {k: _coerce(v, hints.get(k, Any)) for k, v in call.arguments.items()}
            bound = inspect.signature(fn).bind(**args)
        except (TypeError, ValueError) as e:
            return None, f"Error: bad arguments for tool {call.name!r}: {e}"
        return (lambda: fn(*bound.args, **bound.kwargs)), None

    def run(self, calls: list[ToolCall]) -> list[ToolResult]:
        """Execute calls concurrently; every call gets a result (ok=False with an "Error: ..." text on failure)."""
        calls = [self.bind(c) for c in calls]
        start = time.monotonic()
        pending: list[tuple[ToolCall, Optional[Future], Optional[str]]] = []
        for call in calls:
            thunk, err = self._prepare(call)
            pending.append((call, _POOL.submit(thunk) if thunk else None, err))
        results = []
        for call, fut, err in pending:
            if fut is None:
                results.append(ToolResult(call, truncate(err, self.max_output_chars), False))
                continue
            results.append(self._collect(call, fut, start + self.timeout_s))
        return results

    def _collect(self, call: ToolCall, fut: Future, deadline: float) -> ToolResult:
        try:
            out = fut.result(timeout=max(0.0, deadline - time.monotonic()))
        except TimeoutError as e:
            if fut.done():  # the tool itself raised TimeoutError
                return ToolResult(call, truncate(_error_text(e), self.max_output_chars), False)
            fut.cancel()  # no effect once running: the thread is abandoned
            return ToolResult(call, f"Error: tool {call.name!r} timed out after {self.timeout_s}s", False)
        except (Exception, SystemExit) as e:  # noqa: BLE001 - a tool that throws gives the agent an error observation
            return ToolResult(call, truncate(_error_text(e), self.max_output_chars), False)
        text = out if isinstance(out, str) else _to_text(out)
        return ToolResult(call, truncate(text, self.max_output_chars), True)


def _to_text(out: Any) -> str:
    try:
        return json.dumps(out, ensure_ascii=False) if isinstance(out, (dict, list)) else str(out)
    except (TypeError, ValueError):
        return str(out)


def _error_text(e: BaseException) -> str:
    return f"Error: {type(e).__name__}: {e}" if str(e) else f"Error: {type(e).__name__}"
