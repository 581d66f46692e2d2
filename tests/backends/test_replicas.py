"""Generator replicas (backend.replicas): sticky + least-loaded routing, order, threads, errors, sync fan-out and
metrics over in-process fake replicas; two fake OpenAI servers through make_generator; Ray actors holding
scripted generators (the vllm path without vllm)."""
import threading
import time

import pytest

from agentrl.backends.base import Completion, GenRequest, SamplingParams
from agentrl.backends.replicas import ReplicaGenerator, make_replicas, validate_replicas
from agentrl.config import ConfigError, load_config

from .test_openai import FakeVLLM, completions

P = SamplingParams(max_new_tokens=8, seed=5)


class Fake:
    """An in-process replica: answers request [x, ...] with ids [x]; records batches, seeds, syncs, concurrency."""

    def __init__(self, name, delay=0.0, sync_delay=0.0, fail=False, gate=None):
        self.name, self.delay, self.sync_delay, self.fail, self.gate = name, delay, sync_delay, fail, gate
        self.batches, self.seeds, self.synced = [], [], []
        self.in_flight = self.max_in_flight = 0
        self.closed = False
        self._lock = threading.Lock()

    def generate(self, requests, params):
        with self._lock:
            self.batches.append(list(requests))
            self.seeds.append(params.seed)
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            if self.gate is not None:
                assert self.gate.wait(10)
            time.sleep(self.delay)
            if self.fail:
                raise RuntimeError(f"{self.name} is down")
            return [Completion(ids=[r.prompt_ids[0]], logprobs=[0.0], text=self.name) for r in requests]
        finally:
            with self._lock:
                self.in_flight -= 1

    def sync_weights(self, weights):
        time.sleep(self.sync_delay)
        self.synced.append(weights)

    def close(self):
        self.closed = True

    def keys(self):
        return {r.route_key for b in self.batches for r in b}


def reqs(groups, per_group, start=0, prompt_len=4):
    """per_group requests for each of `groups` keys; request k has prompt [k, 0, 0, ...] (k unique)."""
    return [GenRequest([start + g * per_group + j] + [0] * (prompt_len - 1), route_key=f"g{g}")
            for g in range(groups) for j in range(per_group)]


def test_order_preserved_groups_together_and_balanced():
    fakes = [Fake("a"), Fake("b")]
    gen = ReplicaGenerator(fakes)
    rs = reqs(8, 4)
    out = gen.generate(rs, P)
    assert [c.ids[0] for c in out] == [r.prompt_ids[0] for r in rs]  # original order
    served = {r.route_key: set() for r in rs}
    for r, c in zip(rs, out):
        served[r.route_key].add(c.text)
    assert all(len(s) == 1 for s in served.values())  # a group never splits
    assert [sum(len(b) for b in f.batches) for f in fakes] == [16, 16]  # 4 groups each
    assert fakes[0].keys().isdisjoint(fakes[1].keys())
    m = gen.pop_metrics()
    assert m["perf/replica/0/requests"] == m["perf/replica/1/requests"] == 16
    assert m["perf/replica/imbalance"] == 1.0 and m["perf/replica/sticky_share"] == 0.0
    gen.close()
    assert all(f.closed for f in fakes)


def test_sticky_across_calls_and_new_keys_balance():
    fakes = [Fake("a"), Fake("b"), Fake("c")]
    gen = ReplicaGenerator(fakes)
    rs = reqs(6, 2)
    first = {r.route_key: c.text for r, c in zip(rs, gen.generate(rs, P))}
    gen.pop_metrics()
    later = list(reversed(reqs(6, 1, start=100)))  # turn 2 of every group, in another order
    assert {r.route_key: c.text for r, c in zip(later, gen.generate(later, P))} == first
    assert gen.pop_metrics()["perf/replica/sticky_share"] == 1.0
    # keyless requests (and new keys) spread over the least-loaded replicas
    loose = [GenRequest([200 + i, 0, 0, 0]) for i in range(6)]
    assert sorted(c.text for c in gen.generate(loose, P)) == ["a", "a", "b", "b", "c", "c"]


def test_sticky_map_is_bounded():
    gen = ReplicaGenerator([Fake("a"), Fake("b")], sticky_capacity=3)
    for g in range(10):
        gen.generate([GenRequest([g], route_key=f"k{g}")], P)
    assert list(gen._sticky) == ["k7", "k8", "k9"]


