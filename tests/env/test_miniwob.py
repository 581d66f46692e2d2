"""agentrl/MiniWoB-v0 in a real headless Chromium: page text, experts, rewards, errors, screenshots, browser
lifecycle and isolation. Browser tests skip where chromium / chromedriver are missing (CI installs them)."""
import os
import time

import gymnasium
import pytest

import agentrl  # noqa: F401  (registers the ids)
from agentrl.env.base import split_of
from agentrl.envs import describe, registered_ids
from agentrl.envs.miniwob import CURATED, find_browser, normalize_key
from agentrl.types import Message

ID = "agentrl/MiniWoB-v0"
browser = pytest.mark.skipif(find_browser() is None, reason="MiniWoB needs chromium and chromedriver (apt-get "
                             "install chromium chromium-driver, or set MINIWOB_CHROME_BINARY and MINIWOB_CHROMEDRIVER)")


def task(name, seed=0):
    return {"task": {"options": {"task": name, "seed": seed}}}


@pytest.fixture(scope="module")
def env():
    e = gymnasium.make(ID)
    yield e
    e.close()


@pytest.fixture(scope="module")
def hermes_env():
    e = gymnasium.make(ID, parser="hermes")
    yield e
    e.close()


def run_expert(env, options):
    env.reset(options=options)
    n, done = 0, False
    while not done:
        _, reward, term, trunc, info = env.step(env.unwrapped.expert_action())
        done, n = term or trunc, n + 1
    return reward, term, info, n


# ----------------------------------------------------------------------------------------------- no browser
def test_registered_described_and_lazy():
    assert ID in registered_ids()
    d = describe(ID)
    assert d["tools"] == ["click", "type", "press"] and d["description"].startswith("MiniWoB++ web tasks")
    e = gymnasium.make(ID)
    assert "browser" not in e.unwrapped._holder  # nothing starts before the first reset
    e.close()


def test_tasks_and_splits_by_seed():
    base = gymnasium.make(ID).unwrapped
    train, test = base.make_tasks("train", 40, seed=0), base.make_tasks("test", 20, seed=0)
    assert len(train) == 40 and len(test) == 20 and not {t.id for t in train} & {t.id for t in test}
    for t in train + test:
        assert t.options["task"] in CURATED and t.split == split_of(f"{t.options['task']}:{t.options['seed']}")
    assert {t.options["task"] for t in train} == set(CURATED)
    with pytest.raises(ValueError, match="unknown MiniWoB task 'no-such-task'"):
        base.build_task({"task": "no-such-task", "seed": 0})


@pytest.mark.parametrize("key, want", [("Enter", "<Enter>"), ("<enter>", "<Enter>"), ("a", "a"), ("C-a", "C-a"),
                                       ("ctrl+a", "C-a"), ("shift+Tab", "S-<Tab>"),
                                       ("Ctrl+Shift+ArrowLeft", "C-S-<ArrowLeft>")])
def test_normalize_key(key, want):
    assert normalize_key(key) == want


@pytest.mark.parametrize("key", ["Foo", "", "ctrl+", "\u00e9"])
def test_normalize_key_rejects(key):
    with pytest.raises(ValueError, match="unknown key"):
        normalize_key(key)


# ----------------------------------------------------------------------------------------------- browser
@browser
def test_reset_observation_format(env):
    obs, info = env.reset(options=task("click-test-2", 3))
    lines = obs.splitlines()
    assert lines[0] == "Task: Click button ONE." and lines[1].startswith("[2] div#wrap (0,0 160x210)")
    assert any(ln.strip().startswith("[") and 'button#subbtn "ONE" (' in ln for ln in lines)
    assert obs == info["anchor"] and info["messages"] == [Message("system", info["system"]), Message("user", obs)]
    assert [s["function"]["name"] for s in info["tools"]] == ["click", "type", "press"]
    assert "<click>4</click>" in info["system"] and info["screenshot"] is None
    assert env.reset(options=task("click-test-2", 3))[0] == obs  # same seed, same page
    assert env.reset(options=task("click-test-2", 4))[0] != obs


