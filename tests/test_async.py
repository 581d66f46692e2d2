"""train.async = one_step_off: version bookkeeping (rollout/prefetch.py), the truncated-IS correction
(algos/tis.py and its use in the learner's loss), and a short async training run."""
import copy
import json
import math
import os
import threading

import pytest
import torch

from agentrl.algos.tis import tis_stats, tis_weights
from agentrl.backends.learner import Learner
from agentrl.config import AlgoConfig, ConfigError, LearnerConfig, load_config
from agentrl.rollout.prefetch import Prefetcher, staleness_metrics
from agentrl.types import Batch, Task, Trajectory, Turn


def _traj(version, n_turns=2):
    return Trajectory(id="t", group_id="g", task=Task(id="x", env_id="e"), prompt_ids=[1],
                      turns=[Turn(action_ids=[2], action_logprobs=[-1.0], policy_version=version)
                             for _ in range(n_turns)])


class FakeCollect:
    """Records (step, version, thread) per call; turns carry the version, as the collector sets it."""

    def __init__(self):
        self.calls = []

    def __call__(self, step, version):
        self.calls.append((step, version, threading.current_thread().name))
        return [_traj(version)], {"rollout/step": step}


# ---------------------------------------------------------------- version bookkeeping

def test_one_step_off_schedule_versions_and_threads():
    fake = FakeCollect()
    pf = Prefetcher(fake, max_staleness=1)
    seen = []
    for step in (1, 2, 3):  # the trainer's loop: take, submit next, (update), wait, (sync)
        version = step - 1
        trajs, m = pf.take(step, version)
        seen.append((m["rollout/step"], staleness_metrics(trajs, version, 1)["rollout/staleness_mean"]))
        if step < 3:
            pf.submit(step + 1, version)
        pf.wait()
    pf.close()
    assert seen == [(1, 0.0), (2, 1.0), (3, 1.0)]  # step 1 is on-policy, later batches are one update behind
    assert [(s, v) for s, v, _ in fake.calls] == [(1, 0), (2, 0), (3, 1)]
    assert fake.calls[0][2] == threading.current_thread().name  # nothing to overlap with at step 1
    assert all(name.startswith("agentrl-rollout") for _, _, name in fake.calls[1:])
    assert pf.dropped == 0


def test_a_batch_staler_than_the_bound_is_dropped_and_recollected():
    fake = FakeCollect()
    pf = Prefetcher(fake, max_staleness=1)
    pf.submit(5, 2)
    trajs, _ = pf.take(5, 4)  # 2 updates happened since: too stale
    assert pf.dropped == 1 and trajs[0].turns[0].policy_version == 4
    assert [(s, v) for s, v, _ in fake.calls] == [(5, 2), (5, 4)]
    pf.submit(6, 4)
    trajs, _ = pf.take(6, 5)  # within the bound: kept
    assert pf.dropped == 1 and trajs[0].turns[0].policy_version == 4
    pf.close()


def test_background_errors_surface_in_the_trainer_thread():
    def boom(step, version):
        raise RuntimeError("env crashed")

    pf = Prefetcher(boom)
    pf.submit(2, 0)
    with pytest.raises(RuntimeError, match="env crashed"):
        pf.wait()


def test_staleness_histogram():
    trajs = [_traj(3, 1), _traj(2, 3), _traj(1, 0)]
    m = staleness_metrics(trajs, version=3, max_staleness=2)
    assert m["rollout/staleness_mean"] == pytest.approx(0.75)
    assert m["rollout/staleness_max"] == 1.0
    assert m["rollout/staleness_0"] == pytest.approx(0.25) and m["rollout/staleness_1"] == pytest.approx(0.75)
    assert m["rollout/staleness_2"] == 0.0


# ---------------------------------------------------------------- truncated importance sampling

def test_tis_weights_hand_computed():
    old = torch.log(torch.tensor([[0.5, 0.2, 0.9, 0.3]]))
    behaviour = torch.log(torch.tensor([[0.25, 0.4, 0.1, 0.3]]))
    w, ratio = tis_weights(old, behaviour, cap=1.5)
    torch.testing.assert_close(ratio, torch.tensor([[2.0, 0.5, 9.0, 1.0]]))
    torch.testing.assert_close(w, torch.tensor([[1.5, 0.5, 1.5, 1.0]]))
    mask = torch.tensor([[1.0, 1.0, 0.0, 1.0]])  # the 9.0 is off the action tokens
    m = tis_stats(old, behaviour, mask, cap=1.5)
    assert m["actor/is_ratio_mean"] == pytest.approx(3.5 / 3)
    assert m["actor/is_ratio_max"] == pytest.approx(2.0)
    assert m["actor/is_clipped_share"] == pytest.approx(1 / 3)


def _batch(B=4, T=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, 200, (B, T), generator=g)
    mask = torch.zeros(B, T)
    mask[:, 3:] = 1
    adv = torch.randn(B, 1, generator=g).expand(B, T) * mask
    return Batch(input_ids=ids, attention_mask=torch.ones(B, T, dtype=torch.long), loss_mask=mask,
                 old_logprobs=torch.zeros(B, T), advantages=adv.contiguous(),
                 group_ids=torch.zeros(B, dtype=torch.long), rewards=torch.zeros(B))


def _with(batch, **kw):
    return Batch(**{**{f: getattr(batch, f) for f in batch.__dataclass_fields__}, **kw})


