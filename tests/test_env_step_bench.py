"""benchmarks/env_step.py: a measured row for a registered env, a 'skipped' row (with the reason) for one that
cannot start, and the markdown table format."""
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_env_step_table_ok_and_skipped_rows():
    cmd = [sys.executable, "benchmarks/env_step.py", "--seconds", "0.2", "--max-episodes", "20",
           "--only", "agentrl/Calculator-v0", "agentrl/Math-v0",
           "--kwargs", '{"agentrl/Math-v0": {"no_such_kwarg": 1}}']
    r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    rows = {ln.split(" | ")[0][2:]: ln.strip(" |").split(" | ") for ln in r.stdout.splitlines()
            if ln.startswith("| agentrl/")}
    assert set(rows) == {"agentrl/Calculator-v0", "agentrl/Math-v0"}
    calc = rows["agentrl/Calculator-v0"]
    assert calc[1] == "ok" and float(calc[5].replace(",", "")) > 0 and calc[8] == "1.00" and 1 <= int(calc[9]) <= 20
    assert rows["agentrl/Math-v0"][1].startswith("skipped: TypeError") and "no_such_kwarg" in rows["agentrl/Math-v0"][1]
    assert "| env | status |" in r.stdout and "load average" in r.stdout
