"""The README's 'write your own environment' example runs as printed (and stays <= 30 lines)."""
import os
import re
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_readme_env_example_runs(tmp_path):
    text = open(os.path.join(ROOT, "README.md")).read()
    section = text.split("## Write your own environment", 1)[1]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    assert len(code.strip().splitlines()) <= 30
    script = tmp_path / "example.py"
    script.write_text(code)
    r = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "all checks passed" in r.stdout


def test_readme_starts_with_the_two_commands():
    text = open(os.path.join(ROOT, "README.md")).read()
    head = text[:1500]
    assert "make demo" in head and "make test" in head
