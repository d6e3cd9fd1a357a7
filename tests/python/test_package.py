"""The client as robots get it: the package built from inferd/python and installed with pip
(tests/python/run.sh installs it), not the source tree; its version is the workspace's, it
depends on numpy and msgpack only, and its type hints reach a type checker (py.typed)."""

import importlib.metadata
import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import inferd_client

from conftest import ROOT

SOURCE = ROOT / "inferd/python/src/inferd_client"
DIST = "inferd-client"


def test_the_client_is_the_installed_package_not_the_source_tree():
    installed = Path(inferd_client.__file__).resolve()
    assert not installed.is_relative_to(ROOT), f"inferd_client imported from the repository: {installed}"
    dist = importlib.metadata.distribution(DIST)
    files = {str(f) for f in dist.files or []}
    assert {"inferd_client/__init__.py", "inferd_client/__main__.py", "inferd_client/py.typed"} <= files, files
    assert (installed.parent / "py.typed").is_file()
    # What is tested is what is in the repository (run.sh reinstalls when they differ).
    for source in SOURCE.glob("*.py"):
        assert (installed.parent / source.name).read_bytes() == source.read_bytes(), f"stale {source.name}"


def test_the_package_version_is_the_workspace_version():
    workspace = tomllib.loads((ROOT / "Cargo.toml").read_text())["workspace"]["package"]["version"]
    assert importlib.metadata.version(DIST) == workspace
    assert inferd_client.__version__ == workspace


def test_the_package_depends_on_numpy_and_msgpack_only():
    requires = importlib.metadata.requires(DIST) or []
    names = {re.match(r"[A-Za-z0-9_.-]+", r)[0].lower() for r in requires}
    assert names == {"numpy", "msgpack"}, requires
    declared = tomllib.loads((ROOT / "inferd/python/pyproject.toml").read_text())["project"]["dependencies"]
    assert sorted(declared) == sorted(requires)


def test_the_openpi_policy_interface_is_offered():
    for name in ("infer", "reset", "get_server_metadata"):
        assert callable(getattr(inferd_client.InferdClient, name, None)), name


def mypy(cwd, *args):
    return subprocess.run([sys.executable, "-m", "mypy", "--no-incremental", "--cache-dir", os.devnull, *args],
                          cwd=cwd, capture_output=True, text=True, timeout=300)


def test_the_package_passes_mypy_strict():
    out = mypy(ROOT / "inferd/python")  # [tool.mypy] in its pyproject: strict, src/inferd_client
    assert out.returncode == 0, out.stdout + out.stderr
    assert "Success" in out.stdout, out.stdout


ROBOT = '''
import numpy as np
import numpy.typing as npt
from inferd_client import InferdClient

def step(client: InferdClient) -> None:
    actions: npt.NDArray[np.float32] = client.infer(np.zeros(48, np.float32))
    outputs: dict[str, npt.NDArray[np.float32]] = client.infer({"obs": actions})
    wrong: str = client.infer({"obs": actions})
'''


def test_a_robots_type_checker_sees_the_installed_clients_hints(tmp_path):
    """A robot's own code checked with mypy --strict against the installed package: the one
    wrong line, an outputs dict assigned to a str, is the only error. Without py.typed mypy
    would refuse the import instead ("missing library stubs or py.typed marker")."""
    (tmp_path / "robot.py").write_text(ROBOT)
    out = mypy(tmp_path, "--strict", "robot.py")
    errors = [line for line in out.stdout.splitlines() if ": error:" in line]
    assert len(errors) == 1, out.stdout + out.stderr
    assert "robot.py:9:" in errors[0] and "dict[str" in errors[0] and '"str"' in errors[0], errors
