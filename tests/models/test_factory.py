"""Tiny-model factory: sizes, tokenizer properties, chat template, save/reload, load errors. Offline, CPU."""
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from agentrl.models import CHAT_TEMPLATE, SIZES, build_model, build_tokenizer, init_model, load_model
from agentrl.models.corpus import TOOL_SCHEMAS, render_chatml
from agentrl.models.factory import train_backend_tokenizer

TOOL_CONVERSATION = [
    {"role": "system", "content": "Use the tool."},
    {"role": "user", "content": "Compute (37*49)+12. "},
    {"role": "assistant", "content": "Let me check.\n<calc>(37*49)+12</calc>"},
    {"role": "tool", "name": "calc", "content": "1825"},
    {"role": "user", "content": "Incorrect. Please think again."},
    {"role": "assistant", "content": "  <tool_call>{\"name\": \"calc\", \"arguments\": {\"expression\": \"3*4\"}}</tool_call>\n"},
    {"role": "tool", "content": "12"},
    {"role": "assistant", "content": "<answer>1825</answer>"},
]


@pytest.fixture(scope="module")
def tok():
    return build_tokenizer("tiny", seed=0)


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    return init_model("tiny", str(tmp_path_factory.mktemp("tiny")), seed=0)


def n_params(model):
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("size,lo,hi", [("tiny", 0.5e6, 2e6), ("small", 5e6, 10e6)])
def test_param_counts_and_vocab(size, lo, hi):
    tokenizer = build_tokenizer(size)
    model = build_model(size, tokenizer)
    assert lo <= n_params(model) <= hi
    assert len(tokenizer) == SIZES[size].vocab_size == model.config.vocab_size
    assert model.config.max_position_embeddings == 2048 and model.config.tie_word_embeddings


def test_model_init_is_seeded_and_leaves_global_rng(tok):
    state = torch.random.get_rng_state()
    a, b, c = build_model("tiny", tok, seed=1), build_model("tiny", tok, seed=1), build_model("tiny", tok, seed=2)
    assert torch.equal(torch.random.get_rng_state(), state)
    wa, wb, wc = (m.model.layers[0].mlp.up_proj.weight for m in (a, b, c))
    assert torch.equal(wa, wb) and not torch.equal(wa, wc)


def test_tokenizer_training_is_deterministic():
    first, second = train_backend_tokenizer("tiny", 0), train_backend_tokenizer("tiny", 0)
    assert first.get_vocab() == second.get_vocab()
    assert first.to_str() == second.to_str()
    assert train_backend_tokenizer("tiny", 1).to_str() != first.to_str()


def test_digits_are_single_tokens(tok):
    assert len(tok.encode("12345")) == 5
    assert tok.tokenize("x=9087") [-4:] == ["9", "0", "8", "7"]


def test_special_tokens(tok):
    assert tok.eos_token == "<|im_end|>" and tok.pad_token == "<|endoftext|>" and tok.bos_token is None
    assert tok.padding_side == "left"
    for special in ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]:
        ids = tok.encode(special)
        assert len(ids) == 1 and tok.convert_ids_to_tokens(ids) == [special]
    assert tok.encode("hi") == tok("hi")["input_ids"]  # no BOS/EOS added automatically
    assert tok.decode(tok.encode("hi<|im_end|>"), skip_special_tokens=True) == "hi"


@pytest.mark.parametrize("text", [
    "Compute (37*49)+12 = 1825", "  leading and trailing spaces  ", "tabs\tand\nnewlines\n\n",
    "héllo wörld — 日本語 🤖 ∑x²", "<|im_start|>user\nhi<|im_end|>\n", "", "\x00\x7f weird bytes",
])
def test_roundtrip(tok, text):
    assert tok.decode(tok.encode(text)) == text


