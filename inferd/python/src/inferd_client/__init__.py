"""A Python client for inferd. It needs only numpy and msgpack.

The protocol (docs/protocol.md) is frames of a u32 little-endian length and a msgpack map.
Arrays travel the way openpi's ``msgpack_numpy`` packs them, so a robot that already uses
``openpi_client.msgpack_numpy`` can pass its ``Packer``/``unpackb`` instead of ours.

A model of one float32 input takes an array and answers its actions::

    import numpy as np
    from inferd_client import InferdClient

    with InferdClient(robot_type="anymal_c", robot_id="7") as client:
        print(client.metadata["model"])
        actions = client.infer(np.zeros(48, np.float32), deadline_us=5_000)

Any model takes an openpi-style observation dict, input name to a numpy array (``<f4 <f2 |u1
|i1 <i4 <i8 |b1``) or a str for a text input, and answers every output by name::

    with InferdClient(robot_type="franka") as client:
        outputs = client.infer({
            "observation/exterior_image_1_left": image,  # uint8 [224, 224, 3]
            "observation/wrist_image_left": wrist,       # uint8 [224, 224, 3]
            "observation/state": state,                  # float32 [8]
            "prompt": "pick up the cup",
        })
        chunk = outputs["actions"]                       # float32 [10, 7]

A batch gives every array a leading ``n`` and every text input a list of ``n`` str.

``InferdClient`` offers what openpi's ``BasePolicy`` does (``infer(obs) -> dict``, ``reset()``,
and ``get_server_metadata()`` as ``WebsocketClientPolicy``), so it drops into openpi robot code
such as ``ActionChunkBroker``; where openpi-client is installed it is a registered
``openpi_client.base_policy.BasePolicy``, without this package depending on it.

Run ``python3 -m inferd_client info`` or ``... infer`` for a quick check.
"""

import os
import socket
import struct
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union, overload

import msgpack
import numpy as np
import numpy.typing as npt

__all__ = [
    "DTYPES",
    "TEXT_DTYPE",
    "Array",
    "InferdClient",
    "InferdError",
    "InputValue",
    "Observation",
    "Outputs",
    "__version__",
    "default_socket_path",
    "encode_infer",
    "pack_array",
    "pack_inputs",
    "unpack_array",
    "zeros_observation",
]

#: The package's version: the workspace version of inferd's Cargo.toml (a test checks they agree).
__version__ = "0.1.0"

#: The array dtypes inferd takes, as numpy spells them (docs/protocol.md).
DTYPES = ("<f4", "<f2", "|u1", "|i1", "<i4", "<i8", "|b1")
#: The dtype a text input declares in the metadata.
TEXT_DTYPE = "str"

#: A numpy array of any dtype.
Array = npt.NDArray[Any]
#: What ``infer`` takes for one input: an array (or anything ``np.asarray`` takes), a str, or
#: for a batch's text a list of str.
InputValue = Union[npt.ArrayLike, str, Sequence[str]]
#: An openpi-style observation: input name to its value.
Observation = Mapping[str, InputValue]
#: An answer's outputs: output name to its array.
Outputs = Dict[str, Array]

_HEADER = struct.Struct("<I")
_MAX_FRAME_BYTES = 64 << 20


def pack_array(obj: Any) -> Any:
    """msgpack ``default`` hook: numpy arrays as openpi's msgpack_numpy maps (bytes keys)."""
    if isinstance(obj, np.ndarray):
        if obj.dtype.kind in ("V", "O", "c"):
            raise ValueError(f"unsupported dtype {obj.dtype}")
        return {
            b"__ndarray__": True,
            b"data": obj.tobytes(),
            b"dtype": obj.dtype.str,
            b"shape": obj.shape,
        }
    if isinstance(obj, np.generic):
        return obj.item()
    return obj


def unpack_array(obj: Dict[Any, Any]) -> Any:
    """msgpack ``object_hook``: msgpack_numpy maps back to arrays (bytes or str keys)."""
    for marker, data, dtype, shape in (
        (b"__ndarray__", b"data", b"dtype", b"shape"),
        ("__ndarray__", "data", "dtype", "shape"),
    ):
        if marker in obj:
            return np.ndarray(buffer=obj[data], dtype=np.dtype(obj[dtype]), shape=obj[shape])
    return obj


