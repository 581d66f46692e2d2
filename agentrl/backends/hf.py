"""transformers generator: the reference backend and the CPU default.

One batched KV-cached sampling loop for all requests; finished rows are dropped from the batch as they stop
(EOS or a stop string), so a turn costs what its longest live reply costs. Logprobs are those of the sampling
distribution softmax(logits / T) before top-p truncation; with T = 0 (greedy) they are of softmax(logits).
"""
from __future__ import annotations

from typing import Any, Sequence

import torch
from transformers import DynamicCache

from .base import GENERATORS, Completion, GenRequest, SamplingParams


def _left_pad(prompts: list[list[int]], pad_id: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for i, p in enumerate(prompts):
        ids[i, width - len(p):] = torch.tensor(p, dtype=torch.long)
        mask[i, width - len(p):] = 1
    return ids.to(device), mask.to(device)


def sample_tokens(logits: torch.Tensor, params: SamplingParams, gen: torch.Generator):
    """logits [b, V] -> (tokens [b], logprobs [b], top-k logprobs [b, k] or None)."""
    logits = logits.float()
    if params.temperature <= 0:
        logp = torch.log_softmax(logits, -1)
        tok = logp.argmax(-1)
    else:
        logp = torch.log_softmax(logits / params.temperature, -1)
        probs = logp.exp()
        if params.top_p < 1.0:
            sp, si = probs.sort(-1, descending=True)
            drop = sp.cumsum(-1) - sp > params.top_p
            sp = sp.masked_fill(drop, 0.0)
            probs = torch.zeros_like(probs).scatter(-1, si, sp)
        tok = torch.multinomial(probs.cpu(), 1, generator=gen).squeeze(-1).to(logits.device)
    lp = logp.gather(-1, tok[:, None]).squeeze(-1)
    top = logp.topk(params.top_k_logprobs, -1).values if params.top_k_logprobs > 0 else None
    return tok, lp, top


class HFGenerator:
    """Generator over an in-process transformers causal LM. Pass the learner's own model object to share
    weights (then sync_weights is free); pass a copy to keep sampling and learning separate."""

    def __init__(self, model, tokenizer, max_batch: int = 256):
        self.model = model
        self.tok = tokenizer
        self.max_batch = max_batch
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        self.eos_id = tokenizer.eos_token_id
        self._piece: dict[int, str] = {}

    @property
    def device(self):
        return next(self.model.parameters()).device

    def sync_weights(self, weights: Any) -> None:
        if weights is None or weights is self.model:
            return
        if isinstance(weights, str):
            from transformers import AutoModelForCausalLM

            weights = AutoModelForCausalLM.from_pretrained(weights).state_dict()
        if isinstance(weights, torch.nn.Module):
            weights = weights.state_dict()
        self.model.load_state_dict(weights)

    def close(self) -> None:
        self.model = None

    def piece(self, tok_id: int) -> str:
        if tok_id not in self._piece:
            self._piece[tok_id] = self.tok.decode([tok_id], skip_special_tokens=False)
        return self._piece[tok_id]

    @torch.no_grad()
    def generate(self, requests: Sequence[GenRequest], params: SamplingParams) -> list[Completion]:
        out: list[Completion] = []
        was_training = self.model.training
        self.model.eval()
        try:
            for c, start in enumerate(range(0, len(requests), self.max_batch)):
                chunk = list(requests[start:start + self.max_batch])
                gen = torch.Generator().manual_seed(int(params.seed) * 1_000_003 + c)
                out.extend(self._generate_chunk(chunk, params, gen))
        finally:
            self.model.train(was_training)
        return out

    def _generate_chunk(self, reqs: list[GenRequest], params: SamplingParams, gen) -> list[Completion]:
        device = self.device
        limits = [r.max_new_tokens if r.max_new_tokens is not None else params.max_new_tokens for r in reqs]
        done = [Completion(ids=[], logprobs=[], top_logprobs=[] if params.top_k_logprobs else None) for _ in reqs]
        live = [i for i, n in enumerate(limits) if n > 0]
        if not live:
            return self._finish(done, params)
        ids, attn = _left_pad([reqs[i].prompt_ids for i in live], self.pad_id, device)
        pos = (attn.cumsum(-1) - 1).clamp(min=0)
        cache = DynamicCache()
        logits = self.model(input_ids=ids, attention_mask=attn, position_ids=pos, past_key_values=cache,
                            use_cache=True, logits_to_keep=1).logits[:, -1]
        texts = ["" for _ in reqs]
        while live:
            tok, lp, top = sample_tokens(logits, params, gen)
            keep = []
            for j, i in enumerate(live):
                t = int(tok[j])
                done[i].ids.append(t)
                done[i].logprobs.append(float(lp[j]))
                if top is not None:
                    done[i].top_logprobs.append(top[j].cpu().numpy())
                piece = self.piece(t)
                texts[i] += piece
                if t == self.eos_id:
                    done[i].finish_reason = "eos"
                elif any(s in texts[i][-(len(s) + len(piece)):] for s in params.stop):
                    done[i].finish_reason = "stop"
                elif len(done[i].ids) < limits[i]:
                    keep.append(j)
            if not keep:
                break
            if len(keep) < len(live):
                sel = torch.tensor(keep, device=device)
                cache.batch_select_indices(sel)
                attn, tok = attn[sel], tok[sel]
                live = [live[j] for j in keep]
            attn = torch.cat([attn, attn.new_ones((attn.shape[0], 1))], dim=1)
            pos = attn.sum(-1, keepdim=True) - 1
            logits = self.model(input_ids=tok[:, None], attention_mask=attn, position_ids=pos,
                                past_key_values=cache, use_cache=True).logits[:, -1]
        return self._finish(done, params)

    def _finish(self, done: list[Completion], params: SamplingParams) -> list[Completion]:
        for c in done:
            c.text = self.tok.decode(c.ids, skip_special_tokens=True)
            if params.top_k_logprobs:
                import numpy as np

                c.top_logprobs = np.stack(c.top_logprobs) if c.top_logprobs else np.zeros((0, params.top_k_logprobs))
        return done


GENERATORS.register("hf", HFGenerator)
