"""The lesson library: SQLite (one file in the run directory), a `lessons` table and an append-only `ops` log.

Schema (docs/memory.md):
  lessons(id INTEGER PRIMARY KEY, text, created_step, updated_step, source_tasks JSON list, n_injected,
          reward_sum, active 0/1)       -- the current state; a deleted lesson stays, with active = 0
  ops(seq INTEGER PRIMARY KEY AUTOINCREMENT, step, op ADD|UPDATE|DELETE, lesson_id, text, source_tasks JSON,
      reason, prompt_version, ts)        -- every change, never rewritten; replaying it gives any step's library
Concurrency: WAL journal, a busy timeout, and every write in one `BEGIN IMMEDIATE` transaction on a connection of
its own, so several threads or processes (rollout workers, the reflector) can write the same file safely.
Lesson ids are stable database ids; the G0..Gn-1 numbers the policy and the reflector see are positions in the
rendered list (renumbered every time it is rendered).
"""
from __future__ import annotations

import json
import os
import sqlite3
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Iterable, Iterator, Optional, Sequence

OPS = ("ADD", "UPDATE", "DELETE")
_SCHEMA = """
CREATE TABLE IF NOT EXISTS lessons (
    id INTEGER PRIMARY KEY AUTOINCREMENT, text TEXT NOT NULL, created_step INTEGER NOT NULL,
    updated_step INTEGER NOT NULL, source_tasks TEXT NOT NULL DEFAULT '[]', n_injected INTEGER NOT NULL DEFAULT 0,
    reward_sum REAL NOT NULL DEFAULT 0, active INTEGER NOT NULL DEFAULT 1);
CREATE TABLE IF NOT EXISTS ops (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, step INTEGER NOT NULL, op TEXT NOT NULL, lesson_id INTEGER NOT NULL,
    text TEXT, source_tasks TEXT NOT NULL DEFAULT '[]', reason TEXT NOT NULL DEFAULT '',
    prompt_version TEXT NOT NULL DEFAULT '', ts REAL NOT NULL);
CREATE INDEX IF NOT EXISTS ops_step ON ops(step);
"""


@dataclass(frozen=True)
class Lesson:
    id: int
    text: str
    created_step: int = 0
    updated_step: int = 0
    source_tasks: tuple = ()
    n_injected: int = 0
    reward_sum: float = 0.0

    @property
    def mean_reward_injected(self) -> Optional[float]:
        return self.reward_sum / self.n_injected if self.n_injected else None


@dataclass(frozen=True)
class Op:
    """One library operation. ADD: text (id ignored); UPDATE: id + new text; DELETE: id; NONE is never stored."""

    op: str
    id: Optional[int] = None
    text: str = ""
    source_tasks: tuple = ()
    reason: str = ""


@dataclass
class ApplyResult:
    added: list = field(default_factory=list)  # new lesson ids
    updated: list = field(default_factory=list)
    deleted: list = field(default_factory=list)
    skipped: list = field(default_factory=list)  # (op, reason)


