"""Lessons into the policy's prompt: rendering, retrieval, and the `lessons` env wrapper.

Rendering (ALGORITHMS.md › Training-free GRPO): the injected lessons are numbered [G0]. ... [Gk-1]. in the order
they are shown (renumbered every time), under INJECTION_HEADER, appended to the env's system prompt.
Retrieval: when the library holds more than `retrieve_above` lessons, only the top_k lessons for the task are
injected, ranked by BM25 (bm25s, the tokenizer of tools/search.py) of the lesson texts against the task prompt
(lessons sharing no word with the task are never chosen), or, when `embedding_model` names a local encoder
directory, by the cosine similarity of mean-pooled encoder states (EmbeddingRetriever). Ties keep library order and
the chosen ones are shown in library order. At or below the threshold every lesson is injected.
"""
from __future__ import annotations

import threading
from dataclasses import replace
from typing import Optional, Sequence

import gymnasium
import numpy as np

from ..env.feedback import WRAPPERS
from ..types import Message
from .library import Lesson, LessonLibrary
from .prompts import INJECTION_HEADER


def render_lessons(texts: Sequence[str]) -> str:
    """The lessons block ("" for no lessons)."""
    if not texts:
        return ""
    return INJECTION_HEADER + "\n" + "\n".join(f"[G{i}]. {t}" for i, t in enumerate(texts))


def inject_system(messages: Sequence[Message], block: str) -> list[Message]:
    """Messages with `block` appended to the system message (one is inserted first when there is none)."""
    msgs = list(messages)
    if not block:
        return msgs
    if msgs and msgs[0].role == "system":
        base = msgs[0].content.rstrip()
        return [replace(msgs[0], content=f"{base}\n\n{block}" if base else block)] + msgs[1:]
    return [Message("system", block)] + msgs


class LessonRetriever:
    """BM25 over lesson texts. Indexes are shared by every retriever in the process (all the collector's envs)
    and rebuilt only when the lesson set changes."""

    _shared: dict = {}  # lesson (id, text) tuple -> bm25s index; the last few kept
    _lock = threading.Lock()

    def _index(self, lessons: Sequence[Lesson]):
        from agentrl.tools.search import tokenize

        key = tuple((x.id, x.text) for x in lessons)
        with self._lock:
            index = self._shared.get(key)
            if index is None:
                import bm25s

                index = bm25s.BM25()
                index.index([tokenize(x.text) or ["_"] for x in lessons], show_progress=False)
                if len(self._shared) >= 4:
                    self._shared.pop(next(iter(self._shared)))
                self._shared[key] = index
        return index

    def top_k(self, lessons: Sequence[Lesson], query: str, k: int) -> list[Lesson]:
        from agentrl.tools.search import tokenize

        if k <= 0 or not lessons:
            return []
        q = tokenize(query)
        if not q:
            return []
        scores = np.asarray(self._index(lessons).get_scores(q), dtype=np.float64)
        order = [i for i in np.lexsort((np.arange(len(scores)), -scores)) if scores[i] > 0][:k]
        return [lessons[i] for i in sorted(order)]


class EmbeddingRetriever:
    """Cosine similarity between the task prompt and each lesson, embedded as the attention-masked mean of a local
    encoder's last hidden states, L2-normalised (the pooling of sentence-transformers models such as
    all-MiniLM-L6-v2; any `transformers.AutoModel` directory works). Nothing is downloaded: `path` must be a
    local directory. Models are loaded once per process and path; lesson embeddings are cached by text."""

    _models: dict = {}
    _lock = threading.Lock()

    def __init__(self, path: str, max_length: int = 256, cache_size: int = 4096):
        import os

        if not os.path.isdir(os.path.expanduser(path)):
            raise ValueError(f"embedding_model {path!r} is not a local directory (an encoder with config.json, "
                             "weights and tokenizer files; nothing is downloaded)")
        self.path, self.max_length, self.cache_size = path, int(max_length), int(cache_size)
        self._cache: dict[str, np.ndarray] = {}

    def _model(self):
        with self._lock:
            if self.path not in self._models:
                from ..models import load_encoder

                model, tok = load_encoder(self.path)
                self._models[self.path] = (tok, model, threading.Lock())
            return self._models[self.path]

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """[len(texts), dim] unit vectors."""
        import torch

        todo = [t for t in dict.fromkeys(texts) if t not in self._cache]
        if todo:
            tok, model, lock = self._model()
            with lock, torch.no_grad():
                enc = tok(todo, padding=True, truncation=True, max_length=self.max_length, return_tensors="pt")
                hidden = model(**enc).last_hidden_state  # [B, T, H]
                mask = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)
                mean = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1)
                vecs = torch.nn.functional.normalize(mean.float(), dim=-1).numpy()
            if len(self._cache) + len(todo) > self.cache_size:
                self._cache.clear()
            self._cache.update(zip(todo, vecs))
        return np.stack([self._cache[t] for t in texts]) if texts else np.zeros((0, 0))

    def top_k(self, lessons: Sequence[Lesson], query: str, k: int) -> list[Lesson]:
        if k <= 0 or not lessons or not query.strip():
            return []
        vecs = self.embed([query] + [x.text for x in lessons])
        sims = vecs[1:] @ vecs[0]
        order = np.lexsort((np.arange(len(sims)), -sims))[:k]
        return [lessons[i] for i in sorted(order)]