@browser
@pytest.mark.parametrize("name", CURATED)
def test_expert_solves_curated_tasks(env, name):
    for seed in (1, 2):
        reward, term, info, n = run_expert(env, task(name, seed))
        assert (reward, term, info["success"]) == (1.0, True, True), (name, seed)
        assert info["turn"] == n <= env.unwrapped.max_turns


@browser
def test_expert_with_hermes_parser(hermes_env):
    hermes_env.reset(options=task("enter-text", 5))
    assert hermes_env.unwrapped.expert_action().startswith('<tool_call>{"name": "type", "arguments": {"ref": ')
    assert run_expert(hermes_env, task("login-user", 5))[0] == 1.0


@browser
def test_wrong_actions_give_zero(env):
    obs, _ = env.reset(options=task("click-test-2", 3))
    two = next(ln.split("]")[0].strip(" [") for ln in obs.splitlines() if '"TWO"' in ln)
    obs, reward, term, trunc, info = env.step(f"<click>{two}</click>")
    assert (reward, term, info["success"]) == (0.0, True, False) and "failure" in obs
    obs, _ = env.reset(options=task("enter-text", 3))
    env.step("<type>5 wrong</type>")
    obs, reward, term, _, info = env.step("<click>6</click>")
    assert (reward, term, info["success"]) == (0.0, True, False)


@browser
def test_type_replaces_and_press_edits(env):
    env.reset(options=task("enter-text", 3))
    want = env.unwrapped.utterance.split('"')[1]
    assert 'value="abc"' in env.step("<type>5 abc</type>")[0]
    assert f'value="{want}" ' in env.step(f"<type>5 {want}</type>")[0]  # replaced, not appended
    assert f'value="{want[:-1]}" ' in env.step("<press>Backspace</press>")[0]
    assert f'value="{want}" ' in env.step(f"<press>{want[-1]}</press>")[0]
    assert env.step("<click>6</click>")[1] == 1.0


@browser
@pytest.mark.parametrize("parser, reply, fragment, valid", [
    ("tags", "<click>999</click>", "no element with ref 999", True),
    ("tags", "<click>-1</click>", "no element with ref -1", True),
    ("tags", "<click>abc</click>", "bad arguments for tool 'click'", True),
    ("tags", "<type>5</type>", "missing a required argument: 'text'", True),
    ("tags", "<press>F99</press>", "unknown key 'F99'", True),
    ("tags", "click the submit button", "no tool call or answer found", False),
    ("tags", "<click>5</click><click>6</click>", "one action per reply (got 2)", False),
    ("tags", "<answer>done</answer>", "no <answer> here", False),
    ("hermes", '<tool_call>{"name": "click", "arguments": {"ref": 77}}</tool_call>', "no element with ref 77", True),
    ("hermes", '<tool_call>{"name": "type", "arguments": {"ref": 5}}</tool_call>', "missing a required argument", True),
    ("hermes", "<tool_call>{oops</tool_call>", "bad JSON", False),
])
def test_bad_input_is_an_error_observation(env, hermes_env, parser, reply, fragment, valid):
    e = hermes_env if parser == "hermes" else env
    obs0, _ = e.reset(options=task("enter-text", 3))
    obs, reward, term, trunc, info = e.step(reply)
    assert fragment in obs and (reward, term, trunc) == (0.0, False, False) and info["action_valid"] == valid
    assert info["anchor"] == obs0  # the page did not change
    assert "Reply with one action" in obs or obs.startswith("Error")
    assert e.step(e.unwrapped.expert_action())[4]["action_valid"]  # the episode goes on


@browser
def test_any_task_id_works_but_only_curated_have_experts():
    e = gymnasium.make(ID, tasks="click-dialog")
    try:
        obs, info = e.reset(seed=0)
        assert info["task"].options["task"] == "click-dialog" and obs.startswith("Task: Close the dialog")
        with pytest.raises(NotImplementedError, match="no expert for MiniWoB task 'click-dialog'"):
            e.unwrapped.expert_action()
        x = next(ln.split("]")[0].strip(" [") for ln in obs.splitlines() if "ui-dialog-titlebar-close" in ln)
        assert e.step(f"<click>{x}</click>")[1] == 1.0
    finally:
        e.close()