def test_least_loaded_sees_other_threads_in_flight():
    gate = threading.Event()
    fakes = [Fake("a", gate=gate), Fake("b"), Fake("c")]
    gen = ReplicaGenerator(fakes)
    big = threading.Thread(target=gen.generate, args=([GenRequest([1] * 50, route_key="big")], P))
    big.start()  # lands on replica 0 (all idle) and blocks there
    deadline = time.time() + 5
    while not fakes[0].batches and time.time() < deadline:
        time.sleep(0.005)
    # the main thread's call sees replica 0 loaded by the other thread: the large group goes to an idle replica,
    # and the two small ones fill the remaining idle replica before touching replica 0
    rs = [GenRequest([2] * 40, route_key="x")] * 2 + [GenRequest([3], route_key="y"), GenRequest([4], route_key="z")]
    out = gen.generate(rs, P)
    assert out[0].text == out[1].text == "b" and out[2].text == out[3].text == "c"
    gate.set()
    big.join(5)
    assert gen._load == [0, 0, 0]
    gen.close()


def test_two_threads_concurrently():
    fakes = [Fake("a", delay=0.001), Fake("b", delay=0.001)]
    gen = ReplicaGenerator(fakes)
    errors, seen = [], {}

    def work(t):
        try:
            for k in range(40):
                rs = [GenRequest([t * 10_000 + k * 10 + j, 1], route_key=f"t{t}-g{k % 7}-{j % 2}") for j in range(6)]
                out = gen.generate(rs, P)
                assert [c.ids[0] for c in out] == [r.prompt_ids[0] for r in rs]
                for r, c in zip(rs, out):
                    assert seen.setdefault(r.route_key, c.text) == c.text  # sticky across calls and threads
        except Exception as e:  # noqa: BLE001
            errors.append(e)

    threads = [threading.Thread(target=work, args=(t,)) for t in range(2)]
    [t.start() for t in threads]
    [t.join(30) for t in threads]
    assert not errors and gen._load == [0, 0]
    m = gen.pop_metrics()
    assert m["perf/replica/0/requests"] + m["perf/replica/1/requests"] == 2 * 40 * 6
    assert m["perf/replica/0/requests"] > 0 and m["perf/replica/1/requests"] > 0
    # each thread: 14 keys, first seen in its first 7 calls (42 requests); all later requests follow their key
    assert m["perf/replica/sticky_share"] == pytest.approx(1 - 2 * 42 / 480)
    gen.close()


def test_an_erroring_replica_raises_without_hanging():
    gate = threading.Event()
    fakes = [Fake("a", gate=gate), Fake("b", fail=True)]
    gen = ReplicaGenerator(fakes)
    with pytest.raises(RuntimeError, match="b is down") as info:
        gen.generate(reqs(2, 2), P)  # raised while replica 0 is still blocked: nobody waits for it
    assert "replica 1 of 2" in "".join(getattr(info.value, "__notes__", []))
    assert not gate.is_set() and gen._load[0] > 0
    gate.set()
    deadline = time.time() + 5
    while gen._load != [0, 0] and time.time() < deadline:
        time.sleep(0.005)
    assert gen._load == [0, 0]  # replica 0 finished in the background and released its load
    assert list(gen._sticky) == ["g0"]  # the failed sub-batch's key is forgotten (re-routed on retry)
    fakes[1].fail = False
    assert [c.text for c in gen.generate(reqs(2, 1), P)] == ["a", "b"]
    gen.close()


def test_replicas_sample_with_distinct_seeds():
    fakes = [Fake("a"), Fake("b")]
    gen = ReplicaGenerator(fakes)
    gen.generate(reqs(2, 2), P)
    assert fakes[0].seeds == [P.seed] and fakes[1].seeds[0] != P.seed


