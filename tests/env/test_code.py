"""agentrl/Code-v0 and tools/sandbox.py: escape attempts (each must fail AND leave the host untouched), limits,
the unsandboxed fallback, tasks (generated, HumanEval, user JSONL), rewards, expert, bad input, the config."""
import json
import os
import secrets
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import gymnasium
import numpy as np
import pytest

import agentrl  # noqa: F401  (registers the ids)
from agentrl.envs.code import CodeEnv, generated_task, grade, humaneval_tasks, load_tasks_jsonl, split_check
from agentrl.tools import sandbox as sandbox_mod
from agentrl.tools.sandbox import MARKER, Sandbox, SandboxConfig, SandboxError, make_python_tool

ID = "agentrl/Code-v0"
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
needs_bwrap = pytest.mark.skipif(not os.path.exists("/usr/bin/bwrap"), reason="needs bubblewrap (/usr/bin/bwrap)")


@pytest.fixture(scope="module")
def sb():
    return Sandbox(SandboxConfig(timeout_s=4.0, cpu_s=2, memory_mb=512, max_processes=16))


def _leftovers(run_id: str) -> list[int]:
    """Host pids whose command line carries this run's marker (processes that outlived the run)."""
    tag = f"{MARKER}-{run_id}".encode()
    found = []
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                if tag in Path(f"/proc/{pid}/cmdline").read_bytes():
                    found.append(int(pid))
            except OSError:
                pass
    return found


def _assert_no_leftovers(run_id: str) -> None:
    for _ in range(40):  # the pid namespace is torn down asynchronously; give it up to 2 s
        if not _leftovers(run_id):
            return
        time.sleep(0.05)
    raise AssertionError(f"sandbox processes survived the run: {_leftovers(run_id)}")


# ----------------------------------------------------------------------------------------------- escapes
@needs_bwrap
def test_network_is_unreachable(sb):
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    server.setblocking(False)
    port = server.getsockname()[1]
    code = (f"import socket\n"
            f"for host, port in [('127.0.0.1', {port}), ('1.1.1.1', 53), ('8.8.8.8', 80)]:\n"
            f"    try:\n"
            f"        socket.create_connection((host, port), timeout=1)\n"
            f"        print('CONNECTED', host)\n"
            f"    except OSError as e:\n"
            f"        print('blocked', host, e)\n"
            f"socket.create_connection(('1.1.1.1', 53), timeout=1)\n")
    r = sb.run(code)
    try:
        with pytest.raises(BlockingIOError):
            server.accept()  # nothing reached the host's loopback
    finally:
        server.close()
    assert "CONNECTED" not in r.output and r.output.count("blocked") == 3, r.output
    assert "Network is unreachable" in r.output and r.exit_code == 1 and "[exit code 1]" in r.describe()


@needs_bwrap
def test_home_directory_is_not_readable(sb):
    token = secrets.token_hex(16)
    secret_dir = tempfile.mkdtemp(prefix=".agentrl-sandbox-test-", dir=Path.home())
    secret = Path(secret_dir) / "secret.txt"
    secret.write_text(token)
    try:
        code = (f"import os\n"
                f"for p in ['/root', {str(Path.home())!r}, {secret_dir!r}, '/etc']:\n"
                f"    try:\n"
                f"        print('LISTED', p, os.listdir(p))\n"
                f"    except OSError as e:\n"
                f"        print('denied', p, e)\n"
                f"print(open({str(secret)!r}).read())\n")
        r = sb.run(code)
    finally:
        secret.unlink()
        os.rmdir(secret_dir)
    assert token not in r.output and "LISTED" not in r.output, r.output
    assert "FileNotFoundError" in r.output and r.exit_code == 1