def test_the_loss_weights_each_token_by_the_truncated_ratio(tiny):
    """L = sum_t w_t * ppo_t / n with w = min(pi_old / mu, C): equal to the unweighted loss when mu = pi_old, and
    row i's contribution scaled by its weight otherwise (C = 2: a ratio of 4 counts 2, a ratio of 0.5 counts 0.5)."""
    model = copy.deepcopy(tiny[0])
    learner = Learner(model, LearnerConfig(micro_batch_size=16), AlgoConfig(tis_cap=2.0))
    b = _batch()
    b = _with(b, old_logprobs=learner.logprobs(b))
    from agentrl.algos import scale_for

    scale = scale_for(b.loss_mask)
    plain, _ = learner._micro_loss(b, scale)
    same, _ = learner._micro_loss(_with(b, behaviour_logprobs=b.old_logprobs.clone()), scale)
    torch.testing.assert_close(same, plain)
    per_row = torch.tensor([4.0, 0.5, 1.0, 1.0])
    mu = b.old_logprobs - torch.log(per_row)[:, None] * b.loss_mask  # pi_old / mu = per_row on action tokens
    weighted, _ = learner._micro_loss(_with(b, behaviour_logprobs=mu), scale)
    rows = [learner._micro_loss(_with(b, advantages=b.advantages * (torch.arange(4) == i)[:, None]), scale)[0]
            for i in range(4)]
    expected = sum(min(float(r), 2.0) * x for r, x in zip(per_row, rows))
    torch.testing.assert_close(weighted, expected, atol=1e-6, rtol=1e-5)


def test_async_config_is_validated():
    from agentrl.trainer import async_mode, tis_on, validate

    cfg = load_config("configs/smoke.yaml", ["train.async=one_step_off"])
    assert async_mode(cfg) == "one_step_off" and tis_on(cfg)
    assert async_mode(load_config("configs/smoke.yaml", ["train.async=off"])) == "off"  # YAML reads off as false
    assert not tis_on(load_config("configs/smoke.yaml"))
    with pytest.raises(ConfigError, match="one_step_off"):
        validate(load_config("configs/smoke.yaml", ["train.async=two_steps_off"]))
    with pytest.raises(ConfigError, match="old_logprobs=learner"):
        validate(load_config("configs/smoke.yaml", ["train.async=one_step_off", "algo.old_logprobs=sampler"]))


# ---------------------------------------------------------------- a real run

def test_short_async_run_on_the_smoke_config(tmp_path, tiny_dir):
    from agentrl.trainer import Trainer

    run = str(tmp_path / "run")
    cfg = load_config("configs/smoke.yaml", [f"model.path={tiny_dir}", f"train.run_dir={run}", "train.steps=3",
                                             "train.async=one_step_off", "train.plot=false", "sft.n_demos=128",
                                             "eval.n_tasks=4", "train.save_every=0"])
    tr = Trainer(cfg)
    assert tr.gen_model is not tr.model  # generation runs on its own copy while the learner updates
    tr.run()
    with open(os.path.join(run, "metrics.jsonl")) as f:
        steps = [r for r in map(json.loads, f) if "rollout/success" in r]
    assert [r["train/step"] for r in steps] == [1, 2, 3]
    assert [r["rollout/staleness_mean"] for r in steps] == [0.0, 1.0, 1.0]
    assert all(r["rollout/staleness_max"] <= 1 and r["rollout/stale_batches_dropped"] == 0 for r in steps)
    for r in steps:
        assert r["actor/is_ratio_max"] >= r["actor/is_ratio_mean"] > 0 and 0 <= r["actor/is_clipped_share"] <= 1
        assert math.isfinite(r["actor/loss"]) and "perf/time/rollout_wait" in r
    # step 1 is on-policy (the same weights sampled and score): the IS ratio is ~1
    assert steps[0]["actor/is_ratio_mean"] == pytest.approx(1.0, abs=1e-3)
    # after the run the generator copy holds the policy's final weights
    for (k, a), b in zip(tr.model.state_dict().items(), tr.gen_model.state_dict().values()):
        assert torch.equal(a, b), k


@pytest.mark.slow
def test_async_speed_benchmark_quick_mode():
    import subprocess
    import sys

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    r = subprocess.run([sys.executable, "benchmarks/async_speed.py", "--quick", "--steps", "2", "--repeats", "1"],
                       cwd=root, capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert r.returncode == 0, r.stderr[-2000:]
    assert "| one_step_off |" in r.stdout and "speedup" in r.stdout


@pytest.mark.slow
def test_async_run_learns_on_the_quickstart_task(tmp_path):
    """The quickstart (SFT warm start, then GRPO on Calculator-v0) with train.async=one_step_off, 12 steps: held-out
    success must rise at least 30 points above the SFT policy's (the full 25-step run gains 80; ~3 min here)."""
    from agentrl.trainer import Trainer

    run = str(tmp_path / "run")
    cfg = load_config("configs/quickstart.yaml", [f"model.path={tmp_path}/model", f"train.run_dir={run}",
                                                  "train.steps=12", "train.async=one_step_off", "train.plot=false",
                                                  "eval.n_tasks=100", "train.save_every=0", "train.progress=false"])
    Trainer(cfg).run()
    with open(os.path.join(run, "metrics.jsonl")) as f:
        evals = [r for r in map(json.loads, f) if "eval/success" in r]
    assert evals[-1]["eval/success"] - evals[0]["eval/success"] >= 0.3, [r["eval/success"] for r in evals]
