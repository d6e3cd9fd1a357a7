#!/usr/bin/env python3
"""The `scripts/bench.sh vla` baseline: the tiny VLA in PyTorch eager, answering one request at a
time, as openpi's policy server does, over inferd's own protocol on a Unix socket, so that the
same load generator (`inferctl bench`) drives it and inferd alike.

- The model is `tiny_vla.TinyVla`, the eager `nn.Module` (`tiny_vla.make(image_size, seed)`),
  with the weights of the TorchScript file inferd serves (`--model`, as `scripts/tiny_vla.py`
  wrote it) loaded into it: both sides compute the same function of the same weights.
- Every connection first receives the very metadata frame inferd sends (`--metadata-from`
  inferd's socket, read once at start), then each `infer` gets a `result` frame with the model's
  outputs ({"actions": float32 [10, 7]}, or [n, 10, 7] for a batch) and `timing`.
- One request at a time, as openpi's `WebsocketPolicyServer` calls `policy.infer(obs)`
  synchronously on its event loop: requests from every connection join one queue in the order
  they are read, and one worker answers them in that order; while one robot's forward pass
  runs, every other robot waits. (First come, first served: no robot waits for more than the
  requests ahead of it, which is the best latency one-at-a-time serving can give.)
- `--threads` sets torch's intra-op threads (the bench gives inferd the same through
  OMP_NUM_THREADS).

Usage: vla_baseline.py --socket PATH --metadata-from INFERD_SOCKET --model TINY_VLA.pt
       [--image-size S] [--seed N] [--device cpu|cuda] [--threads N]
"""

import argparse
import asyncio
import os
import socket
import struct
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Tuple

import msgpack
import numpy as np
import torch

SCRIPTS = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(SCRIPTS))
# The client's codec from its source tree: the torch venv (and an offline GPU machine) need not
# have the package installed for a baseline.
sys.path.insert(0, str(SCRIPTS.parent / "inferd/python/src"))

from inferd_client import pack_array, unpack_array  # noqa: E402  (inferd/python/src, above)
import tiny_vla  # noqa: E402

HEADER = struct.Struct("<I")


def read_frame(sock: socket.socket) -> bytes:
    """One frame's body from a blocking socket."""

    def exactly(n: int) -> bytes:
        chunks = []
        while n:
            chunk = sock.recv(n)
            if not chunk:
                raise ConnectionError("inferd closed the connection before its metadata")
            chunks.append(chunk)
            n -= len(chunk)
        return b"".join(chunks)

    (length,) = HEADER.unpack(exactly(HEADER.size))
    return exactly(length)


def inferd_metadata_frame(path: str) -> Tuple[bytes, Dict[str, Any]]:
    """The metadata frame inferd sends on `path`, whole (length prefix first), and decoded."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(30)
        sock.connect(path)
        body = read_frame(sock)
    metadata = msgpack.unpackb(body, raw=False)
    if metadata.get("type") != "metadata":
        raise SystemExit(f"vla_baseline: {path} sent {metadata.get('type')!r} first, not metadata")
    return HEADER.pack(len(body)) + body, metadata


def frame(message: Mapping[str, Any]) -> bytes:
    body = msgpack.packb(message, default=pack_array, use_bin_type=True)
    return HEADER.pack(len(body)) + body


def error_frame(request_id: Optional[int], code: str, message: str) -> bytes:
    return frame({"type": "error", "id": request_id, "error": {"code": code, "message": message}})


class BadInput(Exception):
    """A request the model cannot take: answered `invalid_input`."""


class Baseline:
    """The eager model and what it needs to answer a request."""

    def __init__(self, model: torch.nn.Module, metadata: Dict[str, Any], device: torch.device):
        self.model = model
        self.inputs: List[Dict[str, Any]] = metadata["inputs"]
        self.device = device
        self.max_frame_bytes: int = metadata["max_frame_bytes"]

    def stack(self, inputs: Mapping[str, Any]) -> Tuple[Dict[str, torch.Tensor], Dict[str, List[str]], bool]:
        """The model's arguments, stacked [n, ...]; and whether the request was a batch."""
        tensors: Dict[str, torch.Tensor] = {}
        texts: Dict[str, List[str]] = {}
        batched = False
        for spec in self.inputs:
            name = spec["name"]
            if name not in inputs:
                raise BadInput(f"missing input {name!r}")
            value = inputs[name]
            if spec["dtype"] == "str":
                batched = not isinstance(value, str)
                texts[name] = list(value) if batched else [value]
                continue
            if not isinstance(value, np.ndarray) or value.dtype.str != spec["dtype"]:
                raise BadInput(f"input {name!r} must be a {spec['dtype']} array")
            batched = value.ndim == len(spec["shape"]) + 1
            # np.array copies out of the read-only frame buffer: the one copy inferd makes too.
            tensor = torch.from_numpy(np.array(value))
            tensors[name] = (tensor if batched else tensor.unsqueeze(0)).to(self.device)
        return tensors, texts, batched

    def answer(self, body: bytes, received_ns: int) -> Optional[bytes]:
        """The frame answering one request frame; `None` for a hello, which gets none."""
        try:
            message = msgpack.unpackb(body, object_hook=unpack_array, raw=False)
        except Exception as e:  # noqa: BLE001  (any undecodable body is the client's error)
            return error_frame(None, "protocol_error", f"not msgpack: {e}")
        if not isinstance(message, dict):
            return error_frame(None, "protocol_error", "a frame holds a map")
        if message.get("type") == "hello":
            return None
        request_id = message.get("id")
        if message.get("type") != "infer" or not isinstance(message.get("inputs"), dict):
            return error_frame(request_id, "invalid_input", "expected an infer with inputs")
        try:
            tensors, texts, batched = self.stack(message["inputs"])
        except BadInput as e:
            return error_frame(request_id, "invalid_input", str(e))
        start_ns = time.perf_counter_ns()
        with torch.inference_mode():
            outputs = self.model(tensors, texts)
            # .cpu() waits for a GPU's kernels: the compute time covers them.
            arrays = {name: t.cpu().numpy() for name, t in outputs.items()}
        done_ns = time.perf_counter_ns()
        if not batched:
            arrays = {name: a[0] for name, a in arrays.items()}
        return frame({
            "type": "result",
            "id": request_id,
            "outputs": {name: np.ascontiguousarray(a, dtype="<f4") for name, a in arrays.items()},
            "timing": {
                "queue_us": (start_ns - received_ns) // 1000,
                "compute_us": (done_ns - start_ns) // 1000,
                "total_us": (time.perf_counter_ns() - received_ns) // 1000,
            },
        })