@needs_bwrap
def test_writes_outside_the_work_dir_never_reach_the_host(sb, tmp_path):
    home_dir = Path(tempfile.mkdtemp(prefix=".agentrl-sandbox-test-", dir=Path.home()))
    targets = [tmp_path / "escape.txt", home_dir / "escape.txt", Path("/usr/agentrl-escape.txt"),
               Path(ROOT) / "agentrl-escape.txt"]
    try:
        code = (f"import os\n"
                f"for p in {[str(t) for t in targets]!r}:\n"
                f"    try:\n"
                f"        os.makedirs(os.path.dirname(p), exist_ok=True)\n"
                f"        open(p, 'w').write('pwned')\n"
                f"        print('wrote (inside the sandbox only)', p)\n"
                f"    except OSError as e:\n"
                f"        print('refused', p, e)\n"
                f"open('/usr/bin/python3', 'a').write('#')\n")
        r = sb.run(code)
        for t in targets:
            assert not t.exists(), f"{t} was written on the host"
    finally:
        for t in targets[:2]:
            t.unlink(missing_ok=True)
        home_dir.rmdir()
    assert "Read-only file system" in r.output and r.exit_code == 1, r.output
    assert "ok" not in Path("/usr/bin/python3").read_bytes()[-2:].decode("latin-1")


@needs_bwrap
def test_fork_bomb_is_bounded_and_cleaned_up(sb):
    code = "import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass\n"
    t0 = time.monotonic()
    r = sb.run(code)
    assert time.monotonic() - t0 < sb.config.timeout_s + 3
    assert r.killed_reason in ("timeout", "cpu_time") and "[killed:" in r.describe(), r
    _assert_no_leftovers(r.run_id)
    assert subprocess.run(["true"]).returncode == 0  # the host can still fork
    r = sb.run("import os\nn = 0\ntry:\n    while True:\n        if os.fork() == 0:\n"
               "            import time; time.sleep(30)\n        n += 1\nexcept OSError as e:\n    print(n, e)\n")
    assert "Resource temporarily unavailable" in r.output and int(r.output.split()[0]) < 16, r.output
    _assert_no_leftovers(r.run_id)


@needs_bwrap
def test_allocating_4gb_fails_with_memory_error(sb):
    r = sb.run("x = bytearray(4 * 1024 ** 3)\nprint('ALLOCATED')")
    assert "MemoryError" in r.output and "ALLOCATED" not in r.output and r.exit_code == 1
    r = sb.run("chunks = []\nwhile True:\n    chunks.append(bytearray(50 * 1024 ** 2))")
    assert "MemoryError" in r.output and r.exit_code == 1


@needs_bwrap
def test_infinite_loop_hits_cpu_or_wall_limit(sb):
    r = sb.run("while True:\n    pass")
    assert r.killed_reason in ("cpu_time", "timeout") and "[killed:" in r.describe(sb.config)
    _assert_no_leftovers(r.run_id)
    t0 = time.monotonic()
    r = Sandbox(timeout_s=1.5).run("import time\nprint('start', flush=True)\ntime.sleep(60)")
    assert r.timed_out and r.exit_code is None and time.monotonic() - t0 < 4
    assert r.output.startswith("start") and "wall-clock time limit" in r.describe()
    _assert_no_leftovers(r.run_id)


@needs_bwrap
def test_killing_the_parent_or_everything_leaves_the_host_alive(sb):
    canary = subprocess.Popen(["sleep", "60"])
    try:
        code = (f"import os, signal\n"
                f"os.kill(os.getppid(), signal.SIGKILL)\n"  # pid 1 of the sandbox's pid namespace: ignored
                f"try:\n"
                f"    os.kill(-1, signal.SIGKILL)\n"
                f"except OSError as e:\n"
                f"    print('kill -1:', e)\n"
                f"os.kill({canary.pid}, signal.SIGKILL)\n")
        r = sb.run(code)
        time.sleep(0.2)
        assert canary.poll() is None, "the sandbox killed a host process"
    finally:
        canary.kill()
        canary.wait()
    assert "ProcessLookupError" in r.output and r.exit_code == 1, r.output
    r = sb.run("import os, signal\nos.kill(os.getpid(), signal.SIGSEGV)")
    assert r.killed_reason == "signal SIGSEGV"


