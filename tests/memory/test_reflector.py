"""Reflector and batch merge against a scripted chat model served through the openai backend (httpx
MockTransport speaking /v1/chat/completions): every operation, unknown ids, malformed JSON (retried, then
skipped), empty / all-correct / all-wrong groups."""
import json

import httpx
import pytest

from agentrl.backends.openai import OpenAIGenerator
from agentrl.memory import LessonLibrary, OpenAIChat, Reflector, merge_ops
from agentrl.memory.library import Lesson
from agentrl.memory.reflector import ProposedOp, parse_json, parse_ops
from agentrl.types import Task, Trajectory, Turn


def traj(task_id, i, success, answer="12", reward=None):
    task = Task(id=task_id, env_id="agentrl/Math-v0", options={"problem": f"problem {task_id}", "answer": answer},
                answer=answer)
    t = Trajectory(id=f"{task_id}/{i}", group_id=f"g:{task_id}", task=task, prompt_ids=[1, 2])
    t.turns.append(Turn(action_ids=[3], action_logprobs=[0.0], action_text=f"<answer>{'12' if success else '7'}"
                        "</answer>"))
    t.success = success
    t.reward = (1.0 if success else 0.0) if reward is None else reward
    return t


def group(task_id, outcomes):
    return [traj(task_id, i, s) for i, s in enumerate(outcomes)]


class Script:
    """Scripted model: answers by prompt kind. `critique`, `ops` and `merge` are lists of replies (str) used in
    order, or a function of the prompt."""

    def __init__(self, critique, ops, merge):
        self.replies = {"critique": critique, "ops": ops, "merge": merge}
        self.kinds = []

    def answer(self, messages):
        user = messages[1]["content"]
        kind = ("summary" if "## Agent's attempt" in user else "critique" if "semantic advantage" in user
                else "ops" if "Decide how each new experience" in user else "merge")
        retry = len(messages) > 2
        self.kinds.append(kind + (" retry" if retry else ""))
        if kind == "summary":
            return "The agent answered directly."
        r = self.replies[kind]
        return r(user, retry) if callable(r) else r.pop(0)


