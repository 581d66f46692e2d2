"""Web search through a JSON search endpoint (SearXNG-compatible), over httpx, restricted to allowed hosts.

`make_web_search_tool(base_url, allowed_hosts, ...)` returns a typed function named `web_search(query)`, ready for
a ToolSet. One call sends `GET {base_url}/search?q=<query>&format=json` and expects a JSON object with a
`results` list of `{"title", "url", "content"}` objects (what SearXNG returns with its JSON format enabled); the
first `k` results come back as lines `[title] snippet (url)`, each snippet cut to `max_snippet_chars`.

Safety and failure:
- the host of `base_url` must be in `allowed_hosts` (exact names, or "*.example.org" for subdomains); otherwise
  the factory refuses it before any request is made. Only http and https are accepted.
- redirects are followed by hand, at most `MAX_REDIRECTS`, and only to the same host; a redirect anywhere else is
  refused, so an allowed endpoint cannot send the agent to another machine.
- each HTTP attempt has a `timeout_s` limit; connection errors, connect timeouts, 429 and 5xx answers are
  retried `retries` times with exponential backoff (`backoff_s`, doubling); a read timeout is not retried (it
  would only multiply the wait). Responses are read up to `max_response_bytes`.
- every failure (bad query, refused host or redirect, timeout, exhausted retries, 4xx, a body that is not the
  expected JSON) raises `WebSearchError`, a `SearchError` with a clear message, which ToolSet turns into an
  `Error: ...` observation for the agent.

Mind the env's `tool_timeout_s` (ToolSet's per-call wall clock): with retries, one call can take up to about
(retries + 1) * timeout_s plus the backoff, and ToolSet abandons it beyond its own limit.
"""
from __future__ import annotations

import json
import time
from typing import Any, Callable, Iterable, Optional

import httpx

from .search import MAX_K, MAX_QUERY_CHARS, MAX_SNIPPET_CHARS, SearchError

MAX_REDIRECTS = 3
USER_AGENT = "agentrl-web-search/0.1"
_RETRY_STATUS = frozenset({429, 500, 502, 503, 504})


class WebSearchError(SearchError):
    """A clear, agent-facing reason why a web search failed or was refused."""


# ----------------------------------------------------------------------------------------------- hosts
def normalize_hosts(allowed_hosts: Iterable[str]) -> tuple[str, ...]:
    """Lowercased host names; "*.example.org" allows subdomains of example.org (not example.org itself)."""
    if isinstance(allowed_hosts, str):
        allowed_hosts = [allowed_hosts]
    hosts = tuple(str(h).strip().lower().rstrip(".").strip("[]") for h in allowed_hosts if str(h).strip())
    for h in hosts:
        if "/" in h or h.count(":") == 1:  # a scheme, path or port (IPv6 addresses have several colons)
            raise WebSearchError(f"allowed_hosts entries are host names without scheme, port or path, got {h!r}")
    return hosts


def host_allowed(host: str, allowed: tuple[str, ...]) -> bool:
    host = host.lower().rstrip(".")
    for pattern in allowed:
        if pattern.startswith("*."):
            if host.endswith(pattern[1:]) and len(host) > len(pattern) - 1:
                return True
        elif host == pattern:
            return True
    return False


def check_url(url: str, allowed: tuple[str, ...]) -> httpx.URL:
    """The parsed URL if its scheme is http(s) and its host is allowed; else WebSearchError (no request made)."""
    try:
        parsed = httpx.URL(str(url))
    except (httpx.InvalidURL, TypeError, ValueError) as e:
        raise WebSearchError(f"invalid search URL {str(url)[:200]!r}: {e}") from None
    if parsed.scheme not in ("http", "https"):
        raise WebSearchError(f"search URL must be http or https, got {str(url)[:200]!r}")
    if not parsed.host:
        raise WebSearchError(f"search URL has no host: {str(url)[:200]!r}")
    if not host_allowed(parsed.host, allowed):
        raise WebSearchError(f"host {parsed.host!r} is not in allowed_hosts {list(allowed)}; refusing to connect")
    return parsed