@needs_bwrap
def test_sandbox_identity_and_environment(sb):
    r = sb.run("import os\nprint(os.getuid(), os.getgid(), os.getcwd(), sorted(os.environ), os.listdir('/'))\n"
               "print(os.path.exists('/usr/bin/python3'), open('/proc/1/cmdline').read()[:5])")
    assert r.ok and r.output.startswith("65534 65534 /work"), r.output
    assert "HOME" in r.output and "AGENTRL" not in r.output and "'root'" not in r.output


@needs_bwrap
def test_hostile_code_through_the_env_gives_error_observations():
    env = gymnasium.make(ID, timeout_s=2.0)
    env.reset(seed=0)
    obs, reward, term, trunc, info = env.step("<python>import os\nwhile True:\n    os.fork()</python>")
    assert reward == 0.0 and not term and info["action_valid"] and info["n_tool_calls"] == 1
    assert "BlockingIOError" in obs and obs.splitlines()[-1].startswith(("[killed:", "[exit code")), obs[-300:]
    obs, *_ = env.step("<python>open('/root/.bashrc').read()</python>")
    assert "FileNotFoundError" in obs and "[exit code 1]" in obs


# ----------------------------------------------------------------------------------------------- limits, fallback
@needs_bwrap
def test_output_is_truncated_and_flooding_is_bounded():
    small = Sandbox(max_output_bytes=100, timeout_s=2.0)
    r = small.run("print('x' * 10000)")
    assert r.truncated and len(r.output) == 100 and r.output_bytes == 10001 and r.ok
    assert "[output truncated" in r.describe()
    r = small.run("while True:\n    print('y' * 1000)")
    assert r.timed_out and len(r.output) == 100 and r.output_bytes > 10_000
    tool = make_python_tool(small)
    assert tool("print(1)") == "1\n" and "[output truncated" in tool("print('z' * 500)")


@needs_bwrap
def test_file_size_limit(sb):
    r = Sandbox(file_size_mb=1).run("open('big', 'wb').write(b'x' * (4 << 20))")
    assert "File too large" in r.output and r.exit_code == 1


def test_unsandboxed_fallback_is_refused_by_default(monkeypatch):
    no_bwrap = Sandbox(bwrap="/nonexistent/bwrap")
    assert not no_bwrap.sandboxed
    with pytest.raises(SandboxError, match="bubblewrap.*allow_unsandboxed=True"):
        no_bwrap.run("print(1)")
    with pytest.raises(SandboxError, match="not found"):
        no_bwrap.check()
    monkeypatch.setattr(sandbox_mod, "bwrap_available", lambda path=None: False)
    env = gymnasium.make(ID)
    with pytest.raises(SandboxError, match="apt-get install bubblewrap"):
        env.reset(seed=0)


def test_unsandboxed_fallback_when_allowed_warns_and_runs(monkeypatch):
    monkeypatch.setattr(sandbox_mod, "_warned_unsandboxed", False)
    fallback = Sandbox(bwrap="/nonexistent/bwrap", allow_unsandboxed=True, timeout_s=2.0, cpu_s=1)
    with pytest.warns(RuntimeWarning, match="WITHOUT a sandbox"):
        r = fallback.run("print(6 * 7)")
    assert r.output == "42\n" and r.ok and not r.sandboxed
    fallback.check()
    r = fallback.run("x = bytearray(4 * 1024 ** 3)")
    assert "MemoryError" in r.output  # rlimits still apply
    r = fallback.run("while True:\n    pass")
    assert r.killed_reason in ("cpu_time", "timeout")


def test_bad_sandbox_config():
    for kw in [{"timeout_s": 0}, {"memory_mb": -1}, {"max_output_bytes": 0}]:
        with pytest.raises(ValueError):
            SandboxConfig(**kw)


# ----------------------------------------------------------------------------------------------- tasks
def test_generated_tasks_splits_and_tests():
    env = gymnasium.make(ID).unwrapped
    train, test = env.make_tasks("train", 150, seed=0), env.make_tasks("test", 150, seed=0)
    assert len(train) + len(test) == len(env._pool["train"]) + len(env._pool["test"]) > 100
    assert {t.id for t in train}.isdisjoint({t.id for t in test}) and len(test) >= 15
    assert [t.id for t in env.make_tasks("train", 20, seed=3)] == [t.id for t in env.make_tasks("train", 20, seed=3)]
    add3 = generated_task("add", 3)
    assert add3["prompt"] == "Write a Python function add_3(x) that returns x plus 3."
    assert "assert add_3(1) == 4" in add3["tests"] and add3["solution"] == "def add_3(x):\n    return x + 3"