@browser
def test_time_limit_ends_the_episode_with_zero():
    e = gymnasium.make(ID, tasks="click-test-2", time_limit_s=0.3)
    try:
        e.reset(seed=0)
        time.sleep(0.6)
        obs, reward, term, _, info = e.step(e.unwrapped.expert_action())
        assert (reward, term, info["success"]) == (0.0, True, False)
    finally:
        e.close()


@browser
def test_screenshots_are_saved_as_png(tmp_path):
    from PIL import Image

    e = gymnasium.make(ID, screenshot_dir=str(tmp_path))
    try:
        _, info = e.reset(options=task("enter-text", 1))
        shots = [info["screenshot"], e.step("<type>5 hi</type>")[4]["screenshot"]]
        assert all(s and s.endswith(".png") and os.path.exists(s) for s in shots) and shots[0] != shots[1]
        assert Image.open(shots[0]).size == (160, 210)
        assert sorted(os.listdir(tmp_path)) == sorted(os.path.basename(s) for s in shots)
    finally:
        e.close()


def _descendants(pid):
    """pids of the process tree under `pid` (from /proc)."""
    children = {}
    for d in os.listdir("/proc"):
        try:
            with open(f"/proc/{d}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            children.setdefault(ppid, []).append(int(d))
        except (OSError, ValueError, IndexError):
            continue
    out, todo = set(), [pid]
    while todo:
        p = todo.pop()
        out.add(p)
        todo += children.get(p, [])
    return out


def _alive(pids):
    return {p for p in pids if os.path.exists(f"/proc/{p}") and "(Z)" not in _state(p)}


def _state(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            return "(" + f.read().rsplit(")", 1)[1].split()[0] + ")"
    except OSError:
        return "(gone)"


@browser
def test_close_releases_chromium_and_envs_share_nothing():
    a, b = gymnasium.make(ID), gymnasium.make(ID)
    obs_a, _ = a.reset(options=task("enter-text", 1))
    obs_b, _ = b.reset(options=task("enter-text", 1))
    assert obs_a == obs_b
    tree_a = _descendants(a.unwrapped.browser.instance.driver.service.process.pid)
    tree_b = _descendants(b.unwrapped.browser.instance.driver.service.process.pid)
    assert len(tree_a) > 2 and not tree_a & tree_b  # chromedriver + chromium processes of its own
    assert 'value="only-a"' in a.step("<type>5 only-a</type>")[0]
    assert b.unwrapped.page == obs_b and 'value=""' in b.step("<click>3</click>")[0]  # b's field still empty
    a.close()
    deadline = time.time() + 10
    while _alive(tree_a) and time.time() < deadline:
        time.sleep(0.1)
    assert not _alive(tree_a), f"chromium processes left after close(): {sorted(_alive(tree_a))}"
    assert _alive(tree_b) == tree_b
    assert b.step("<type>5 still-b</type>")[4]["action_valid"] and 'value="still-b"' in b.unwrapped.page
    b.close()
    a.close()  # closing twice is harmless


@browser
def test_config_trains_end_to_end(tmp_path, tiny_dir):
    """configs/miniwob.yaml: expert demos -> SFT -> 2 GRPO steps -> eval, all in the real browser (~50 s on 2 CPUs)."""
    import json
    import subprocess
    import sys

    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    run = str(tmp_path / "run")
    r = subprocess.run([sys.executable, "-m", "agentrl.cli", "train", "configs/miniwob.yaml", f"train.run_dir={run}",
                        f"model.path={tiny_dir}"], cwd=root, capture_output=True, text=True,
                       env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert r.returncode == 0, r.stderr[-3000:]
    with open(os.path.join(run, "metrics.jsonl")) as f:
        recs = [json.loads(ln) for ln in f]
    assert any(rec.get("sft/demo_success", 0) > 0.5 for rec in recs)  # the experts solved their demos
    assert [rec["train/step"] for rec in recs if "rollout/success" in rec] == [1, 2]
    assert sum("eval/success" in rec for rec in recs) == 2