# ----------------------------------------------------------------------------------------------- client
class WebSearchClient:
    """Sends search requests to one allowed endpoint; `search(query)` returns the formatted result lines."""

    def __init__(self, base_url: str, allowed_hosts: Iterable[str], timeout_s: float = 5.0, retries: int = 2,
                 k: int = 5, backoff_s: float = 0.25, max_snippet_chars: int = MAX_SNIPPET_CHARS,
                 max_response_bytes: int = 2_000_000, trust_env: bool = False,
                 params: Optional[dict] = None):
        self.allowed = normalize_hosts(allowed_hosts)
        if not self.allowed:
            raise WebSearchError("allowed_hosts is empty; name the search endpoint's host to allow it")
        self.endpoint = check_url(str(base_url).rstrip("/") + "/search", self.allowed)
        if not 1 <= int(k) <= MAX_K:
            raise WebSearchError(f"k must be from 1 to {MAX_K}, got {k}")
        if float(timeout_s) <= 0 or int(retries) < 0 or float(backoff_s) < 0 or int(max_snippet_chars) < 10:
            raise WebSearchError("need timeout_s > 0, retries >= 0, backoff_s >= 0 and max_snippet_chars >= 10")
        self.timeout_s, self.retries, self.k = float(timeout_s), int(retries), int(k)
        self.backoff_s, self.max_snippet_chars = float(backoff_s), int(max_snippet_chars)
        self.max_response_bytes, self.trust_env = int(max_response_bytes), bool(trust_env)
        self.params = dict(params or {})  # extra query parameters (e.g. {"language": "en"})

    def search(self, query: str) -> str:
        if not isinstance(query, str) or not query.strip():
            raise WebSearchError("empty query; write what to look for, e.g. <web_search>capital of France</web_search>")
        if len(query) > MAX_QUERY_CHARS:
            raise WebSearchError(f"query too long ({len(query)} chars, max {MAX_QUERY_CHARS})")
        payload = self._get_json({**self.params, "q": query.strip(), "format": "json"})
        return self.format_results(payload)

    # ------------------------------------------------------------------ HTTP
    def _get_json(self, params: dict) -> Any:
        with httpx.Client(timeout=self.timeout_s, follow_redirects=False, trust_env=self.trust_env,
                          headers={"User-Agent": USER_AGENT, "Accept": "application/json"}) as client:
            for attempt in range(self.retries + 1):
                last = attempt == self.retries
                try:
                    status, body = self._request(client, self.endpoint.copy_merge_params(params))
                except httpx.ReadTimeout:
                    raise WebSearchError(f"search endpoint {self.endpoint.host} timed out after "
                                         f"{self.timeout_s:g}s") from None
                except httpx.TransportError as e:  # connect errors and timeouts, dropped connections
                    if last:
                        raise WebSearchError(f"could not reach the search endpoint {self.endpoint.host} after "
                                             f"{attempt + 1} attempts ({type(e).__name__}: {e})") from None
                else:
                    if status == 200:
                        return self._decode(body)
                    if status not in _RETRY_STATUS:
                        raise WebSearchError(f"search endpoint answered HTTP {status}")
                    if last:
                        raise WebSearchError(f"search endpoint answered HTTP {status} after {attempt + 1} attempts")
                time.sleep(self.backoff_s * 2 ** attempt)
        raise AssertionError("unreachable")

    def _request(self, client: httpx.Client, url: httpx.URL) -> tuple[int, bytes]:
        """One GET, following at most MAX_REDIRECTS redirects to the same host -> (status, body)."""
        for _ in range(MAX_REDIRECTS + 1):
            with client.stream("GET", url) as r:
                if not r.is_redirect:
                    return r.status_code, self._read(r)
                target = url.join(r.headers.get("location", ""))
            if target.host.lower() != self.endpoint.host.lower() or target.scheme not in ("http", "https"):
                raise WebSearchError(f"refused a redirect from {url.host} to another host ({target.host or '?'})")
            url = target
        raise WebSearchError(f"too many redirects (more than {MAX_REDIRECTS})")

    def _read(self, r: httpx.Response) -> bytes:
        chunks, size = [], 0
        for chunk in r.iter_bytes():
            size += len(chunk)
            if size > self.max_response_bytes:
                raise WebSearchError(f"search response larger than {self.max_response_bytes} bytes")
            chunks.append(chunk)
        return b"".join(chunks)

    # ------------------------------------------------------------------ results
    @staticmethod
    def _decode(body: bytes) -> Any:
        try:
            return json.loads(body.decode("utf-8"))
        except (UnicodeDecodeError, ValueError):
            raise WebSearchError(f"search endpoint returned malformed JSON (starts {body[:60]!r})") from None

    def format_results(self, payload: Any) -> str:
        results = payload.get("results") if isinstance(payload, dict) else None
        if not isinstance(results, list):
            raise WebSearchError('search endpoint returned JSON without a "results" list')
        lines = [self._line(r) for r in results if isinstance(r, dict)]
        lines = [ln for ln in lines if ln][: self.k]
        return "\n".join(lines) if lines else "No results found. Try other keywords."

    def _line(self, result: dict) -> str:
        title, url, content = (" ".join(str(result.get(f) or "").split()) for f in ("title", "url", "content"))
        if len(content) > self.max_snippet_chars:
            content = content[: self.max_snippet_chars - 3].rstrip() + "..."
        if not (title or content):
            return ""
        return " ".join(p for p in (f"[{title}]" if title else "", content, f"({url})" if url else "") if p)


def make_web_search_tool(base_url: str, allowed_hosts: Iterable[str], timeout_s: float = 5.0, retries: int = 2,
                         k: int = 5, **options) -> Callable[[str], str]:
    """A `web_search(query)` tool bound to a search endpoint (checked against `allowed_hosts` now, not at call
    time). `options`: backoff_s, max_snippet_chars, max_response_bytes, trust_env (use proxy env vars), params."""
    client = WebSearchClient(base_url, allowed_hosts, timeout_s=timeout_s, retries=retries, k=k, **options)

    def web_search(query: str) -> str:
        """Search the web and return the best results, one per line as "[title] snippet (url)".

        Args:
            query: What to look for, in a few keywords.
        """
        return client.search(query)

    web_search.client = client  # type: ignore[attr-defined]
    return web_search
