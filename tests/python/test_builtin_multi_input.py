"""The built-in format with several named inputs and a chunked output, against NumPy.

A policy is exported by scripts/export_policy.py from NumPy weights: a uint8 image scaled by
1/255 and a float32 state in, an action chunk [10, 7] out. inferd serves it on the cpu backend
and its answers are compared with the same network computed here in NumPy. The protocol is
spoken directly (a 4-byte little-endian length, then a msgpack map), independent of the
Python client.
"""

import json
import socket
import struct
import subprocess
import sys

import msgpack
import numpy as np
import pytest

from conftest import ROOT

IMAGE = (8, 8, 3)
STATE = 8
H, A = 10, 7
PIXEL_SCALE = 1 / 255
FEATURES = int(np.prod(IMAGE)) + STATE
HIDDEN = 64
OBS_EPS = 0.01
ACTION_SCALE = 0.5
CLIP = 0.3
INPUTS = [
    {"name": "image", "dtype": "|u1", "shape": list(IMAGE), "scale": PIXEL_SCALE},
    {"name": "state", "dtype": "<f4", "shape": [STATE]},
]


def weights(seed):
    """An nn.Sequential(Linear, Tanh, Linear)'s state dict, and an rsl_rl-style normalizer."""
    rng = np.random.default_rng(seed)
    f32 = np.float32
    return {
        "0.weight": rng.uniform(-1, 1, (HIDDEN, FEATURES)).astype(f32) / np.sqrt(FEATURES),
        "0.bias": rng.uniform(-0.5, 0.5, HIDDEN).astype(f32),
        "2.weight": rng.uniform(-1, 1, (H * A, HIDDEN)).astype(f32) / np.sqrt(HIDDEN),
        "2.bias": rng.uniform(-0.5, 0.5, H * A).astype(f32),
        "norm._mean": rng.normal(0, 0.1, (1, FEATURES)).astype(f32),
        "norm._std": rng.uniform(0.5, 1.5, (1, FEATURES)).astype(f32),
    }


def reference(sd, image, state):
    """The network in NumPy float64: features, normalization, tanh MLP, scale, clip, chunk."""
    x = np.concatenate([image.reshape(-1).astype(np.float64) * np.float32(PIXEL_SCALE),
                        state.astype(np.float64)])
    x = (x - sd["norm._mean"][0]) / (sd["norm._std"][0].astype(np.float64) + np.float32(OBS_EPS))
    h = np.tanh(sd["0.weight"] @ x + sd["0.bias"])
    y = (sd["2.weight"] @ h + sd["2.bias"]) * ACTION_SCALE
    return np.clip(y, -CLIP, CLIP).reshape(H, A)


def export_cli(tmp_path, sd, *extra):
    """Runs scripts/export_policy.py as a user would; returns the policy file's path."""
    np.savez(tmp_path / "weights.npz", **sd)
    out = tmp_path / "chunk.safetensors"
    subprocess.run(
        [sys.executable, str(ROOT / "scripts/export_policy.py"), str(tmp_path / "weights.npz"),
         str(out), "--activation", "tanh", "--obs-normalizer", "norm", "--obs-eps", str(OBS_EPS),
         "--action-scale", str(ACTION_SCALE), "--action-clip", str(CLIP), "--name", "py-chunk",
         "--inputs", json.dumps(INPUTS), "--output-shape", f"{H},{A}", *extra],
        check=True, capture_output=True, text=True,
    )
    return out


def observation(rng):
    return (rng.integers(0, 256, IMAGE, dtype=np.uint8),
            rng.normal(0, 1, STATE).astype(np.float32))


def ndarray(a):
    """msgpack-numpy's encoding of an array, as openpi writes it (bin keys)."""
    a = np.ascontiguousarray(a)
    return {b"__ndarray__": True, b"data": a.tobytes(), b"dtype": a.dtype.str,
            b"shape": list(a.shape)}


def from_ndarray(m):
    return np.frombuffer(m[b"data"], dtype=np.dtype(m[b"dtype"])).reshape(m[b"shape"])


class Wire:
    """One connection speaking inferd's framing directly."""

    def __init__(self, path):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(20)
        self.sock.connect(path)
        self.metadata = self.recv()
        assert self.metadata["type"] == "metadata", self.metadata

    def send(self, message):
        body = msgpack.packb(message, use_bin_type=True)
        self.sock.sendall(struct.pack("<I", len(body)) + body)

    def _exactly(self, n):
        chunks = []
        while n:
            chunk = self.sock.recv(n)
            assert chunk, "inferd closed the connection"
            chunks.append(chunk)
            n -= len(chunk)
        return b"".join(chunks)

    def recv(self):
        (n,) = struct.unpack("<I", self._exactly(4))
        return msgpack.unpackb(self._exactly(n), raw=False)

    def infer(self, id, inputs):
        self.send({"type": "infer", "id": id, "inputs": inputs})
        answer = self.recv()
        assert answer["id"] == id, answer
        return answer

    def close(self):
        self.sock.close()