@needs_bwrap
@pytest.mark.parametrize("parser", ["tags", "hermes"])
def test_expert_solves_and_corrupt_fails(parser):
    env = gymnasium.make(ID, parser=parser, reward="fraction")
    base, rng = env.unwrapped, np.random.default_rng(0)
    for split in ("train", "test"):
        for task in base.make_tasks(split, 4, seed=1):
            env.reset(options={"task": task})
            _, reward, term, _, info = env.step(base.expert_action())
            assert reward == 1.0 and term and info["success"] and info["tests_passed"] == info["tests_total"]
            env.reset(options={"task": task})
            _, reward, term, _, info = env.step(base.corrupt_action(rng))
            assert reward < 1.0 and term and not info["success"] and info["action_valid"]


@needs_bwrap
@pytest.mark.parametrize("parser", ["tags", "hermes"])
def test_expert_can_try_its_code_first(parser):
    env = gymnasium.make(ID, parser=parser, expert_uses_tool=True)
    base = env.unwrapped
    env.reset(seed=2)
    obs, reward, term, _, info = env.step(base.expert_action())
    assert obs.strip() == "ok" and not term and info["n_tool_calls"] == 1
    _, reward, term, _, info = env.step(base.expert_action())
    assert reward == 1.0 and term and info["success"]


@needs_bwrap
def test_reward_all_vs_fraction():
    task = gymnasium.make(ID).unwrapped.build_task({"prompt": generated_task("add", 3)["prompt"]})
    almost = "<answer>\ndef add_3(x):\n    return x + 3 if x != 0 else 1\n</answer>"  # fails add_3(0) only
    results = {}
    for kind in ("all", "fraction"):
        env = gymnasium.make(ID, reward=kind)
        env.reset(options={"task": task})
        results[kind] = env.step(almost)
    assert results["all"][1] == 0.0 and results["fraction"][1] == pytest.approx(0.8)
    info = results["fraction"][4]
    assert info["tests_passed"] == 4 and info["tests_total"] == 5 and not info["success"]
    env = gymnasium.make(ID)
    env.reset(options={"task": task})
    fenced = "<answer>```python\ndef add_3(x):\n    return x + 3\n```</answer>"
    assert env.step(fenced)[1] == 1.0


@needs_bwrap
def test_broken_answers_score_zero_with_a_reason():
    env = gymnasium.make(ID, timeout_s=2.0, reward="fraction")
    task = env.unwrapped.build_task({"prompt": generated_task("mul", 4)["prompt"]})
    for answer, why in [("def mul_4(x)\n    return x * 4", "SyntaxError"), ("import sys\nsys.exit(0)", "SystemExit"),
                        ("def mul_4(x):\n    while True:\n        pass", "killed"),
                        ("import os\nos._exit(0)", None)]:
        env.reset(options={"task": task})
        _, reward, term, _, info = env.step(f"<answer>{answer}</answer>")
        assert reward == 0.0 and term and info["tests_passed"] == 0, (answer, info)
        assert why is None or why in info["grade_error"], (answer, info["grade_error"])


@needs_bwrap
def test_candidate_prints_cannot_forge_results(sb):
    tests = ["assert f() == 1"]
    forged = "import sys\nprint('PASS 0')\nsys.__stdout__.write('PASS 0\\n')\ndef f():\n    return 2"
    g = grade(sb, forged, tests)
    assert g.passed == 0 and g.total == 1


@needs_bwrap
def test_many_failing_tests_do_not_hide_passing_ones():
    small = Sandbox(max_output_bytes=200)
    tests = [f"assert f() == 'x' * 300, 'long message ' * 20" for _ in range(20)] + ["assert f() == 1"] * 10
    g = grade(small, "def f():\n    print('noise ' * 1000)\n    return 1", tests)
    assert g.passed == 10 and g.total == 30 and "AssertionError" in g.error