def served(script):
    def handle(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/v1/models":
            return httpx.Response(200, json={"data": [{"id": "reflector"}]})
        body = json.loads(request.content)
        content = script.answer(body["messages"])
        return httpx.Response(200, json={"choices": [{"index": 0, "finish_reason": "stop",
                                                      "message": {"role": "assistant", "content": content}}]})

    gen = OpenAIGenerator(base_url="http://127.0.0.1:9/v1", sync="none", max_retries=0,
                          transport=httpx.MockTransport(handle))
    return OpenAIChat(gen)


def exps(*xs):
    return json.dumps({"experiences": list(xs)})


def ops(*xs):
    return json.dumps({"operations": list(xs)})


@pytest.fixture
def lib(tmp_path):
    library = LessonLibrary(str(tmp_path / "m.sqlite"))
    for text in ["Keep the answer short.", "Count the items twice.", "Multiply before adding."]:
        library.add(text, step=0)
    return library


def test_every_operation_and_unknown_id(lib):
    s = Script(critique=lambda u, r: exps("Subtract when items are given away."),
               ops=lambda u, r: ops({"op": "ADD", "text": "Subtract when items are given away."},
                                    {"op": "UPDATE", "id": "G1", "text": "Count items once, carefully."},
                                    {"op": "DELETE", "id": "G2"}, {"op": "NONE"},
                                    {"op": "UPDATE", "id": "G17", "text": "Read every sentence."}),
               merge=lambda u, r: ops({"op": "ADD", "text": "Subtract when items are given away."},
                                      {"op": "UPDATE", "id": "G1", "text": "Count items once, carefully."},
                                      {"op": "DELETE", "id": "G2"},
                                      {"op": "UPDATE", "id": "G17", "text": "Read every sentence."}))
    llm = served(s)
    rep = Reflector(llm).reflect(group("a", [True, False, False]), lib, step=1)
    llm.close()
    texts = [x.text for x in lib.lessons()]
    assert texts == ["Keep the answer short.", "Count items once, carefully.",
                     "Subtract when items are given away.", "Read every sentence."]  # G17 unknown -> ADD
    assert rep.used == 1 and not rep.skipped
    assert s.kinds.count("summary") == 3 and s.kinds[-1] == "merge"
    log = lib.ops_log()
    assert [o["op"] for o in log[3:]] == ["DELETE", "UPDATE", "ADD", "ADD"]
    assert all(o["source_tasks"] == ["a"] and o["prompt_version"] == "memory-v1" for o in log[3:])
    assert rep.metrics()["memory/added"] == 2 and rep.metrics()["memory/deleted"] == 1


def test_batch_merge_rules_delete_beats_update_similar_adds_merge(lib):
    lessons = lib.lessons()
    proposed = [ProposedOp("UPDATE", 0, "Keep answers short and exact.", ("a",)),
                ProposedOp("DELETE", 0, "", ("b",)),
                ProposedOp("ADD", None, "Always check the units of the answer.", ("a",)),
                ProposedOp("ADD", None, "Always check the units of the answer!", ("b",)),
                ProposedOp("ADD", None, "multiply before adding", ("c",)),  # duplicates a kept lesson
                ProposedOp("UPDATE", 1, "first", ("a",)), ProposedOp("UPDATE", 1, "second", ("b",)),
                ProposedOp("DELETE", 9, "", ("c",)),  # unknown id: dropped
                ProposedOp("ADD", None, " ".join(["word"] * 40) + " tail", ("d",))]
    out = merge_ops(proposed, lessons, max_words=32)
    assert [(o.op, o.id) for o in out] == [("DELETE", lessons[0].id), ("UPDATE", lessons[1].id), ("ADD", None),
                                           ("ADD", None)]
    assert out[1].text == "second" and out[1].source_tasks == ("a", "b")
    assert out[2].text == "Always check the units of the answer." and out[2].source_tasks == ("a", "b")
    assert len(out[3].text.split()) == 32


def test_model_merge_output_is_still_checked(lib):
    """The batch call answers UPDATE + DELETE of the same lesson and two equal ADDs: the rules still hold."""
    s = Script(critique=lambda u, r: exps("x"), ops=lambda u, r: ops({"op": "ADD", "text": "x"}),
               merge=lambda u, r: ops({"op": "UPDATE", "id": "G0", "text": "changed"}, {"op": "DELETE", "id": "G0"},
                                      {"op": "ADD", "text": "Same new lesson."},
                                      {"op": "ADD", "text": "same new lesson"}))
    llm = served(s)
    Reflector(llm).reflect(group("a", [True, False]) + group("b", [False, True]), lib, step=1)
    llm.close()
    assert [x.text for x in lib.lessons()] == ["Count the items twice.", "Multiply before adding.", "Same new lesson."]
    assert sorted(lib.ops_log()[-1]["source_tasks"]) == ["a", "b"]


def test_malformed_json_retried_once_then_skipped(lib, caplog):
    s = Script(critique=["not json at all", exps("Use the reference format."),  # group a: bad, then fixed
                         "{broken", "still {broken"],  # group b: bad twice -> skipped
               ops=lambda u, r: ops({"op": "ADD", "text": "Use the reference format."}),
               merge=["```json\n" + ops({"op": "ADD", "text": "Use the reference format."}) + "\n```"])
    llm = served(s)
    r = Reflector(llm, workers=1)
    rep = r.reflect(group("a", [True, False]) + group("b", [True, False]), lib, step=1)
    llm.close()
    assert rep.retries == 2 and len(rep.skipped) == 1
    what, why = rep.skipped[0]
    assert what == "critique of group g:b" and "JSON" in why
    assert "skipped critique of group g:b" in caplog.text
    assert lib.lessons()[-1].text == "Use the reference format."


def test_failed_batch_merge_falls_back_to_rules(lib):
    s = Script(critique=lambda u, r: exps("New idea."), ops=lambda u, r: ops({"op": "ADD", "text": "New idea."}),
               merge=lambda u, r: '{"operations": [{"op": "RENAME"}]}')
    llm = served(s)
    rep = Reflector(llm).reflect(group("a", [True, False]) + group("b", [False, True]), lib, step=1)
    llm.close()
    assert rep.skipped and rep.skipped[0][0] == "batch merge"
    assert [x.text for x in lib.lessons()][-1] == "New idea." and len(lib) == 4  # the two ADDs merged


def test_groups_skipped_without_calls(lib):
    s = Script(critique=[], ops=[], merge=[])
    llm = served(s)
    unscorable = [traj("e", 0, True, reward=None)]
    unscorable[0].reward = None
    trajs = group("ok", [True, True, True]) + group("bad", [False, False]) + unscorable
    rep = Reflector(llm).reflect(trajs, lib, step=1)
    rep_empty = Reflector(llm).reflect([], lib, step=2)
    llm.close()
    assert s.kinds == [] and rep.calls == 0 and rep_empty.groups == 0
    assert dict(rep.skipped_groups) == {"all correct": 1, "all wrong": 1, "empty": 1}
    assert len(lib.ops_log()) == 3  # nothing changed


def test_no_experiences_means_no_ops_call(lib):
    s = Script(critique=lambda u, r: exps(), ops=[], merge=[])
    llm = served(s)
    rep = Reflector(llm).reflect(group("a", [True, False]), lib, step=1)
    llm.close()
    assert "ops" not in s.kinds and rep.final == [] and len(lib) == 3


def test_prompts_carry_reference_library_and_limits(lib):
    seen = {}

    def critique(user, retry):
        seen["critique"] = user
        return exps(" ".join(["long"] * 50), "b", "c")

    def group_ops(user, retry):
        seen["ops"] = user
        return ops({"op": "NONE"})

    s = Script(critique=critique, ops=group_ops, merge=[])
    llm = served(s)
    Reflector(llm, max_lessons=2, max_words=32).reflect(group("a", [True, False], ), lib, step=1)
    llm.close()
    assert "## Reference answer\n12" in seen["critique"] and "[G2]. Multiply before adding." in seen["critique"]
    assert "Attempt 1 (correct" in seen["critique"] and "Attempt 2 (wrong" in seen["critique"]
    sent = json.loads(seen["ops"].split("## New experiences\n")[1].split("\n\nAnswer")[0])
    assert len(sent) == 2 and len(sent[0].split()) == 32  # <= max_lessons, each <= max_words


def test_parsers():
    assert parse_json('Sure! {"experiences": ["a"]} done', "experiences") == ["a"]
    with pytest.raises(ValueError):
        parse_json('{"experiences": "a"}', "experiences")
    p = parse_ops([{"op": "update", "id": "[G3]", "text": "t"}, {"op": "DELETE", "id": 2},
                   {"op": "UPDATE", "text": "u"}])
    assert [(o.op, o.index) for o in p] == [("UPDATE", 3), ("DELETE", 2), ("UPDATE", None)]
    with pytest.raises(ValueError):
        parse_ops([{"op": "DELETE", "id": "G?"}])
    # an UPDATE without an id is treated like an unknown id: added as new
    assert [o.op for o in merge_ops(p[2:], [Lesson(1, "x")])] == ["ADD"]