def test_sync_fans_out_concurrently_and_is_timed():
    fakes = [Fake(n, sync_delay=0.05) for n in "abc"]
    together = threading.Barrier(3, timeout=10)  # passes only when all three syncs run at once
    for f in fakes:
        f.sync_weights = lambda w, f=f: (together.wait(), Fake.sync_weights(f, w))
    prepared = []
    gen = ReplicaGenerator(fakes, prepare_sync=lambda w: prepared.append(w) or ("shared", w))
    gen.sync_weights("W")
    assert prepared == ["W"] and all(f.synced == [("shared", "W")] for f in fakes)  # prepared once, sent to all
    m = gen.pop_metrics()
    assert m["perf/replica/syncs"] == 1 and 0.05 <= m["perf/replica/sync_mean_s"] <= m["perf/replica/sync_max_s"]
    assert all(m[f"perf/replica/{j}/sync_s"] >= 0.05 for j in range(3))
    assert "perf/replica/syncs" not in gen.pop_metrics()  # popped
    for f in fakes:
        f.sync_weights = lambda w, f=f: Fake.sync_weights(f, w)
    fakes[1].sync_weights = lambda w: (_ for _ in ()).throw(OSError("disk full"))
    with pytest.raises(OSError, match="disk full") as info:
        gen.sync_weights("W2")
    assert "replica 1 of 3" in "".join(getattr(info.value, "__notes__", []))
    assert fakes[0].synced[-1] == fakes[2].synced[-1] == ("shared", "W2")  # the others still synced
    gen.close()


def test_lazy_sync_of_the_model_before_the_first_generation(tiny):
    model, _ = tiny
    fakes = [Fake("a"), Fake("b")]
    gen = ReplicaGenerator(fakes, model=model, auto_sync=True)
    gen.generate(reqs(1, 1), P)
    gen.generate(reqs(1, 1), P)
    assert [len(f.synced) for f in fakes] == [1, 1]  # once: the model did not change in between
    import torch

    with torch.no_grad():
        next(model.parameters()).add_(0.0)  # an in-place write bumps the version counter
    gen.generate(reqs(1, 1), P)
    assert [len(f.synced) for f in fakes] == [2, 2]


def test_chat_goes_to_one_replica():
    class Chatty(Fake):
        def chat(self, messages, tools=None, **params):
            return {"content": self.name, "params": params}

    gen = ReplicaGenerator([Chatty("a"), Chatty("b")])
    assert gen.chat([{"role": "user", "content": "hi"}], max_tokens=5) == {"content": "a", "params": {"max_tokens": 5}}
    with pytest.raises(AttributeError, match="chat"):
        ReplicaGenerator([Fake("a")]).chat([])


# ---------------------------------------------------------------- config


def _cfg(*over):
    return load_config(None, list(over))


@pytest.mark.parametrize("over, match", [
    (["backend.replicas=0"], "integer >= 1"),
    (["backend.replicas=2"], "needs backend.generator=vllm"),
    (["backend.generator=openai", "backend.replicas=2"], "needs 2 server URLs"),
    (["backend.generator=openai", "backend.replicas=3", "backend.openai_base_urls=[http://a, http://b]"],
     "holds 2 URL"),
    (["backend.generator=openai", "backend.openai_base_urls=[http://a, http://b]"], "replicas=1 but"),
    (["backend.generator=openai", "backend.replicas=2", "backend.openai_base_urls=[http://a, http://a]"], "twice"),
    (["backend.generator=vllm", "backend.openai_base_urls=[http://a]"], "for backend.generator=openai"),
])
def test_validate_replicas_refuses(over, match):
    with pytest.raises(ConfigError, match=match):
        validate_replicas(_cfg(*over))


def test_vllm_replicas_without_ray_name_the_extra(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "ray", None)  # import ray -> ImportError
    with pytest.raises(ConfigError, match=r'pip install "agentrl\[scale\]"'):
        validate_replicas(_cfg("backend.generator=vllm", "backend.replicas=2"))
    validate_replicas(_cfg("backend.generator=vllm"))  # one in-process engine needs no ray


def test_one_url_builds_a_plain_openai_generator(tokenizer):
    from agentrl.backends.openai import OpenAIGenerator
    from agentrl.trainer import make_generator

    gen = make_generator(_cfg("backend.generator=openai", "backend.openai_sync=none",
                              "backend.openai_base_urls=[http://h:1/v1]"), None, tokenizer)
    try:
        assert isinstance(gen, OpenAIGenerator) and gen.api_url == "http://h:1/v1"
    finally:
        gen.close()


# ---------------------------------------------------------------- end to end: two fake OpenAI servers


