"""LoRA (learner.lora through peft): only adapters train; the merged weights a generator is synced with give the
LoRA policy's logprobs and samples; adapter checkpoints round-trip; a real CLI run trains, saves and resumes."""
import copy
import json
import os
import subprocess
import sys

import pytest
import torch

pytest.importorskip("peft")

from agentrl.backends.base import GenRequest, SamplingParams  # noqa: E402
from agentrl.backends.hf import HFGenerator  # noqa: E402
from agentrl.backends.learner import Learner, token_logprobs  # noqa: E402
from agentrl.backends.lora import (apply_lora, copy_policy_into, is_lora, load_lora, plain_copy,  # noqa: E402
                                   policy_state_dict, save_merged)
from agentrl.config import AlgoConfig, LearnerConfig, LoraConfig  # noqa: E402
from agentrl.models import load_model  # noqa: E402
from agentrl.types import Batch  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _lora(tiny, r=4, seed=0, **kw):
    model = apply_lora(copy.deepcopy(tiny[0]), LoraConfig(r=r, alpha=8.0, **kw))
    with torch.no_grad(), torch.random.fork_rng(devices=[]):  # peft starts B at 0 (a no-op adapter): move it
        torch.manual_seed(seed)
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.normal_(0.0, 0.05)
    return model


def _batch(B=4, T=10, seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, 200, (B, T), generator=g)
    attn = torch.ones(B, T, dtype=torch.long)
    mask = torch.zeros(B, T)
    mask[:, 4:] = 1
    adv = torch.randn(B, 1, generator=g).expand(B, T) * mask
    return Batch(input_ids=ids, attention_mask=attn, loss_mask=mask, old_logprobs=torch.zeros(B, T),
                 advantages=adv.contiguous(), group_ids=torch.zeros(B, dtype=torch.long), rewards=torch.zeros(B))


def _lp(model, batch):
    with torch.no_grad():
        return token_logprobs(model.eval(), batch.input_ids, batch.attention_mask)


def test_an_update_changes_only_adapter_weights(tiny):
    model = _lora(tiny)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    learner = Learner(model, LearnerConfig(lr=1e-2), AlgoConfig())
    batch = _batch()
    batch = Batch(**{**{f: getattr(batch, f) for f in batch.__dataclass_fields__},
                     "old_logprobs": learner.logprobs(batch)})
    m = learner.update(batch)
    assert m["actor/grad_norm"] > 0
    changed = {n for n, p in model.named_parameters() if not torch.equal(before[n], p)}
    assert changed and all("lora_" in n for n in changed)
    assert {n for n in before if "lora_A" in n or "lora_B" in n} == changed
    assert sum(p.numel() for g in learner.opt.param_groups for p in g["params"]) == sum(
        p.numel() for n, p in model.named_parameters() if "lora_" in n)


def test_merged_weights_give_the_lora_models_logprobs(tiny):
    model = _lora(tiny, target_modules=["q_proj", "v_proj", "down_proj"])
    sd = policy_state_dict(model)
    assert set(sd) == set(tiny[0].state_dict())  # the base architecture's keys: what vLLM / a server loads
    merged = plain_copy(model)
    assert not is_lora(merged)
    batch = _batch()
    torch.testing.assert_close(_lp(merged, batch), _lp(model, batch), atol=1e-5, rtol=0)
    assert not torch.allclose(_lp(tiny[0], batch), _lp(model, batch), atol=1e-3)  # the adapter matters
    # the policy itself is untouched by merging (no merge/unmerge round trip)
    assert all(not getattr(m, "merged", False) for m in model.modules())


