"""agentrl eval: metrics (pass@k against brute force), a scripted self-correcting policy through the UFO wrapper,
the CLI end to end on a tiny model, and --compare on two stored runs."""
import itertools
import json
import math
import os
import re
import subprocess
import sys

import numpy as np
import pytest

from agentrl.backends.scripted import ScriptedGenerator
from agentrl.config import load_config
from agentrl.eval.harness import (Episode, bootstrap_diff, compare, compute_metrics, load_results, pass_at_k,
                                  run_eval, write_results)


@pytest.mark.parametrize("n", [1, 2, 3, 5, 7])
def test_pass_at_k_matches_brute_force(n):
    for c in range(n + 1):
        for k in range(1, n + 1):
            outcomes = [1] * c + [0] * (n - c)
            subsets = list(itertools.combinations(range(n), k))
            brute = sum(any(outcomes[i] for i in s) for s in subsets) / len(subsets)
            assert pass_at_k(n, c, k) == pytest.approx(brute, abs=1e-12)


def test_pass_at_k_rejects_bad_input():
    for n, c, k in [(3, 4, 1), (3, 1, 0), (3, 1, 4), (3, -1, 1)]:
        with pytest.raises(ValueError):
            pass_at_k(n, c, k)


def _ep(task, success, answers, turns=None, tokens=10):
    return Episode(task_id=task, success=success, turns=turns or len(answers), answers=answers, action_tokens=tokens,
                   reward=1.0 if success else 0.0)


def test_compute_metrics_by_hand():
    eps = [
        _ep("a", True, ["12"]),                      # solved at turn 1
        _ep("a", True, ["5", "12"]),                 # solved at turn 2
        _ep("b", False, ["5", "5", "5"]),            # collapse: one answer every turn
        _ep("b", False, ["1", "2", "2"]),            # failed, not collapsed
        _ep("c", False, ["7"]),                      # failed in one turn: not counted for collapse
        _ep("c", False, ["9", "9"], turns=3),        # a turn without an answer: not "every turn"
    ]
    m = compute_metrics(eps, 3, ks=(1, 2))
    assert m["succ@1"] == pytest.approx(1 / 6) and m["succ@2"] == pytest.approx(2 / 6) and m["succ@3"] == m["succ@2"]
    assert m["pass@1"] == pytest.approx((1 + 0 + 0) / 3) and m["pass@2"] == pytest.approx(1 / 3)
    assert m["effective_answer_ratio"] == pytest.approx((1 + 2 + 1 + 2 + 1 + 1) / (1 + 2 + 3 + 3 + 1 + 2))
    assert m["collapse_rate"] == pytest.approx(1 / 3)  # failed with >= 2 turns: the b's and c's second
    assert m["mean_turns"] == pytest.approx((1 + 2 + 3 + 3 + 1 + 3) / 6)
    assert m["tasks"] == 3 and m["episodes"] == 6
    assert math.isnan(compute_metrics([_ep("a", True, ["1"])], 1)["collapse_rate"])


def _math_cfg(tmp_path, model_dir, **over):
    cfg = load_config(None, ["env.id=agentrl/Math-v0", f"model.path={model_dir}", "rollout.max_new_tokens=12",
                             "rollout.max_total_tokens=400", f"train.run_dir={tmp_path}/run"])
    for k, v in over.items():
        setattr(cfg.eval, k, v)
    return cfg


def test_scripted_self_correcting_policy_through_the_feedback_wrapper(tmp_path, tiny_dir, tokenizer):
    """Policy: on tasks whose gold is even, answer gold+1 until it has seen two 'Incorrect' messages, then gold;
    on odd golds always answer gold+1. Succ@t and collapse are then known exactly."""
    import agentrl  # noqa: F401
    from agentrl.rollout.chain import make_env

    cfg = _math_cfg(tmp_path, tiny_dir, n_tasks=12)
    tasks = make_env("agentrl/Math-v0", {}, 4).unwrapped.make_tasks("test", 12, cfg.env.eval_seed)
    gold = {t.options["problem"]: int(t.answer) for t in tasks}

    def policy(prompt: str) -> str:
        g = next(v for k, v in gold.items() if k in prompt)
        seen = prompt.count("Incorrect. Please think again.")
        return f"<answer>{g if g % 2 == 0 and seen >= 2 else g + 1}</answer>"

    gen = ScriptedGenerator(tokenizer, policy, eos=True)
    res = run_eval(cfg, feedback_turns=4, generator=gen, tokenizer=tokenizer, out_dir=str(tmp_path / "out"))
    m = res["metrics"]
    even = np.mean([g % 2 == 0 for g in gold.values()])
    assert 0 < even < 1
    assert m["succ@1"] == m["succ@2"] == 0.0
    assert m["succ@3"] == pytest.approx(even) and m["succ@4"] == pytest.approx(even)
    assert m["collapse_rate"] == 1.0  # every failed (odd) episode repeated gold+1 four times
    # even: answers g+1, g+1, g -> 2 distinct of 3; odd: 1 distinct of 4
    n_even, n_odd = even * 12, (1 - even) * 12
    assert m["effective_answer_ratio"] == pytest.approx((2 * n_even + n_odd) / (3 * n_even + 4 * n_odd))
    for f in ("results.json", "results.md", "succ_at_turn.png"):
        assert os.path.getsize(tmp_path / "out" / f) > 0
    # without feedback the same policy solves nothing, in one turn
    single = run_eval(cfg, feedback_turns=1, generator=ScriptedGenerator(tokenizer, policy, eos=True),
                      tokenizer=tokenizer)
    assert single["setup"]["turns"] == 1 and single["metrics"]["succ@1"] == 0.0
    assert single["metrics"]["mean_turns"] == 1.0


