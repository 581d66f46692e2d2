"""Import rule (DESIGN.md §2): agentrl.algos pulls in nothing heavier than numpy and torch."""
from __future__ import annotations

import subprocess
import sys

HEAVY = ("vllm", "transformers", "ray", "wandb")


def test_import_agentrl_algos_stays_light():
    code = (
        "import agentrl.algos, sys; "
        f"print(','.join(m for m in {HEAVY!r} if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "", f"heavy modules imported: {out.stdout.strip()}"
