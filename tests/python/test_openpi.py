"""openpi robots against inferd's websocket listener (`--openpi-listen`), through the real
`openpi-client` from PyPI (scripts/setup-openpi.sh installs it into a venv of its own, and
tests/python/run.sh runs this file with that venv's Python).

What a robot sees is checked against something that does not go through the listener: the
Unix socket's answer for the same observation, spoken here directly (test_builtin_multi_input's
`Wire`), a NumPy forward pass of a built-in policy, or, for the tiny VLA, PyTorch's own eager
output (INFERD_TORCH_BIN: an inferd built with the torch feature; scripts/test-torch.sh sets it).
Counts are read back from the metrics segment with the binaries built next to inferd: the
exporter's `inferd_requests_total` and shmdump's batch-size histogram.
"""

import faulthandler
import json
import os
import re
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import websockets.exceptions
from openpi_client.websocket_client_policy import WebsocketClientPolicy

from conftest import PATIENCE_SECONDS, ROOT
from test_builtin_multi_input import (A, H, Wire, export_cli, from_ndarray, ndarray, observation,
                                      reference, weights)

# openpi's client waits forever for an answer; a test that hangs is stopped and fails instead,
# with every thread's stack on stderr.
WATCHDOG_SECONDS = 180
OPENPI_PREFIX = "Error in inference server:\n"
DEMO_OBS = 48
# openpi-client 0.1.2 calls websockets' sync connect() outside a `with`, which websockets 14+
# warns about on every client: its code, not inferd's.
pytestmark = pytest.mark.filterwarnings("ignore:connect\\(\\) must be used as a context manager")


@pytest.fixture(autouse=True)
def watchdog():
    faulthandler.dump_traceback_later(WATCHDOG_SECONDS, exit=True)
    yield
    faulthandler.cancel_dump_traceback_later()


def binary():
    return Path(os.environ.get("INFERD_BIN", str(ROOT / "target/debug/inferd")))


def sibling(name):
    """A binary built next to inferd (cargo build --workspace puts them together)."""
    path = binary().parent / name
    assert path.exists(), f"no {name} next to {binary()}: build the workspace (cargo build --workspace)"
    return str(path)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def healthz(port):
    """(status, body) of GET /healthz; (None, error) while nothing answers."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()
    except (urllib.error.URLError, ConnectionError, socket.timeout) as e:
        return None, str(e)


def start_openpi(start_inferd, *args, bind=None, port=None):
    """inferd with `--openpi-listen` on a free port (a port alone: loopback; else on `bind`),
    once /healthz answers on 127.0.0.1; returns (daemon, port)."""
    port = port or free_port()
    d = start_inferd("--openpi-listen", f"{bind}:{port}" if bind else port, *args)
    deadline = time.monotonic() + PATIENCE_SECONDS
    while healthz(port)[0] != 200:
        assert d.process.poll() is None, f"inferd exited:\n{d.log.read_text()}"
        assert time.monotonic() < deadline, f"/healthz never answered 200:\n{d.log.read_text()}"
        time.sleep(0.05)
    return d, port


def client(port, api_key=None):
    return WebsocketClientPolicy("127.0.0.1", port, api_key=api_key)


def server_error(excinfo):
    """The text inferd sent, from the RuntimeError openpi's client raised for it."""
    text = str(excinfo.value)
    assert text.startswith(OPENPI_PREFIX), text
    return text[len(OPENPI_PREFIX):]


