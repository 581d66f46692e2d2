"""envs/ and tools/ install as agentrl.envs and agentrl.tools, in editable and wheel installs."""
import os
import subprocess
import sys
import zipfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_editable_install_maps_envs_and_tools():
    import agentrl.envs
    import agentrl.tools

    assert os.path.samefile(os.path.dirname(agentrl.envs.__file__), os.path.join(ROOT, "envs"))
    assert os.path.samefile(os.path.dirname(agentrl.tools.__file__), os.path.join(ROOT, "tools"))


def test_wheel_contains_envs_and_tools_under_agentrl(tmp_path):
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                    str(tmp_path), ROOT], check=True)
    wheel = next(p for p in os.listdir(tmp_path) if p.endswith(".whl"))
    names = zipfile.ZipFile(tmp_path / wheel).namelist()
    assert "agentrl/envs/calculator.py" in names and "agentrl/tools/calculator.py" in names
    assert not any(n.startswith(("envs/", "tools/")) for n in names)  # nothing generic in site-packages
