"""Learner: an update moves the policy, micro-batching does not change the step, NaN steps are skipped."""
import copy

import torch

from agentrl.backends.learner import Learner, token_logprobs
from agentrl.config import AlgoConfig, LearnerConfig
from agentrl.types import Batch


def _batch(B=8, T=12, seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, 200, (B, T), generator=g)
    attn = torch.ones(B, T, dtype=torch.long)
    attn[::2, -3:] = 0  # some right padding
    mask = torch.zeros(B, T)
    mask[:, 4:] = 1
    mask = mask * attn
    adv = torch.randn(B, 1, generator=g).expand(B, T) * mask
    return Batch(input_ids=ids, attention_mask=attn, loss_mask=mask, old_logprobs=torch.zeros(B, T) - 5.0,
                 advantages=adv.contiguous(), group_ids=torch.zeros(B, dtype=torch.long), rewards=torch.zeros(B))


def _with_old(learner, batch):
    lp = learner.logprobs(batch)
    return Batch(**{**{f: getattr(batch, f) for f in batch.__dataclass_fields__}, "old_logprobs": lp})


def test_micro_batch_split_gives_the_same_update(tiny):
    model, _ = tiny
    results = []
    for mb in (8, 3, 1):
        m = copy.deepcopy(model)
        learner = Learner(m, LearnerConfig(lr=1.0, micro_batch_size=mb, grad_clip=0),
                          AlgoConfig(reduce="seq_mean_token_mean"))
        # SGD makes the parameter change equal the gradient (Adam's first step would amplify roundoff on ~0 grads)
        learner.opt = torch.optim.SGD(m.parameters(), lr=1.0)
        batch = _with_old(learner, _batch())
        metrics = learner.update(batch)
        results.append((metrics["actor/pg_loss"], [p.detach().clone() for p in m.parameters()]))
    for loss, params in results[1:]:
        assert abs(loss - results[0][0]) < 1e-5
        for p, q in zip(params, results[0][1]):
            assert torch.allclose(p, q, atol=1e-5)


def test_update_changes_parameters_and_raises_advantaged_logprobs(tiny):
    model, _ = tiny
    m = copy.deepcopy(model)
    learner = Learner(m, LearnerConfig(lr=3e-3, micro_batch_size=4), AlgoConfig())
    batch = _with_old(learner, _batch())
    before = [p.detach().clone() for p in m.parameters()]
    for _ in range(3):
        learner.update(batch)
    assert any(not torch.equal(a, b) for a, b in zip(before, m.parameters()))
    after = learner.logprobs(batch)
    gain = ((after - batch.old_logprobs) * batch.advantages * batch.loss_mask).sum()
    assert gain > 0  # the policy moved toward positive-advantage tokens


def test_nan_loss_skips_the_step_and_logs_it(tiny):
    model, _ = tiny
    m = copy.deepcopy(model)
    learner = Learner(m, LearnerConfig(micro_batch_size=4), AlgoConfig())
    batch = _with_old(learner, _batch())
    bad = Batch(**{**{f: getattr(batch, f) for f in batch.__dataclass_fields__},
                   "advantages": batch.advantages * float("nan")})
    before = [p.detach().clone() for p in m.parameters()]
    metrics = learner.update(bad)
    assert metrics["actor/skipped_step"] == 1.0
    assert all(torch.equal(a, b) for a, b in zip(before, m.parameters()))
    assert learner.update(batch)["actor/skipped_step"] == 0.0  # the next good batch trains normally


def test_token_logprobs_ignore_right_padding(tiny):
    model, _ = tiny
    ids = torch.randint(3, 200, (1, 10))
    full = token_logprobs(model, ids, torch.ones_like(ids))
    padded = torch.cat([ids, torch.zeros(1, 4, dtype=torch.long)], 1)
    attn = torch.cat([torch.ones(1, 10), torch.zeros(1, 4)], 1).long()
    part = token_logprobs(model, padded, attn)
    assert torch.allclose(full, part[:, :10], atol=1e-5)