def test_split_check():
    test = ("METADATA = {}\n\ndef check(candidate):\n    import math\n    assert candidate(1) == 2\n"
            "    assert True\n    for x in range(3):\n        assert candidate(x) == x + 1\n    y = 5\n")
    parts = split_check(test, "inc")
    assert len(parts) == 2 and all(p.rstrip().endswith("check(inc)") for p in parts)
    assert "import math" in parts[1] and "assert True" not in parts[1] and "for x in range(3)" in parts[1]
    assert split_check("def check(candidate):\n    pass\n", "f") == ["def check(candidate):\n    pass\n\ncheck(f)\n"]


def test_humaneval_loads_164_problems():
    tasks = humaneval_tasks()
    assert len(tasks) == 164 and len({t["task_id"] for t in tasks}) == 164
    assert all(t["tests"] and t["entry_point"] in t["solution"] for t in tasks)
    env = gymnasium.make(ID, tasks="humaneval").unwrapped
    assert len(env._pool["train"]) + len(env._pool["test"]) == 164 and len(env._pool["test"]) > 15


@needs_bwrap
def test_humaneval_reference_solutions_pass(sb):
    by_id = {t["task_id"]: t for t in humaneval_tasks()}
    for tid in ("HumanEval/0", "HumanEval/32", "HumanEval/38", "HumanEval/53", "HumanEval/163"):
        t = by_id[tid]
        g = grade(Sandbox(timeout_s=10.0), t["solution"], t["tests"], t["setup"])
        assert g.passed == g.total and g.error is None, (tid, g)
    env = gymnasium.make(ID, tasks="humaneval", reward="fraction", timeout_s=10.0)
    env.reset(options={"task": env.unwrapped.build_task({"prompt": by_id["HumanEval/0"]["prompt"]})})
    _, reward, term, _, info = env.step(env.unwrapped.expert_action())
    assert reward == 1.0 and info["tests_total"] == 7
    env.reset(options={"task": env.unwrapped.build_task({"prompt": by_id["HumanEval/0"]["prompt"]})})
    # the prompt (imports, stub) runs before the answer, so a body-only-looking answer with the def line works
    _, reward, *_ = env.step("<answer>def has_close_elements(numbers: List[float], threshold: float) -> bool:\n"
                             "    return any(abs(a - b) < threshold for i, a in enumerate(numbers)\n"
                             "               for j, b in enumerate(numbers) if i != j)</answer>")
    assert reward == 1.0


def _write_jsonl(path, rows):
    path.write_text("\n".join(r if isinstance(r, str) else json.dumps(r) for r in rows) + "\n\n")
    return str(path)


@needs_bwrap
def test_user_jsonl_tasks(tmp_path):
    rows = [{"prompt": f"Write double_{i}(x) returning 2 * x + {i}.", "tests": [f"assert double_{i}(1) == {2 + i}",
             f"assert double_{i}(0) == {i}"], "entry_point": f"double_{i}",
             "solution": f"def double_{i}(x):\n    return 2 * x + {i}"} for i in range(30)]
    rows.append({"prompt": "Define GREETING.", "tests": "assert GREETING == 'hi'", "setup": "import math"})
    path = _write_jsonl(tmp_path / "tasks.jsonl", rows)
    assert len(load_tasks_jsonl(path)) == 31
    env = gymnasium.make(ID, data_path=path, reward="fraction")
    base = env.unwrapped
    train, test = base.make_tasks("train", 100, seed=0), base.make_tasks("test", 100, seed=0)
    assert len(train) + len(test) == 31 and train and test
    for task in (train + test)[:4]:
        if task.options.get("solution"):
            env.reset(options={"task": task})
            assert env.step(base.expert_action())[1] == 1.0
    env.reset(options={"task": base.build_task({"prompt": "Define GREETING."})})
    assert env.step("<answer>GREETING = 'hi'</answer>")[1] == 1.0
    with pytest.raises(ValueError, match="no reference solution"):
        base.expert_action()
    env.reset(options={"task": base.build_task({"prompt": "Write double_3(x) returning 2 * x + 3."})})
    assert env.step("<answer>def double_3(x):\n    return 2 * x + 4 if x else 3</answer>")[1] == 0.5