def test_generator_synced_with_merged_weights_samples_like_the_lora_policy(tiny):
    model, tok = _lora(tiny, seed=1), tiny[1]
    gen_model = plain_copy(tiny[0])  # a stale plain copy, as vllm / the async generator hold
    HFGenerator(gen_model, tok).sync_weights(policy_state_dict(model))
    reqs = [GenRequest(prompt_ids=tok.encode("hello world")), GenRequest(prompt_ids=tok.encode("2 + 3 ="))]
    params = SamplingParams(max_new_tokens=12, temperature=1.0, seed=7)
    a = HFGenerator(model, tok).generate(reqs, params)  # the hf backend shares the LoRA policy itself
    b = HFGenerator(gen_model, tok).generate(reqs, params)
    for x, y in zip(a, b):
        assert x.ids == y.ids
        torch.testing.assert_close(torch.tensor(x.logprobs), torch.tensor(y.logprobs), atol=1e-4, rtol=0)
    # and a later sync overwrites in place (the trainer's refresh after each update)
    with torch.no_grad():
        next(p for n, p in model.named_parameters() if "lora_B" in n).add_(0.5)
    copy_policy_into(gen_model, model)
    torch.testing.assert_close(_lp(gen_model, _batch()), _lp(model, _batch()), atol=1e-5, rtol=0)


def test_adapter_and_merged_checkpoints_round_trip(tiny, tiny_dir, tmp_path):
    model = _lora(tiny, seed=2)
    model.save_pretrained(str(tmp_path / "adapter"))
    assert os.path.exists(tmp_path / "adapter" / "adapter_model.safetensors")
    base, _ = load_model(tiny_dir)
    back = load_lora(base, str(tmp_path / "adapter"))
    assert any(p.requires_grad for p in back.parameters())  # trainable again after resume
    batch = _batch()
    torch.testing.assert_close(_lp(back, batch), _lp(model, batch), atol=1e-6, rtol=0)
    save_merged(model, str(tmp_path / "merged"), tiny[1])
    merged, _ = load_model(str(tmp_path / "merged"))
    torch.testing.assert_close(_lp(merged, batch), _lp(model, batch), atol=1e-5, rtol=0)


# ---------------------------------------------------------------- a real run through the CLI

def _agentrl(*args):
    r = subprocess.run([sys.executable, "-m", "agentrl.cli", *args], cwd=ROOT, capture_output=True, text=True,
                       env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert r.returncode == 0, r.stderr[-3000:]


LORA_RUN = ["configs/smoke.yaml", "learner.lora.r=8", "learner.lora.alpha=32", "sft.n_demos=128", "sft.lr=2e-2",
            "sft.epochs=1", "train.plot=false", "eval.n_tasks=4"]


def _train_records(run):
    with open(os.path.join(run, "metrics.jsonl")) as f:
        return {r["train/step"]: {k: v for k, v in r.items() if not k.startswith("perf/")}
                for r in map(json.loads, f) if "rollout/success" in r}


@pytest.fixture(scope="module")
def lora_run(tmp_path_factory, tiny_dir):
    full = str(tmp_path_factory.mktemp("lora") / "full")
    _agentrl("train", *LORA_RUN, f"model.path={tiny_dir}", f"train.run_dir={full}")
    return full


def test_cli_lora_run_saves_adapters_and_merged_weights(lora_run, tiny_dir):
    from safetensors.torch import load_file

    ck = os.path.join(lora_run, "checkpoints")
    one, two = (load_file(os.path.join(ck, s, "adapter_model.safetensors")) for s in ("step_000001", "step_000002"))
    assert all("lora_" in k for k in one)
    assert any(not torch.equal(one[k], two[k]) for k in one)  # the RL update moved the adapters
    merged = load_file(os.path.join(ck, "step_000002", "merged", "model.safetensors"))
    base = load_file(os.path.join(tiny_dir, "model.safetensors"))
    assert set(merged) == set(base) and any(not torch.equal(merged[k], base[k]) for k in base)


def test_cli_lora_resumes_exactly(lora_run, tmp_path, tiny_dir):
    from safetensors.torch import load_file

    part = str(tmp_path / "part")
    common = [*LORA_RUN, f"model.path={tiny_dir}"]
    _agentrl("train", *common, "train.steps=1", f"train.run_dir={part}")
    _agentrl("train", *common, "--resume", part)
    assert _train_records(part) == _train_records(lora_run)
    two = load_file(os.path.join(lora_run, "checkpoints", "step_000002", "adapter_model.safetensors"))
    a = load_file(os.path.join(part, "checkpoints", "step_000002", "adapter_model.safetensors"))
    assert all(torch.equal(a[k], two[k]) for k in two)
