"""Chat models for the reflector: the local hf adapter, the openai factory, "pkg.mod:attr" factories."""
import httpx
import pytest

from agentrl.config import load_config
from agentrl.memory.llm import HFChat, OpenAIChat, make_chat_model


def test_hf_chat_on_the_tiny_model(tiny_dir):
    out = HFChat(tiny_dir, max_tokens=6).chat([{"role": "system", "content": "Be brief."},
                                                {"role": "user", "content": "Say hi."}])
    assert isinstance(out, str)


def test_factories():
    cfg = load_config(None, ["memory.reflector=tests.memory.test_modes:scripted_reflector"])
    msgs = [{"role": "system", "content": ""}, {"role": "user", "content": "## Agent's attempt"}]
    assert make_chat_model(cfg).chat(msgs)
    cfg = load_config(None, ["memory.reflector=openai", "memory.reflector_base_url=http://127.0.0.1:9/v1",
                             "memory.reflector_model=m", "memory.reflector_temperature=0.3"])
    chat = make_chat_model(cfg)
    assert isinstance(chat, OpenAIChat) and chat.gen.api_url == "http://127.0.0.1:9/v1" and chat.temperature == 0.3
    seen = {}

    def handle(request):
        import json

        seen.update(json.loads(request.content))
        return httpx.Response(200, json={"choices": [{"message": {"role": "assistant", "content": "ok"}}]})

    chat.gen._transport = httpx.MockTransport(handle)
    assert chat.chat([{"role": "user", "content": "x"}]) == "ok"
    assert seen["model"] == "m" and seen["temperature"] == 0.3 and seen["max_tokens"] == 1024
    chat.close()
    with pytest.raises(ValueError, match="reflector_path"):
        make_chat_model(load_config(None, ["memory.reflector=hf"]))
    with pytest.raises(KeyError, match="unknown reflector chat model"):
        make_chat_model(load_config(None, ["memory.reflector=nope"]))
