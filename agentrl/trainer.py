"""The loop: collect -> score -> logprobs -> advantages -> collate -> update -> sync, as named, timed phases.
No phase branches on an algorithm's name; algorithms are registry entries chosen by the config."""
from __future__ import annotations

import json
import os
import random
from typing import Optional

import numpy as np
import torch

from .algos import ADVANTAGES, KL, keep_groups_with_signal, keep_top_std_groups, overlong_penalty
from .algos.tis import tis_stats
from .backends.base import GENERATORS
from .backends.learner import Learner, make_ref_model
from .backends.lora import apply_lora, is_adapter_dir, is_lora, load_lora, plain_copy, save_merged
from .config import Config, ConfigError, dump_config
from .data.collate import advantage_input, collate, token_advantages, with_fields
from .eval import evaluate, summarize
from .metrics import MetricsLogger, PhaseTimer, plot_curves
from .rollout import ROLLOUTS, ChatTokenizer
from .rollout.chain import make_env
from .rollout.prefetch import Prefetcher, staleness_metrics
from .types import Trajectory
from .validation import async_mode, tis_on, validate  # noqa: F401  (validate: re-exported for callers)

CKPT = "checkpoints"


def pick_device(name: str) -> str:
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return name


def ensure_model(cfg: Config) -> str:
    from .models import init_model

    path = cfg.model.path
    if not os.path.exists(path) and cfg.model.init:
        init_model(cfg.model.init, path, seed=cfg.model.tokenizer_seed)
    return path


def make_generator(cfg: Config, model, tokenizer):
    """The learner's model is shared with an in-process HF generator (weight sync is then free). R replicas
    (backend.replicas, backend.openai_base_urls) sit behind one router: backends/replicas.py."""
    if cfg.backend.replicas != 1 or cfg.backend.openai_base_urls:
        from .backends.replicas import make_replicas

        return make_replicas(cfg, model, tokenizer)
    if cfg.backend.generator == "hf":
        from .backends.hf import HFGenerator

        return HFGenerator(model, tokenizer, max_batch=cfg.backend.gen_batch_size)
    return GENERATORS.get(cfg.backend.generator)(cfg=cfg, model=model, tokenizer=tokenizer)


def load_reference(cfg: Config, model, resume_from: Optional[str], device: str):
    """The KL reference: the policy RL starts from, i.e. model.path's weights (a copy of the freshly loaded
    `model`; for LoRA the frozen base), or after an SFT warm start the post-SFT weights (run() saves them as
    checkpoints/step_000000, which a resumed run reloads). Every fsdp rank builds it the same way."""
    from .models import load_model

    if not resume_from:
        return make_ref_model(model)
    src = os.path.join(cfg.train.run_dir, CKPT, "step_000000")
    src = src if os.path.isdir(src) else ensure_model(cfg)
    adapter = is_adapter_dir(src)
    ref, _ = load_model(ensure_model(cfg) if adapter else src, dtype=cfg.model.dtype, device=device)
    if adapter:  # LoRA + SFT warm start: the base with the post-SFT adapter merged in
        ref = plain_copy(load_lora(ref, src), device=device)
    return make_ref_model(ref)


