"""rollout.workers: envs in Ray actors give the same trajectories as in-process envs; a worker that crashes or
hangs mid-episode is replaced, its episodes are marked failed and counted, and the step completes."""
import os

import gymnasium
import pytest

import agentrl  # noqa: F401
from agentrl.backends.hf import HFGenerator
from agentrl.backends.scripted import ScriptedGenerator
from agentrl.config import RolloutConfig
from agentrl.rollout import ROLLOUTS
from agentrl.rollout.template import ChatTokenizer

ray = pytest.importorskip("ray")
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
FAULTY = "tests.rollout.faulty_env:agentrl-test/Faulty-v0"


@pytest.fixture(scope="module", autouse=True)
def local_ray():
    # the workers must import tests.rollout.faulty_env; agentrl itself is installed in the venv
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {"PYTHONPATH": ROOT, "TOKENIZERS_PARALLELISM": "false"}})
    yield
    ray.shutdown()


def _tasks(n, env_id="agentrl/Calculator-v0"):
    return gymnasium.make(env_id).unwrapped.make_tasks("train", n, seed=0)


def _expert(prompt: str) -> str:
    expr = prompt.rsplit("Compute ", 1)[1].split(".<|im_end|>")[0]
    if "<|im_start|>tool\n" in prompt:
        return f"<answer>{prompt.rsplit('<|im_start|>tool', 1)[1].split('<|im_end|>')[0].strip()}</answer>"
    return f"<calc>{expr}</calc>"


def _collector(gen, tok, strategy="chain", env_id="agentrl/Calculator-v0", **cfg):
    rc = RolloutConfig(**{"max_turns": 3, "max_new_tokens": 24, "max_total_tokens": 400, **cfg})
    return ROLLOUTS.get(strategy)(env_id, {}, gen, ChatTokenizer(tok), rc)


def _signature(trajs):
    return [(t.id, t.group_id, t.tree_id, t.prompt_ids, t.reward, t.success,
             [(u.action_ids, u.obs_ids, u.reward, u.terminated, u.truncated, u.node_id) for u in t.turns])
            for t in trajs]


@pytest.mark.parametrize("strategy,env_id", [("chain", "agentrl/Calculator-v0"), ("chain", "agentrl/FrozenLake-v0"),
                                             ("tree", "agentrl/FrozenLake-v0")])  # tree: snapshot/restore remotely
def test_workers_give_the_same_trajectories_as_in_process_envs(tiny, strategy, env_id):
    model, tok = tiny
    extra = {"tree_m": 2, "tree_n": 2, "tree_l": 1, "tree_k": 2} if strategy == "tree" else {}
    tasks = _tasks(3, env_id)
    runs = {}
    for workers in (0, 2):
        col = _collector(HFGenerator(model, tok), tok, strategy, env_id=env_id, workers=workers, **extra)
        try:
            runs[workers] = [col.collect(tasks, group_size=2, seed=s) for s in (0, 1)]  # sampled, seeded
            stats = dict(col.stats)
            if workers:
                pids = col.workers.pids()
                assert len(set(pids)) == 2 and os.getpid() not in pids  # envs really live in 2 other processes
        finally:
            col.close()
        assert stats["env_errors"] == 0
    assert _signature(runs[0][0]) == _signature(runs[2][0])
    assert _signature(runs[0][1]) == _signature(runs[2][1])
    assert any(u.obs_ids for t in runs[2][0] for u in t.turns)  # env observations came back through the actors


def test_expert_solves_through_workers(tokenizer):
    col = _collector(ScriptedGenerator(tokenizer, _expert), tokenizer, workers=2)
    try:
        trajs = col.collect(_tasks(4), group_size=2, seed=0)
        assert all(t.success and t.reward == 1.0 and t.num_turns == 2 for t in trajs)
        assert col.stats["rollout/worker_restarts"] == 0
    finally:
        col.close()


def _faulty_script(word: str, victim: str):
    """The expert, except that the first action of the episode whose prompt contains `victim` is `word`."""
    def script(prompt: str) -> str:
        if victim in prompt and "<|im_start|>tool\n" not in prompt:
            return f"<calc>{word}</calc>"
        return _expert(prompt)
    return script


@pytest.mark.parametrize("fault", ["CRASH", "HANG"])
def test_a_dead_or_hung_worker_is_replaced_and_its_episodes_fail_counted(tokenizer, fault):
    tasks = _tasks(4)
    victim = f"Compute {tasks[0].options['expression']}."
    gen = ScriptedGenerator(tokenizer, _faulty_script(fault, victim))
    col = _collector(gen, tokenizer, env_id=FAULTY, workers=2, worker_timeout_s=5.0)
    try:
        trajs = col.collect(tasks, group_size=1, seed=0)  # envs 0..3 on workers 0, 1, 0, 1
        assert len(trajs) == 4  # nothing lost
        failed = [t for t in trajs if t.reward is None]
        # the victim's worker (slot 0) held tasks 0 and 2: both episodes lost their env; tasks 1 and 3 finished
        assert {t.task.id for t in failed} == {tasks[0].id, tasks[2].id}
        assert all(t.reward_parts["env_error"] == 1.0 for t in failed)
        assert "env worker 0" in failed[0].turns[-1].obs_messages[0].content
        assert all(t.success for t in trajs if t.reward is not None)
        assert col.stats["env_errors"] == 2 and col.stats["rollout/worker_restarts"] == 1
        # the replacement worker serves the next step: everything succeeds again
        gen.script = _expert
        again = col.collect(tasks, group_size=1, seed=1)
        assert all(t.success for t in again) and col.stats["rollout/worker_restarts"] == 0
        assert len(set(col.workers.pids())) == 2
    finally:
        col.close()


def test_workers_config_through_the_trainer_schema():
    from agentrl.config import load_config

    cfg = load_config(None, ["rollout.workers=2", "rollout.worker_cpus=0.5", "rollout.worker_timeout_s=10"])
    assert cfg.rollout.workers == 2 and cfg.rollout.worker_cpus == 0.5 and cfg.rollout.worker_timeout_s == 10.0


@pytest.mark.parametrize("override", ["rollout.workers=-1", "rollout.worker_threads=0"])
def test_bad_worker_settings_are_config_errors(override):
    from agentrl.config import ConfigError, load_config
    from agentrl.trainer import validate

    with pytest.raises(ConfigError, match="rollout.worker"):
        validate(load_config(None, [override]))


def test_a_training_step_runs_its_rollouts_in_workers(tmp_path, tiny_dir):
    """Trainer wiring: rollout.workers reaches the collector; the worker metrics are logged; the step trains."""
    import json

    from agentrl.config import load_config
    from agentrl.trainer import Trainer

    run = str(tmp_path / "run")
    cfg = load_config("configs/smoke.yaml", [f"model.path={tiny_dir}", f"train.run_dir={run}", "train.steps=1",
                                             "sft.enabled=false", "eval.n_tasks=2", "train.save_every=0",
                                             "train.plot=false", "rollout.workers=2"])
    tr = Trainer(cfg)
    try:
        tr.run()
        assert tr.collector.workers is not None and len(tr.collector.workers.actors) == 2
    finally:
        tr.close()
    with open(os.path.join(run, "metrics.jsonl")) as f:
        step = [r for r in map(json.loads, f) if "rollout/success" in r][0]
    assert step["rollout/worker_restarts"] == 0 and step["rollout/env_errors"] == 0
    assert "actor/grad_norm" in step