def default_socket_path() -> str:
    """The socket inferd listens on by default in this environment (as inferd computes it)."""
    runtime = os.environ.get("RUNTIME_DIRECTORY", "").split(":")[0]
    if runtime:
        return os.path.join(runtime, "inferd.sock")
    if os.environ.get("INVOCATION_ID"):
        return "/run/inferd/inferd.sock"
    xdg = os.environ.get("XDG_RUNTIME_DIR")
    if xdg:
        return os.path.join(xdg, "inferd.sock")
    return f"/tmp/inferd-{os.getuid()}/inferd.sock"


class InferdError(Exception):
    """An error answer: ``code`` is one of the codes listed in docs/protocol.md."""

    def __init__(self, code: str, message: str, request_id: Optional[int] = None) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.request_id = request_id


def _error_of(answer: Mapping[str, Any], request_id: Optional[int] = None) -> InferdError:
    """The InferdError an ``error`` answer carries; a malformed one is a protocol error."""
    error = answer.get("error")
    if isinstance(error, Mapping) and isinstance(error.get("code"), str):
        return InferdError(error["code"], str(error.get("message", "")), request_id)
    return InferdError("protocol_error", f"an error answer without a code: {answer!r}", request_id)


def _naming_path(error: OSError, path: str) -> OSError:
    """``error`` again, of the same OSError subclass (so that ``except FileNotFoundError`` and
    ``except ConnectionRefusedError`` still catch it), with a message that names the socket."""
    reason = error.strerror or str(error) or type(error).__name__
    message = f"cannot connect to inferd at {path}: {reason}"
    try:
        if error.errno is not None:
            return type(error)(error.errno, message)
        return type(error)(message)
    except TypeError:  # a subclass with another constructor: keep the original
        return error


def _pack_input(name: str, value: InputValue, spec: Optional[Mapping[str, Any]]) -> Any:
    """One input's wire value: a str, a list of str, or a C-order little-endian array."""
    if isinstance(value, str):
        return str(value)  # np.str_ too
    if isinstance(value, (list, tuple)) and value and all(isinstance(v, str) for v in value):
        return [str(v) for v in value]
    want = spec.get("dtype") if spec else None
    if not isinstance(value, np.ndarray) and want in DTYPES:
        # Plain numbers and lists carry no dtype of their own: they take the declared one.
        return np.ascontiguousarray(value, dtype=want)
    array = np.asarray(value)
    if array.dtype.kind == "U":  # a prompt held in a numpy array, as openpi's transforms do
        return str(array) if array.ndim == 0 else [str(v) for v in array.tolist()]
    if array.dtype.kind in ("O", "V", "S", "c", "M", "m"):
        raise TypeError(f"input {name!r}: numpy dtype {array.dtype} cannot be sent; the dtypes are {', '.join(DTYPES)}")
    if want in DTYPES and array.dtype.str != want and np.can_cast(array.dtype, np.dtype(want), "same_kind"):
        # float64 state to the declared float32, say; a cast across kinds (float to uint8)
        # is left to the server to refuse, naming what it expected.
        array = array.astype(want)
    if array.dtype.byteorder == ">":
        array = array.astype(array.dtype.newbyteorder("<"))
    return np.ascontiguousarray(array)


def pack_inputs(obs: Observation, specs: Sequence[Mapping[str, Any]] = ()) -> Dict[str, Any]:
    """The ``inputs`` map of a request for an observation dict.

    ``specs`` are the metadata's ``inputs``. An array is converted to its input's declared dtype
    where numpy's ``same_kind`` cast allows (float64 to float32, int64 to int32), so that the
    float64 arrays numpy makes by default go as the model wants them; other arrays go as they
    are (a float image for a uint8 input is refused by the server, naming what it expects).
    Plain numbers and lists take the declared dtype. Names are not checked here: the server
    answers an unknown or missing input with ``invalid_input``.
    """
    by_name = {s["name"]: s for s in specs}
    return {name: _pack_input(name, value, by_name.get(name)) for name, value in obs.items()}


