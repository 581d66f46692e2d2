"""The reflector: groups of trajectories -> lesson-library operations (training-free GRPO's semantic advantage).

Per group of rollouts of one task (ALGORITHMS.md › Training-free GRPO, youtu-agent `utu/practice/`):
  1. only partially-correct groups are used: 0 < mean success < 1 (success is the env's verdict, i.e. the 0/1
     reward of verifier envs; shaped rewards would make "mean reward < 1" meaningless); empty, all-correct and
     all-wrong groups are skipped and counted;
  2. SUMMARY: each trajectory is summarised by the chat model (one call each, run concurrently);
  3. CRITIQUE: the group's summaries are compared against the reference answer, giving <= max_lessons
     experiences (the semantic advantage);
  4. GROUP_OPS: the experiences become ADD / UPDATE(Gi) / DELETE(Gi) / NONE against the current library;
  5. BATCH_MERGE: one call merges every group's operations; then deterministic rules always hold whatever the
     model answered: DELETE beats UPDATE of the same lesson, one UPDATE per lesson (the last), ADDs that are duplicates
     of each other or of a kept lesson merge into one (token-set Jaccard >= dup_threshold, default 1.0: the same
     words, case, punctuation and order aside; merging paraphrases is the batch call's job: a looser threshold
     would merge "Planet A has 2 moons." with "Planet B has 2 moons."), UPDATE of an
     unknown id becomes an ADD, DELETE of an unknown id is dropped, texts are cut to max_words words.
Prompts: agentrl/memory/prompts.py (versioned). A reply that is not the requested JSON is retried once with the
parse error; a second failure skips that call with a logged reason (`ReflectReport.skipped`); a failed batch merge
falls back to the deterministic merge of the groups' operations. Nothing here raises on model output.
"""
from __future__ import annotations

import json
import logging
import re
import threading
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Callable, Optional, Sequence

from ..types import Trajectory
from . import prompts as P
from .library import ApplyResult, Lesson, LessonLibrary, Op

log = logging.getLogger("agentrl.memory")
_WORD = re.compile(r"[a-z0-9]+")
_GID = re.compile(r"^\s*\[?\s*G?\s*(\d+)\s*\]?\s*\.?\s*$", re.IGNORECASE)


@dataclass
class ProposedOp:
    """An operation against the rendered library: `index` is the G-number (None for ADD / NONE)."""

    op: str
    index: Optional[int] = None
    text: str = ""
    tasks: tuple = ()


@dataclass
class ReflectReport:
    groups: int = 0
    used: int = 0
    skipped_groups: dict = field(default_factory=lambda: defaultdict(int))  # reason -> count
    calls: int = 0
    retries: int = 0
    skipped: list = field(default_factory=list)  # (what, reason) of model answers that could not be used
    proposed: list = field(default_factory=list)  # every group's ProposedOps
    final: list = field(default_factory=list)  # the merged Ops applied
    applied: Optional[ApplyResult] = None

    def metrics(self, prefix: str = "memory/") -> dict:
        a = self.applied or ApplyResult()
        return {f"{prefix}groups": self.groups, f"{prefix}groups_used": self.used,
                f"{prefix}groups_all_correct": self.skipped_groups.get("all correct", 0),
                f"{prefix}groups_all_wrong": self.skipped_groups.get("all wrong", 0),
                f"{prefix}llm_calls": self.calls, f"{prefix}llm_retries": self.retries,
                f"{prefix}llm_skipped": len(self.skipped), f"{prefix}added": len(a.added),
                f"{prefix}updated": len(a.updated), f"{prefix}deleted": len(a.deleted)}


# ---------------------------------------------------------------------------------------------- text helpers
def words(text: str) -> set:
    return set(_WORD.findall(str(text).lower()))


def similarity(a: str, b: str) -> float:
    """Token Jaccard similarity of two lessons (1.0 for equal word sets)."""
    wa, wb = words(a), words(b)
    return len(wa & wb) / len(wa | wb) if wa and wb else float(a.strip().lower() == b.strip().lower())


def clip_words(text: str, max_words: int) -> str:
    ws = " ".join(str(text).split()).split(" ")
    return " ".join(ws[:max_words])


