"""Deterministic synthetic text for training the tiny models' BPE tokenizer (no downloads, no data files).

The corpus covers what the bundled environments put in front of a policy: arithmetic, numbers, tag tool calls
(``<calc>``, ``<answer>``, ``<search>``, ``<information>``), hermes ``<tool_call>`` JSON, JSON tool schemas,
short English sentences and whole conversations rendered in the ChatML-like chat template.
"""
from __future__ import annotations

import json
import random
from typing import Iterator

# A few hundred common English words plus the phrases environments and feedback wrappers use.
WORDS = """
the be to of and a in that have I it for not on with he as you do at this but his by from they we say her she
or an will my one all would there their what so up out if about who get which go me when make can like time no
just him know take people into year your good some could them see other than then now look only come its over
think also back after use two how our work first well way even new want because any these give day most us is
are was were been has had did does done said says made find found tell ask asked answer answers question
questions number numbers result results value values compute calculate calculator evaluate expression
expressions sum product difference quotient total plus minus times divided multiply add subtract divide equal
equals correct incorrect wrong right please again try tool tools call calls search query information document
documents passage context step steps final reasoning reason think thought check verify solve solution problem
problems task tasks game games move moves state action actions observation invalid valid error errors format
output input function functions argument arguments name names type string integer object required description
parameters return returns list item items word words letter letters guess guesses feedback reward score
assistant user system helpful agent model city country river mountain capital founded born wrote invented
discovered company university book song film president king queen war year years century largest smallest
first last many few more less small large big little long short high low old young early late next previous
here where why yes must should may might need needs used using get gets got read write open close start end
begin stop run runs play plays win lose won lost keep left right up down box boxes wall target player grid
row column cell empty full room door key map path found here each every both few own same such very still
never always often sometimes before between under above through during without within around against among
world water light house home school family friend friends man woman child children person place part case
point group fact hand eye life work week month line side head kind true false nothing something everything
""".split()

PHRASES = [
    "Incorrect. Please think again.", "Invalid action.", "Invalid action", "Error:", "Error",
    "Your answer is incorrect.", "Correct!", "Use the tool to compute the answer.",
    "Compute the value of the expression.", "What is the answer?", "Please put your final answer in",
    "You are a helpful assistant.", "Think step by step.", "The answer is", "No results found.",
    "Tool call failed:", "Unknown tool", "division by zero", "Reached the maximum number of turns.",
]

ENTITIES = [
    "Acme Corp", "Blue River Labs", "Northwind", "Contoso", "the Royal Society", "Lake Vostok", "Mount Kerin",
    "the Orion Bridge", "Fabrikam", "Globex", "Initech", "the Silver Library", "Port Amelia", "Westbrook College",
]

TOOL_SCHEMAS = [
    {"type": "function", "function": {
        "name": "calc", "description": "Evaluate an arithmetic expression.",
        "parameters": {"type": "object", "properties": {"expression": {
            "type": "string", "description": "The expression, e.g. (37*49)+12"}}, "required": ["expression"]}}},
    {"type": "function", "function": {
        "name": "search", "description": "Search the document collection.",
        "parameters": {"type": "object", "properties": {"query": {
            "type": "string", "description": "The search query."}}, "required": ["query"]}}},
    {"type": "function", "function": {
        "name": "python", "description": "Run a short Python program and return its output.",
        "parameters": {"type": "object", "properties": {"code": {"type": "string"}}, "required": ["code"]}}},
]


def render_chatml(messages: list[dict], tools: list[dict] | None = None, add_generation_prompt: bool = False) -> str:
    """Pure-Python twin of the Jinja chat template in ``factory.CHAT_TEMPLATE`` (tests check they agree)."""
    out, rest = [], list(messages)
    if messages and (tools or messages[0]["role"] == "system"):
        system = rest.pop(0)["content"] if messages[0]["role"] == "system" else "You are a helpful assistant."
        out.append("<|im_start|>system\n" + system)
        if tools:
            out.append("\n\n# Tools\nYou may call these tools:\n")
            out.extend(json.dumps(t, ensure_ascii=False) + "\n" for t in tools)
        out.append("<|im_end|>\n")
    out.extend(f"<|im_start|>{m['role']}\n{m['content'] or ''}<|im_end|>\n" for m in rest)
    if add_generation_prompt:
        out.append("<|im_start|>assistant\n")
    return "".join(out)