def requests_total(d):
    """The nonzero `inferd_requests_total` of the daemon's segment, {(robot_type, status): n},
    from one exporter page."""
    page = subprocess.run(
        [sibling("exporter"), "--once", "--segment", d.segment, "--nvml-interval-ms", "10"],
        capture_output=True, text=True, timeout=PATIENCE_SECONDS, check=True,
    ).stdout
    counts = Counter()
    for labels, value in re.findall(r"^inferd_requests_total\{(.*)\} (\S+)$", page, re.M):
        labels = dict(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', labels))
        if float(value):
            counts[(labels["robot_type"], labels["status"])] += int(float(value))
    return dict(counts)


def shmdump(d):
    """shmdump's tables of the daemon's segment."""
    return subprocess.run([sibling("shmdump"), "--name", d.segment], capture_output=True,
                          text=True, timeout=PATIENCE_SECONDS, check=True).stdout


def batch_sizes(d):
    """(batches, mean batch size) of the segment's batch_size histogram, from shmdump's table."""
    text = shmdump(d)
    for line in text.splitlines():
        fields = line.split()
        if len(fields) >= 4 and fields[1] == "batch_size":
            return int(fields[2]), float(fields[3])
    return 0, 0.0


def gauge(d, name):
    """A process-wide gauge or counter of the segment (`connections`, `protocol_errors`), from
    shmdump's first lines."""
    text = shmdump(d)
    found = re.search(rf"\b{name} (\d+)", text)
    assert found, text
    return int(found[1])


def open_connections(d):
    return gauge(d, "connections")


def settled(read, want):
    """`read()` once it equals `want`, or its last value after a few seconds: the ledger
    records a request as its answer leaves, which may be a moment after the client has it."""
    deadline = time.monotonic() + 5
    got = read()
    while got != want and time.monotonic() < deadline:
        time.sleep(0.05)
        got = read()
    return got


def chunk_policy(start_inferd, tmp_path, *args):
    """The built-in multi-input policy of test_builtin_multi_input (image + state in, [10, 7]
    out), served with the listener; returns (state dict, daemon, port)."""
    sd = weights(3)
    d, port = start_openpi(start_inferd, "--model", export_cli(tmp_path, sd), "--backend", "cpu", *args)
    return sd, d, port


def test_openpi_demo_answers_as_the_unix_socket(start_inferd):
    d, port = start_openpi(start_inferd, "--backend", "cpu")
    robot = client(port)
    meta = robot.get_server_metadata()
    assert meta["type"] == "metadata" and meta["model"]["name"] == "demo-mlp", meta
    assert meta["inputs"] == [{"name": "obs", "dtype": "<f4", "shape": [DEMO_OBS]}], meta
    assert [(o["name"], o["shape"]) for o in meta["outputs"]] == [("actions", [12])]
    wire = Wire(d.socket)
    rng = np.random.default_rng(1)
    answers = []
    for i in range(3):
        obs = rng.normal(0, 1.5, DEMO_OBS).astype(np.float32)
        answer = robot.infer({"obs": obs})
        want = from_ndarray(wire.infer(i, {"obs": ndarray(obs)})["outputs"]["actions"])
        assert sorted(answer) == ["actions", "server_timing"], answer
        assert answer["actions"].dtype == np.float32 and answer["actions"].shape == (12,)
        np.testing.assert_array_equal(answer["actions"], want)
        timing = answer["server_timing"]
        assert {"infer_ms", "queue_ms", "compute_ms"} <= set(timing), timing
        assert 0 < timing["compute_ms"] <= timing["infer_ms"], timing
        # openpi sends the previous request's total from the connection's second answer on.
        assert ("prev_total_ms" in timing) == (i > 0), timing
        answers.append(answer["actions"])
    wire.close()
    assert not np.allclose(answers[0], answers[1]), "different observations, different actions"


def test_openpi_multi_input_chunk_matches_numpy(start_inferd, tmp_path):
    sd, d, port = chunk_policy(start_inferd, tmp_path)
    robot = client(port)
    meta = robot.get_server_metadata()
    assert [(s["name"], s["dtype"], s["shape"]) for s in meta["inputs"]] == [
        ("image", "|u1", [8, 8, 3]), ("state", "<f4", [8])]
    rng = np.random.default_rng(5)
    for _ in range(3):
        image, state = observation(rng)
        actions = robot.infer({"image": image, "state": state})["actions"]
        assert actions.shape == (H, A) and actions.dtype == np.float32
        np.testing.assert_allclose(actions, reference(sd, image, state), rtol=1e-5, atol=1e-5)


def test_inferd_client_drops_into_openpis_action_chunk_broker(start_inferd, tmp_path):
    """openpi robot code, unchanged, around the installed inferd_client instead of
    WebsocketClientPolicy: ActionChunkBroker hands out a chunk's rows one per step and asks its
    policy again only when the chunk is spent (or after reset()), over the Unix socket. Each
    chunk is the one the listener gives openpi's own client for the same observation."""
    from openpi_client.action_chunk_broker import ActionChunkBroker
    from openpi_client.base_policy import BasePolicy

    import inferd_client

    assert not Path(inferd_client.__file__).resolve().is_relative_to(ROOT), inferd_client.__file__
    sd, d, port = chunk_policy(start_inferd, tmp_path)
    policy = inferd_client.InferdClient(d.socket, robot_type="broker")
    assert isinstance(policy, BasePolicy)
    assert policy.get_server_metadata()["outputs"][0]["shape"] == [H, A]
    broker = ActionChunkBroker(policy, action_horizon=H)
    websocket = client(port)
    rng = np.random.default_rng(9)
    chunks = 0
    for steps in (H, H, 3):  # two whole chunks, then a reset three steps into the third
        obs = dict(zip(("image", "state"), observation(rng)))
        want = websocket.infer(obs)["actions"]
        np.testing.assert_allclose(want, reference(sd, obs["image"], obs["state"]), rtol=1e-5, atol=1e-5)
        chunks += 1
        for step in range(steps):
            # Only a chunk's first step is this observation's: later ones must not be sent.
            seen = obs if step == 0 else dict(zip(("image", "state"), observation(rng)))
            row = broker.infer(seen)["actions"]
            assert row.shape == (A,) and row.dtype == np.float32
            np.testing.assert_array_equal(row, want[step], err_msg=f"chunk {chunks}, step {step}")
    broker.reset()
    obs = dict(zip(("image", "state"), observation(rng)))
    np.testing.assert_array_equal(broker.infer(obs)["actions"], websocket.infer(obs)["actions"][0])
    chunks += 1
    policy.close()
    want = {("broker", "ok"): chunks, ("openpi", "ok"): chunks}
    assert settled(lambda: requests_total(d), want) == want


ROBOTS = 8
ROUNDS = 5


def test_openpi_eight_clients_are_batched_and_each_gets_its_own_answers(start_inferd, tmp_path):
    sd, d, port = chunk_policy(start_inferd, tmp_path, "--workers", "1", "--max-batch-size",
                               ROBOTS, "--max-queue-delay-us", 50_000)
    robots = [client(port) for _ in range(ROBOTS)]
    # All send at once each round, so that the 50 ms a batch may wait gathers several.
    start = threading.Barrier(ROBOTS, timeout=60)
    failures = []

    def robot(i):
        try:
            rng = np.random.default_rng(100 + i)
            for _ in range(ROUNDS):
                image, state = observation(rng)
                start.wait()
                actions = robots[i].infer({"image": image, "state": state})["actions"]
                np.testing.assert_allclose(actions, reference(sd, image, state), rtol=1e-5,
                                           atol=1e-5, err_msg=f"robot {i}")
        except BaseException as e:  # noqa: BLE001  (reported below, by robot)
            failures.append(f"robot {i}: {e!r}")
            start.abort()

    threads = [threading.Thread(target=robot, args=(i,)) for i in range(ROBOTS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not failures, failures
    total = ROBOTS * ROUNDS
    assert settled(lambda: requests_total(d), {("openpi", "ok"): total}) == {("openpi", "ok"): total}
    batches, mean = batch_sizes(d)
    assert mean > 1 and batches < total, f"{batches} batches of mean {mean} for {total} requests"


def test_openpi_and_unix_socket_requests_share_a_batch(start_inferd, tmp_path):
    sd, d, port = chunk_policy(start_inferd, tmp_path, "--workers", "1", "--max-batch-size", 2,
                               "--max-queue-delay-us", 500_000)
    robot, wire = client(port), Wire(d.socket)
    start = threading.Barrier(2, timeout=60)
    rng = np.random.default_rng(11)
    obs = [[observation(rng) for _ in range(2)] for _ in range(ROUNDS)]
    seen = []

    def openpi_side():
        for (image, state), _ in obs:
            start.wait()
            seen.append(robot.infer({"image": image, "state": state})["actions"])

    thread = threading.Thread(target=openpi_side)
    thread.start()
    for round, (_, (image, state)) in enumerate(obs):
        start.wait()
        answer = wire.infer(round, {"image": ndarray(image), "state": ndarray(state)})
        got = from_ndarray(answer["outputs"]["actions"])
        np.testing.assert_allclose(got, reference(sd, image, state), rtol=1e-5, atol=1e-5)
    thread.join()
    wire.close()
    for ((image, state), _), actions in zip(obs, seen):
        np.testing.assert_allclose(actions, reference(sd, image, state), rtol=1e-5, atol=1e-5)
    assert len(seen) == ROUNDS
    # Only a batch holding a request from each side has 2 rows: every batch had both.
    assert settled(lambda: batch_sizes(d), (ROUNDS, 2.0)) == (ROUNDS, 2.0)
    assert requests_total(d) == {("openpi", "ok"): ROUNDS, ("unknown", "ok"): ROUNDS}


BAD_OBSERVATIONS = {
    "missing": (lambda image, state: {"image": image}, "state"),
    "dtype": (lambda image, state: {"image": image.astype(np.float32), "state": state}, "image"),
    "shape": (lambda image, state: {"image": image, "state": state[:5]}, "state"),
}


@pytest.mark.parametrize("bad", sorted(BAD_OBSERVATIONS))
def test_openpi_bad_observation_raises_as_openpi_reports_and_is_served_on(start_inferd, tmp_path, bad):
    sd, d, port = chunk_policy(start_inferd, tmp_path)
    robot = client(port)
    image, state = observation(np.random.default_rng(9))
    make, name = BAD_OBSERVATIONS[bad]
    with pytest.raises(RuntimeError) as e:
        robot.infer(make(image, state))
    text = server_error(e)
    assert text.startswith("invalid_input: ") and name in text, text
    actions = robot.infer({"image": image, "state": state})["actions"]
    np.testing.assert_allclose(actions, reference(sd, image, state), rtol=1e-5, atol=1e-5)


def test_openpi_a_message_over_the_frame_limit_closes_after_the_error_text(start_inferd):
    d, port = start_openpi(start_inferd, "--backend", "cpu")
    robot = client(port)
    limit = robot.get_server_metadata()["max_frame_bytes"]
    with pytest.raises(RuntimeError) as e:
        robot.infer({"obs": np.zeros(limit // 4 + 1, np.float32)})
    assert server_error(e), "the error says what happened"
    with pytest.raises(websockets.exceptions.ConnectionClosed) as closed:
        robot.infer({"obs": np.zeros(DEMO_OBS, np.float32)})
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 1009, closed.value
    # The daemon serves on, a new connection too.
    assert client(port).infer({"obs": np.zeros(DEMO_OBS, np.float32)})["actions"].shape == (12,)


ROBOT_THAT_EXITS = """
import sys
import numpy as np
from openpi_client.websocket_client_policy import WebsocketClientPolicy
robot = WebsocketClientPolicy("127.0.0.1", int(sys.argv[1]))
robot.infer({"obs": np.zeros(48, np.float32)})
"""


def test_openpi_a_robot_that_exits_without_closing_is_no_protocol_error(start_inferd):
    d, port = start_openpi(start_inferd, "--backend", "cpu")
    # openpi's client has no close(): a robot's connection ends with its process, without a
    # close frame. That is how every openpi robot leaves, not a protocol error.
    subprocess.run([sys.executable, "-W", "ignore", "-c", ROBOT_THAT_EXITS, str(port)],
                   check=True, timeout=PATIENCE_SECONDS)
    assert settled(lambda: open_connections(d), 0) == 0
    assert gauge(d, "protocol_errors") == 0, d.log.read_text()
    assert "WARN" not in d.log.read_text(), d.log.read_text()
    assert requests_total(d) == {("openpi", "ok"): 1}


def test_openpi_healthz_answers_ok_while_serving(start_inferd):
    d, port = start_openpi(start_inferd, "--backend", "cpu")
    assert healthz(port) == (200, "OK\n")
    d.stop()
    assert healthz(port)[0] != 200


def test_openpi_api_key_is_enforced_when_configured(start_inferd):
    d, port = start_openpi(start_inferd, "--backend", "cpu", "--openpi-api-key", "k=franka")
    # A load balancer's probe carries no key.
    assert healthz(port) == (200, "OK\n")
    for key in (None, "wrong"):
        with pytest.raises(websockets.exceptions.InvalidStatus) as e:
            client(port, api_key=key)
        assert e.value.response.status_code == 401, (key, e.value)
    robot = client(port, api_key="k")
    assert robot.infer({"obs": np.zeros(DEMO_OBS, np.float32)})["actions"].shape == (12,)
    assert settled(lambda: requests_total(d), {("franka", "ok"): 1}) == {("franka", "ok"): 1}


def test_openpi_non_loopback_listen_without_a_key_is_refused(tmp_path, start_inferd):
    port = free_port()
    segment = f"inferd-py-refused-{os.getpid()}"
    run = subprocess.run(
        [str(binary()), "--socket", str(tmp_path / "refused.sock"), "--segment-name", segment,
         "--openpi-listen", f"0.0.0.0:{port}"],
        capture_output=True, text=True, timeout=PATIENCE_SECONDS, stdin=subprocess.DEVNULL,
    )
    assert run.returncode == 78, (run.returncode, run.stderr)
    # One line that says why and what to do.
    lines = run.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("inferd: "), run.stderr
    assert (f"--openpi-listen 0.0.0.0:{port} is not a loopback address and no --openpi-api-key "
            "is configured: ") in lines[0], run.stderr
    assert "--openpi-api-key KEY" in lines[0] and "127.0.0.1" in lines[0], run.stderr
    assert not os.path.exists(f"/dev/shm/{segment}")
    # With a key the same address is taken, and served on loopback too.
    d, port = start_openpi(start_inferd, "--backend", "cpu", "--openpi-api-key", "k",
                           bind="0.0.0.0", port=port)
    assert client(port, api_key="k").infer({"obs": np.zeros(DEMO_OBS, np.float32)})["actions"].shape == (12,)


def test_openpi_and_unix_socket_connections_share_max_connections(start_inferd):
    d, port = start_openpi(start_inferd, "--backend", "cpu", "--max-connections", 2)
    # The start's probes (the socket, /healthz) hold slots until inferd sees them closed.
    assert settled(lambda: open_connections(d), 0) == 0
    wire = Wire(d.socket)
    robot = client(port)
    with pytest.raises(websockets.exceptions.InvalidStatus) as e:
        client(port)
    assert e.value.response.status_code == 503, e.value
    wire.close()
    assert settled(lambda: open_connections(d), 1) == 1, "the closed Unix connection kept its slot"
    second = client(port)
    for r in (robot, second):
        assert r.infer({"obs": np.zeros(DEMO_OBS, np.float32)})["actions"].shape == (12,)


def test_openpi_counts_equal_requests_total_by_status_and_robot_type(start_inferd):
    d, port = start_openpi(start_inferd, "--backend", "cpu", "--openpi-api-key", "k=franka",
                           "--openpi-api-key", "plain")
    rng = np.random.default_rng(3)
    good = lambda: {"obs": rng.normal(0, 1, DEMO_OBS).astype(np.float32)}  # noqa: E731
    bad = [lambda: {}, lambda: {"obs": np.zeros(DEMO_OBS, np.float64)},
           lambda: {"obs": np.zeros(DEMO_OBS + 1, np.float32)}]
    seen = Counter()
    robots = {"franka": [client(port, api_key="k") for _ in range(2)], "openpi": [client(port, api_key="plain")]}
    # Refused handshakes are no requests.
    with pytest.raises(websockets.exceptions.InvalidStatus):
        client(port, api_key="franka")
    for step in range(30):
        for robot_type, clients in robots.items():
            robot = clients[step % len(clients)]
            if step % 4 == 3:
                with pytest.raises(RuntimeError) as e:
                    robot.infer(bad[step % len(bad)]())
                seen[(robot_type, server_error(e).split(":", 1)[0])] += 1
            else:
                robot.infer(good())
                seen[(robot_type, "ok")] += 1
    assert seen[("franka", "invalid_input")] and seen[("openpi", "ok")], seen
    assert settled(lambda: requests_total(d), dict(seen)) == dict(seen)


TORCH_BIN = os.environ.get("INFERD_TORCH_BIN")
TORCH_PYTHON = os.environ.get("INFERD_TORCH_PYTHON")
IMAGE_SIZE = 32


@pytest.mark.skipif(not TORCH_BIN, reason="INFERD_TORCH_BIN (inferd with the torch feature) is not "
                    "set: scripts/test-torch.sh runs this test")
def test_openpi_tiny_vla_answers_as_pytorch(start_inferd, tmp_path, monkeypatch):
    assert TORCH_PYTHON, "INFERD_TORCH_PYTHON: a Python with PyTorch, to write the model and its reference"
    module, ref = tmp_path / "tiny_vla.pt", tmp_path / "reference.json"
    # PyTorch writes the TorchScript module and what its eager forward gives for each reference
    # observation alone; this venv (numpy<2, no torch) only speaks openpi.
    subprocess.run([TORCH_PYTHON, str(ROOT / "scripts/tiny_vla.py"), str(module), "--image-size",
                    str(IMAGE_SIZE), "--seed", "3", "--reference", str(ref), "--observations", "8"],
                   check=True, timeout=300)
    reference_json = json.loads(ref.read_text())
    monkeypatch.setenv("INFERD_BIN", TORCH_BIN)
    d, port = start_openpi(start_inferd, "--backend", "torch", "--device", "cpu", "--model", module)
    robot = client(port)
    meta = robot.get_server_metadata()
    assert meta["model"]["name"] == "tiny-vla" and meta["model"]["backend"] == "torch", meta
    names = [s["name"] for s in meta["inputs"]]
    assert names == ["observation/exterior_image_1_left", "observation/wrist_image_left",
                     "observation/state", "prompt"], names

    def obs(entry):
        shape = (IMAGE_SIZE, IMAGE_SIZE, 3)
        return {
            names[0]: np.array(entry[names[0]], np.uint8).reshape(shape),
            names[1]: np.array(entry[names[1]], np.uint8).reshape(shape),
            names[2]: np.array(entry[names[2]], np.float32),
            "prompt": entry["prompt"],
        }

    answers = []
    for entry in reference_json["observations"] + [reference_json["variant"]]:
        actions = robot.infer(obs(entry))["actions"]
        assert actions.shape == (10, 7) and actions.dtype == np.float32
        want = np.array(entry["actions"], np.float32).reshape(10, 7)
        np.testing.assert_allclose(actions, want, rtol=1e-5, atol=1e-5, err_msg=entry["prompt"])
        answers.append(actions)
    # The variant is observation 0 under another prompt: the prompt reaches the model.
    assert not np.allclose(answers[0], answers[-1])
    assert not np.allclose(answers[0], answers[1])