@pytest.mark.parametrize("line, msg", [
    ("{not json", "bad JSON"), ('["a list"]', "JSON object"), ('{"tests": ["assert 1"]}', "prompt"),
    ('{"prompt": "p"}', "tests"), ('{"prompt": "p", "tests": []}', "tests"), ('{"prompt": "p", "tests": [1]}', "tests"),
    ('{"prompt": "p", "tests": ["assert f(1) =="]}', "not valid Python"),
    ('{"prompt": "p", "tests": ["assert 1"], "solution": 3}', "solution"),
])
def test_bad_jsonl_is_a_clear_error(tmp_path, line, msg):
    path = _write_jsonl(tmp_path / "bad.jsonl", ['{"prompt": "ok", "tests": ["assert True"]}', line])
    with pytest.raises(ValueError, match=msg) as e:
        gymnasium.make(ID, data_path=path)
    assert ":2:" in str(e.value)
    (tmp_path / "empty.jsonl").write_text("\n")
    with pytest.raises(ValueError, match="no tasks"):
        load_tasks_jsonl(tmp_path / "empty.jsonl")


def test_bad_kwargs():
    for kw in [{"reward": "most"}, {"tasks": "mbpp"}, {"families": ["nope"]}, {"max_k": 1}]:
        with pytest.raises(ValueError):
            gymnasium.make(ID, **kw)
    env = gymnasium.make(ID).unwrapped
    with pytest.raises(ValueError, match="tests"):
        env.build_task({"prompt": "an unknown task"})


# ----------------------------------------------------------------------------------------------- bad input
@needs_bwrap
@pytest.mark.parametrize("reply, fragment", [
    ('<tool_call>{"name": "python", "arguments": {"code": 1</tool_call>', "bad JSON"),
    ('<tool_call>{"name": "python", "arguments": {}}</tool_call>', "bad arguments"),
    ('<tool_call>{"name": "shell", "arguments": {"code": "ls"}}</tool_call>', "unknown tool"),
    ("<python>print(1)", "Invalid action"),
    ("just some text", "Invalid action"),
])
def test_malformed_tool_calls_give_error_observations(reply, fragment):
    env = gymnasium.make(ID, parser="hermes" if "tool_call" in reply else "tags")
    env.reset(seed=0)
    obs, reward, term, trunc, info = env.step(reply)
    assert fragment in obs and not term and reward == 0.0


@needs_bwrap
def test_empty_code_and_random_text():
    env = gymnasium.make(ID)
    env.reset(seed=0)
    obs, *_ = env.step("<python>  </python>")
    assert "empty code" in obs
    env.action_space.seed(0)
    env.reset(seed=0)
    for i in range(100):
        obs, reward, term, trunc, info = env.step(env.action_space.sample())
        assert env.observation_space.contains(obs) and not info["action_valid"]
        if term or trunc:
            env.reset(seed=i)


# ----------------------------------------------------------------------------------------------- config
@needs_bwrap
def test_code_config_trains_end_to_end(tmp_path, tiny_dir):
    run = tmp_path / "run"
    r = subprocess.run([sys.executable, "-m", "agentrl.cli", "train", "configs/code.yaml", f"train.run_dir={run}",
                        f"model.path={tiny_dir}", "train.steps=1", "sft.n_demos=16", "sft.epochs=1",
                        "rollout.tasks_per_step=4", "rollout.group_size=2", "rollout.max_new_tokens=24", "eval.n_tasks=2",
                        "train.plot=false", "train.progress=false"],
                       cwd=ROOT, capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert r.returncode == 0, r.stderr[-3000:]
    recs = [json.loads(ln) for ln in open(run / "metrics.jsonl")]
    assert [x["train/step"] for x in recs if "rollout/success" in x] == [1]
    assert any("sft/demo_success" in x and x["sft/demo_success"] > 0 for x in recs)
    assert any("eval/success" in x for x in recs)
