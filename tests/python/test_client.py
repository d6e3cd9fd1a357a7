"""The Python client against the real daemon: numbers checked with an independent numpy
forward pass, openpi's codec, pipelining, error codes, observation dicts, and the bytes of a
multi-input request against the Rust codec's."""

import gc
import math
import socket
import warnings

import msgpack
import numpy as np
import pytest

from export_policy import export, linear_layers
from inferd_client import DTYPES, InferdClient, InferdError, encode_infer, pack_inputs

WIDTHS = [48, 64, 32, 12]


def make_state_dict(rng):
    """An rsl_rl-style actor: Linear layers at even indices of an nn.Sequential."""
    sd = {}
    for i, (n_in, n_out) in enumerate(zip(WIDTHS, WIDTHS[1:])):
        sd[f"actor.{2 * i}.weight"] = rng.normal(0, 1 / math.sqrt(n_in), (n_out, n_in)).astype(np.float32)
        sd[f"actor.{2 * i}.bias"] = rng.normal(0, 0.1, n_out).astype(np.float32)
    sd["critic.0.weight"] = np.zeros((1, 48), np.float32)  # ignored: not the actor
    return sd


ACTIVATIONS = {
    "elu": lambda x: np.where(x > 0, x, np.expm1(np.minimum(x, 0))),
    "relu": lambda x: np.maximum(x, 0),
    "tanh": np.tanh,
    "gelu": lambda x: 0.5 * x * (1 + np.vectorize(math.erf)(x / math.sqrt(2))),
}


def reference(layers, activation, obs, mean, std, eps, scale, low, high):
    """The policy in float64 numpy, independent of inferd's code."""
    x = (obs.astype(np.float64) - mean) / (std + eps)
    for i, (w, b) in enumerate(layers):
        x = x @ w.astype(np.float64).T + b
        if i < len(layers) - 1:
            x = ACTIVATIONS[activation](x)
    return np.clip(x * scale, low, high)


