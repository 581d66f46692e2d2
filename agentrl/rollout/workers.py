"""Env workers (rollout.workers = N): a collector's envs live in N Ray actors instead of the trainer process.

Why: a browser or a code sandbox per rollout is heavy, slow and sometimes crashes or hangs. In an actor it gets its
own process (and `rollout.worker_cpus` reserved CPUs, on any node of a Ray cluster), and a dead or hung actor can
be killed and replaced without touching the trainer.

How: `EnvPool` starts N actors (`_EnvHost`); each hosts many envs, keyed by an integer, and runs up to
`rollout.worker_threads` env calls at once. `RemoteEnv` is the collector-side handle: it offers the part of the
gymnasium.Env surface the collectors use (reset, step, close, unwrapped.stop_strings/parser/snapshot/restore), so
the chain, tree and arpo collectors run unchanged on top of it. Envs are placed round-robin over the actors.

Failure rule: when an actor dies (or a call exceeds `rollout.worker_timeout_s`, after which it is killed), the pool
starts a replacement in its slot and counts a restart. Every env that lived on the dead actor has lost its state:
its next step raises `EnvLost`, which the collector records like any env exception (the episode is marked failed:
reward None, `reward_parts["env_error"]`, excluded from its group and counted in rollout/env_errors). reset() is a
fresh start, so a reset that meets a dead actor re-opens the env on the replacement and succeeds.
"""
from __future__ import annotations

import itertools
import os
import threading
from typing import Any, Optional, Sequence

from ..backends.cluster import init_ray, require_ray

START_TIMEOUT_S = 600.0  # limit for starting a worker and making an env on it


class EnvLost(RuntimeError):
    """The worker that held this env died or hung; the episode's state is gone."""


class _EnvHost:
    """Body of an env-worker actor: the envs it hosts, by key."""

    def __init__(self, env_id: str, kwargs: dict, max_turns: int, wrappers: Sequence[dict]):
        from .. import envs  # noqa: F401  (registers agentrl/* ids in this process)
        from .. import memory  # noqa: F401  (registers the "lessons" wrapper)

        self.spec = (env_id, dict(kwargs), max_turns, list(wrappers))
        self.envs: dict[int, Any] = {}

    def open(self, key: int) -> dict:
        """Make env `key`; returns what the collector reads from an env without stepping it."""
        from .chain import can_snapshot, make_env, stop_strings

        env = make_env(*self.spec)
        self.envs[key] = env
        return {"stop_strings": stop_strings(env), "parser": getattr(env.unwrapped, "parser", None),
                "supports_snapshot": can_snapshot(env)}

    def reset(self, key: int, seed, options):
        return self.envs[key].reset(seed=seed, options=options)

    def step(self, key: int, action: str):
        return self.envs[key].step(action)

    def snapshot(self, key: int):
        return self.envs[key].unwrapped.snapshot()

    def restore(self, key: int, state):
        return self.envs[key].unwrapped.restore(state)

    def close(self, key: int) -> None:
        env = self.envs.pop(key, None)
        if env is not None:
            env.close()

    def pid(self) -> int:
        return os.getpid()


