"""HF generator: stop strings, budgets, determinism, and sampler logprobs == learner logprobs."""
import torch

from agentrl.backends.base import GenRequest, SamplingParams
from agentrl.backends.hf import HFGenerator
from agentrl.backends.learner import token_logprobs
from agentrl.rollout.template import ChatTokenizer


def _prompts(tokenizer, n=6):
    chat = ChatTokenizer(tokenizer)
    return [chat.prompt_ids([{"role": "user", "content": f"Compute {i}*{i + 3}."}]) for i in range(n)]


def test_sampler_logprobs_match_learner(tiny):
    model, tok = tiny
    gen = HFGenerator(model, tok)
    prompts = _prompts(tok)
    params = SamplingParams(max_new_tokens=12, temperature=1.0, seed=3)
    outs = gen.generate([GenRequest(p) for p in prompts], params)
    for p, c in zip(prompts, outs):
        assert 1 <= len(c.ids) <= 12 and len(c.logprobs) == len(c.ids)
        ids = torch.tensor([p + c.ids])
        lp = token_logprobs(model, ids, torch.ones_like(ids))[0, len(p):]
        assert torch.allclose(lp, torch.tensor(c.logprobs), atol=1e-4), (lp, c.logprobs)


def test_seeded_sampling_is_deterministic_and_greedy_ignores_seed(tiny):
    model, tok = tiny
    gen = HFGenerator(model, tok)
    reqs = [GenRequest(p) for p in _prompts(tok)]
    a = gen.generate(reqs, SamplingParams(max_new_tokens=8, seed=1))
    b = gen.generate(reqs, SamplingParams(max_new_tokens=8, seed=1))
    assert [c.ids for c in a] == [c.ids for c in b]
    g1 = gen.generate(reqs, SamplingParams(max_new_tokens=8, temperature=0, seed=1))
    g2 = gen.generate(reqs, SamplingParams(max_new_tokens=8, temperature=0, seed=2))
    assert [c.ids for c in g1] == [c.ids for c in g2]


def test_per_request_budget_and_top_k(tiny):
    model, tok = tiny
    gen = HFGenerator(model, tok, max_batch=2)  # several chunks
    prompts = _prompts(tok, 5)
    reqs = [GenRequest(p, max_new_tokens=i) for i, p in enumerate(prompts)]
    outs = gen.generate(reqs, SamplingParams(max_new_tokens=50, top_k_logprobs=4, seed=0))
    for i, c in enumerate(outs):
        assert len(c.ids) <= i
        assert c.top_logprobs.shape == (len(c.ids), 4)
        if c.ids:  # the sampled token's logprob never exceeds the best one
            assert (c.top_logprobs[:, 0] >= torch.tensor(c.logprobs).numpy() - 1e-5).all()


def test_stop_string_ends_generation(tiny):
    model, tok = tiny
    gen = HFGenerator(model, tok)
    prompts = _prompts(tok, 8)
    free = gen.generate([GenRequest(p) for p in prompts], SamplingParams(max_new_tokens=30, seed=5))
    # use a piece the model actually produced as a stop string, then check it cuts there
    sample = next(c for c in free if len(c.ids) >= 6)
    stop = tok.decode(sample.ids[2:4])
    outs = gen.generate([GenRequest(p) for p in prompts], SamplingParams(max_new_tokens=30, seed=5, stop=(stop,)))
    hit = [c for c in outs if c.finish_reason == "stop"]
    assert hit
    for c in hit:
        text = tok.decode(c.ids)
        assert stop in text and stop not in tok.decode(c.ids[:-1])
