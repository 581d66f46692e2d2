"""learner.strategy: fsdp — the Learner sharded with torch FSDP2 (`fully_shard`) across the processes of
`torchrun --nproc_per_node N -m agentrl train ...` (nccl on CUDA, gloo on CPU). docs/fsdp.md.

Driver / worker: rank 0 runs the ordinary Trainer with an FSDPLearner. Every collective method (update, logprobs,
state_dict, load_state_dict, full weights, sft) first broadcasts a command (`broadcast_object_list`, the Batch
pickled) and then executes it like every other rank; ranks != 0 sit in `serve()` executing commands until "stop".

Exactness: each rank takes a contiguous share of every mini-batch's rows, but its loss is normalised by the WHOLE
mini-batch's `scale_for(mask)`, so the ranks' losses add up to the single-process loss; gradients are reduced with
a SUM (divide factor 1), so every shard holds the single-process gradient. Ranks pad their share to the same number
of rows with loss-masked filler rows (same number of forward/backward passes everywhere, zero contribution).
Grad-norm clipping runs on the DTensor gradients (the global norm); metrics are all-reduced sums.
"""
from __future__ import annotations

import os
from dataclasses import replace
from datetime import timedelta
from typing import Callable, Optional

import torch
import torch.distributed as dist

from ..config import AlgoConfig, LearnerConfig
from ..types import Batch
from .learner import Learner
from .lora import plain_copy

STRATEGIES = ("single", "fsdp")
# ranks != 0 wait in a broadcast while rank 0 collects rollouts and evaluates: allow long phases
TIMEOUT = timedelta(hours=6)


def init_distributed(device: str = "auto") -> tuple[int, int]:
    """Join the torchrun process group once (nccl when CUDA is used, else gloo); (rank, world size)."""
    if not dist.is_initialized():
        cuda = torch.cuda.is_available() and device != "cpu"
        if cuda:
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
        dist.init_process_group("nccl" if cuda else "gloo", timeout=TIMEOUT)
    return dist.get_rank(), dist.get_world_size()


def _shard(model: torch.nn.Module) -> torch.nn.Module:
    """FSDP2 in place: one unit per decoder layer (HF `model.model.layers`) plus the root (embeddings, head)."""
    from torch.distributed.fsdp import fully_shard

    for layer in getattr(getattr(model, "model", None), "layers", []):
        fully_shard(layer)
    fully_shard(model)
    return model


def _fsdp_modules(model: torch.nn.Module):
    from torch.distributed.fsdp import FSDPModule

    return [m for m in model.modules() if isinstance(m, FSDPModule)]


def _full(v):
    from torch.distributed.tensor import DTensor

    return v.full_tensor() if isinstance(v, DTensor) else v


