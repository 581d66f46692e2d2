import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory):
    """A tiny local model + tokenizer, built once per test session (no downloads)."""
    from agentrl.models import init_model

    return init_model("tiny", str(tmp_path_factory.mktemp("models") / "tiny"), seed=0)


@pytest.fixture(scope="session")
def tiny(tiny_dir):
    from agentrl.models import load_model

    return load_model(tiny_dir)


@pytest.fixture(scope="session")
def tokenizer(tiny):
    return tiny[1]
