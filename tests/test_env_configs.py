"""configs/searchqa.yaml and configs/math.yaml run end to end (`agentrl sft`, then `agentrl train` from the SFT
model), shrunk on the command line to a few demos, one RL step and a few eval tasks."""
import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SMALL = ["sft.n_demos=32", "sft.epochs=1", "rollout.tasks_per_step=2", "rollout.group_size=2",
         "rollout.max_new_tokens=16", "eval.n_tasks=4", "train.steps=1", "train.save_every=1", "train.progress=false",
         "train.plot=false"]


def agentrl(*args):
    r = subprocess.run([sys.executable, "-m", "agentrl.cli", *args], cwd=ROOT, capture_output=True, text=True,
                       env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert r.returncode == 0, f"agentrl {' '.join(args)} failed ({r.returncode}):\n{r.stderr[-3000:]}"
    return json.loads(r.stdout[r.stdout.index("{"):])


@pytest.mark.parametrize("config,env_id", [("configs/searchqa.yaml", "agentrl/SearchQA-v0"),
                                           ("configs/math.yaml", "agentrl/Math-v0")])
def test_sft_then_train_from_config(tmp_path, tiny_dir, config, env_id):
    run = tmp_path / "run"
    sft = agentrl("sft", config, f"train.run_dir={run}", f"model.path={tiny_dir}", *SMALL)
    assert sft["eval/n"] == 4 and os.path.exists(run / "sft" / "model.safetensors")
    out = agentrl("train", config, f"train.run_dir={tmp_path / 'rl'}", f"model.path={run / 'sft'}",
                  "sft.enabled=false", *SMALL)
    assert out["eval/n"] == 4
    with open(tmp_path / "rl" / "metrics.jsonl") as f:
        recs = [json.loads(ln) for ln in f]
    assert [r["train/step"] for r in recs if "rollout/success" in r] == [1]
    with open(tmp_path / "rl" / "resolved_config.yaml") as f:
        assert env_id in f.read()