class LessonLibrary:
    """A lesson library stored at `path` (created on first use). Cheap to construct; holds no open connection."""

    def __init__(self, path: str, timeout_s: float = 30.0):
        self.path = os.path.abspath(path)
        self.timeout_s = float(timeout_s)
        os.makedirs(os.path.dirname(self.path) or ".", exist_ok=True)
        with self._connect() as con:
            con.execute("PRAGMA journal_mode=WAL")
            con.executescript(_SCHEMA)

    @contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        con = sqlite3.connect(self.path, timeout=self.timeout_s, isolation_level=None)
        try:
            con.execute(f"PRAGMA busy_timeout={int(self.timeout_s * 1000)}")
            yield con
        finally:
            con.close()

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """One write transaction (BEGIN IMMEDIATE takes the write lock up front: no lost updates)."""
        with self._connect() as con:
            con.execute("BEGIN IMMEDIATE")
            try:
                yield con
                con.execute("COMMIT")
            except BaseException:
                con.execute("ROLLBACK")
                raise

    # ------------------------------------------------------------------ reads
    def lessons(self) -> list[Lesson]:
        """Active lessons in id order (the order they are rendered and numbered G0, G1, ...)."""
        with self._connect() as con:
            rows = con.execute("SELECT id, text, created_step, updated_step, source_tasks, n_injected, reward_sum "
                               "FROM lessons WHERE active = 1 ORDER BY id").fetchall()
        return [Lesson(r[0], r[1], r[2], r[3], tuple(json.loads(r[4])), r[5], r[6]) for r in rows]

    def __len__(self) -> int:
        with self._connect() as con:
            return int(con.execute("SELECT COUNT(*) FROM lessons WHERE active = 1").fetchone()[0])

    def version(self) -> int:
        """The last operation's sequence number (0 when empty): changes whenever the library does."""
        with self._connect() as con:
            return int(con.execute("SELECT COALESCE(MAX(seq), 0) FROM ops").fetchone()[0])

    def ops_log(self, until_step: Optional[int] = None) -> list[dict]:
        q = "SELECT seq, step, op, lesson_id, text, source_tasks, reason, prompt_version, ts FROM ops"
        args: tuple = ()
        if until_step is not None:
            q, args = q + " WHERE step <= ?", (int(until_step),)
        with self._connect() as con:
            rows = con.execute(q + " ORDER BY seq", args).fetchall()
        keys = ("seq", "step", "op", "lesson_id", "text", "source_tasks", "reason", "prompt_version", "ts")
        return [{**dict(zip(keys, r)), "source_tasks": json.loads(r[5])} for r in rows]

    def at_step(self, step: int) -> list[Lesson]:
        """The library as it was after every operation of steps <= `step`, rebuilt from the ops log alone."""
        state: dict[int, Lesson] = {}
        for o in self.ops_log(until_step=step):
            lid = o["lesson_id"]
            if o["op"] == "ADD":
                state[lid] = Lesson(lid, o["text"], o["step"], o["step"], tuple(o["source_tasks"]))
            elif o["op"] == "UPDATE" and lid in state:
                old = state[lid]
                tasks = tuple(dict.fromkeys(old.source_tasks + tuple(o["source_tasks"])))
                state[lid] = Lesson(lid, o["text"], old.created_step, o["step"], tasks)
            elif o["op"] == "DELETE":
                state.pop(lid, None)
        return [state[k] for k in sorted(state)]

    # ------------------------------------------------------------------ writes
    def apply(self, ops: Iterable[Op], step: int, prompt_version: str = "") -> ApplyResult:
        """Apply `ops` in order in one transaction, logging each. UPDATE/DELETE of an id that is not active is
        skipped (the reflector turns unknown-id UPDATEs into ADDs before this)."""
        res = ApplyResult()
        now = time.time()
        with self._write() as con:
            for o in ops:
                kind = o.op.upper()
                tasks = list(dict.fromkeys(str(t) for t in o.source_tasks))
                if kind == "ADD":
                    if not o.text.strip():
                        res.skipped.append((o, "empty text"))
                        continue
                    cur = con.execute("INSERT INTO lessons (text, created_step, updated_step, source_tasks) "
                                      "VALUES (?, ?, ?, ?)", (o.text.strip(), step, step, json.dumps(tasks)))
                    lid = int(cur.lastrowid)
                    res.added.append(lid)
                elif kind in ("UPDATE", "DELETE"):
                    row = con.execute("SELECT source_tasks FROM lessons WHERE id = ? AND active = 1",
                                      (o.id,)).fetchone()
                    if row is None:
                        res.skipped.append((o, f"no active lesson with id {o.id}"))
                        continue
                    lid = int(o.id)
                    if kind == "UPDATE":
                        if not o.text.strip():
                            res.skipped.append((o, "empty text"))
                            continue
                        merged = list(dict.fromkeys(json.loads(row[0]) + tasks))
                        con.execute("UPDATE lessons SET text = ?, updated_step = ?, source_tasks = ? WHERE id = ?",
                                    (o.text.strip(), step, json.dumps(merged), lid))
                        res.updated.append(lid)
                    else:
                        con.execute("UPDATE lessons SET active = 0, updated_step = ? WHERE id = ?", (step, lid))
                        res.deleted.append(lid)
                else:
                    res.skipped.append((o, f"unknown op {o.op!r}"))
                    continue
                con.execute("INSERT INTO ops (step, op, lesson_id, text, source_tasks, reason, prompt_version, ts) "
                            "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                            (step, kind, lid, o.text.strip() if kind != "DELETE" else None, json.dumps(tasks),
                             o.reason, prompt_version, now))
        return res

    def add(self, text: str, step: int = 0, source_tasks: Sequence[str] = ()) -> int:
        return self.apply([Op("ADD", text=text, source_tasks=tuple(source_tasks))], step).added[0]

    def record_injection(self, lesson_ids: Sequence[int], reward: Optional[float]) -> None:
        """Count one episode that had these lessons in its prompt, and its return (None = unscorable: counted
        as injected, no reward)."""
        if not lesson_ids:
            return
        with self._write() as con:
            con.executemany("UPDATE lessons SET n_injected = n_injected + 1, reward_sum = reward_sum + ? "
                            "WHERE id = ?", [(float(reward or 0.0), int(i)) for i in lesson_ids])