def encode_infer(request_id: int, inputs: Mapping[str, Any], deadline_us: Optional[int] = None) -> bytes:
    """The whole frame (length prefix first) of an infer request whose ``inputs`` are packed
    already (``pack_inputs``): the bytes inferd's own codec writes for the same request."""
    message: Dict[str, Any] = {"type": "infer", "id": int(request_id), "inputs": dict(inputs)}
    if deadline_us is not None:
        message["deadline_us"] = int(deadline_us)
    body: bytes = msgpack.packb(message, default=pack_array, use_bin_type=True)
    return _HEADER.pack(len(body)) + body


def _first_input_and_action(metadata: Mapping[str, Any]) -> Tuple[List[Dict[str, Any]], str]:
    """The metadata's input specs and the output ``infer(array)`` answers, or a protocol error
    naming what the server's metadata frame lacks."""
    inputs = metadata.get("inputs")
    outputs = metadata.get("outputs")
    if not isinstance(inputs, list) or not inputs or not all(isinstance(s, dict) and isinstance(s.get("name"), str) for s in inputs):
        raise InferdError("protocol_error", f"metadata without named inputs: {inputs!r}")
    action = metadata.get("action_output")
    if not isinstance(action, str) or not action:
        if not isinstance(outputs, list) or not outputs or not isinstance(outputs[0], dict) or not isinstance(outputs[0].get("name"), str):
            raise InferdError("protocol_error", f"metadata without named outputs: {outputs!r}")
        action = outputs[0]["name"]
    return inputs, action