def select_lessons(lessons: Sequence[Lesson], query: str, top_k: int, retrieve_above: int,
                   retriever=None) -> list[Lesson]:
    if len(lessons) <= retrieve_above:
        return list(lessons)
    return (retriever or LessonRetriever()).top_k(lessons, query, top_k)


@WRAPPERS.register("lessons")
class LessonsWrapper(gymnasium.Wrapper):
    """Injects lessons into the system prompt at every reset (env.wrappers: [{name: lessons, db: PATH, ...}]).

    kwargs: db (the library's SQLite file; re-read when it changes), lessons (a fixed list of texts instead of a
    db, for tests and ablations), top_k (8), retrieve_above (16; see the module docstring), embedding_model (a
    local encoder directory: retrieve by embeddings instead of BM25), record (True: count
    each episode's injected lessons and its return in the library). reset's info gets "lessons" (the injected
    texts, in G order), "lesson_ids" and "messages_without_lessons"; info["messages"] and info["system"] carry
    the lessons."""

    def __init__(self, env: gymnasium.Env, db: Optional[str] = None, lessons: Optional[Sequence[str]] = None,
                 top_k: int = 8, retrieve_above: int = 16, record: bool = True,
                 embedding_model: Optional[str] = None):
        super().__init__(env)
        if (db is None) == (lessons is None):
            raise ValueError("the lessons wrapper needs exactly one of db (a library file) or lessons (a list)")
        self.library = LessonLibrary(db) if db is not None else None
        self.fixed = [Lesson(-i - 1, str(t)) for i, t in enumerate(lessons or [])]
        self.top_k, self.retrieve_above, self.record = int(top_k), int(retrieve_above), bool(record)
        self.retriever = EmbeddingRetriever(embedding_model) if embedding_model else LessonRetriever()
        self._cache: tuple = (None, [])
        self._injected: list[int] = []
        self._return: float = 0.0
        self._open = False

    def _all(self) -> list[Lesson]:
        if self.library is None:
            return self.fixed
        v = self.library.version()
        if v != self._cache[0]:
            self._cache = (v, self.library.lessons())
        return self._cache[1]

    def reset(self, *, seed: Optional[int] = None, options: Optional[dict] = None):
        obs, info = self.env.reset(seed=seed, options=options)
        msgs = list(info.get("messages", []))
        query = "\n".join(m.content for m in msgs if m.role != "system") or str(obs)
        chosen = select_lessons(self._all(), query, self.top_k, self.retrieve_above, self.retriever)
        block = render_lessons([x.text for x in chosen])
        new = inject_system(msgs, block)
        system = new[0].content if new and new[0].role == "system" else info.get("system")
        self._injected = [x.id for x in chosen if x.id >= 0]
        self._return, self._open = 0.0, True
        info = {**info, "messages": new, "system": system, "lessons": [x.text for x in chosen],
                "lesson_ids": list(self._injected), "messages_without_lessons": msgs}
        return obs, info

    def step(self, action):
        obs, reward, terminated, truncated, info = self.env.step(action)
        self._return += float(reward)
        if (terminated or truncated) and self._open:
            self._open = False
            if self.record and self.library is not None and self._injected:
                self.library.record_injection(self._injected, self._return)
        return obs, reward, terminated, truncated, info

