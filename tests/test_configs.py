"""Every shipped config loads, validates and starts with its purpose / command / result header."""
import glob
import os

import pytest

from agentrl.config import load_config
from agentrl.trainer import validate

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = sorted(glob.glob(os.path.join(ROOT, "configs", "*.yaml")))


@pytest.mark.parametrize("path", CONFIGS, ids=os.path.basename)
def test_config_loads_and_validates(path):
    validate(load_config(path))
    head = open(path).read().splitlines()[:6]
    assert head[0].startswith("# ")
    assert any(line.startswith("# Command:") for line in head)
    assert any(line.startswith("# Result:") for line in head)