class InferdClient:
    """One connection to inferd. Not thread-safe: use one client per thread.

    ``metadata`` (also ``get_server_metadata()``) is the server's metadata frame: the model's
    ``inputs`` and ``outputs`` (name, dtype, shape; ``max_bytes`` for text), ``action_output``,
    ``action_limits``, ``max_batch_size``...

    It is an openpi ``BasePolicy``: ``infer(obs)`` of an observation dict answers the outputs
    dict, ``reset()`` does nothing (inferd keeps no state between requests), and
    ``get_server_metadata()`` is ``WebsocketClientPolicy``'s.
    """

    def __init__(
        self,
        path: Optional[str] = None,
        robot_type: Optional[str] = None,
        robot_id: Optional[Union[str, int]] = None,
        timeout_seconds: Optional[float] = 10.0,
    ) -> None:
        self.path: str = path or default_socket_path()
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        # Whatever fails before the client is returned closes the socket: no caller holds it.
        try:
            self._sock.settimeout(timeout_seconds)
            try:
                self._sock.connect(self.path)
            except OSError as e:
                raise _naming_path(e, self.path) from e
            self._next_id = 0
            first = self.recv()
            if first.get("type") == "error":
                raise _error_of(first)
            if first.get("type") != "metadata":
                raise InferdError("protocol_error", f"expected metadata first, got {first.get('type')!r}")
            self.metadata: Dict[str, Any] = first
            inputs, action = _first_input_and_action(first)
            self._input_specs: List[Dict[str, Any]] = inputs
            #: The first input's name: what ``infer(array)`` sends its array as.
            self.input_name: str = inputs[0]["name"]
            #: The output ``infer(array)`` answers: the action the safety filter acts on.
            self.action_output: str = action
            if robot_type is not None:
                hello = {"type": "hello", "robot_type": robot_type}
                if robot_id is not None:
                    hello["robot_id"] = str(robot_id)
                self.send(hello)
        except BaseException:
            self._sock.close()
            raise

    def __enter__(self) -> "InferdClient":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Closes the connection; inferd drops whatever it still had queued for it."""
        self._sock.close()

    def get_server_metadata(self) -> Dict[str, Any]:
        """The server's metadata frame, as openpi's ``WebsocketClientPolicy`` offers it."""
        return self.metadata

    def reset(self) -> None:
        """openpi's ``BasePolicy.reset``: nothing to do, inferd keeps no state between requests."""

    def send(self, message: Mapping[str, Any]) -> None:
        """Sends one message (a dict; numpy arrays are packed as msgpack-numpy)."""
        body: bytes = msgpack.packb(message, default=pack_array, use_bin_type=True)
        self._sock.sendall(_HEADER.pack(len(body)) + body)

    def _read_exactly(self, n: int) -> bytes:
        chunks = []
        while n:
            chunk = self._sock.recv(min(n, 1 << 20))
            if not chunk:
                raise ConnectionError("inferd closed the connection")
            chunks.append(chunk)
            n -= len(chunk)
        return b"".join(chunks)

    def recv(self) -> Dict[str, Any]:
        """Receives one message as a dict, arrays decoded to numpy."""
        (length,) = _HEADER.unpack(self._read_exactly(_HEADER.size))
        if length > _MAX_FRAME_BYTES:
            raise InferdError("frame_too_large", f"server frame of {length} bytes")
        message = msgpack.unpackb(self._read_exactly(length), object_hook=unpack_array, raw=False)
        if not isinstance(message, dict):
            raise InferdError("protocol_error", f"a frame that is not a map: {type(message).__name__}")
        return message

    def _inputs(self, obs: Union[Observation, npt.ArrayLike]) -> Dict[str, Any]:
        if isinstance(obs, Mapping):
            return pack_inputs(obs, self._input_specs)
        # One array for a one-input model, converted to its declared dtype as before.
        dtype = self._input_specs[0].get("dtype", "<f4")
        return {self.input_name: np.ascontiguousarray(obs, dtype=dtype if dtype in DTYPES else "<f4")}

    def submit(self, obs: Union[Observation, npt.ArrayLike], deadline_us: Optional[int] = None) -> int:
        """Sends one request without waiting and returns its id: for pipelining. ``obs`` is an
        observation dict, or one array for a one-input model."""
        request_id = self._next_id
        self._next_id += 1
        self._sock.sendall(encode_infer(request_id, self._inputs(obs), deadline_us))
        return request_id

    def infer_full(self, obs: Union[Observation, npt.ArrayLike], deadline_us: Optional[int] = None) -> Dict[str, Any]:
        """Sends one request and returns its whole answer: ``id``, ``outputs``, ``timing``."""
        request_id = self.submit(obs, deadline_us)
        answer = self.recv()
        if answer.get("id") != request_id:
            raise InferdError("protocol_error", f"answer for id {answer.get('id')}, expected {request_id}")
        if answer.get("type") == "error":
            raise _error_of(answer, request_id)
        if not isinstance(answer.get("outputs"), dict) or not answer["outputs"]:
            raise InferdError("protocol_error", f"an answer without outputs: {answer.get('type')!r}", request_id)
        return answer

    @overload
    def infer(self, obs: Observation, deadline_us: Optional[int] = None) -> Outputs: ...

    @overload
    def infer(self, obs: npt.ArrayLike, deadline_us: Optional[int] = None) -> Array: ...

    def infer(self, obs: Union[Observation, npt.ArrayLike], deadline_us: Optional[int] = None) -> Union[Outputs, Array]:
        """Sends one observation (or a batch) and waits for its answer.

        An observation dict (input name to array or str) gets the outputs dict, name to array,
        as openpi's ``policy.infer(obs)`` does. One array (a one-input model's observation, or
        an ``[n, width]`` batch) gets the action output's array alone.
        """
        outputs: Outputs = self.infer_full(obs, deadline_us)["outputs"]
        if isinstance(obs, Mapping):
            return outputs
        if self.action_output in outputs:
            return outputs[self.action_output]
        return next(iter(outputs.values()))


def zeros_observation(metadata: Mapping[str, Any], prompt: str = "") -> Dict[str, InputValue]:
    """An observation of zeros (and ``prompt`` for every text input) that fits ``metadata``."""
    return {
        s["name"]: prompt if s["dtype"] == TEXT_DTYPE else np.zeros(s["shape"], np.dtype(s["dtype"]))
        for s in metadata["inputs"]
    }


def _register_with_openpi() -> None:
    """Makes InferdClient an ``openpi_client.base_policy.BasePolicy`` where openpi-client is
    installed: ``register`` (not a base class) keeps this package free of the dependency and its
    import order, while ``isinstance(client, BasePolicy)`` holds for openpi code that checks."""
    try:
        from openpi_client import base_policy  # type: ignore[import-not-found, unused-ignore]
    except ImportError:
        return
    base_policy.BasePolicy.register(InferdClient)


_register_with_openpi()
