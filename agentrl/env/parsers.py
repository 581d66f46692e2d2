"""Tool-call parsing: one registry (`PARSERS`) used identically in training, evaluation and serving.

A parser turns the assistant's whole reply into a `ParsedAction`: tool calls, a final answer, or an error.

Rules shared by every parser here:
- `<think>...</think>` blocks are ignored (reasoning may mention tags without calling anything).
- If a reply contains both tool calls and an answer, whichever comes FIRST wins: tool calls that precede the
  first `<answer>` are executed (and the later answer is ignored); an answer that precedes every tool call ends
  the episode (and the later calls are ignored).
- Tags must be closed. Generators that stop on `stop_strings()` must keep the stop string in the output
  (vLLM: `include_stop_str_in_output=True`), otherwise the last tag is unclosed and the action is invalid.
- A reply with nothing actionable (no complete tool call or answer; an unknown tag; bad JSON) gets `error` set.
- Call ids are deterministic per turn: "call_0", "call_1", ...
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Optional, Union

from ..registry import Registry
from .tools import ToolCall

PARSERS: Registry = Registry("tool-call parser")

_THINK = re.compile(r"<think>.*?</think>", re.DOTALL)
_ANY_TAG_PAIR = re.compile(r"<([A-Za-z_][\w\-]*)>.*?</\1>", re.DOTALL)
_TAG_NAME = re.compile(r"[A-Za-z_][\w\-]*")


@dataclass
class ParsedAction:
    """What a reply asks for. Exactly one of: tool_calls non-empty, answer set, error set."""

    tool_calls: list[ToolCall] = field(default_factory=list)
    answer: Optional[str] = None
    error: Optional[str] = None

    @property
    def valid(self) -> bool:
        return self.error is None


class Parser:
    """Base class: `parse`, `stop_strings`, plus prompt text describing the format."""

    name = "base"

    def parse(self, text: str, tool_names: list[str]) -> ParsedAction:
        raise NotImplementedError

    def stop_strings(self, tool_names: list[str]) -> list[str]:
        raise NotImplementedError

    def format_instructions(self, schemas: list[dict]) -> str:
        """Paragraph for a system prompt: how to call each tool and how to answer."""
        raise NotImplementedError

    def format_hint(self, tool_names: list[str]) -> str:
        """One line reminding the agent of the format (appended to error observations)."""
        raise NotImplementedError


def _answer(inner: str) -> ParsedAction:
    inner = inner.strip()
    if not inner:
        return ParsedAction(error="empty <answer></answer>")
    return ParsedAction(answer=inner)


def _unclosed(text: str, tags: list[str]) -> Optional[str]:
    for tag in tags:
        i = text.find(f"<{tag}>")
        if i >= 0 and text.find(f"</{tag}>", i) < 0:
            return f"unclosed tag <{tag}> (expected </{tag}>)"
        if i < 0 and f"</{tag}>" in text:
            return f"closing tag </{tag}> without an opening <{tag}>"
    return None


def _unknown_tag(text: str, known: list[str]) -> Optional[str]:
    """The first closed tag pair <x>...</x> whose name is neither known nor "think", as an error message."""
    for m in _ANY_TAG_PAIR.finditer(text):
        if m.group(1) != "think" and m.group(1) not in known:
            return f"unknown tag <{m.group(1)}>; known tags: {', '.join(f'<{k}>' for k in known)}"
    return None


def _first_param(schema: dict) -> str:
    params = schema["function"]["parameters"]
    return (params.get("required") or list(params.get("properties", {})) or ["input"])[0]


@PARSERS.register("tags")
class TagParser(Parser):
    """Search-R1 / ARPO style: `<calc>3*4</calc>` calls tool `calc` with its first required parameter set to
    the stripped inner text; `<answer>x</answer>` is the final answer."""

    name = "tags"

    def parse(self, text: str, tool_names: list[str]) -> ParsedAction:
        text = _THINK.sub("", text)
        names = [n for n in tool_names if _TAG_NAME.fullmatch(n) and n != "answer"]
        alt = "|".join(re.escape(n) for n in names + ["answer"])
        matches = list(re.finditer(rf"<({alt})>(.*?)</\1>", text, re.DOTALL))
        if not matches:
            return ParsedAction(error=self._diagnose(text, names))
        if matches[0].group(1) == "answer":
            return _answer(matches[0].group(2))
        calls = []
        for m in matches:
            if m.group(1) == "answer":
                break
            calls.append(ToolCall(name=m.group(1), arguments={}, id=f"call_{len(calls)}", raw=m.group(2).strip()))
        return ParsedAction(tool_calls=calls)

    def _diagnose(self, text: str, names: list[str]) -> str:
        known = names + ["answer"]
        return _unclosed(text, known) or _unknown_tag(text, known) or "no tool call or answer found"

    def stop_strings(self, tool_names: list[str]) -> list[str]:
        return [f"</{n}>" for n in tool_names] + ["</answer>"]

    def format_instructions(self, schemas: list[dict]) -> str:
        lines = ["To use a tool, write its tag around the input; the result comes back in the next message:"]
        for s in schemas:
            fn = s["function"]
            lines.append(f"- <{fn['name']}>{_first_param(s)}</{fn['name']}>: {fn['description']}")
        lines.append("When you know the final answer, write <answer>your answer</answer>.")
        return "\n".join(lines)

    def format_hint(self, tool_names: list[str]) -> str:
        calls = " or ".join(f"<{n}>...</{n}>" for n in tool_names)
        use = f"Use {calls} to call a tool, or " if calls else "Use "
        return use + "<answer>...</answer> to give your final answer."


@PARSERS.register("hermes")
class HermesParser(Parser):
    """Hermes / Qwen style: `<tool_call>{"name": ..., "arguments": {...}}</tool_call>` (several allowed);
    the final answer is `<answer>...</answer>`. `arguments` may also be a JSON-encoded string."""

    name = "hermes"
    _CALL = re.compile(r"<tool_call>(.*?)</tool_call>", re.DOTALL)
    _ANSWER = re.compile(r"<answer>(.*?)</answer>", re.DOTALL)

    def parse(self, text: str, tool_names: list[str]) -> ParsedAction:
        text = _THINK.sub("", text)
        calls = list(self._CALL.finditer(text))
        answer = self._ANSWER.search(text)
        if answer and (not calls or answer.start() < calls[0].start()):
            return _answer(answer.group(1))
        if not calls:
            known = ["tool_call", "answer"]
            return ParsedAction(error=_unclosed(text, known) or _unknown_tag(text, known)
                                or "no tool call or answer found")
        out = []
        for m in calls:
            if answer and m.start() > answer.start():
                break
            call = self._decode(m.group(1), tool_names, f"call_{len(out)}")
            if isinstance(call, str):
                return ParsedAction(error=call)
            out.append(call)
        return ParsedAction(tool_calls=out)

    @staticmethod
    def _decode(inner: str, tool_names: list[str], call_id: str) -> Union[ToolCall, str]:
        """-> ToolCall, or an error string."""
        try:
            obj = json.loads(inner.strip())
        except (ValueError, RecursionError) as e:
            return f"bad JSON in <tool_call>: {str(e)[:200]}"
        if not isinstance(obj, dict) or not isinstance(obj.get("name"), str):
            return 'a <tool_call> must hold a JSON object with a string "name"'
        args = obj.get("arguments", obj.get("parameters", {}))
        if isinstance(args, str):
            try:
                args = json.loads(args) if args.strip() else {}
            except (ValueError, RecursionError) as e:
                return f"bad JSON in the arguments of <tool_call>: {str(e)[:200]}"
        if not isinstance(args, dict):
            return '"arguments" of a <tool_call> must be a JSON object'
        if obj["name"] not in tool_names:
            return f"unknown tool {obj['name'][:100]!r}; available: {', '.join(tool_names) or '(none)'}"
        return ToolCall(name=obj["name"], arguments=args, id=call_id)

    def stop_strings(self, tool_names: list[str]) -> list[str]:
        return ["</tool_call>", "</answer>"]

    def format_instructions(self, schemas: list[dict]) -> str:
        lines = ["To use a tool, write a JSON object inside <tool_call></tool_call> tags, for example:"]
        for s in schemas:
            fn = s["function"]
            args = {p: "..." for p in fn["parameters"].get("required", [])}
            lines.append("<tool_call>" + json.dumps({"name": fn["name"], "arguments": args}) + "</tool_call>")
        lines.append("Available tools:")
        for s in schemas:
            fn = s["function"]
            params = ", ".join(f"{k}: {v.get('type', 'any')}" for k, v in fn["parameters"]["properties"].items())
            lines.append(f"- {fn['name']}({params}): {fn['description']}")
        lines.append("The result comes back in the next message. "
                     "When you know the final answer, write <answer>your answer</answer>.")
        return "\n".join(lines)

    def format_hint(self, tool_names: list[str]) -> str:
        return ('Use <tool_call>{"name": "<tool>", "arguments": {...}}</tool_call> to call a tool '
                f"(available: {', '.join(tool_names) or 'none'}), or <answer>...</answer> to give your final answer.")


def make_parser(parser: Union[str, Parser, type]) -> Parser:
    """A registry name ("tags", "hermes", "pkg.mod:Class"), a Parser class, or an instance -> instance."""
    if isinstance(parser, str):
        parser = PARSERS.get(parser)
    return parser() if isinstance(parser, type) else parser