@pytest.mark.parametrize("activation", sorted(ACTIVATIONS))
def test_actions_match_a_numpy_reference(start_inferd, tmp_path, activation):
    rng = np.random.default_rng(7)
    layers = linear_layers(make_state_dict(rng))
    assert [w.shape[0] for w, _ in layers] == WIDTHS[1:]
    mean = rng.normal(0, 0.2, 48).astype(np.float32)
    std = rng.uniform(0.5, 2.0, 48).astype(np.float32)
    eps, scale, clip = 0.01, 0.5, 0.6
    path = tmp_path / f"{activation}.safetensors"
    export(layers, path, activation=activation, obs_mean=mean, obs_std=std, obs_eps=eps,
           action_scale=scale, action_low=-clip, action_high=clip, name="pytest", version="3")
    d = start_inferd("--model", path, "--max-queue-delay-us", "200")
    obs = rng.normal(0, 1.5, (20, 48)).astype(np.float32)
    want = reference(layers, activation, obs, mean, std, eps, scale, -clip, clip)
    with InferdClient(d.socket, robot_type="pytest") as client:
        assert client.metadata["model"]["name"] == "pytest"
        assert client.metadata["model"]["version"] == "3"
        assert client.metadata["action_limits"]["high"] == pytest.approx([clip] * 12)
        one_by_one = np.stack([client.infer(o) for o in obs])
        batched = client.infer(obs)
    assert one_by_one.dtype == np.float32 and one_by_one.shape == (20, 12)
    np.testing.assert_allclose(one_by_one, want, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(batched, want, rtol=1e-5, atol=1e-5)
    assert np.any(np.abs(want) == clip), "the test should exercise clamping"


# openpi's msgpack_numpy codec, restated: bytes keys on both sides.
def openpi_pack(obj):
    if isinstance(obj, np.ndarray):
        return {b"__ndarray__": True, b"data": obj.tobytes(), b"dtype": obj.dtype.str, b"shape": obj.shape}
    return obj


def openpi_unpack(obj):
    if b"__ndarray__" in obj:
        return np.ndarray(buffer=obj[b"data"], dtype=np.dtype(obj[b"dtype"]), shape=obj[b"shape"])
    return obj


def test_a_robot_using_openpis_codec_needs_nothing_else(start_inferd):
    import socket
    import struct

    d = start_inferd()
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(10)
        s.connect(d.socket)
        stream = s.makefile("rb")

        def recv():
            (n,) = struct.unpack("<I", stream.read(4))
            return msgpack.unpackb(stream.read(n), object_hook=openpi_unpack)

        assert recv()["type"] == "metadata"
        body = msgpack.packb({"type": "infer", "id": 1, "inputs": {"obs": np.ones(48, np.float32)}},
                             default=openpi_pack)
        s.sendall(struct.pack("<I", len(body)) + body)
        answer = recv()
    actions = answer["outputs"]["actions"]
    assert isinstance(actions, np.ndarray), "openpi's unpacker must see an ndarray"
    assert actions.shape == (12,) and actions.dtype == np.float32
    assert set(answer["timing"]) == {"queue_us", "compute_us", "total_us"}


def test_pipelined_requests_are_answered_by_id(start_inferd):
    d = start_inferd("--max-queue-delay-us", "1000")
    rng = np.random.default_rng(3)
    obs = rng.normal(size=(30, 48)).astype(np.float32)
    with InferdClient(d.socket) as client:
        expected = {i: client.infer(o) for i, o in enumerate(obs[:5])}
        ids = [client.submit(o) for o in obs]
        answers = {}
        for _ in ids:
            a = client.recv()
            answers[a["id"]] = a["outputs"]["actions"]
    assert sorted(answers) == ids
    for i, actions in expected.items():
        # Batched and single requests take different summation orders: equal to rounding.
        np.testing.assert_allclose(answers[ids[i]], actions, rtol=1e-5, atol=1e-6)


def test_errors_carry_their_documented_codes(start_inferd):
    d = start_inferd()
    with InferdClient(d.socket) as client:
        with pytest.raises(InferdError) as e:
            client.infer(np.zeros(47, np.float32))
        assert e.value.code == "invalid_input" and "[48]" in e.value.message
        with pytest.raises(InferdError) as e:
            client.infer(np.full(48, np.nan, np.float32))
        assert e.value.code == "invalid_input"
        # The client converts to float32 itself, so send float64 by hand.
        client.send({"type": "infer", "id": 99, "inputs": {"obs": np.zeros(48, np.float64)}})
        answer = client.recv()
        assert (answer["id"], answer["error"]["code"]) == (99, "invalid_input")
        assert "<f8" in answer["error"]["message"]
        # The connection is still good.
        assert client.infer(np.zeros(48, np.float32)).shape == (12,)


def test_export_policy_cli_converts_an_rsl_rl_state_dict(start_inferd, tmp_path):
    from export_policy import main as export_main

    rng = np.random.default_rng(11)
    sd = make_state_dict(rng)
    sd["actor_obs_normalizer._mean"] = rng.normal(0, 0.3, (1, 48)).astype(np.float32)
    sd["actor_obs_normalizer._std"] = rng.uniform(0.5, 1.5, (1, 48)).astype(np.float32)
    np.savez(tmp_path / "model.npz", **sd)
    out = tmp_path / "policy.safetensors"
    export_main([str(tmp_path / "model.npz"), str(out), "--activation", "elu",
                 "--obs-normalizer", "actor_obs_normalizer", "--obs-eps", "0.01",
                 "--action-scale", "0.25", "--action-clip", "100", "--name", "rsl"])
    d = start_inferd("--model", out)
    obs = rng.normal(size=48).astype(np.float32)
    layers = linear_layers(sd)
    want = reference(layers, "elu", obs, sd["actor_obs_normalizer._mean"][0],
                     sd["actor_obs_normalizer._std"][0], 0.01, 0.25, -100, 100)
    with InferdClient(d.socket) as client:
        assert client.metadata["model"]["name"] == "rsl"
        np.testing.assert_allclose(client.infer(obs), want, rtol=1e-5, atol=1e-6)


def _connect_error(path):
    """The type and text of what ``InferdClient(path)`` raises, and every ResourceWarning
    raised meanwhile."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ResourceWarning)
        try:
            InferdClient(path)
        except OSError as e:
            # Only these are kept: the exception's tracebacks hold the client and its socket,
            # which must be freed (and warn, if left open) before the warnings are read.
            kind, text = type(e), str(e)
        else:
            pytest.fail(f"InferdClient({path!r}) connected")
        gc.collect()
    return kind, text, [w for w in caught if issubclass(w.category, ResourceWarning)]


def test_a_failed_connect_closes_its_socket_and_names_the_path(tmp_path):
    missing = str(tmp_path / "missing.sock")
    kind, text, leaks = _connect_error(missing)
    assert issubclass(kind, FileNotFoundError), kind
    assert missing in text, text
    assert not leaks, [str(w.message) for w in leaks]

    # A socket file nobody listens on: refused, still the same exception type as before.
    stale = str(tmp_path / "stale.sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.bind(stale)
    kind, text, leaks = _connect_error(stale)
    assert issubclass(kind, ConnectionRefusedError), kind
    assert stale in text, text
    assert not leaks, [str(w.message) for w in leaks]


def test_metadata_gives_max_batch_size(start_inferd):
    d = start_inferd("--max-batch-size", "5")
    with InferdClient(d.socket) as client:
        assert client.metadata["max_batch_size"] == 5
        assert client.infer(np.zeros((5, 48), np.float32)).shape == (5, 12)
        with pytest.raises(InferdError) as e:
            client.infer(np.zeros((6, 48), np.float32))
        assert e.value.code == "invalid_input"


def test_an_observation_dict_gets_the_outputs_dict(start_inferd):
    d = start_inferd("--max-batch-size", "4")
    rng = np.random.default_rng(5)
    obs = rng.normal(size=(3, 48)).astype(np.float32)
    with InferdClient(d.socket) as client:
        meta = client.get_server_metadata()
        assert meta is client.metadata
        assert meta["action_output"] == "actions"
        assert [(s["name"], s["dtype"], s["shape"]) for s in meta["inputs"]] == [("obs", "<f4", [48])]
        assert [(s["name"], s["dtype"], s["shape"]) for s in meta["outputs"]] == [("actions", "<f4", [12])]
        one = client.infer({"obs": obs[0]})
        assert isinstance(one, dict) and set(one) == {"actions"}
        assert one["actions"].dtype == np.float32 and one["actions"].shape == (12,)
        np.testing.assert_array_equal(one["actions"], client.infer(obs[0]))
        # float64, as numpy makes by default, goes as the declared float32.
        np.testing.assert_array_equal(client.infer({"obs": obs[0].astype(np.float64)})["actions"], one["actions"])
        batch = client.infer({"obs": obs})
        assert batch["actions"].shape == (3, 12)
        np.testing.assert_allclose(batch["actions"][0], one["actions"], rtol=1e-5, atol=1e-6)
        with pytest.raises(InferdError) as e:
            client.infer({"obs": obs[0], "prompt": "pick up the cup"})
        assert e.value.code == "invalid_input" and "prompt" in e.value.message


# The frame of `pinned_request()` in inferd/src/tools/client.rs (its test
# `named_inputs_of_several_dtypes_and_text_are_what_the_server_stages` pins the same bytes and
# checks that the server's decoder stages them as two robots' image, state and prompt).
RUST_PINNED_FRAME = (
    "b900000083a474797065a5696e666572a2696403a6696e7075747383a5696d61"
    "676584c40b5f5f6e6461727261795f5fc3c40464617461c41800010203040506"
    "0708090a0b0c0d0e0f1011121314151617c4056474797065a37c7531c4057368"
    "6170659402020203a5737461746584c40b5f5f6e6461727261795f5fc3c40464"
    "617461c4100000003f000080bf0000803e00000040c4056474797065a33c6634"
    "c4057368617065920202a670726f6d707492a47069636ba5706c616365"
)


def test_a_batch_of_uint8_float32_and_text_is_encoded_as_the_rust_codec_does():
    specs = [
        {"name": "image", "dtype": "|u1", "shape": [2, 2, 3]},
        {"name": "state", "dtype": "<f4", "shape": [2]},
        {"name": "prompt", "dtype": "str", "shape": [], "max_bytes": 16},
    ]
    obs = {
        "image": np.arange(24, dtype=np.uint8).reshape(2, 2, 2, 3),
        "state": np.array([[0.5, -1], [0.25, 2]]),  # float64: cast to the declared <f4
        "prompt": ["pick", np.str_("place")],
    }
    frame = encode_infer(3, pack_inputs(obs, specs))
    assert frame.hex() == RUST_PINNED_FRAME
    # The same, read back: bin keys and data, str dtype, a str per robot (str, never bin).
    body = msgpack.unpackb(frame[4:], raw=True)
    image = body[b"inputs"][b"image"]
    assert image[b"dtype"] == b"|u1" and image[b"shape"] == [2, 2, 2, 3] and len(image[b"data"]) == 24
    assert body[b"inputs"][b"prompt"] == [b"pick", b"place"]
    assert msgpack.unpackb(frame[4:], raw=False)["inputs"]["prompt"] == ["pick", "place"]


def test_pack_inputs_keeps_dtypes_and_text_apart():
    packed = pack_inputs({
        "image": np.zeros((4, 4, 3), np.uint8),
        "mask": np.array([True, False]),
        "half": np.ones(2, np.float16),
        "small": np.ones(2, np.int8),
        "ids": np.ones(2, np.int64),
        "big_endian": np.ones(2, ">f4"),
        "prompt": "pick",
        "numpy_prompt": np.str_("place"),
        "prompts": np.array(["a", "b"]),
        "listed": [0.5, 1],
    }, [{"name": "listed", "dtype": "<f4", "shape": [2]}])
    dtypes = {k: v.dtype.str for k, v in packed.items() if isinstance(v, np.ndarray)}
    assert dtypes == {"image": "|u1", "mask": "|b1", "half": "<f2", "small": "|i1", "ids": "<i8",
                      "big_endian": "<f4", "listed": "<f4"}
    assert set(dtypes.values()) <= set(DTYPES)
    assert (packed["prompt"], packed["numpy_prompt"], packed["prompts"]) == ("pick", "place", ["a", "b"])
    assert type(packed["numpy_prompt"]) is str
    # A float image for a uint8 input is not silently truncated: the server refuses it.
    assert pack_inputs({"image": np.zeros(3)}, [{"name": "image", "dtype": "|u1", "shape": [3]}])["image"].dtype == np.float64
    with pytest.raises(TypeError, match="'bad'"):
        pack_inputs({"bad": np.array([object()])})


def test_every_dtype_and_text_reach_the_servers_decoder(start_inferd):
    """The demo takes float32: each other dtype, and text, is refused by a message that shows
    the server decoded what was sent; the connection serves on."""
    d = start_inferd()
    with InferdClient(d.socket) as client:
        for request_id, dtype in enumerate(DTYPES):
            if dtype == "<f4":
                continue
            # Without the metadata's specs, pack_inputs keeps the dtype (infer would cast <f2).
            inputs = pack_inputs({"obs": np.zeros(48, np.dtype(dtype))})
            client.send({"type": "infer", "id": request_id, "inputs": inputs})
            answer = client.recv()
            assert (answer["id"], answer["error"]["code"]) == (request_id, "invalid_input"), answer
            message = answer["error"]["message"]
            assert f'"{dtype}"' in message and '"<f4"' in message, message
        for text, kind in (("pick", "a str"), (["pick", "place"], "an array")):
            with pytest.raises(InferdError) as e:
                client.infer({"obs": text})
            assert e.value.code == "invalid_input" and kind in e.value.message, e.value.message
        assert client.infer({"obs": np.zeros(48, np.float32)})["actions"].shape == (12,)


def test_a_multi_input_chunked_model_takes_a_dict_of_uint8_and_float_and_answers_its_chunk(start_inferd, tmp_path):
    """A built-in policy of a uint8 image (scaled 1/255) and a float32 state, answering a
    [3, 2] chunk: the dict path against a numpy reference, alone and as a batch of 4."""
    rng = np.random.default_rng(21)
    features = 4 * 4 * 3 + 5
    w = rng.normal(0, 1 / math.sqrt(features), (6, features)).astype(np.float32)
    b = rng.normal(0, 0.1, 6).astype(np.float32)
    inputs = [{"name": "observation/image", "dtype": "|u1", "shape": [4, 4, 3], "scale": 1 / 255},
              {"name": "observation/state", "dtype": "<f4", "shape": [5]}]
    path = tmp_path / "two.safetensors"
    export([(w, b)], path, inputs=inputs, output_shape=(3, 2), name="two-inputs")
    d = start_inferd("--model", path, "--backend", "cpu", "--max-batch-size", "4")
    images = rng.integers(0, 256, (4, 4, 4, 3), dtype=np.uint8)
    states = rng.uniform(-1, 1, (4, 5))  # float64: the client sends the declared float32

    def want(image, state):
        x = np.concatenate([image.reshape(-1) / np.float32(255), state.astype(np.float32)]).astype(np.float64)
        return (x @ w.astype(np.float64).T + b).reshape(3, 2)

    with InferdClient(d.socket) as client:
        assert client.get_server_metadata()["model"]["name"] == "two-inputs"
        one = client.infer({"observation/image": images[0], "observation/state": states[0]})
        batch = client.infer({"observation/image": images, "observation/state": states})
        with pytest.raises(InferdError) as e:
            client.infer({"observation/image": images[0].astype(np.float32), "observation/state": states[0]})
        assert e.value.code == "invalid_input" and "observation/image" in e.value.message
    assert set(one) == {"actions"} and one["actions"].shape == (3, 2) and one["actions"].dtype == np.float32
    np.testing.assert_allclose(one["actions"], want(images[0], states[0]), rtol=1e-5, atol=1e-5)
    assert batch["actions"].shape == (4, 3, 2)
    for i in range(4):
        np.testing.assert_allclose(batch["actions"][i], want(images[i], states[i]), rtol=1e-5, atol=1e-5)
