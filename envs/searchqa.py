"""Multi-hop question answering with a BM25 search tool over a knowledge base: search, then answer with a name.

The default data is a synthetic fictional knowledge base generated from `kb_seed`: people, cities, companies and
countries with invented names (random syllables, so no answer can be guessed from pretraining), one short
document per fact ("Zorvan Kel was born in the city of Tavimor.") and questions that need 1, 2 or 3 hops
("In which city was the founder of Quillax born?"). The KB is the same for both splits; questions are split into
train / test by the hash of their text. User data (a JSONL corpus and a JSONL QA file) replaces it.
"""
from __future__ import annotations

import json
import re
import string
from collections import Counter
from dataclasses import dataclass
from typing import Callable, Optional, Sequence, Union

import numpy as np

from agentrl.env.base import ToolEnv, content_id, split_of
from agentrl.env.tools import ToolResult
from agentrl.tools.search import MAX_K, BM25Index, load_jsonl, make_search_tool
from agentrl.types import Task

# ----------------------------------------------------------------------------------------------- answers
_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCT = set(string.punctuation)


def normalize_answer(text: str) -> str:
    """SQuAD / Search-R1 normalisation: lowercase, drop punctuation and articles, collapse whitespace."""
    text = "".join(c for c in str(text).lower() if c not in _PUNCT)
    return " ".join(_ARTICLES.sub(" ", text).split())


def exact_match(prediction: str, answers: Sequence[str]) -> bool:
    pred = normalize_answer(prediction)
    return any(pred == normalize_answer(a) for a in answers)


def token_f1(prediction: str, answers: Sequence[str]) -> float:
    """Best SQuAD token F1 of `prediction` against any gold answer."""
    pred = normalize_answer(prediction).split()
    best = 0.0
    for a in answers:
        gold = normalize_answer(a).split()
        common = sum((Counter(pred) & Counter(gold)).values())
        if not pred or not gold:
            best = max(best, float(pred == gold))
        elif common:
            p, r = common / len(pred), common / len(gold)
            best = max(best, 2 * p * r / (p + r))
    return best


# ----------------------------------------------------------------------------------------------- synthetic KB
@dataclass(frozen=True)
class Relation:
    name: str
    subject: str  # entity type
    object: str
    fact: str  # document template
    question: str  # question template when this is the last hop
    phrase: str  # noun phrase when this is an inner hop
    keywords: str  # what the expert adds to the entity name in its query


RELATIONS = (
    Relation("born_in", "person", "city", "{s} was born in the city of {o}.",
             "In which city was {x} born?", "the birthplace of {x}", "born"),
    Relation("works_for", "person", "company", "{s} works for the company {o}.",
             "Which company does {x} work for?", "the employer of {x}", "works for"),
    Relation("founded_by", "company", "person", "The company {s} was founded by {o}.",
             "Who founded {x}?", "the founder of {x}", "founded"),
    Relation("headquartered_in", "company", "city", "The company {s} is headquartered in the city of {o}.",
             "In which city is {x} headquartered?", "the headquarters city of {x}", "headquartered"),
    Relation("located_in", "city", "country", "The city of {s} is located in the country of {o}.",
             "In which country is {x} located?", "the country of {x}", "located country"),
)
REL = {r.name: r for r in RELATIONS}
_ONSETS = ("b", "d", "f", "g", "k", "l", "m", "n", "p", "r", "s", "t", "v", "z", "th", "sh", "qu", "br", "dr", "kr")
_VOWELS = ("a", "e", "i", "o", "u", "ai", "ei", "ou")
_CODAS = ("", "", "", "n", "r", "l", "x", "s", "m", "k")


@dataclass(frozen=True)
class KB:
    entities: dict  # name -> type
    facts: tuple  # (subject, relation name, object)
    docs: tuple  # {"id", "title", "text"}
    questions: tuple  # (question, answer, chain) with chain = ((entity, relation), ...) in hop order

    def lookup(self) -> dict:
        return {q: (a, c) for q, a, c in self.questions}


def _word(rng: np.random.Generator, used: set) -> str:
    for _ in range(10_000):
        n = int(rng.integers(2, 4))
        w = "".join(_ONSETS[int(rng.integers(len(_ONSETS)))] + _VOWELS[int(rng.integers(len(_VOWELS)))]
                    for _ in range(n)) + _CODAS[int(rng.integers(len(_CODAS)))]
        if w not in used:
            used.add(w)
            return w.capitalize()
    raise RuntimeError("ran out of names")