def _number(rng: random.Random) -> str:
    return str(rng.choice([rng.randint(0, 9), rng.randint(10, 99), rng.randint(100, 9999), rng.randint(0, 10**7)]))


def _expression(rng: random.Random, depth: int = 0) -> str:
    if depth >= 2 or rng.random() < 0.35:
        return _number(rng)
    left, right = _expression(rng, depth + 1), _expression(rng, depth + 1)
    expr = f"{left}{rng.choice('+-*/')}{right}"
    if rng.random() < 0.3:
        expr = expr.replace(rng.choice("+-*/"), f" {rng.choice('+-*/')} ", 1)
    return f"({expr})" if rng.random() < 0.5 else expr


def _sentence(rng: random.Random) -> str:
    words = [rng.choice(WORDS) for _ in range(rng.randint(3, 12))]
    words[0] = words[0].capitalize()
    return " ".join(words) + rng.choice([".", ".", "?", "!", ":", ","])


def _tool_text(rng: random.Random) -> str:
    expr = _expression(rng)
    kind = rng.randrange(6)
    if kind == 0:
        return f"<calc>{expr}</calc>"
    if kind == 1:
        return f"<answer>{_number(rng)}</answer>"
    if kind == 2:
        return f"<search>who founded {rng.choice(ENTITIES)}</search>"
    if kind == 3:
        return f"<information>Doc {rng.randint(1, 5)}: {_sentence(rng)} {_sentence(rng)}</information>"
    if kind == 4:
        call = {"name": "calc", "arguments": {"expression": expr}}
        return f"<tool_call>{json.dumps(call)}</tool_call>"
    return f"<think>{_sentence(rng)}</think>"


def _conversation(rng: random.Random) -> str:
    expr, value = _expression(rng), _number(rng)
    tools = rng.sample(TOOL_SCHEMAS, rng.randint(1, 2)) if rng.random() < 0.5 else None
    messages = [{"role": "user", "content": f"Compute {expr}. {rng.choice(PHRASES)}"}]
    if rng.random() < 0.5:
        messages.insert(0, {"role": "system", "content": rng.choice(PHRASES) + " " + _sentence(rng)})
    for _ in range(rng.randint(1, 3)):
        messages.append({"role": "assistant", "content": f"{_sentence(rng)} {_tool_text(rng)}"})
        role = rng.choice(["tool", "user"])
        messages.append({"role": role, "content": value if role == "tool" else rng.choice(PHRASES)})
    messages.append({"role": "assistant", "content": f"<answer>{value}</answer>"})
    return render_chatml(messages, tools)


def corpus(seed: int = 0, n: int = 6000) -> Iterator[str]:
    """Yield ``n`` deterministic training snippets of mixed kinds."""
    rng = random.Random(seed)
    makers = [
        lambda: _expression(rng) + (f" = {_number(rng)}" if rng.random() < 0.5 else ""),
        lambda: " ".join(_number(rng) for _ in range(rng.randint(1, 6))),
        lambda: _sentence(rng) + " " + _tool_text(rng),
        lambda: _sentence(rng) + " " + _sentence(rng),
        lambda: rng.choice(PHRASES) + " " + _sentence(rng),
        lambda: json.dumps(rng.choice(TOOL_SCHEMAS), ensure_ascii=False),
        lambda: _conversation(rng),
    ]
    weights = [3, 1, 3, 3, 2, 1, 4]
    for _ in range(n):
        yield rng.choices(makers, weights)[0]()