class EnvPool:
    """N env-worker actors; slots keep their index when an actor is replaced."""

    def __init__(self, n: int, env_id: str, kwargs: dict, max_turns: int, wrappers: Sequence[dict] = (),
                 cpus: float = 1.0, threads: int = 8, timeout_s: float = 300.0, address: str = ""):
        if n < 1:
            raise ValueError(f"rollout.workers must be >= 1 to use a pool, got {n}")
        ray = require_ray("rollout.workers")
        init_ray(address, min_cpus=n * cpus)
        self._ray = ray
        self._remote = ray.remote(_EnvHost)
        self._args = (env_id, dict(kwargs), max_turns, list(wrappers))
        self._opts = {"num_cpus": float(cpus), "max_concurrency": max(1, int(threads))}
        self.timeout_s = float(timeout_s) if timeout_s and timeout_s > 0 else None
        self.actors = [self._spawn() for _ in range(n)]
        self.incarnation = [0] * n  # bumped when the slot's actor is replaced
        self.restarts = 0
        self._keys = itertools.count()
        self._lock = threading.Lock()

    def _spawn(self):
        return self._remote.options(**self._opts).remote(*self._args)

    def env(self) -> "RemoteEnv":
        key = next(self._keys)
        return RemoteEnv(self, key % len(self.actors), key)

    def call(self, slot: int, incarnation: int, method: str, *args):
        """Run `method` on the slot's actor; EnvLost if that actor is not the one the env was opened on, or it
        dies / exceeds the timeout during the call (it is then replaced)."""
        ray = self._ray
        with self._lock:
            actor, current = self.actors[slot], self.incarnation[slot]
        if current != incarnation:
            raise EnvLost(f"env worker {slot} was restarted; this episode's env state is gone")
        # "open" includes starting the actor (a process that imports agentrl) and building the env (a browser...):
        # it gets START_TIMEOUT_S, not the per-call limit
        limit = self.timeout_s if method != "open" else max(self.timeout_s or 0.0, START_TIMEOUT_S)
        try:
            return ray.get(getattr(actor, method).remote(*args), timeout=limit)
        except ray.exceptions.GetTimeoutError:
            self.replace(slot, incarnation)
            raise EnvLost(f"env worker {slot}: {method} took longer than {limit:g} s "
                          f"(rollout.worker_timeout_s); the worker was killed and restarted") from None
        except ray.exceptions.RayActorError as e:
            self.replace(slot, incarnation)
            raise EnvLost(f"env worker {slot} died during {method} ({type(e).__name__}); restarted") from None

    def replace(self, slot: int, incarnation: int) -> None:
        """Kill the slot's actor and start a new one (once, however many envs noticed the death)."""
        with self._lock:
            if self.incarnation[slot] != incarnation:
                return
            try:
                self._ray.kill(self.actors[slot], no_restart=True)
            except Exception:  # already gone
                pass
            self.actors[slot] = self._spawn()
            self.incarnation[slot] += 1
            self.restarts += 1

    def pids(self) -> list[int]:
        return [self._ray.get(a.pid.remote()) for a in self.actors]

    def close(self) -> None:
        for a in self.actors:
            try:
                self._ray.kill(a, no_restart=True)
            except Exception:
                pass
        self.actors = []


class RemoteEnv:
    """Collector-side handle of one env in a worker (the slice of gymnasium.Env the collectors use)."""

    def __init__(self, pool: EnvPool, slot: int, key: int):
        self.pool, self.slot, self.key = pool, slot, key
        self._last_reset: Optional[tuple] = None
        self._open()

    def _open(self) -> None:
        self.incarnation = self.pool.incarnation[self.slot]
        meta = self.pool.call(self.slot, self.incarnation, "open", self.key)
        self._stop = list(meta["stop_strings"])
        self.parser = meta["parser"]
        self.supports_snapshot = bool(meta["supports_snapshot"])

    def _call(self, method: str, *args):
        return self.pool.call(self.slot, self.incarnation, method, self.key, *args)

    @property
    def unwrapped(self) -> "RemoteEnv":
        return self

    def stop_strings(self) -> list[str]:
        return list(self._stop)

    def reset(self, *, seed=None, options=None):
        self._last_reset = (seed, options)
        try:
            return self._call("reset", seed, options)
        except EnvLost:  # a reset starts over anyway: re-open on the replacement worker
            self._open()
            return self._call("reset", seed, options)

    def step(self, action: str):
        return self._call("step", action)

    def snapshot(self):
        return self._call("snapshot")

    def restore(self, state):
        try:
            return self._call("restore", state)
        except EnvLost:  # restore follows a reset: redo both on the replacement worker
            self._open()
            self._call("reset", *self._last_reset)
            return self._call("restore", state)

    def close(self) -> None:
        try:
            self._call("close")
        except Exception:  # the worker is gone, and with it the env
            pass


def validate_workers(cfg) -> None:
    """Config checks for rollout.workers (raise ConfigError before anything starts)."""
    from ..config import ConfigError

    r = cfg.rollout
    if r.workers < 0 or r.worker_cpus < 0 or r.worker_threads < 1:
        raise ConfigError(f"rollout.workers and rollout.worker_cpus must be >= 0 and rollout.worker_threads >= 1, "
                          f"got workers={r.workers}, worker_cpus={r.worker_cpus}, worker_threads={r.worker_threads}")
    if r.workers > 0:
        try:
            require_ray("rollout.workers")
        except ImportError as e:
            raise ConfigError(str(e)) from None
