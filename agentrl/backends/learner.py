"""Learner: a causal LM trained with a registered surrogate + reduction, micro-batched with exact gradient
accumulation (reductions are normalised by the whole mini-batch's counts), AdamW, grad-norm clipping, fp32/bf16.
Imports only torch: the model object comes from agentrl.models."""
from __future__ import annotations

import math
from contextlib import nullcontext
from typing import Optional

import torch

from ..algos import KL, REDUCTIONS, SURROGATES, ReduceScale, scale_for
from ..algos.tis import TIS_DEFAULT_CAP, tis_weights
from ..config import AlgoConfig, LearnerConfig
from ..types import Batch


def token_logprobs(model, input_ids: torch.Tensor, attention_mask: torch.Tensor, temperature: float = 1.0):
    """[B, T] logprob of input_ids[:, t] given input_ids[:, :t]; column 0 is 0."""
    pos = (attention_mask.cumsum(-1) - 1).clamp(min=0)
    logits = model(input_ids=input_ids, attention_mask=attention_mask, position_ids=pos).logits[:, :-1].float()
    if temperature > 0 and temperature != 1.0:
        logits = logits / temperature
    target = input_ids[:, 1:]
    lp = logits.gather(-1, target[..., None]).squeeze(-1) - torch.logsumexp(logits, -1)  # [B, T-1]
    return torch.cat([lp.new_zeros((lp.shape[0], 1)), lp], dim=1)


def _trim(batch: Batch) -> Batch:
    """Drop right-padding columns no row of this micro-batch uses."""
    width = int(batch.attention_mask.sum(-1).max().item()) if batch.size else 0
    fields = {f: getattr(batch, f) for f in batch.__dataclass_fields__}
    for f, v in fields.items():
        if v is not None and v.dim() == 2:
            fields[f] = v[:, :width]
    return Batch(**fields)


