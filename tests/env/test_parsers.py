"""Tool-call parsers: tags (Search-R1/ARPO) and hermes (JSON), happy paths and malformed input."""
import pytest

from agentrl.env.parsers import PARSERS, HermesParser, TagParser, make_parser

TOOLS = ["calc", "search"]


def test_registry():
    assert {"tags", "hermes"} <= set(PARSERS.names())
    assert isinstance(make_parser("tags"), TagParser) and isinstance(make_parser(HermesParser), HermesParser)


def test_tags_single_call():
    p = TagParser().parse("I will compute. <calc> 3*4 </calc>", TOOLS)
    assert p.valid and p.answer is None
    (c,) = p.tool_calls
    assert (c.name, c.raw, c.id, c.arguments) == ("calc", "3*4", "call_0", {})


def test_tags_several_calls_ids():
    p = TagParser().parse("<calc>1+1</calc> and <search>cats</search>", TOOLS)
    assert [(c.name, c.raw, c.id) for c in p.tool_calls] == [("calc", "1+1", "call_0"), ("search", "cats", "call_1")]


def test_tags_answer():
    p = TagParser().parse("<think>maybe <calc>1</calc></think> so <answer> 42 </answer>", TOOLS)
    assert p.valid and p.answer == "42" and p.tool_calls == []


def test_tags_first_wins():
    p = TagParser().parse("<calc>2*3</calc> <answer>6</answer> <calc>9</calc>", TOOLS)
    assert [c.raw for c in p.tool_calls] == ["2*3"] and p.answer is None
    p = TagParser().parse("<answer>6</answer><calc>2*3</calc>", TOOLS)
    assert p.answer == "6" and p.tool_calls == []


@pytest.mark.parametrize("text, fragment", [
    ("<calc>3*4", "unclosed tag <calc>"),
    ("<answer>3", "unclosed tag <answer>"),
    ("3</answer>", "without an opening <answer>"),
    ("<python>print(1)</python>", "unknown tag <python>"),
    ("<answer> </answer>", "empty"),
    ("just text", "no tool call or answer"),
    ("", "no tool call or answer"),
])
def test_tags_malformed(text, fragment):
    p = TagParser().parse(text, TOOLS)
    assert not p.valid and fragment in p.error and p.tool_calls == [] and p.answer is None


def test_tags_stop_strings_and_hint():
    assert TagParser().stop_strings(TOOLS) == ["</calc>", "</search>", "</answer>"]
    assert "<calc>...</calc>" in TagParser().format_hint(TOOLS)


def test_hermes_calls():
    text = ('<tool_call>{"name": "calc", "arguments": {"expression": "1+2"}}</tool_call>\n'
            '<tool_call>{"name": "search", "arguments": "{\\"query\\": \\"x\\"}"}</tool_call>')
    p = HermesParser().parse(text, TOOLS)
    assert p.valid
    assert [(c.name, c.arguments, c.id) for c in p.tool_calls] == [
        ("calc", {"expression": "1+2"}, "call_0"), ("search", {"query": "x"}, "call_1")]


def test_hermes_answer_and_order():
    assert HermesParser().parse("<answer>7</answer>", TOOLS).answer == "7"
    p = HermesParser().parse('<answer>7</answer><tool_call>{"name": "calc", "arguments": {}}</tool_call>', TOOLS)
    assert p.answer == "7" and not p.tool_calls
    p = HermesParser().parse('<tool_call>{"name": "calc", "arguments": {}}</tool_call><answer>7</answer>', TOOLS)
    assert p.answer is None and len(p.tool_calls) == 1


@pytest.mark.parametrize("text, fragment", [
    ("<tool_call>{not json}</tool_call>", "bad JSON"),
    ('<tool_call>{"arguments": {}}</tool_call>', '"name"'),
    ('<tool_call>{"name": "rm", "arguments": {}}</tool_call>', "unknown tool 'rm'"),
    ('<tool_call>{"name": "calc", "arguments": [1]}</tool_call>', "must be a JSON object"),
    ('<tool_call>{"name": "calc", "arguments": "{bad"}</tool_call>', "bad JSON in the arguments"),
    ('<tool_call>{"name": "calc"', "unclosed tag <tool_call>"),
    ("<calc>1</calc>", "unknown tag <calc>"),
    ("hello", "no tool call or answer"),
])
def test_hermes_malformed(text, fragment):
    p = HermesParser().parse(text, TOOLS)
    assert not p.valid and fragment in p.error


def test_hermes_stop_strings_and_instructions():
    assert HermesParser().stop_strings(TOOLS) == ["</tool_call>", "</answer>"]
    schema = {"type": "function", "function": {"name": "calc", "description": "Calc.", "parameters": {
        "type": "object", "properties": {"expression": {"type": "string"}}, "required": ["expression"]}}}
    text = HermesParser().format_instructions([schema])
    assert '<tool_call>{"name": "calc", "arguments": {"expression": "..."}}</tool_call>' in text
    assert "<calc>expression</calc>" in TagParser().format_instructions([schema])