def render_library(lessons: Sequence[Any]) -> str:
    """[G0]. text lines (lessons: Lesson or str), or "(empty)"."""
    texts = [getattr(x, "text", x) for x in lessons]
    return "\n".join(f"[G{i}]. {t}" for i, t in enumerate(texts)) if texts else "(empty)"


def task_text(traj: Trajectory) -> str:
    o = traj.task.options or {}
    for key in ("problem", "question", "prompt", "instruction", "goal"):
        if isinstance(o.get(key), str):
            return o[key]
    return json.dumps({k: v for k, v in o.items() if k != "answer"}, default=str)[:2000]


def trajectory_text(traj: Trajectory, max_chars: int = 4000) -> str:
    parts = []
    for k, t in enumerate(traj.turns):
        parts.append(f"Step {k + 1} action: {t.action_text.strip()}")
        obs = " ".join(m.content for m in t.obs_messages if getattr(m, "content", None))
        if obs:
            parts.append(f"Step {k + 1} observation: {obs.strip()}")
    text = "\n".join(parts) or "(no actions)"
    return text if len(text) <= max_chars else text[: max_chars - 3] + "..."


def outcome_text(traj: Trajectory) -> str:
    return f"{'correct' if traj.success else 'wrong'} (reward {traj.reward if traj.reward is not None else 'n/a'})"


def parse_json(text: str, key: str) -> Any:
    """The value of `key` (a list) in the first JSON object of `text` (code fences allowed); raises ValueError."""
    s = str(text).strip()
    s = re.sub(r"^```[a-zA-Z]*\s*|\s*```$", "", s)
    try:
        obj = json.loads(s)
    except json.JSONDecodeError:
        i, j = s.find("{"), s.rfind("}")
        if i < 0 or j <= i:
            raise ValueError("no JSON object in the answer") from None
        try:
            obj = json.loads(s[i:j + 1])
        except json.JSONDecodeError as e:
            raise ValueError(f"invalid JSON ({e.msg} at char {e.pos})") from None
    if not isinstance(obj, dict) or not isinstance(obj.get(key), list):
        raise ValueError(f'expected an object with a list "{key}"')
    return obj[key]


def parse_index(value: Any) -> Optional[int]:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    m = _GID.match(str(value)) if value is not None else None
    return int(m.group(1)) if m else None


def parse_ops(items: list, tasks: tuple = ()) -> list[ProposedOp]:
    """Model ops -> ProposedOps; raises ValueError on an item that is not an operation at all."""
    out = []
    for it in items:
        if not isinstance(it, dict) or not isinstance(it.get("op"), str):
            raise ValueError(f"operation {it!r:.80} has no 'op'")
        op = it["op"].strip().upper()
        if op not in ("ADD", "UPDATE", "DELETE", "NONE"):
            raise ValueError(f"unknown operation {it['op']!r}")
        text = it.get("text") or ""
        if not isinstance(text, str):
            raise ValueError(f"operation {op}: 'text' must be a string")
        if op in ("ADD", "UPDATE") and not text.strip():
            raise ValueError(f"operation {op} without 'text'")
        index = parse_index(it.get("id"))
        if op in ("UPDATE", "DELETE") and index is None:
            if op == "DELETE":
                raise ValueError(f"DELETE without a valid id ({it.get('id')!r})")
        out.append(ProposedOp(op, index, text.strip(), tasks))
    return out