class Trainer:
    def __init__(self, cfg: Config, resume: bool = False):
        validate(cfg)
        self.cfg = cfg
        self.run_dir = cfg.train.run_dir
        os.makedirs(os.path.join(self.run_dir, CKPT), exist_ok=True)
        self.resume_from = latest_checkpoint(self.run_dir) if resume else None
        if resume and self.resume_from is None:
            raise FileNotFoundError(f"--resume: no checkpoint under {self.run_dir}/{CKPT}")
        self.timer = PhaseTimer()
        self.logger = MetricsLogger(self.run_dir)
        self.start_step = 0
        self._setup()

    # ------------------------------------------------------------------ setup
    def _setup(self) -> None:
        from .models import load_model

        cfg = self.cfg
        random.seed(cfg.train.seed)
        np.random.seed(cfg.train.seed)
        torch.manual_seed(cfg.train.seed)
        device = pick_device(cfg.backend.device)
        path = self.resume_from or ensure_model(cfg)
        adapter = self.resume_from if self.resume_from and is_adapter_dir(self.resume_from) else None
        if adapter and cfg.learner.lora.r <= 0:
            raise ConfigError(f"{adapter} holds a LoRA adapter: resume with learner.lora.r > 0")
        self.model, self.tokenizer = load_model(ensure_model(cfg) if adapter else path, dtype=cfg.model.dtype,
                                                device=device)
        self.chat = ChatTokenizer(self.tokenizer)
        ref = load_reference(cfg, self.model, self.resume_from, device) if cfg.algo.kl_coef > 0 else None
        if adapter:
            self.model = load_lora(self.model, adapter)
        elif cfg.learner.lora.r > 0:
            self.model = apply_lora(self.model, cfg.learner.lora)
        if cfg.learner.strategy == "fsdp":  # sharded over the torchrun ranks; the others serve() (backends/fsdp.py)
            from .backends.fsdp import FSDPLearner as learner_cls
        else:
            learner_cls = Learner
        self.learner = learner_cls(self.model, cfg.learner, cfg.algo, cfg.rollout.temperature, ref_model=ref)
        self._setup_generation(cfg)
        self.memory = None
        wrappers = cfg.env.wrappers
        if cfg.memory.enabled:  # reflection memory: lessons in every rollout, library updated every N steps
            from .memory.modes import MemoryHook

            self.memory = MemoryHook(cfg)
            wrappers = self.memory.wrappers()
        self.collector = ROLLOUTS.get(cfg.rollout.strategy)(cfg.env.id, cfg.env.kwargs, self.generator,
                                                            self.gen_chat, cfg.rollout, wrappers=wrappers)
        self.task_env = make_env(cfg.env.id, cfg.env.kwargs, cfg.rollout.max_turns).unwrapped
        self.eval_tasks = self.task_env.make_tasks("test", cfg.eval.n_tasks, cfg.env.eval_seed)
        if self.resume_from:
            state = torch.load(os.path.join(self.resume_from, "trainer_state.pt"), weights_only=False)
            self.learner.load_state_dict(state["learner"])
            self.start_step = int(state["step"])
            self.logger.truncate_after(self.start_step)
        else:
            with open(os.path.join(self.run_dir, "resolved_config.yaml"), "w") as f:
                f.write(dump_config(cfg))
        self.prefetch = (Prefetcher(lambda step, version: self.collect(step, version), cfg.train.max_staleness)
                         if async_mode(cfg) == "one_step_off" else None)

    def _setup_generation(self, cfg: Config) -> None:
        """The model the generator samples with. Shared with the learner (sync is free) unless the generator must
        not see the learner mid-update (train.async) or needs plain weights (LoRA with vllm/openai): then a
        separate adapter-free copy, refreshed with the merged policy weights at every sync."""
        fsdp = cfg.learner.strategy == "fsdp"  # the policy is sharded: rank 0 generates with a full copy
        separate = fsdp or async_mode(cfg) != "off" or (is_lora(self.model) and cfg.backend.generator != "hf")
        if not separate:
            self.gen_model, self.gen_chat = self.model, self.chat
        else:
            import copy

            device = None if cfg.backend.generator == "hf" else "cpu"  # engines keep their own copy on the GPU
            self.gen_model = self.learner.full_model.to(device or self.learner.device) if fsdp else \
                plain_copy(self.model, device=device)
            # the background collector gets its own tokenizer (fast tokenizers are not safe across threads)
            self.gen_chat = ChatTokenizer(copy.deepcopy(self.tokenizer)) if async_mode(cfg) != "off" else self.chat
        self.generator = make_generator(cfg, self.gen_model, self.tokenizer)

    def sync(self) -> None:
        """Bring the generator up to date with the policy (merged weights for a LoRA policy)."""
        if self.gen_model is not self.model:  # (fsdp: gathered from the shards, a collective)
            self.learner.copy_policy_into(self.gen_model)
        self.generator.sync_weights(self.gen_model)

    # ------------------------------------------------------------------ run
    def run(self) -> dict:
        cfg = self.cfg
        if self.start_step == 0 and not self.resume_from:
            if cfg.sft.enabled:
                with self.timer("sft"):
                    self.sft()
                self.sync()  # an engine (or generator copy) with its own weights must see the SFT weights
                if cfg.algo.kl_coef > 0:  # KL anchors at the policy RL starts from (verl: ref = initial actor)
                    self.learner.reset_reference()
                    self.save(0)  # ... which a resumed run reloads as its reference
            self.log_eval(0)
        bar = _progress(cfg.train.progress, self.start_step, cfg.train.steps)
        for step in range(self.start_step + 1, cfg.train.steps + 1):
            metrics = self.step(step)
            if cfg.eval.every and step % cfg.eval.every == 0 and step != cfg.train.steps:
                self.log_eval(step)
            if cfg.train.save_every and step % cfg.train.save_every == 0:
                self.save(step)
            bar.update(metrics)
        if self.prefetch is not None:
            self.prefetch.close()
        final = self.log_eval(cfg.train.steps) if cfg.train.steps > self.start_step else {}
        self.save(cfg.train.steps, final=True)
        bar.close()
        if cfg.train.plot:
            plot_curves(self.run_dir)
        return final

    def close(self) -> None:
        """Release the envs (browsers, sandboxes, Ray env workers) and the rollout threads."""
        if self.prefetch is not None:
            self.prefetch.close()
        self.collector.close()

    def sft(self) -> None:
        from .sft import make_demonstrations

        s = self.cfg.sft
        tasks = self.task_env.make_tasks("train", s.n_demos, seed=s.seed + 77)
        demos = make_demonstrations(self.cfg.env.id, self.cfg.env.kwargs, tasks, self.chat,
                                    self.cfg.rollout.max_turns, s.corrupt_share, s.seed, self.cfg.rollout.render_tools,
                                    s.corrupt_turn, wrappers=self.cfg.env.wrappers)
        demo_stats = {"sft/demos": len(demos), "sft/demo_success": float(np.mean([d.success for d in demos]))}
        self.learner.sft(demos, s, self.tokenizer.pad_token_id,
                         log=lambda m: self.logger.log({"train/step": 0, **demo_stats, **m}))

    def log_eval(self, step: int) -> dict:
        with self.timer("eval"):
            m, trajs = evaluate(self.collector, self.eval_tasks, self.cfg.eval.temperature,
                                self.cfg.eval.samples_per_task, seed=self.cfg.env.eval_seed)
        # the eval record carries eval (and, at step 0, sft) time, so a step's perf/step_time is its own phases only
        self.logger.log({"train/step": step, **m, **self.timer.pop()})
        self._write_trajectories(step, trajs[: self.cfg.train.log_trajectories], "eval")
        return m

    # ------------------------------------------------------------------ one step
    def step(self, step: int) -> dict:
        cfg, t = self.cfg, self.timer
        with t("collect"):  # async: the batch generated during the previous update (waits only at step 1)
            trajs, rollout_m = self.rollouts(step)
        with t("memory"):
            memory_m = self.memory.after_step(step, trajs) if self.memory is not None else {}
        with t("score"):
            scored, scores, score_m = self.score(trajs)
        with t("collate"):
            batch = collate(scored, self.tokenizer.pad_token_id)
        with t("old_logprobs"):
            batch, lp_m = self.old_logprobs(batch)
        with t("ref_logprobs"):
            batch, scores, kl_m = self.reference(batch, scores)
        with t("advantages"):
            adv = ADVANTAGES.get(cfg.algo.advantage)(advantage_input(scored, scores), cfg.algo)
            batch = with_fields(batch, advantages=token_advantages(scored, adv, batch.input_ids.shape[1]))
        with t("update"):
            if self.prefetch is None:  # (async: the engine is generating the next batch right now)
                getattr(self.generator, "sleep", lambda: None)()  # vllm on a shared GPU: free its memory meanwhile
            update_m = self.learner.update(batch) if batch.size else {}
        with t("rollout_wait"):  # async: the next batch must be complete before the generator's weights change
            if self.prefetch is not None:
                self.prefetch.wait()
        with t("sync"):
            self.sync()
        perf = t.pop()
        perf.update(getattr(self.generator, "pop_metrics", dict)())  # backend.replicas: routing + sync times
        n_tok = float(batch.loss_mask.sum())
        perf["perf/step_time"] = sum(v for k, v in perf.items() if k.startswith("perf/time/"))
        perf["perf/gen_tokens_per_s"] = n_tok / max(perf.get("perf/time/collect", 1e-9), 1e-9)
        metrics = {"train/step": step, **rollout_m, **memory_m, **score_m, **lp_m, **kl_m, **update_m,
                   "rollout/adv_abs_mean": float(np.abs(adv[adv != 0]).mean()) if np.any(adv != 0) else 0.0, **perf}
        self.logger.log(metrics)
        self._write_trajectories(step, trajs[: cfg.train.log_trajectories], "train")
        return metrics

    def rollouts(self, step: int) -> tuple[list[Trajectory], dict]:
        """Sync: collect now. one_step_off: take the batch generated in the background (policy one update old),
        then start generating the next step's batch with the policy as it is now (rollout/prefetch.py)."""
        version = step - 1  # updates applied so far
        if self.prefetch is None:
            return self.collect(step, version)
        trajs, m = self.prefetch.take(step, version)
        if step < self.cfg.train.steps:
            self.prefetch.submit(step + 1, version)
        m = {**m, **staleness_metrics(trajs, version, self.cfg.train.max_staleness),
             "rollout/stale_batches_dropped": self.prefetch.dropped}
        return trajs, m

    def collect(self, step: int, version: int = 0) -> tuple[list[Trajectory], dict]:
        """One batch of groups; with dynamic sampling, more rounds until enough groups carry signal. `version`:
        the policy version recorded on every turn (Turn.policy_version)."""
        r, a = self.cfg.rollout, self.cfg.algo
        kept: list[Trajectory] = []
        rounds, seen = 0, []
        while True:
            seed = self.cfg.train.seed * 1_000_003 + step * 101 + rounds
            tasks = self.task_env.make_tasks("train", r.tasks_per_step, seed=self.cfg.env.train_seed + seed)
            trajs = self.collector.collect(tasks, r.group_size, seed=seed, group_prefix=f"s{step}r{rounds}:",
                                           policy_version=version)
            seen += trajs
            rounds += 1
            if not a.dynamic_sampling:
                kept = trajs
                break
            ok = [t for t in trajs if t.reward is not None]
            keep = keep_groups_with_signal(np.array([t.reward for t in ok]), np.array([t.group_id for t in ok]))
            kept += [t for t, k in zip(ok, keep) if k]
            if len({t.group_id for t in kept}) >= r.tasks_per_step or rounds >= a.max_num_gen_batches:
                break
        if a.dynamic_sampling:
            groups = list(dict.fromkeys(t.group_id for t in kept))[: r.tasks_per_step]
            kept = [t for t in kept if t.group_id in set(groups)]
        n_before = len(kept)
        if a.std_filter_ratio < 1.0:  # UFO / RAGEN: only the groups whose rewards vary most
            ok = [t for t in kept if t.reward is not None]
            mask = keep_top_std_groups(np.array([t.reward for t in ok]), np.array([t.group_id for t in ok]),
                                       a.std_filter_ratio)
            kept = [t for t, k in zip(ok, mask) if k]
        m = summarize(seen, prefix="rollout/")
        m.pop("rollout/n", None)
        m.update({"rollout/gen_rounds": rounds, "rollout/trajectories": len(kept),
                  "rollout/filtered_out": n_before - len(kept),
                  "rollout/env_errors": self.collector.stats.get("env_errors", 0),
                  "rollout/truncated_share": float(np.mean([t.turns[-1].truncated for t in seen if t.turns]))})
        m.update({k: v for k, v in self.collector.stats.items() if k.startswith("rollout/")})  # last round's
        return kept, m

    def score(self, trajs: list[Trajectory]):
        """Outcome score per trajectory (+ DAPO overlong shaping). Unscorable ones are excluded and counted."""
        ok = [t for t in trajs if t.reward is not None]
        scores = np.array([t.reward for t in ok], dtype=np.float64)
        o = self.cfg.algo.overlong
        if o.enabled and ok:
            pen = overlong_penalty(np.array([t.n_action_tokens for t in ok]), o.max_len, o.cache_len, o.factor)
            scores = scores + pen
            for t, p in zip(ok, pen):
                t.reward_parts["overlong"] = float(p)
        m = {"rollout/unscorable": len(trajs) - len(ok),
             "rollout/reward_mean": float(scores.mean()) if len(scores) else 0.0,
             "rollout/reward_std": float(scores.std()) if len(scores) else 0.0}
        return ok, scores, m

    def old_logprobs(self, batch):
        if not batch.size:
            return batch, {}
        sampler = batch.old_logprobs
        if self.cfg.algo.old_logprobs == "sampler":
            return batch, {}
        learner = self.learner.logprobs(batch)
        mask = batch.loss_mask
        diff = ((learner - sampler).abs() * mask).sum() / mask.sum().clamp(min=1)
        m = {"actor/logprob_mismatch": float(diff)}
        if tis_on(self.cfg):  # truncated IS weight min(pi_old / pi_sampler, C) in the loss (algos/tis.py)
            m.update(tis_stats(learner, sampler, mask, self.learner.tis_cap))
            return with_fields(batch, old_logprobs=learner, behaviour_logprobs=sampler), m
        return with_fields(batch, old_logprobs=learner), m

    def reference(self, batch, scores):
        a = self.cfg.algo
        if a.kl_coef <= 0 or not batch.size:
            return batch, scores, {}
        ref = self.learner.logprobs(batch, model=self.learner.ref_model)
        kl = KL.get(a.kl_type)(batch.old_logprobs, ref) * batch.loss_mask  # [B, T]
        m = {"actor/kl_ref": float(kl.sum() / batch.loss_mask.sum().clamp(min=1))}
        if a.kl_in == "reward":  # r - beta * sum_t kl_t on the outcome score (outcome-level GRPO form)
            scores = scores - a.kl_coef * kl.sum(-1).double().numpy()
        return with_fields(batch, ref_logprobs=ref), scores, m

    # ------------------------------------------------------------------ persistence
    def save(self, step: int, final: bool = False) -> str:
        """A LoRA policy saves its adapter (the base stays at model.path); the final checkpoint also holds the
        merged model under merged/ for eval and serving."""
        path = os.path.join(self.run_dir, CKPT, f"step_{step:06d}")
        if self.cfg.learner.strategy == "fsdp":  # the full weights, gathered from the shards (a collective)
            self.gen_model.save_pretrained(path, state_dict=self.learner.full_state_dict())
        else:
            self.model.save_pretrained(path)
        self.tokenizer.save_pretrained(path)
        if final and is_lora(self.model):
            save_merged(self.model, os.path.join(path, "merged"), self.tokenizer)
        torch.save({"step": step, "learner": self.learner.state_dict()}, os.path.join(path, "trainer_state.pt"))
        with open(os.path.join(self.run_dir, CKPT, "latest"), "w") as f:
            f.write(os.path.basename(path))
        return path

    def _write_trajectories(self, step: int, trajs: list[Trajectory], split: str) -> None:
        with open(os.path.join(self.run_dir, "trajectories.jsonl"), "a") as f:
            for t in trajs:
                rec = {"step": step, "split": split, "id": t.id, "group": t.group_id, "reward": t.reward,
                       "success": t.success, "prompt": self.chat.decode(t.prompt_ids),
                       "turns": [{"action": u.action_text, "obs": self.chat.decode(u.obs_ids), "reward": u.reward,
                                  "valid": u.action_valid} for u in t.turns]}
                if t.reward_parts.get("env_error") and t.turns and t.turns[-1].obs_messages:
                    rec["env_error"] = t.turns[-1].obs_messages[0].content  # why the episode is unscorable
                f.write(json.dumps(rec) + "\n")


def latest_checkpoint(run_dir: str) -> Optional[str]:
    marker = os.path.join(run_dir, CKPT, "latest")
    if not os.path.exists(marker):
        return None
    with open(marker) as f:
        return os.path.join(run_dir, CKPT, f.read().strip())


class _progress:
    """tqdm bar with the live sampled success rate; silent when disabled."""

    def __init__(self, enabled: bool, start: int, total: int):
        self.bar = None
        if enabled:
            from tqdm import tqdm

            self.bar = tqdm(total=total, initial=start, desc="RL", unit="step", dynamic_ncols=True)

    def update(self, m: dict) -> None:
        if self.bar:
            self.bar.set_postfix(success=f"{m.get('rollout/success', 0):.2f}",
                                 reward=f"{m.get('rollout/reward_mean', 0):.2f}")
            self.bar.update(1)

    def close(self) -> None:
        if self.bar:
            self.bar.close()
