"""Prefix invariant of the shipped chat template (DESIGN.md §4)."""
from agentrl.rollout.template import ChatTokenizer
from agentrl.types import Message

TOOLS = [{"type": "function", "function": {"name": "calc", "description": "Evaluate arithmetic.",
                                           "parameters": {"type": "object", "properties": {
                                               "expression": {"type": "string"}}, "required": ["expression"]}}}]


def test_incremental_ids_decode_to_the_template_rendering(tokenizer):
    chat = ChatTokenizer(tokenizer)
    msgs = [Message("system", "Use the calc tool."), Message("user", "Compute (37*49)+12.")]
    ctx = chat.prompt_ids(msgs, tools=TOOLS)
    conv = list(msgs)
    turns = [
        ("<calc>37*49</calc>", [Message("tool", "1813", name="calc", tool_call_id="call_0")], False),
        ("<calc>1813+12</calc>", [Message("tool", "1825", name="calc", tool_call_id="call_0")], True),
        ("oops no tag", [Message("user", "Invalid action: use <calc>expr</calc> or <answer>n</answer>.")], False),
    ]
    for action, obs, with_eos in turns:
        action_ids = chat.encode(action) + ([tokenizer.eos_token_id] if with_eos else [])
        obs_ids = chat.obs_ids(action_ids, obs)
        before = list(ctx)
        ctx = ctx + action_ids + obs_ids
        assert ctx[: len(before)] == before  # context(k+1) == context(k) + action + obs
        conv += [Message("assistant", action)] + obs
        assert chat.decode(ctx) == chat.render(conv, tools=TOOLS, add_generation_prompt=True)


def test_assistant_suffix_and_eos_handling(tokenizer):
    chat = ChatTokenizer(tokenizer)
    assert chat.assistant_suffix == "<|im_end|>\n"
    assert chat.closing_text(chat.encode("x")) == "<|im_end|>\n"
    assert chat.closing_text(chat.encode("x") + [tokenizer.eos_token_id]) == "\n"
