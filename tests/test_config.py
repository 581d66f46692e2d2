import subprocess
import sys

import pytest

from agentrl.config import ConfigError, load_config, parse_overrides


def test_yaml_and_cli_overrides(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("algo: {advantage: rloo, clip_high: 0.28}\nrollout: {group_size: 4}\n")
    cfg = load_config(str(p), ["rollout.group_size=6", "algo.dual_clip=3", "train.run_dir=/x"])
    assert cfg.algo.advantage == "rloo" and cfg.algo.clip_high == 0.28
    assert cfg.rollout.group_size == 6 and cfg.algo.dual_clip == 3.0 and cfg.train.run_dir == "/x"
    assert cfg.algo.clip_low == 0.2  # untouched default


@pytest.mark.parametrize("override,msg", [
    (["algo.clip_hgh=0.3"], "Did you mean 'clip_high'"),
    (["rollot.group_size=2"], "Did you mean 'rollout'"),
    (["rollout.group_size=abc"], "expected int"),
    (["rollout.group_size=2.5"], "expected an integer"),
    (["algo.dynamic_sampling=maybe"], "true/false"),
    (["algo"], "a.b=value"),
])
def test_bad_configs_fail_with_a_clear_message(override, msg):
    with pytest.raises(ConfigError, match=msg):
        load_config(None, override)


def test_broken_yaml_and_missing_file(tmp_path):
    p = tmp_path / "bad.yaml"
    p.write_text("algo: {advantage: [\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(str(p))
    with pytest.raises(ConfigError, match="not found"):
        load_config(str(tmp_path / "nope.yaml"))


def test_parse_overrides_nesting():
    assert parse_overrides(["a.b.c=1", "a.d=x"]) == {"a": {"b": {"c": 1}, "d": "x"}}


def test_print_config_cli():
    out = subprocess.run([sys.executable, "-m", "agentrl.cli", "print-config", "configs/quickstart.yaml",
                          "algo.clip_high=0.28"], capture_output=True, text=True, check=True).stdout
    assert "clip_high: 0.28" in out and "Calculator-v0" in out
    bad = subprocess.run([sys.executable, "-m", "agentrl.cli", "print-config", "configs/quickstart.yaml",
                          "algo.advantag=grpo"], capture_output=True, text=True)
    assert bad.returncode == 2 and "Did you mean 'advantage'" in bad.stderr