# ---------------------------------------------------------------------------------------------- merge rules
def merge_ops(ops: Sequence[ProposedOp], lessons: Sequence[Lesson], max_words: int = 32,
              dup_threshold: float = 1.0) -> list[Op]:
    """The deterministic merge (module docstring) of G-indexed proposals into library Ops (DELETEs, UPDATEs,
    then ADDs)."""
    n = len(lessons)
    deletes: dict[int, set] = {}
    updates: dict[int, ProposedOp] = {}
    adds: list[ProposedOp] = []
    for o in ops:
        known = o.index is not None and 0 <= o.index < n
        if o.op == "DELETE" and known:
            deletes.setdefault(o.index, set()).update(o.tasks)
        elif o.op == "UPDATE" and known:
            prev = updates.get(o.index)
            updates[o.index] = ProposedOp("UPDATE", o.index, o.text, (prev.tasks if prev else ()) + o.tasks)
        elif o.op in ("ADD", "UPDATE"):  # UPDATE of an unknown id is added as new
            adds.append(ProposedOp("ADD", None, o.text, o.tasks))
    for i in deletes:
        updates.pop(i, None)  # DELETE beats UPDATE
    kept = [lessons[i].text if i not in updates else updates[i].text for i in range(n) if i not in deletes]
    merged: list[ProposedOp] = []
    for a in adds:
        text = clip_words(a.text, max_words)
        if any(similarity(text, k) >= dup_threshold for k in kept):
            continue  # already in the library
        twin = next((m for m in merged if similarity(text, m.text) >= dup_threshold), None)
        if twin is not None:
            twin.tasks = twin.tasks + a.tasks
            continue
        merged.append(ProposedOp("ADD", None, text, a.tasks))
    out = [Op("DELETE", lessons[i].id, source_tasks=tuple(dict.fromkeys(t)), reason="reflector") for i, t in
           sorted(deletes.items())]
    out += [Op("UPDATE", lessons[i].id, clip_words(u.text, max_words), tuple(dict.fromkeys(u.tasks)), "reflector")
            for i, u in sorted(updates.items())]
    out += [Op("ADD", None, m.text, tuple(dict.fromkeys(m.tasks)), "reflector") for m in merged]
    return out


def _provenance(final: list[ProposedOp], proposed: list[ProposedOp]) -> list[ProposedOp]:
    """Give the batch merge's operations the task ids of the group proposals they came from."""
    every = tuple(dict.fromkeys(t for p in proposed for t in p.tasks))
    for f in final:
        if f.op in ("UPDATE", "DELETE"):
            src = [p for p in proposed if p.index == f.index and p.op != "ADD"]
        else:
            src = [p for p in proposed if p.text and similarity(p.text, f.text) >= 0.5]
        f.tasks = tuple(dict.fromkeys(t for p in src for t in p.tasks)) or every
    return final