def generate_kb(seed: int = 0, n_entities: int = 200, max_hops: int = 3) -> KB:
    """A deterministic fictional KB: every name word is unique, every relation is a function of its subject."""
    if n_entities < 20:
        raise ValueError(f"n_entities must be >= 20, got {n_entities}")
    rng = np.random.default_rng(seed)
    used: set = set()
    n_countries = max(3, n_entities // 20)
    n_cities = max(4, n_entities // 5)
    n_companies = max(4, n_entities // 4)
    n_people = n_entities - n_countries - n_cities - n_companies
    names = {
        "country": [_word(rng, used) for _ in range(n_countries)],
        "city": [_word(rng, used) for _ in range(n_cities)],
        "company": [_word(rng, used) for _ in range(n_companies)],
        "person": [f"{_word(rng, used)} {_word(rng, used)}" for _ in range(n_people)],
    }
    entities = {n: t for t, ns in names.items() for n in ns}
    facts, obj = [], {}
    for rel in RELATIONS:
        for s in names[rel.subject]:
            o = names[rel.object][int(rng.integers(len(names[rel.object])))]
            facts.append((s, rel.name, o))
            obj[(s, rel.name)] = o
    docs = tuple({"id": f"d{i}", "title": s, "text": REL[r].fact.format(s=s, o=o)}
                 for i, (s, r, o) in enumerate(facts))
    questions = []
    for start, typ in entities.items():
        paths = [((), typ)]
        for hops in range(1, max_hops + 1):
            paths = [(p + (r.name,), r.object) for p, t in paths for r in RELATIONS if r.subject == t]
            for path, _ in paths:
                chain, x = [], start
                for r in path:
                    chain.append((x, r))
                    x = obj[(x, r)]
                if len({e for e, _ in chain} | {x}) < hops + 1:
                    continue  # the chain revisits an entity (e.g. the founder of one's own employer)
                text = start
                for r in path[:-1]:
                    text = REL[r].phrase.format(x=text)
                q = REL[path[-1]].question.format(x=text)
                questions.append((q, x, tuple(chain)))
    return KB(entities, tuple(facts), docs, tuple(questions))


# ----------------------------------------------------------------------------------------------- env
class SearchQAEnv(ToolEnv):
    """Multi-hop question answering with a BM25 search tool over a knowledge base: search, then answer with a name.

    kwargs: kb_seed (synthetic KB), n_entities (KB size), hops (allowed hop counts, e.g. (1, 2)), k (documents
    per search by default), reward ("em" exact match or "f1" token F1 of the normalised answer), format_penalty
    (subtracted for invalid replies), corpus_path / qa_path (user JSONL data instead of the synthetic KB),
    index_cache_dir / index_cache (on-disk BM25 index cache), web_search (None, or the keyword arguments of
    tools/web_search.py:make_web_search_tool, e.g. {"base_url": ..., "allowed_hosts": [...]}: adds a
    `web_search` tool next to `search`), plus ToolEnv's max_turns, parser, system, ...
    """

    default_env_id = "agentrl/SearchQA-v0"

    def __init__(self, kb_seed: int = 0, n_entities: int = 200, hops: Union[int, Sequence[int]] = (1, 2, 3),
                 k: int = 3, reward: str = "em", format_penalty: float = 0.0, corpus_path: Optional[str] = None,
                 qa_path: Optional[str] = None, index_cache_dir: Optional[str] = None, index_cache: bool = True,
                 max_turns: int = 4, web_search: Optional[dict] = None, **kwargs):
        if format_penalty:
            kwargs["invalid_penalty"] = -abs(float(format_penalty))
        super().__init__(max_turns=max_turns, **kwargs)
        self.hops = tuple(sorted({int(h) for h in ([hops] if isinstance(hops, (int, np.integer)) else hops)}))
        if not self.hops or not all(1 <= h <= 3 for h in self.hops):
            raise ValueError(f"hops must be a non-empty subset of (1, 2, 3), got {hops!r}")
        if reward not in ("em", "f1"):
            raise ValueError(f"reward must be 'em' or 'f1', got {reward!r}")
        if not 1 <= int(k) <= MAX_K:
            raise ValueError(f"k must be from 1 to {MAX_K}, got {k}")
        if (corpus_path is None) != (qa_path is None):
            raise ValueError("give both corpus_path and qa_path (user data), or neither (synthetic KB)")
        self.reward_kind, self.k = reward, int(k)
        self.user_data = corpus_path is not None
        if self.user_data:
            docs = load_jsonl(corpus_path)
            self.kb = None
            self.qa = self._load_qa(qa_path)  # question -> (answers, chain)
        else:
            if self.max_turns < max(self.hops) + 1:
                raise ValueError(f"max_turns={self.max_turns} is too few for {max(self.hops)}-hop questions "
                                 f"(need hops + 1 for the answer)")
            self.kb = generate_kb(int(kb_seed), int(n_entities), max(self.hops))
            docs = list(self.kb.docs)
            self.qa = {q: ([a], c) for q, a, c in self.kb.questions if len(c) in self.hops}
        self.questions = sorted(self.qa)
        if not self.questions:
            raise ValueError("no questions to ask (check qa_path or hops)")
        self.index = BM25Index(docs, cache_dir=index_cache_dir, cache=index_cache)
        self.web_search_tool = self._make_web_search(web_search)
        self.searched: set[str] = set()

    @staticmethod
    def _load_qa(path: str) -> dict:
        qa = {}
        for n, row in enumerate(load_jsonl(path), 1):
            answers = row.get("answers", row.get("answer")) if isinstance(row, dict) else None
            answers = [answers] if isinstance(answers, str) else answers
            if not isinstance(row.get("question"), str) or not answers or not all(isinstance(a, str) for a in answers):
                raise ValueError(f"{path}:{n}: a QA row needs 'question' (text) and 'answers' (list of text)")
            qa[row["question"].strip()] = ([a for a in answers], ())
        return qa

    # ------------------------------------------------------------------ tasks
    @staticmethod
    def _make_web_search(options: Optional[dict]) -> Optional[Callable]:
        if options is None:
            return None
        if not isinstance(options, dict) or "base_url" not in options or "allowed_hosts" not in options:
            raise ValueError('web_search must be a dict with at least "base_url" and "allowed_hosts", '
                             f"got {options!r:.200}")
        from agentrl.tools.web_search import make_web_search_tool  # local import: httpx only when configured

        try:
            return make_web_search_tool(**options)
        except TypeError as e:  # an unknown option name
            raise ValueError(f"web_search: {e}") from None

    def tools(self) -> list[Callable]:
        web = [self.web_search_tool] if self.web_search_tool is not None else []
        return [make_search_tool(self.index, self.k), *web]

    def system_prompt(self) -> str:
        return ("Answer the question. The facts are fictional: look them up with the search tool, one step at a "
                "time; never guess.\n" + self.parser.format_instructions(self.toolset.schemas)
                + "\nAnswer with the name only.")

    def task_key(self, options: dict) -> str:
        return str(options["question"]).strip()

    def build_task(self, options: dict) -> Task:
        question = self.task_key(options)
        if "answers" in options:
            answers = [str(a) for a in options["answers"]]
        elif question in self.qa:
            answers = list(self.qa[question][0])
        else:
            raise ValueError(f"unknown question {question[:200]!r}; pass options['answers'] for a new one")
        return Task(id=content_id("searchqa", question), env_id=self.env_id, options={"question": question},
                    answer=answers, split=split_of(question, self.held_out_fraction))

    def sample_task(self, rng: np.random.Generator, split: str) -> Task:
        for _ in range(10_000):
            if self.kb is not None:  # uniform over hop counts, then over questions with that many hops
                h = self.hops[int(rng.integers(len(self.hops)))]
                pool = self._by_hops(h)
            else:
                pool = self.questions
            task = self.build_task({"question": pool[int(rng.integers(len(pool)))]})
            if task.split == split:
                return task
        raise RuntimeError(f"could not sample a {split!r} question; the QA set is too small")

    def _by_hops(self, h: int) -> list[str]:
        if not hasattr(self, "_hop_pools"):
            self._hop_pools = {x: [q for q in self.questions if len(self.qa[q][1]) == x] for x in self.hops}
        return self._hop_pools[h]

    def task_prompt(self, task: Task) -> str:
        return f"Question: {task.options['question']}"

    # ------------------------------------------------------------------ episode
    def on_reset(self) -> None:
        self.searched = set()

    def on_tool_results(self, results: list[ToolResult]) -> None:
        for r in results:
            query = r.call.arguments.get("query")
            if r.ok and r.call.name == "search" and isinstance(query, str):
                self.searched.add(" ".join(query.lower().split()))

    def score_answer(self, answer: str) -> tuple[float, bool]:
        gold = self.task.answer
        em = exact_match(answer, gold)
        reward = float(em) if self.reward_kind == "em" else token_f1(answer, gold)
        return reward, em

    # ------------------------------------------------------------------ demonstrations
    def chain(self) -> tuple:
        q = self.task.options["question"]
        return self.qa[q][1] if q in self.qa else ()

    def expert_queries(self) -> list[str]:
        """The searches that resolve each hop in order: "<entity> <relation keywords>" (user data: the question)."""
        chain = self.chain()
        if not chain:
            return [self.task.options["question"]]
        return [f"{entity} {REL[rel].keywords}" for entity, rel in chain]

    def _call(self, query: str) -> str:
        if self.parser.name == "hermes":
            return "<tool_call>" + json.dumps({"name": "search", "arguments": {"query": query}}) + "</tool_call>"
        return f"<search>{query}</search>"

    def expert_action(self) -> str:
        """Search each hop's query in order (skipping ones already searched), then answer. With a single turn left,
        answer directly."""
        if self.turns_left > 1:
            for query in self.expert_queries():
                if " ".join(query.lower().split()) not in self.searched:
                    return self._call(query)
        return f"<answer>{self.task.answer[0]}</answer>"

    def corrupt_action(self, rng: np.random.Generator) -> str:
        """Answer a wrong entity of the same type without searching, or search a wrong entity."""
        gold = {normalize_answer(a) for a in self.task.answer}
        if self.kb is not None:
            typ = self.kb.entities.get(self.task.answer[0], "person")
            pool = [n for n, t in self.kb.entities.items() if t == typ and normalize_answer(n) not in gold]
        else:
            pool = [d["title"] for d in self.index.docs[:1000] if d["title"] and normalize_answer(d["title"]) not in gold]
        pool = pool or ["nobody"]
        wrong = pool[int(rng.integers(len(pool)))]
        if rng.random() < 0.5:
            return f"<answer>{wrong}</answer>"
        return self._call(f"{wrong} {RELATIONS[int(rng.integers(len(RELATIONS)))].keywords}")