def test_bootstrap_ci_covers_the_difference_and_is_paired():
    rng = np.random.default_rng(0)
    a_eps, b_eps = [], []
    for i in range(40):
        a_eps.append(_ep(f"t{i}", bool(rng.random() < 0.3), ["1"]))
        b_eps.append(_ep(f"t{i}", bool(rng.random() < 0.7), ["1"]))
    mk = lambda eps: {"setup": {"turns": 1}, "metrics": compute_metrics(eps, 1),  # noqa: E731
                      "episodes": [e.__dict__ for e in eps]}
    a, b = mk(a_eps), mk(b_eps)
    lo, hi = bootstrap_diff(a, b, ["success"], n_boot=500)["success"]
    d = b["metrics"]["success"] - a["metrics"]["success"]
    assert lo < d < hi and lo > 0  # a 0.3 vs 0.7 gap on 40 tasks is clearly positive
    lo0, hi0 = bootstrap_diff(a, a, ["success"], n_boot=200)["success"]
    assert lo0 == hi0 == 0.0  # paired resampling of identical runs


def agentrl(*args, check=True):
    r = subprocess.run([sys.executable, "-m", "agentrl.cli", *args], capture_output=True, text=True,
                       env={**os.environ, "HF_HUB_OFFLINE": "1"})
    if check:
        assert r.returncode == 0, r.stderr[-3000:]
    return r


def test_cli_eval_twice_and_compare(tmp_path, tiny_dir):
    common = ["--model", tiny_dir, "env.id=agentrl/Math-v0", "rollout.max_new_tokens=8",
              "rollout.max_total_tokens=256", "--n-tasks", "6", "--samples", "2", "--k", "1,2",
              "--temperature", "1.0"]
    a = agentrl("eval", *common, "--feedback-turns", "1", "--out", str(tmp_path / "a"), "--seed", "1")
    assert "succ@1" in a.stdout and "pass@2" in a.stdout
    agentrl("eval", *common, "--feedback-turns", "3", "--out", str(tmp_path / "b"), "--seed", "1")
    b = load_results(str(tmp_path / "b"))
    assert b["setup"]["turns"] == 3 and {"succ@1", "succ@2", "succ@3", "pass@2"} <= set(b["metrics"])
    assert len(b["episodes"]) == 12
    # reproducible from the seed (in-process: the same config, model and seed as the CLI run)
    cfg = load_config(None, ["env.id=agentrl/Math-v0", "rollout.max_new_tokens=8", "rollout.max_total_tokens=256"])
    again = run_eval(cfg, model_path=tiny_dir, feedback_turns=3, samples=2, n_tasks=6, temperature=1.0, seed=1,
                     ks=(1, 2))
    assert again["episodes"] == b["episodes"]
    with pytest.raises(ValueError, match="temperature"):
        run_eval(cfg, model_path=tiny_dir, samples=2, n_tasks=2, temperature=0.0)
    out = agentrl("eval", "--compare", str(tmp_path / "a"), str(tmp_path / "b"), "--n-boot", "200").stdout
    assert re.search(r"\| succ@1 \| [0-9.]+ \| [0-9.]+ \| -?[0-9.]+ \| \[", out), out
    assert "effective_answer_ratio" in out
    bad = agentrl("eval", "--compare", str(tmp_path / "a"), str(tmp_path / "nope"), check=False)
    assert bad.returncode == 2 and "no results.json" in bad.stderr


def test_compare_function_on_stored_runs(tmp_path):
    eps_a = [_ep(f"t{i}", i % 3 == 0, ["1", "1"]) for i in range(9)]
    eps_b = [_ep(f"t{i}", i % 3 != 0, ["1", "2"]) for i in range(9)]
    for name, eps in (("a", eps_a), ("b", eps_b)):
        write_results({"setup": {"env": "x", "model": "m", "turns": 2, "samples": 1, "n_tasks": 9,
                                 "temperature": 0.0, "seed": 0}, "metrics": compute_metrics(eps, 2),
                       "episodes": [e.__dict__ for e in eps]}, str(tmp_path / name))
    table = compare(str(tmp_path / "a"), str(tmp_path / "b"), n_boot=100)
    row = next(line for line in table.splitlines() if line.startswith("| success "))
    assert "| 0.333 | 0.667 | 0.333 |" in row
    json.loads((tmp_path / "a" / "results.json").read_text())