def test_two_openai_servers_through_make_generator(tiny, tmp_path, monkeypatch):
    import agentrl.backends.openai as oa
    from agentrl.trainer import make_generator

    model, tok = tiny
    urls = ["http://srv0:8000/v1", "http://srv1:8000/v1"]
    fakes = {u: FakeVLLM(tok, reply=lambda p, i: f"r{p[-1]}") for u in urls}

    class Routed(oa.OpenAIGenerator):  # the real client; only the socket is replaced by the server's handler
        def __init__(self, *a, base_url=None, **kw):
            super().__init__(*a, base_url=base_url, transport=fakes[base_url].transport(), **kw)

    monkeypatch.setattr(oa, "OpenAIGenerator", Routed)
    cfg = _cfg("backend.generator=openai", "backend.replicas=2", f"backend.openai_base_urls=[{urls[0]}, {urls[1]}]",
               "backend.openai_sync=reload", f"backend.openai_sync_dir={tmp_path / 'served'}", "backend.openai_model=m")
    gen = make_generator(cfg, model, tok)
    try:
        assert isinstance(gen, ReplicaGenerator) and len(gen) == 2
        rs = [GenRequest([7, 8, 10 + g], route_key=f"task{g}") for g in range(4) for _ in range(3)]
        out = gen.generate(rs, P)  # first call: lazy sync of both servers, then generation
        assert [c.text for c in out] == [tok.decode(tok(f"r{r.prompt_ids[-1]}", add_special_tokens=False)
                                                    ["input_ids"] + [tok.eos_token_id], skip_special_tokens=True)
                                         for r in rs]
        served = {u: [b["prompt"][-1] for b in completions(f)] for u, f in fakes.items()}
        assert sorted(served[urls[0]] + served[urls[1]]) == [10, 11, 12, 13]  # each group: one request, n=3
        assert len(served[urls[0]]) == len(served[urls[1]]) == 2
        assert all(b["n"] == 3 for f in fakes.values() for b in completions(f))
        turn2 = [GenRequest([7, 8, 10 + g, 99], route_key=f"task{g}") for g in range(4)]
        gen.generate(turn2, P)
        for u, f in fakes.items():  # turn 2 of a group went where turn 1 did
            assert [b["prompt"][2] for b in completions(f)][2:] == served[u]
        gen.sync_weights(model)
        srv = str(tmp_path / "served")
        for f in fakes.values():
            rpc = [b for p, b in f.calls if p == "/collective_rpc"]
            assert [b["kwargs"]["weights_path"] for b in rpc] == [srv, srv]  # lazy first sync, then this one
            assert [p for p, _ in f.calls][-2:] == ["/collective_rpc", "/reset_prefix_cache"]
        m = gen.pop_metrics()
        assert m["perf/replica/syncs"] == 2 and m["perf/replica/sync_max_s"] > 0
        assert m["perf/replica/sticky_share"] == pytest.approx(4 / 16)
    finally:
        gen.close()


# ---------------------------------------------------------------- Ray actors (the vllm replicas' transport)


def test_ray_actor_replicas_generate_and_sync(tiny):
    """Two Ray actors holding `Fake` replicas (shipped by value: no tokenizer or transformers in the workers)."""
    import sys

    ray = pytest.importorskip("ray")
    from ray import cloudpickle

    from agentrl.backends.replicas import ray_put_state, ray_replicas

    model, _ = tiny
    started = not ray.is_initialized()
    if started:
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    cloudpickle.register_pickle_by_value(sys.modules[__name__])
    try:
        reps = ray_replicas(Fake, [dict(name=f"replica {j}") for j in range(2)], num_cpus=0)
        gen = ReplicaGenerator(reps, prepare_sync=ray_put_state, model=model)
        out = gen.generate([GenRequest([5, 6], route_key=f"g{g}") for g in range(4)], P)
        assert sorted(c.text for c in out) == ["replica 0", "replica 0", "replica 1", "replica 1"]
        gen.sync_weights(model)  # after the lazy first sync: each actor got the state_dict from one ray.put
        for r in reps:
            synced = r.attr("synced")
            assert len(synced) == 2 and set(synced[-1]) == set(model.state_dict())
        gen.close()
    finally:
        cloudpickle.unregister_pickle_by_value(sys.modules[__name__])
        if started:
            ray.shutdown()
