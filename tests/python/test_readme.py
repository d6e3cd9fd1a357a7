"""README's Python robot example runs, unchanged, against a real daemon on its default socket."""

import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def readme_example():
    text = (ROOT / "README.md").read_text()
    match = re.search(r"## A robot in Python.*?```python\n(.*?)```", text, re.S)
    assert match, "README has no Python robot example"
    return match.group(1)


def test_readme_robot_example_runs(start_inferd):
    daemon = start_inferd()
    code = readme_example()
    assert len(code.strip().splitlines()) <= 12, "the README example should stay about 10 lines"
    env = dict(os.environ, XDG_RUNTIME_DIR=str(Path(daemon.socket).parent))
    env.pop("RUNTIME_DIRECTORY", None)
    env.pop("INVOCATION_ID", None)
    # The client is the installed package (pip install ./inferd/python), as README says:
    # nothing on the path, and run from a directory with no inferd_client of its own.
    env.pop("PYTHONPATH", None)
    out = subprocess.run([sys.executable, "-c", code], env=env, cwd=Path(daemon.socket).parent,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "obs" in out.stdout and "48" in out.stdout, out.stdout