# ---------------------------------------------------------------------------------------------- the reflector
class Reflector:
    """`reflect(trajectories, library, step)`: one library update from a batch of groups (module docstring).
    llm: a chat model (`chat(messages) -> str`, agentrl/memory/llm.py); workers: concurrent model calls."""

    def __init__(self, llm, max_lessons: int = 2, max_words: int = 32, workers: int = 8,
                 dup_threshold: float = 1.0, task_text: Callable[[Trajectory], str] = task_text):
        self.llm, self.max_lessons, self.max_words = llm, int(max_lessons), int(max_words)
        self.workers, self.dup_threshold, self.task_text = max(1, int(workers)), float(dup_threshold), task_text
        self._lock = threading.Lock()  # the report's counters are shared by the worker threads

    # ------------------------------------------------------------------ model calls
    def _ask(self, user: str, report: ReflectReport, what: str, key: Optional[str]):
        """One model call (plain text when key is None, else the JSON list under `key`), retried once with the
        error when the answer is unusable; None (and a logged reason) when it still is."""
        messages = [{"role": "system", "content": P.SYSTEM}, {"role": "user", "content": user}]
        error = ""
        for attempt in range(2):
            try:
                with self._lock:
                    report.calls += 1
                answer = self.llm.chat(messages)
            except Exception as e:  # noqa: BLE001 - a dead endpoint skips this call, never the run
                error = f"model call failed: {type(e).__name__}: {e}"
                answer = None
            if answer is not None:
                if key is None:
                    if answer.strip():
                        return answer.strip()
                    error = "empty answer"
                else:
                    try:
                        return parse_json(answer, key) if key != "operations" else parse_ops(parse_json(answer, key))
                    except ValueError as e:
                        error = str(e)
                messages = messages + [{"role": "assistant", "content": answer},
                                       {"role": "user", "content": P.RETRY.format(error=error)}]
            if attempt == 0:
                with self._lock:
                    report.retries += 1
        with self._lock:
            report.skipped.append((what, error))
        log.warning("reflector: skipped %s: %s", what, error)
        return None

    def _group_ops(self, group: list[Trajectory], summaries: list[Optional[str]], lessons: Sequence[Lesson],
                   report: ReflectReport) -> list[ProposedOp]:
        task = group[0].task
        lines = [f"Attempt {i + 1} ({outcome_text(t)}):\n{s}" for i, (t, s) in enumerate(zip(group, summaries))
                 if s is not None]
        if not lines:
            with self._lock:
                report.skipped.append((f"group {group[0].group_id}", "no usable summaries"))
            return []
        lib = render_library(lessons)
        exps = self._ask(P.CRITIQUE.format(task=self.task_text(group[0]), reference=task.answer,
                                           summaries="\n\n".join(lines), lessons=lib,
                                           max_lessons=self.max_lessons, max_words=self.max_words),
                         report, f"critique of group {group[0].group_id}", "experiences")
        exps = [clip_words(e, self.max_words) for e in (exps or []) if isinstance(e, str) and e.strip()]
        exps = exps[: self.max_lessons]
        if not exps:
            return []
        ops = self._ask(P.GROUP_OPS.format(lessons=lib, experiences=json.dumps(exps), max_words=self.max_words),
                        report, f"operations of group {group[0].group_id}", "operations")
        return [ProposedOp(o.op, o.index, o.text, (task.id,)) for o in ops or [] if o.op != "NONE"]

    # ------------------------------------------------------------------ the update
    def select_groups(self, trajs: Sequence[Trajectory], report: ReflectReport) -> list[list[Trajectory]]:
        groups: dict[str, list[Trajectory]] = {}
        for t in trajs:
            groups.setdefault(t.group_id, []).append(t)
        report.groups = len(groups)
        used = []
        for gid, g in groups.items():
            g = [t for t in g if t.reward is not None]
            share = sum(t.success for t in g) / len(g) if g else 0.0
            reason = "empty" if not g else "all correct" if share == 1.0 else "all wrong" if share == 0.0 else ""
            if reason:
                report.skipped_groups[reason] += 1
            else:
                used.append(g)
        report.used = len(used)
        return used

    def propose(self, trajs: Sequence[Trajectory], lessons: Sequence[Lesson], report: ReflectReport):
        """Steps 1-4: every used group's proposed operations."""
        groups = self.select_groups(trajs, report)
        if not groups:
            return []
        flat = [t for g in groups for t in g]
        with ThreadPoolExecutor(self.workers) as pool:
            summaries = list(pool.map(lambda t: self._ask(
                P.SUMMARY.format(task=self.task_text(t), trajectory=trajectory_text(t), outcome=outcome_text(t)),
                report, f"summary of {t.id}", None), flat))
            per_group, i = [], 0
            for g in groups:
                per_group.append(summaries[i:i + len(g)])
                i += len(g)
            proposals = list(pool.map(lambda gs: self._group_ops(gs[0], gs[1], lessons, report),
                                      zip(groups, per_group)))
        report.proposed = [o for ops in proposals for o in ops]
        return report.proposed

    def merge(self, proposed: list[ProposedOp], lessons: Sequence[Lesson], report: ReflectReport) -> list[Op]:
        """Step 5: one batch call, then the deterministic rules (fallback: the rules alone)."""
        if not proposed:
            return []
        shown = [{"op": o.op, **({"id": f"G{o.index}"} if o.index is not None else {}),
                  **({"text": o.text} if o.text else {})} for o in proposed]
        final = self._ask(P.BATCH_MERGE.format(lessons=render_library(lessons), operations=json.dumps(shown, indent=1),
                                               max_words=self.max_words), report, "batch merge", "operations")
        ops = proposed if final is None else _provenance([o for o in final if o.op != "NONE"], proposed)
        return merge_ops(ops, lessons, self.max_words, self.dup_threshold)

    def reflect(self, trajs: Sequence[Trajectory], library: LessonLibrary, step: int) -> ReflectReport:
        report = ReflectReport()
        lessons = library.lessons()
        proposed = self.propose(trajs, lessons, report)
        report.final = self.merge(proposed, lessons, report)
        report.applied = library.apply(report.final, step, prompt_version=P.PROMPTS_VERSION)
        return report
