"""CLI smoke: a real 2-step training run in a subprocess, resume equivalence, and clear errors on bad input."""
import json
import os
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def agentrl(*args, check=True):
    r = subprocess.run([sys.executable, "-m", "agentrl.cli", *args], cwd=ROOT, capture_output=True, text=True,
                       env={**os.environ, "HF_HUB_OFFLINE": "1"})
    if check and r.returncode != 0:
        raise AssertionError(f"agentrl {' '.join(args)} failed ({r.returncode}):\n{r.stderr[-3000:]}")
    return r


def _records(run):
    with open(os.path.join(run, "metrics.jsonl")) as f:
        return [json.loads(ln) for ln in f]


def _weights(run, step):
    return load_file(os.path.join(run, "checkpoints", f"step_{step:06d}", "model.safetensors"))


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, tiny_dir):
    return tiny_dir


def test_train_smoke_writes_metrics_checkpoints_and_changes_weights(tmp_path, model_dir):
    run = str(tmp_path / "run")
    agentrl("train", "configs/smoke.yaml", f"train.run_dir={run}", f"model.path={model_dir}")
    recs = _records(run)
    steps = [r for r in recs if "rollout/success" in r]
    assert [r["train/step"] for r in steps] == [1, 2]
    for key in ("rollout/reward_mean", "actor/pg_loss", "actor/grad_norm", "perf/step_time"):
        assert all(key in r for r in steps)
    assert any("eval/success" in r for r in recs)
    for f in ("resolved_config.yaml", "trajectories.jsonl", "curves.png", "checkpoints/latest",
              "checkpoints/step_000002/trainer_state.pt"):
        assert os.path.exists(os.path.join(run, f)), f
    assert all(r["rollout/adv_abs_mean"] > 0 for r in steps)  # overlong shaping gives the update a signal
    before = load_file(os.path.join(model_dir, "model.safetensors"))
    one, two = _weights(run, 1), _weights(run, 2)
    assert any(not torch.equal(before[k], one[k]) for k in before)
    assert any(not torch.equal(one[k], two[k]) for k in one)


# second case: the KL reference after an SFT warm start is the post-SFT policy, and a resumed run reloads it
@pytest.mark.parametrize("extra", [[], ["sft.enabled=true", "sft.n_demos=48", "sft.epochs=1", "algo.kl_coef=0.05"]],
                         ids=["plain", "sft_kl"])
def test_resume_continues_exactly(tmp_path, model_dir, extra):
    common = ["configs/smoke.yaml", f"model.path={model_dir}", "rollout.temperature=1.0", "train.save_every=2",
              *extra]
    full, part = str(tmp_path / "full"), str(tmp_path / "part")
    agentrl("train", *common, "train.steps=4", f"train.run_dir={full}")
    agentrl("train", *common, "train.steps=2", f"train.run_dir={part}")
    agentrl("train", *common, "train.steps=4", "--resume", part)

    def train_metrics(run):
        return {r["train/step"]: {k: v for k, v in r.items() if not k.startswith("perf/")}
                for r in _records(run) if "rollout/success" in r}

    assert train_metrics(full) == train_metrics(part)
    if extra:  # step 1 samples with the post-SFT policy, which is the reference: KL exactly 0
        assert train_metrics(full)[1]["actor/kl_ref"] == 0.0 and train_metrics(full)[2]["actor/kl_ref"] > 0
    a, b = _weights(full, 4), _weights(part, 4)
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("args,msg", [
    (["train", "configs/smoke.yaml", "env.id=agentrl/Calculater-v0"], "Did you mean 'agentrl/Calculator-v0'"),
    (["train", "configs/smoke.yaml", "algo.advantage=grpoo"], "Did you mean 'grpo'"),
    (["train", "configs/smoke.yaml", "rollout.gruop_size=3"], "Did you mean 'group_size'"),
    (["train", "configs/nope.yaml"], "not found"),
    (["eval", "configs/smoke.yaml", "--model", "/nonexistent/model"], "does not exist"),
])
def test_bad_input_fails_early_with_a_clear_message(args, msg):
    r = agentrl(*args, check=False)
    assert r.returncode == 2, r.stderr[-2000:]
    assert msg in r.stderr
    assert "Traceback" not in r.stderr


def test_envs_and_check_env_and_init_model(tmp_path):
    out = agentrl("envs").stdout
    assert "agentrl/Calculator-v0" in out and "calc" in out
    out = agentrl("check-env", "agentrl/Calculator-v0", "--n-random", "200").stdout
    assert "all checks passed" in out
    out = agentrl("init-model", "--size", "tiny", str(tmp_path / "m")).stdout
    assert os.path.exists(tmp_path / "m" / "model.safetensors") and "saved" in out
