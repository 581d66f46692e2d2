"""tools/web_search.py and SearchQA-v0's optional web_search tool, only against local HTTP servers on 127.0.0.1
started here: result parsing, k limit, snippet truncation, timeout, retries with backoff, exhausted 5xx, malformed
JSON, the host allow-list (refused before any request) and redirects to other hosts."""
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse

import gymnasium
import pytest

import agentrl  # noqa: F401  (registers the ids)
from agentrl.env.tools import ToolCall, ToolSet, tool_schema
from agentrl.tools.search import SearchError
from agentrl.tools.web_search import WebSearchError, make_web_search_tool

HOSTS = ["127.0.0.1"]


def results(n, content="snippet"):
    return {"query": "q", "results": [{"title": f"Title {i}", "url": f"https://example.org/{i}",
                                       "content": f"{content} {i}"} for i in range(n)]}


class Server:
    """A local HTTP server; `respond(handler, attempt)` -> (status, body bytes or dict, headers) per request."""

    def __init__(self, respond):
        self.respond, self.requests = respond, []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 - http.server's naming
                server.requests.append(self.path)
                status, body, headers = server.respond(self, len(server.requests))
                data = json.dumps(body).encode() if isinstance(body, (dict, list)) else body
                try:
                    self.send_response(status)
                    for k, v in {"Content-Type": "application/json", **headers}.items():
                        self.send_header(k, v)
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                except OSError:
                    pass  # the client gave up (timeout test)

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads, self.httpd.block_on_close = True, False
        self.port = self.httpd.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.02,), daemon=True)
        self.thread.start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def serve():
    servers = []

    def start(respond):
        servers.append(Server(respond))
        return servers[-1]

    yield start
    for s in servers:
        s.close()


def ok(body):
    return lambda handler, attempt: (200, body, {})


def tool(server, **kw):
    return make_web_search_tool(server.url, kw.pop("allowed_hosts", HOSTS), **{"backoff_s": 0.01, **kw})


def test_results_parsed_and_request_is_searxng_style(serve):
    s = serve(ok(results(3)))
    out = tool(s)("capital of  France")
    assert out.splitlines() == [f"[Title {i}] snippet {i} (https://example.org/{i})" for i in range(3)]
    url = urlparse(s.requests[0])
    assert url.path == "/search" and parse_qs(url.query) == {"q": ["capital of  France"], "format": ["json"]}


def test_k_limit_and_snippet_truncation(serve):
    s = serve(ok(results(8, content="word " * 200)))
    lines = tool(s, k=2, max_snippet_chars=50)("q").splitlines()
    assert len(lines) == 2
    snippet = lines[0][len("[Title 0] "):lines[0].index(" (https")]
    assert len(snippet) <= 50 and snippet.endswith("...")


def test_odd_results_skipped_and_empty_results(serve):
    s = serve(ok({"results": [42, {"title": "", "content": ""}, {"title": "Only title"}]}))
    assert tool(s)("q") == "[Only title]"
    s2 = serve(ok({"results": []}))
    assert tool(s2)("q").startswith("No results found")


def test_timeout_gives_clear_error_quickly(serve):
    def slow(handler, attempt):
        time.sleep(1.5)
        return 200, results(1), {}

    s = serve(slow)
    start = time.monotonic()
    with pytest.raises(WebSearchError, match="timed out after 0.2s"):
        tool(s, timeout_s=0.2, retries=3)("q")
    assert time.monotonic() - start < 1.0
    assert len(s.requests) == 1  # a read timeout is not retried


def test_retries_then_succeeds(serve):
    s = serve(lambda h, attempt: (503, b"busy", {}) if attempt <= 2 else (200, results(1), {}))
    start = time.monotonic()
    out = tool(s, retries=2, backoff_s=0.05)("q")
    assert out.startswith("[Title 0]") and len(s.requests) == 3
    assert time.monotonic() - start >= 0.05 + 0.1  # backoff doubles: 0.05 then 0.1


def test_5xx_exhausted_is_an_error(serve):
    s = serve(lambda h, attempt: (500, b"oops", {}))
    with pytest.raises(WebSearchError, match="HTTP 500 after 3 attempts"):
        tool(s, retries=2)("q")
    assert len(s.requests) == 3


def test_4xx_not_retried(serve):
    s = serve(lambda h, attempt: (404, b"no", {}))
    with pytest.raises(WebSearchError, match="HTTP 404"):
        tool(s, retries=3)("q")
    assert len(s.requests) == 1


def test_connection_refused_retried_then_error(serve):
    s = serve(ok(results(1)))
    url = s.url
    s.close()  # nothing listens on that port any more
    with pytest.raises(WebSearchError, match="could not reach .* after 2 attempts"):
        make_web_search_tool(url, HOSTS, retries=1, backoff_s=0.01)("q")


@pytest.mark.parametrize("body", [b"<html>not json</html>", b'{"results": "nope"}', b"[1, 2]", b"\xff\xfe"])
def test_malformed_json_is_an_error(serve, body):
    s = serve(ok(body))
    with pytest.raises(WebSearchError, match="malformed JSON|results"):
        tool(s)("q")


