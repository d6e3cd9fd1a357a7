"""Fixtures: a real inferd on a private socket and segment, stopped with SIGTERM after."""

import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
# For export_policy.py. The client, inferd_client, is not here: it is the package installed
# from inferd/python (tests/python/run.sh), tested as robots get it.
sys.path.insert(0, str(ROOT / "scripts"))

PATIENCE_SECONDS = 20


class Daemon:
    def __init__(self, tmp_path, args):
        self.socket = str(tmp_path / "inferd.sock")
        self.segment = f"inferd-py-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self.log = tmp_path / "inferd.log"
        binary = os.environ.get("INFERD_BIN", str(ROOT / "target/debug/inferd"))
        with open(self.log, "wb") as log:
            self.process = subprocess.Popen(
                [binary, "--socket", self.socket, "--segment-name", self.segment, *args],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=log,
            )
        deadline = time.monotonic() + PATIENCE_SECONDS
        while not self._accepts():
            if self.process.poll() is not None:
                raise RuntimeError(f"inferd exited {self.process.returncode}:\n{self.log.read_text()}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"inferd did not start:\n{self.log.read_text()}")
            time.sleep(0.02)

    def _accepts(self):
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            try:
                s.connect(self.socket)
                return True
            except OSError:
                return False

    def stop(self):
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        code = self.process.wait(timeout=PATIENCE_SECONDS)
        try:
            os.remove(f"/dev/shm/{self.segment}")
        except FileNotFoundError:
            pass
        return code


@pytest.fixture
def start_inferd(tmp_path):
    """Starts inferd with extra arguments; every daemon is drained at the test's end and
    must exit 0."""
    daemons = []

    def start(*args):
        path = tmp_path / f"d{len(daemons)}"
        path.mkdir()
        d = Daemon(path, [str(a) for a in args])
        daemons.append(d)
        return d

    yield start
    codes = [d.stop() for d in daemons]
    assert codes == [0] * len(daemons), "inferd did not exit 0 after SIGTERM"
