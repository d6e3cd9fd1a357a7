#!/usr/bin/env python3
"""A Python client for inferd. It needs only numpy and msgpack.

The protocol (docs/protocol.md) is frames of a u32 little-endian length and a msgpack map.
Arrays travel the way openpi's ``msgpack_numpy`` packs them, so a robot that already uses
``openpi_client.msgpack_numpy`` can pass its ``Packer``/``unpackb`` instead of ours.

Example::

    import numpy as np
    from inferd_client import InferdClient

    with InferdClient(robot_type="anymal_c", robot_id="7") as client:
        print(client.metadata["model"])
        actions = client.infer(np.zeros(48, np.float32), deadline_us=5_000)

Run ``python3 scripts/inferd_client.py info`` or ``... infer`` for a quick check.
"""

import os
import socket
import struct

import msgpack
import numpy as np

__all__ = ["InferdClient", "InferdError", "default_socket_path", "pack_array", "unpack_array"]

_HEADER = struct.Struct("<I")
_MAX_FRAME_BYTES = 64 << 20


def pack_array(obj):
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


def unpack_array(obj):
    """msgpack ``object_hook``: msgpack_numpy maps back to arrays (bytes or str keys)."""
    for marker, data, dtype, shape in (
        (b"__ndarray__", b"data", b"dtype", b"shape"),
        ("__ndarray__", "data", "dtype", "shape"),
    ):
        if marker in obj:
            return np.ndarray(buffer=obj[data], dtype=np.dtype(obj[dtype]), shape=obj[shape])
    return obj


def default_socket_path():
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

    def __init__(self, code, message, request_id=None):
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.request_id = request_id


def _naming_path(error, path):
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


class InferdClient:
    """One connection to inferd. Not thread-safe: use one client per thread."""

    def __init__(self, path=None, robot_type=None, robot_id=None, timeout_seconds=10.0):
        self.path = path or default_socket_path()
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
                error = first["error"]
                raise InferdError(error["code"], error["message"])
            if first.get("type") != "metadata":
                raise InferdError("protocol_error", f"expected metadata first, got {first.get('type')!r}")
            self.metadata = first
            self.input_name = first["inputs"][0]["name"]
            if robot_type is not None:
                hello = {"type": "hello", "robot_type": robot_type}
                if robot_id is not None:
                    hello["robot_id"] = str(robot_id)
                self.send(hello)
        except BaseException:
            self._sock.close()
            raise

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def close(self):
        self._sock.close()

    def send(self, message):
        """Sends one message (a dict; numpy arrays are packed as msgpack-numpy)."""
        body = msgpack.packb(message, default=pack_array, use_bin_type=True)
        self._sock.sendall(_HEADER.pack(len(body)) + body)

    def _read_exactly(self, n):
        chunks = []
        while n:
            chunk = self._sock.recv(min(n, 1 << 20))
            if not chunk:
                raise ConnectionError("inferd closed the connection")
            chunks.append(chunk)
            n -= len(chunk)
        return b"".join(chunks)

    def recv(self):
        """Receives one message as a dict, arrays decoded to numpy."""
        (length,) = _HEADER.unpack(self._read_exactly(_HEADER.size))
        if length > _MAX_FRAME_BYTES:
            raise InferdError("frame_too_large", f"server frame of {length} bytes")
        return msgpack.unpackb(self._read_exactly(length), object_hook=unpack_array, raw=False)

    def submit(self, obs, deadline_us=None):
        """Sends one request without waiting and returns its id: for pipelining."""
        request_id = self._next_id
        self._next_id += 1
        message = {
            "type": "infer",
            "id": request_id,
            "inputs": {self.input_name: np.ascontiguousarray(obs, dtype="<f4")},
        }
        if deadline_us is not None:
            message["deadline_us"] = int(deadline_us)
        self.send(message)
        return request_id

    def infer_full(self, obs, deadline_us=None):
        """Sends one request and returns its whole answer: ``id``, ``outputs``, ``timing``."""
        request_id = self.submit(obs, deadline_us)
        answer = self.recv()
        if answer.get("id") != request_id:
            raise InferdError("protocol_error", f"answer for id {answer.get('id')}, expected {request_id}")
        if answer["type"] == "error":
            raise InferdError(answer["error"]["code"], answer["error"]["message"], request_id)
        return answer

    def infer(self, obs, deadline_us=None):
        """Sends one observation (or an ``[n, width]`` batch) and returns the actions."""
        answer = self.infer_full(obs, deadline_us)
        return next(iter(answer["outputs"].values()))


def _main():
    import argparse
    import json

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--socket", default=None, help="inferd's socket (default: as inferd)")
    parser.add_argument("command", choices=["info", "infer"])
    args = parser.parse_args()
    with InferdClient(args.socket) as client:
        if args.command == "info":
            print(json.dumps(client.metadata, indent=2))
        else:
            width = client.metadata["inputs"][0]["shape"][0]
            answer = client.infer_full(np.zeros(width, np.float32))
            print("actions", next(iter(answer["outputs"].values())).tolist())
            print("timing", answer["timing"])


if __name__ == "__main__":
    _main()