def test_disallowed_host_refused_without_any_request(serve):
    s = serve(ok(results(1)))
    for base, allowed in [(f"http://localhost:{s.port}", HOSTS), (s.url, []), (s.url, ["example.org"]),
                          (f"ftp://127.0.0.1:{s.port}", HOSTS), (f"http://127.0.0.1@localhost:{s.port}", HOSTS)]:
        with pytest.raises(WebSearchError):
            make_web_search_tool(base, allowed)
    with pytest.raises(WebSearchError, match="not in allowed_hosts"):
        make_web_search_tool(f"http://localhost:{s.port}", HOSTS)
    with pytest.raises(WebSearchError, match="without scheme, port or path"):
        make_web_search_tool(s.url, ["127.0.0.1:80"])
    assert s.requests == []
    assert make_web_search_tool(f"http://localhost:{s.port}", ["LOCALHOST"])("q").startswith("[Title 0]")


def test_redirect_to_other_host_refused_same_host_followed(serve):
    other = serve(ok(results(1)))
    s = serve(lambda h, attempt: (302, b"", {"Location": f"http://localhost:{other.port}/search?q=x"}))
    with pytest.raises(WebSearchError, match="refused a redirect .* another host"):
        tool(s, allowed_hosts=["127.0.0.1", "localhost"])("q")
    assert other.requests == [] and len(s.requests) == 1
    same = serve(lambda h, attempt: (301, b"", {"Location": "/v2/search?q=x&format=json"}) if attempt == 1
                 else (200, results(2), {}))
    assert len(tool(same)("q").splitlines()) == 2 and same.requests[1].startswith("/v2/search")


def test_bad_queries_and_error_type():
    assert issubclass(WebSearchError, SearchError)
    fn = make_web_search_tool("http://127.0.0.1:9", HOSTS)  # never contacted
    for q in ["", "   ", "x" * 600]:
        with pytest.raises(WebSearchError):
            fn(q)


def test_schema_and_toolset_error_observation(serve):
    s = serve(lambda h, attempt: (500, b"", {}))
    fn = tool(s, retries=0)
    schema = tool_schema(fn)["function"]
    assert schema["name"] == "web_search" and schema["parameters"]["required"] == ["query"]
    [res] = ToolSet([fn]).run([ToolCall("web_search", {"query": "q"})])
    assert not res.ok and res.content.startswith("Error: WebSearchError: search endpoint answered HTTP 500")


def test_searchqa_default_has_only_search(tmp_path):
    env = gymnasium.make("agentrl/SearchQA-v0", index_cache_dir=str(tmp_path))
    assert env.unwrapped.toolset.names == ["search"]


@pytest.mark.parametrize("parser", ["tags", "hermes"])
def test_searchqa_web_search_tool_call_gives_observation(serve, tmp_path, parser):
    s = serve(ok(results(4)))
    env = gymnasium.make("agentrl/SearchQA-v0", index_cache_dir=str(tmp_path), parser=parser,
                         web_search={"base_url": s.url, "allowed_hosts": HOSTS, "k": 2})
    obs, info = env.reset(seed=0)
    assert [t["function"]["name"] for t in info["tools"]] == ["search", "web_search"]
    assert "web_search" in info["system"]
    action = ("<web_search>Quillax founder</web_search>" if parser == "tags" else
              '<tool_call>{"name": "web_search", "arguments": {"query": "Quillax founder"}}</tool_call>')
    obs, reward, term, trunc, info = env.step(action)
    assert obs.splitlines() == ["[Title 0] snippet 0 (https://example.org/0)",
                                "[Title 1] snippet 1 (https://example.org/1)"]
    assert reward == 0.0 and not term and info["action_valid"] and info["n_tool_calls"] == 1
    assert info["messages"][0].role == "tool" and info["messages"][0].name == "web_search"
    assert parse_qs(urlparse(s.requests[0]).query)["q"] == ["Quillax founder"]
    # the expert still solves the task with BM25 search alone
    base = env.unwrapped
    while not (term or trunc):
        obs, reward, term, trunc, info = env.step(base.expert_action())
    assert len(s.requests) == 1


def test_searchqa_web_search_errors(serve, tmp_path):
    s = serve(lambda h, attempt: (502, b"", {}))
    env = gymnasium.make("agentrl/SearchQA-v0", index_cache_dir=str(tmp_path),
                         web_search={"base_url": s.url, "allowed_hosts": HOSTS, "retries": 0})
    env.reset(seed=0)
    obs, reward, term, trunc, info = env.step("<web_search>anything</web_search>")
    assert obs.startswith("Error: WebSearchError: search endpoint answered HTTP 502") and not term
    with pytest.raises(ValueError, match="not in allowed_hosts"):
        gymnasium.make("agentrl/SearchQA-v0", index_cache_dir=str(tmp_path),
                       web_search={"base_url": "http://evil.example", "allowed_hosts": HOSTS})
    with pytest.raises(ValueError, match="web_search"):
        gymnasium.make("agentrl/SearchQA-v0", index_cache_dir=str(tmp_path), web_search={"base_url": s.url})
    with pytest.raises(ValueError, match="unexpected keyword"):
        gymnasium.make("agentrl/SearchQA-v0", index_cache_dir=str(tmp_path),
                       web_search={"base_url": s.url, "allowed_hosts": HOSTS, "colour": "red"})
    assert len(s.requests) == 1