class FSDPLearner(Learner):
    """A drop-in for Learner whose policy (and reference model) are sharded over all ranks.

    Construct it on every rank with the same model (same seed, same weights); it shards `model` in place. Rank 0
    keeps `full_model`, an unsharded frozen copy taken before sharding, for the generator (refreshed with
    `copy_policy_into`)."""

    def __init__(self, model, cfg: LearnerConfig, algo: AlgoConfig, temperature: float = 1.0, ref_model=None):
        if hasattr(model, "peft_config"):
            raise ValueError("learner.strategy=fsdp does not support learner.lora yet")
        self.rank, self.world = init_distributed(str(next(model.parameters()).device.type))
        self.full_model = plain_copy(model) if self.rank == 0 else None
        _shard(model)
        if ref_model is not None:
            _shard(ref_model)
        super().__init__(model, cfg, algo, temperature, ref_model=ref_model)  # AdamW over the local shards
        self._sum_gradients(True)

    # ------------------------------------------------------------------ driver / worker
    def _command(self, name: str, *args, **local):
        """Rank 0: tell the workers to run `_name(*args)`, then run it here too (with rank-0-only `local` args)."""
        if self.rank == 0 and self.world > 1:
            dist.broadcast_object_list([(name, args)], src=0)
        return getattr(self, f"_{name}")(*args, **local)

    def serve(self) -> None:
        """Ranks != 0: execute rank 0's commands until "stop"."""
        while True:
            box = [None]
            dist.broadcast_object_list(box, src=0)
            name, args = box[0]
            if name == "stop":
                return
            getattr(self, f"_{name}")(*args)

    def stop(self) -> None:
        """Rank 0: release the workers from serve()."""
        stop_workers()

    # ------------------------------------------------------------------ public surface (rank 0)
    def update(self, batch: Batch) -> dict:
        return self._command("update", batch)

    def logprobs(self, batch: Batch, model=None) -> torch.Tensor:
        which = "ref" if model is not None and model is self.ref_model else "policy"
        if model is not None and model is not self.ref_model and model is not self.model:
            return super().logprobs(batch, model=model)  # an unsharded model: rank 0 alone
        return self._command("logprobs", batch, which)

    def state_dict(self) -> dict:
        return self._command("state_dict")

    def load_state_dict(self, state: dict) -> None:
        self._command("load_state_dict", state=state)

    def reset_reference(self) -> None:
        self._command("reset_reference")

    def full_state_dict(self) -> dict:
        """The policy's full (unsharded) weights on CPU at rank 0, under the plain model's keys."""
        out: dict = {}

        def keep(key, full, alias):  # a tied weight: the same CPU tensor under both keys (save_pretrained dedupes)
            out[key] = out[alias] if alias else full.detach().cpu()
        self._command("gather", sink=keep)
        return out

    def copy_policy_into(self, dst: torch.nn.Module) -> None:
        """Overwrite rank 0's plain `dst` with the policy's current weights, one gathered tensor at a time."""
        target = dst.state_dict()
        self._command("gather", sink=lambda k, v, alias: target[k].copy_(target[alias] if alias else v))

    def sft(self, demos, sft_cfg, pad_id: int, log: Optional[Callable[[dict], None]] = None) -> dict:
        """SFT warm start on the sharded policy: every rank runs agentrl.sft.sft_train on the same demos."""
        return self._command("sft", demos, sft_cfg, pad_id, log=log)

    # ------------------------------------------------------------------ commands (every rank)
    def _update(self, batch: Batch) -> dict:
        return Learner.update(self, batch)

    # Learner._step with these two hooks: this rank's share of each mini-batch (its loss still normalised by the
    # whole mini-batch's scale_for, so the ranks' losses sum to the single-process loss; FSDP reduce-scatters a SUM
    # into the gradient shards), and metric sums over all ranks. The grad norm of DTensor gradients is global.
    def _rows(self, mini: Batch) -> Batch:
        return self._share(mini)[0]

    def _sum_metrics(self, totals: dict) -> dict:
        return self._all_sum(totals)

    def _logprobs(self, batch: Batch, which: str) -> torch.Tensor:
        local, _ = self._share(batch)
        model = self.ref_model if which == "ref" else self.model
        lp = Learner.logprobs(self, local, model=model).to(self._comm_device())  # [rows, T]
        parts = [torch.empty_like(lp) for _ in range(self.world)]
        dist.all_gather(parts, lp)
        sizes = [len(ix) for ix in torch.arange(batch.size).tensor_split(self.world)]
        return torch.cat([p[:k] for p, k in zip(parts, sizes)]).cpu()

    @torch.no_grad()
    def _gather(self, sink: Optional[Callable] = None) -> None:
        """All-gather every weight in turn; rank 0 hands each full tensor to `sink(key, tensor, alias)`. A tied
        weight (one parameter under two keys) is gathered once; its second key comes with alias = the first key."""
        state = self.model.state_dict(keep_vars=True)  # the parameters themselves: a tied one is one object
        first: dict = {}
        for k, v in state.items():
            alias = first.setdefault(id(v), k)
            full = _full(v) if alias == k else None
            if sink is not None:
                sink(k, full, None if alias == k else alias)

    @torch.no_grad()
    def _reset_reference(self) -> None:
        """Every rank copies its policy shards into the reference's (both are sharded the same way)."""
        if self.ref_model is None:
            return
        for dst, src in zip(self.ref_model.parameters(), self.model.parameters()):
            dst.copy_(src)

    def _state_dict(self) -> Optional[dict]:
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

        opt = get_optimizer_state_dict(self.model, self.opt,
                                       options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        return {"optimizer": opt, "steps": self.steps, "strategy": "fsdp"} if self.rank == 0 else None

    def _load_state_dict(self, state: Optional[dict] = None) -> None:
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

        if self.rank == 0 and state.get("strategy") != "fsdp":
            raise ValueError("this checkpoint's optimizer state is from learner.strategy=single; "
                             "resume it with the same strategy")
        set_optimizer_state_dict(self.model, self.opt, optim_state_dict=state["optimizer"] if state else {},
                                 options=StateDictOptions(full_state_dict=True, broadcast_from_rank0=True))
        box = [self.steps if state is None else int(state["steps"])]
        dist.broadcast_object_list(box, src=0)
        self.steps = int(box[0])

    def _sft(self, demos, sft_cfg, pad_id: int, log=None) -> dict:
        from ..sft import sft_train

        self._sum_gradients(False)  # identical full batches on every rank: average, not sum
        try:
            return sft_train(self.model, demos, sft_cfg, pad_id, log=log if self.rank == 0 else None)
        finally:
            self._sum_gradients(True)

    # ------------------------------------------------------------------ helpers
    def _share(self, batch: Batch) -> tuple[Batch, int]:
        """This rank's contiguous rows, padded with loss-masked copies of row 0 to ceil(B / world) rows."""
        idx = torch.arange(batch.size).tensor_split(self.world)[self.rank]
        pad = -(-batch.size // self.world) - len(idx)
        local = batch.select(torch.cat([idx, idx.new_zeros(pad)]))
        if pad:
            mask = local.loss_mask.clone()
            mask[len(idx):] = 0
            local = replace(local, loss_mask=mask)
        return local, len(idx)

    def _all_sum(self, totals: dict) -> dict:
        keys = sorted(totals)
        t = torch.tensor([totals[k] for k in keys], dtype=torch.float64, device=self._comm_device())
        dist.all_reduce(t)
        return {k: float(v) for k, v in zip(keys, t.tolist())}

    def _comm_device(self) -> torch.device:
        return self.device if dist.get_backend() == "nccl" else torch.device("cpu")

    def _sum_gradients(self, on: bool) -> None:
        """Gradient reduction across ranks: SUM (on) or mean (off), with sum-only collectives (gloo has no AVG)."""
        for m in _fsdp_modules(self.model):
            m.set_gradient_divide_factor(1.0 if on else float(self.world))
            m.set_force_sum_reduction_for_comms(True)


def stop_workers() -> None:
    """Rank 0: send "stop" to every serve() loop (safe to call when there is no process group)."""
    if dist.is_initialized() and dist.get_rank() == 0 and dist.get_world_size() > 1:
        dist.broadcast_object_list([("stop", ())], src=0)


def build_worker_learner(cfg, resume: bool) -> FSDPLearner:
    """Ranks != 0: the same model rank 0's Trainer builds (same seed, weights, reference model), sharded."""
    import random

    import numpy as np

    from ..models import load_model
    from ..trainer import ensure_model, latest_checkpoint, load_reference, pick_device

    random.seed(cfg.train.seed)
    np.random.seed(cfg.train.seed)
    torch.manual_seed(cfg.train.seed)
    resume_from = latest_checkpoint(cfg.train.run_dir) if resume else None
    device = pick_device(cfg.backend.device)
    model, _ = load_model(resume_from or ensure_model(cfg), dtype=cfg.model.dtype, device=device)
    ref = load_reference(cfg, model, resume_from, device) if cfg.algo.kl_coef > 0 else None
    return FSDPLearner(model, cfg.learner, cfg.algo, cfg.rollout.temperature, ref_model=ref)


def train(cfg, resume: bool = False) -> Optional[dict]:
    """`agentrl train` under learner.strategy=fsdp, on every torchrun rank: rank 0 prepares the model and runs the
    Trainer (returns its final metrics); the other ranks serve learner commands (return None)."""
    from ..trainer import Trainer, ensure_model, validate

    validate(cfg)  # every rank: a bad config fails here, before any collective
    rank, _ = init_distributed(cfg.backend.device)
    try:
        if rank == 0:
            box = [None]
            try:
                ensure_model(cfg)  # rank 0 alone writes model.init's model; the others wait for it
            except Exception as e:
                box = [f"{type(e).__name__}: {e}"]
                raise
            finally:
                dist.broadcast_object_list(box, src=0)
            trainer = None
            try:
                trainer = Trainer(cfg, resume=resume)
                return trainer.run()
            finally:
                if trainer is not None:
                    trainer.close()
                stop_workers()
        box = [None]
        dist.broadcast_object_list(box, src=0)
        if box[0] is not None:
            raise RuntimeError(f"rank 0 failed to prepare the model: {box[0]}")
        build_worker_learner(cfg, resume).serve()
        return None
    finally:
        dist.destroy_process_group()