def test_chat_template_roles_and_tools(tok):
    assert tok.chat_template == CHAT_TEMPLATE
    msgs = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "<answer>3</answer>"},
            {"role": "tool", "name": "calc", "content": "3"}]
    out = tok.apply_chat_template(msgs, tokenize=False)
    assert out == ("<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n<answer>3</answer><|im_end|>\n"
                   "<|im_start|>tool\n3<|im_end|>\n")
    sys_only = tok.apply_chat_template([{"role": "system", "content": "S"}] + msgs[:1], tokenize=False)
    assert sys_only == "<|im_start|>system\nS<|im_end|>\n<|im_start|>user\nhi<|im_end|>\n"
    with_tools = tok.apply_chat_template(msgs[:1], tools=TOOL_SCHEMAS[:2], tokenize=False)
    assert with_tools.startswith("<|im_start|>system\nYou are a helpful assistant.\n\n# Tools\n"
                                 "You may call these tools:\n{\"type\": \"function\"")
    assert with_tools.count("\n{\"type\": \"function\"") == 2
    assert with_tools.endswith("}\n<|im_end|>\n<|im_start|>user\nhi<|im_end|>\n")


@pytest.mark.parametrize("tools", [None, TOOL_SCHEMAS])
def test_chat_template_prefix_property(tok, tools):
    render = lambda msgs, gen=False: tok.apply_chat_template(  # noqa: E731
        msgs, tools=tools, tokenize=False, add_generation_prompt=gen)
    for convo in (TOOL_CONVERSATION, TOOL_CONVERSATION[1:]):
        full = render(convo)
        assert full == render_chatml(convo, tools)
        for k in range(1, len(convo) + 1):  # transformers refuses an empty conversation
            assert full.startswith(render(convo[:k]))
            assert render(convo[:k], True) == render(convo[:k]) + "<|im_start|>assistant\n"
        # message contents survive verbatim (no stripping)
        assert "  <tool_call>" in full and "</tool_call>\n<|im_end|>" in full
        # at message boundaries token ids are prefixes too (the special tokens split the turns)
        full_ids = tok.encode(full)
        for k in range(1, len(convo) + 1):
            next_is_assistant = k < len(convo) and convo[k]["role"] == "assistant"
            prefix_ids = tok.encode(render(convo[:k], next_is_assistant))
            assert full_ids[: len(prefix_ids)] == prefix_ids


def test_save_and_reload_identical(tok, tiny_dir):
    assert {"model.safetensors", "config.json", "tokenizer.json"} <= set(os.listdir(tiny_dir))
    model = build_model("tiny", tok, seed=0)
    loaded = AutoModelForCausalLM.from_pretrained(tiny_dir, dtype=torch.float32).eval()
    reloaded_tok = AutoTokenizer.from_pretrained(tiny_dir)
    text = render_chatml(TOOL_CONVERSATION, TOOL_SCHEMAS, add_generation_prompt=True)
    ids = torch.tensor([tok.encode(text)])
    with torch.no_grad():
        assert torch.allclose(model(ids).logits, loaded(ids).logits, atol=1e-6, rtol=0)
    assert reloaded_tok.encode(text) == tok.encode(text)
    assert reloaded_tok.get_vocab() == tok.get_vocab()
    assert reloaded_tok.apply_chat_template(TOOL_CONVERSATION, tools=TOOL_SCHEMAS, tokenize=False) == \
        tok.apply_chat_template(TOOL_CONVERSATION, tools=TOOL_SCHEMAS, tokenize=False)
    assert (reloaded_tok.eos_token, reloaded_tok.pad_token, reloaded_tok.padding_side) == \
        ("<|im_end|>", "<|endoftext|>", "left")


def test_load_model(tiny_dir):
    model, tokenizer = load_model(tiny_dir)
    assert model.dtype == torch.float32 and not model.training
    assert tokenizer.pad_token == "<|endoftext|>" and tokenizer.padding_side == "left"
    batch = tokenizer(["1+1", "Compute 37*49"], return_tensors="pt", padding=True)
    assert batch["attention_mask"][0, 0] == 0  # left padding
    out = model.generate(**batch, max_new_tokens=3, do_sample=False)
    assert out.shape == (2, batch["input_ids"].shape[1] + 3)
    bf16, _ = load_model(tiny_dir, dtype="bfloat16")
    assert bf16.dtype == torch.bfloat16


def test_load_model_missing_path_is_clear(tmp_path):
    missing = str(tmp_path / "no-such-model")
    with pytest.raises(FileNotFoundError, match="does not exist.*agentrl init-model --size tiny"):
        load_model(missing)
    with pytest.raises(FileNotFoundError, match="init-model"):
        load_model("./relative/missing/model")
    with pytest.raises(ValueError, match="unknown model size"):
        build_tokenizer("huge")