async def serve(baseline: Baseline, metadata_frame: bytes, path: str) -> None:
    """Serves until killed: every connection's frames go into one queue, in the order they
    are read, and one worker answers them one at a time."""
    queue: "asyncio.Queue[Tuple[bytes, int, asyncio.StreamWriter]]" = asyncio.Queue()

    async def connection(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            writer.write(metadata_frame)
            await writer.drain()
            while True:
                (length,) = HEADER.unpack(await reader.readexactly(HEADER.size))
                if length > baseline.max_frame_bytes:
                    writer.write(error_frame(None, "frame_too_large", f"{length} bytes"))
                    await writer.drain()
                    break
                body = await reader.readexactly(length)
                await queue.put((body, time.perf_counter_ns(), writer))
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        writer.close()

    async def worker() -> None:
        while True:
            body, received_ns, writer = await queue.get()
            # Synchronous, as openpi's server calls its policy: nothing else runs meanwhile.
            reply = baseline.answer(body, received_ns)
            if reply is not None and not writer.is_closing():
                writer.write(reply)
            # Lets the loop read what arrived during the forward pass, so that the queue
            # stays in arrival order.
            await asyncio.sleep(0)

    if os.path.exists(path):
        os.remove(path)
    server = await asyncio.start_unix_server(connection, path=path, limit=baseline.max_frame_bytes + 64)
    print(f"vla_baseline: serving on {path}", file=sys.stderr, flush=True)
    async with server:
        await asyncio.gather(server.serve_forever(), worker())


def load_eager(model_path: str, image_size: int, seed: int, device: torch.device) -> torch.nn.Module:
    """TinyVla in eager mode with the weights of the TorchScript file inferd serves."""
    eager = tiny_vla.make(image_size, seed)
    # export_torchscript wraps the policy as the scripted module's `policy`; strict loading
    # fails on any weight that does not match.
    scripted = torch.jit.load(model_path, map_location="cpu")
    eager.load_state_dict(scripted.policy.state_dict(), strict=True)
    return eager.to(device).eval()


def main(argv: Optional[List[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--socket", required=True, help="where to listen")
    parser.add_argument("--metadata-from", required=True, help="inferd's socket: its metadata frame is sent")
    parser.add_argument("--model", required=True, help="the TorchScript file inferd serves (its weights)")
    parser.add_argument("--image-size", type=int, default=224, help="the tiny VLA's image size")
    parser.add_argument("--seed", type=int, default=0, help="the tiny VLA's seed (the weights come from --model)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads(), help="torch intra-op threads")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    metadata_frame, metadata = inferd_metadata_frame(args.metadata_from)
    baseline = Baseline(load_eager(args.model, args.image_size, args.seed, device), metadata, device)
    # A few passes before serving, as inferd's torch backend warms up at load.
    zeros = {
        s["name"]: "" if s["dtype"] == "str" else np.zeros(s["shape"], np.dtype(s["dtype"]))
        for s in metadata["inputs"]
    }
    warm = frame({"type": "infer", "id": 0, "inputs": zeros})[HEADER.size:]
    for _ in range(3):
        baseline.answer(warm, time.perf_counter_ns())
    asyncio.run(serve(baseline, metadata_frame, args.socket))


if __name__ == "__main__":
    main()