class Learner:
    def __init__(self, model, cfg: LearnerConfig, algo: AlgoConfig, temperature: float = 1.0, ref_model=None):
        self.model = model
        self.cfg = cfg
        self.algo = algo
        self.temperature = temperature if temperature > 0 else 1.0
        self.ref_model = ref_model
        trainable = [p for p in model.parameters() if p.requires_grad]  # a LoRA policy: only its adapters
        decay = [p for p in trainable if p.ndim >= 2]
        no_decay = [p for p in trainable if p.ndim < 2]
        self.opt = torch.optim.AdamW(
            [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
            lr=cfg.lr, betas=tuple(cfg.betas),
        )
        self.surrogate = SURROGATES.get(algo.surrogate)
        reduce_name = getattr(self.surrogate, "forced_reduce", None) or algo.reduce
        self.reduce = REDUCTIONS.get(reduce_name)
        self.kl = KL.get(algo.kl_type) if algo.kl_coef > 0 and algo.kl_in == "loss" else None
        self.tis_cap = TIS_DEFAULT_CAP if algo.tis_cap is None else float(algo.tis_cap)  # used when the batch
        # carries behaviour_logprobs (the trainer sets them when TIS is on)
        self.steps = 0

    @property
    def device(self):
        return next(self.model.parameters()).device

    def _autocast(self):
        if self.cfg.dtype == "bfloat16":
            return torch.autocast(self.device.type, dtype=torch.bfloat16)
        return nullcontext()

    @torch.no_grad()
    def logprobs(self, batch: Batch, model=None) -> torch.Tensor:
        """[B, T] logprobs of batch.input_ids under `model` (default: the policy), micro-batched."""
        model = model or self.model
        was = model.training
        model.eval()
        out = torch.zeros(batch.input_ids.shape, dtype=torch.float32)
        mb = self.cfg.micro_batch_size
        for s in range(0, batch.size, mb):
            sub = _trim(batch.select(slice(s, s + mb)))
            with self._autocast():
                lp = token_logprobs(model, sub.input_ids.to(self.device), sub.attention_mask.to(self.device),
                                    self.temperature)
            out[s:s + mb, : lp.shape[1]] = lp.float().cpu()
        model.train(was)
        return out

    def _micro_loss(self, sub: Batch, scale: ReduceScale) -> tuple[torch.Tensor, dict]:
        dev = self.device
        with self._autocast():
            logp = token_logprobs(self.model, sub.input_ids.to(dev), sub.attention_mask.to(dev), self.temperature)
        logp = logp.float()
        mask = sub.loss_mask.to(dev).float()
        loss_mat, stats = self.surrogate(logp, sub.old_logprobs.to(dev), sub.advantages.to(dev), mask, self.algo)
        if sub.behaviour_logprobs is not None:  # truncated IS from the sampling policy (algos/tis.py)
            loss_mat = loss_mat * tis_weights(sub.old_logprobs.to(dev), sub.behaviour_logprobs.to(dev),
                                              self.tis_cap)[0]
        loss = self.reduce(loss_mat, mask, scale)
        metrics = {"actor/pg_loss": loss.detach()}
        if self.kl is not None and sub.ref_logprobs is not None:
            kl_loss = REDUCTIONS.get(self.algo.reduce)(self.kl(logp, sub.ref_logprobs.to(dev)), mask, scale)
            loss = loss + self.algo.kl_coef * kl_loss
            metrics["actor/kl_loss"] = kl_loss.detach()
        n = max(scale.n_tokens, 1.0)
        for k, v in stats.items():
            if torch.is_tensor(v) and v.shape == mask.shape:
                metrics[f"actor/{k}"] = (v.detach().float() * mask).sum() / n
        metrics["actor/sampled_nll"] = (-(logp.detach() * mask).sum()) / n
        return loss, metrics

    def update(self, batch: Batch) -> dict:
        """ppo_epochs × mini_batches optimizer steps over the batch; returns mean metrics."""
        history: list[dict] = []
        n_mini = max(1, min(self.algo.mini_batches, batch.size))
        for _ in range(self.algo.ppo_epochs):
            for chunk in torch.arange(batch.size).chunk(n_mini):
                history.append(self._step(batch.select(chunk)))
        out: dict = {}
        for k in history[0]:
            out[k] = sum(h[k] for h in history) / len(history)
        return out

    def _step(self, mini: Batch) -> dict:
        self.model.train()
        self.opt.zero_grad(set_to_none=True)
        scale = scale_for(mini.loss_mask)  # of the whole mini-batch, also when this process sees only a share
        rows = self._rows(mini)
        totals: dict = {}
        mb = self.cfg.micro_batch_size
        for s in range(0, rows.size, mb):
            sub = _trim(rows.select(slice(s, s + mb)))
            loss, metrics = self._micro_loss(sub, scale)
            loss.backward()
            for k, v in metrics.items():
                totals[k] = totals.get(k, 0.0) + float(v)
        totals = self._sum_metrics(totals)
        totals["actor/loss"] = totals.get("actor/pg_loss", 0.0) + self.algo.kl_coef * totals.get("actor/kl_loss", 0.0)
        grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.grad_clip or float("inf"))
        grad_norm = grad_norm.full_tensor() if hasattr(grad_norm, "full_tensor") else grad_norm  # FSDP: DTensor
        totals["actor/grad_norm"] = float(grad_norm)
        totals["actor/lr"] = self._set_lr()
        finite = math.isfinite(totals["actor/loss"]) and math.isfinite(totals["actor/grad_norm"])
        totals["actor/skipped_step"] = 0.0 if finite else 1.0
        if finite:
            self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        self.steps += 1
        return totals

    def _rows(self, mini: Batch) -> Batch:
        """The rows of a mini-batch this process trains on (all of them; FSDPLearner: its rank's share)."""
        return mini

    def _sum_metrics(self, totals: dict) -> dict:
        """Metric sums over the processes that share the mini-batch (one process: as they are)."""
        return totals

    def _set_lr(self) -> float:
        warm = self.cfg.warmup_steps
        lr = self.cfg.lr * min(1.0, (self.steps + 1) / warm) if warm > 0 else self.cfg.lr
        for g in self.opt.param_groups:
            g["lr"] = lr
        return lr

    def copy_policy_into(self, dst: torch.nn.Module) -> None:
        """Overwrite the plain model `dst` with the policy's current weights (merged for LoRA); the generator's
        separate copy is refreshed this way."""
        from .lora import copy_policy_into

        copy_policy_into(dst, self.model)

    def sft(self, demos, sft_cfg, pad_id: int, log=None) -> dict:
        """SFT warm start of the policy (agentrl.sft.sft_train)."""
        from ..sft import sft_train

        return sft_train(self.model, demos, sft_cfg, pad_id, log=log)

    @torch.no_grad()
    def reset_reference(self) -> None:
        """Make the reference model the current policy (merged weights for LoRA). The trainer calls it after the
        SFT warm start, so KL anchors at the policy RL starts from."""
        if self.ref_model is not None:
            from .lora import policy_state_dict

            self.ref_model.load_state_dict(policy_state_dict(self.model))

    def state_dict(self) -> dict:
        return {"optimizer": self.opt.state_dict(), "steps": self.steps}

    def load_state_dict(self, state: dict) -> None:
        self.opt.load_state_dict(state["optimizer"])
        self.steps = int(state["steps"])


def make_ref_model(model) -> Optional[torch.nn.Module]:
    import copy

    ref = copy.deepcopy(model)
    ref.eval()
    for p in ref.parameters():
        p.requires_grad_(False)
    return ref