@pytest.fixture
def served(start_inferd, tmp_path):
    sd = weights(3)
    d = start_inferd("--model", export_cli(tmp_path, sd), "--backend", "cpu",
                     "--max-batch-size", "4")
    wire = Wire(d.socket)
    yield sd, wire
    wire.close()


def test_builtin_multi_input_chunk_matches_numpy_reference(served):
    sd, wire = served
    meta = wire.metadata
    assert [(s["name"], s["dtype"], s["shape"]) for s in meta["inputs"]] == [
        ("image", "|u1", [8, 8, 3]), ("state", "<f4", [8])]
    assert [(s["name"], s["shape"]) for s in meta["outputs"]] == [("actions", [H, A])]
    assert meta["action_output"] == "actions"
    assert len(meta["action_limits"]["low"]) == A
    rng = np.random.default_rng(5)
    for id in range(3):
        image, state = observation(rng)
        answer = wire.infer(id, {"image": ndarray(image), "state": ndarray(state)})
        assert answer["type"] == "result", answer
        got = from_ndarray(answer["outputs"]["actions"])
        want = reference(sd, image, state)
        assert got.shape == (H, A) and got.dtype == np.float32
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
        # Neither all clipped nor none: both the clip and the network are seen.
        clipped = np.isclose(np.abs(want), CLIP).sum()
        assert 0 < clipped < H * A, clipped


def test_builtin_multi_input_batch_matches_numpy_row_by_row(served):
    sd, wire = served
    rng = np.random.default_rng(8)
    obs = [observation(rng) for _ in range(3)]
    images = np.stack([i for i, _ in obs])
    states = np.stack([s for _, s in obs])
    answer = wire.infer(7, {"image": ndarray(images), "state": ndarray(states)})
    got = from_ndarray(answer["outputs"]["actions"])
    assert got.shape == (3, H, A)
    for row, (image, state) in enumerate(obs):
        np.testing.assert_allclose(got[row], reference(sd, image, state), rtol=1e-5, atol=1e-5)
    assert not np.allclose(got[0], got[1])


def test_builtin_multi_input_refuses_a_float_image_by_name_and_serves_on(served):
    sd, wire = served
    image, state = observation(np.random.default_rng(9))
    answer = wire.infer(11, {"image": ndarray(image.astype(np.float32)), "state": ndarray(state)})
    assert answer["type"] == "error" and answer["error"]["code"] == "invalid_input", answer
    assert 'input "image" is "<f4"; expected "|u1"' in answer["error"]["message"], answer
    answer = wire.infer(12, {"image": ndarray(image), "state": ndarray(state)})
    np.testing.assert_allclose(from_ndarray(answer["outputs"]["actions"]),
                               reference(sd, image, state), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("inputs, output_shape, message", [
    ([{"name": "prompt", "dtype": "str"}], None, "is text; the built-in format takes numeric"),
    ([{"name": "image", "dtype": "|u1", "shape": [8, 8, 3]}], None,
     "give 192 values per observation, but the first layer takes 200"),
    ([{"name": "state", "dtype": "<f8", "shape": [200]}], None, "dtype '<f8' is none of"),
    (INPUTS, [10, 8], "output shape [10, 8] holds 80 values, but the last layer gives 70"),
    (INPUTS, [2, 5, 7], "must be [A] or [H, A]"),
])
def test_export_refuses_a_bad_multi_input_policy_by_name(tmp_path, inputs, output_shape, message):
    from export_policy import export

    sd = weights(1)
    layers = [(sd["0.weight"], sd["0.bias"]), (sd["2.weight"], sd["2.bias"])]
    with pytest.raises(ValueError) as e:
        export(layers, tmp_path / "p.safetensors", inputs=inputs, output_shape=output_shape)
    assert message in str(e.value)
    assert not (tmp_path / "p.safetensors").exists()


def test_export_multi_input_metadata_is_version_2_and_a_vector_policy_stays_version_1(tmp_path):
    from export_policy import export

    sd = weights(2)
    layers = [(sd["0.weight"], sd["0.bias"]), (sd["2.weight"], sd["2.bias"])]

    def metadata(path):
        raw = path.read_bytes()
        (n,) = struct.unpack("<Q", raw[:8])
        header = json.loads(raw[8:8 + n])
        return header["__metadata__"], header

    export(layers, tmp_path / "multi.safetensors", inputs=INPUTS, output_shape=(H, A),
           action_scale=np.arange(A), action_low=-1, action_high=1)
    meta, header = metadata(tmp_path / "multi.safetensors")
    assert meta["format_version"] == "2" and "input_name" not in meta
    assert json.loads(meta["inputs"]) == INPUTS
    assert json.loads(meta["output_shape"]) == [H, A]
    # A per-step scale is written for every output, the limits per action value of a step.
    assert header["action_scale"]["shape"] == [H * A]
    assert header["action_low"]["shape"] == [A]
    export(layers, tmp_path / "vector.safetensors")
    meta, _ = metadata(tmp_path / "vector.safetensors")
    assert (meta["format_version"], meta["input_name"]) == ("1", "obs")
    assert "inputs" not in meta and "output_shape" not in meta
