#!/usr/bin/env python3
"""`scripts/bench.sh openpi`: the baseline server, and the openpi robots that load both sides.

serve    (the torch venv) the baseline, in the shape of openpi's `WebsocketPolicyServer`: the
         `websockets` asyncio server (compression off, no size limit, `GET /healthz`), one
         handler per connection that sends the metadata first, then for each binary message
         unpacks a msgpack-numpy observation, calls the policy synchronously on the event loop
         and answers a msgpack-numpy map of its outputs with `server_timing` (`infer_ms`, and
         `prev_total_ms` from the second answer on). Since the policy blocks the loop, one
         request is served at a time, whatever the number of robots: openpi's serving model.
         The policy is the tiny VLA in PyTorch eager with the weights of the TorchScript file
         inferd serves, loaded as `scripts/bench/vla_baseline.py` loads it, and the metadata is
         inferd's own (read from its Unix socket), so that a robot cannot tell the two apart.
load     (the openpi venv) ROBOTS processes, each one `openpi_client` `WebsocketClientPolicy`
         with one request in flight, closed loop, its own observation (two uint8 cameras, the
         state, a prompt, made from the metadata's signature); processes rather than threads,
         so that the client's own packing is not serialized by one GIL. After all have
         connected and answered once, WARMUP seconds, then SECONDS measured; prints one JSON
         line: ok, errors, duration_seconds, throughput_rps, p50_ms, p99_ms.
agree    (the openpi venv) one observation to each URL; their actions must agree to TOLERANCE.

Usage:
  openpi_baseline.py serve --port P --metadata-from INFERD_SOCKET --model TINY_VLA.pt
                           [--image-size S] [--seed N] [--device cpu|cuda] [--threads N]
  openpi_baseline.py load --port P [--robots 16] [--seconds S] [--warmup-seconds W]
  openpi_baseline.py agree --tolerance T PORT PORT
"""

import argparse
import json
import sys
import time
from typing import Any, Dict, List, Optional

import numpy as np

HOST = "127.0.0.1"


def serve(args: argparse.Namespace) -> None:
    """The openpi-shaped baseline; serves until killed."""
    # Imported here: only this side runs in the torch venv; `load` runs where there is no torch.
    import asyncio
    import http
    import traceback

    import msgpack
    import torch
    import websockets
    import websockets.asyncio.server as ws_server
    import websockets.frames

    import vla_baseline  # scripts/bench/, beside this file
    from inferd_client import pack_array, unpack_array  # inferd/python/src, which vla_baseline adds

    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    _, metadata = vla_baseline.inferd_metadata_frame(args.metadata_from)
    model = vla_baseline.load_eager(args.model, args.image_size, args.seed, device)
    # Its `stack` checks an observation against the signature and makes the model's tensors.
    baseline = vla_baseline.Baseline(model, metadata, device)

    def infer(obs: Dict[str, Any]) -> Dict[str, Any]:
        """The policy: one observation in, its outputs out, as openpi's `Policy.infer`."""
        tensors, texts, batched = baseline.stack(obs)
        with torch.inference_mode():
            # .cpu() waits for a GPU's kernels.
            outputs = {name: t.cpu().numpy() for name, t in model(tensors, texts).items()}
        return {name: a if batched else a[0] for name, a in outputs.items()}

    zeros = {
        s["name"]: "" if s["dtype"] == "str" else np.zeros(s["shape"], np.dtype(s["dtype"]))
        for s in metadata["inputs"]
    }
    for _ in range(3):  # warm, as inferd's torch backend warms up at load
        infer(zeros)

    def pack(obj: Any) -> bytes:
        return msgpack.packb(obj, default=pack_array, use_bin_type=True)

    async def handler(websocket: "ws_server.ServerConnection") -> None:
        await websocket.send(pack(metadata))
        prev_total: Optional[float] = None
        while True:
            try:
                start = time.monotonic()
                obs = msgpack.unpackb(await websocket.recv(), object_hook=unpack_array, raw=False)
                infer_start = time.monotonic()
                # Synchronous on the event loop, as openpi's server calls its policy: no other
                # connection's request is read or served meanwhile.
                action = infer(obs)
                action["server_timing"] = {"infer_ms": (time.monotonic() - infer_start) * 1000}
                if prev_total is not None:
                    action["server_timing"]["prev_total_ms"] = prev_total * 1000
                await websocket.send(pack(action))
                prev_total = time.monotonic() - start
            except websockets.ConnectionClosed:
                break
            except Exception:  # noqa: BLE001  (as openpi: the traceback to the client, then close)
                await websocket.send(traceback.format_exc())
                await websocket.close(code=websockets.frames.CloseCode.INTERNAL_ERROR,
                                      reason="Internal server error. Traceback included in previous frame.")
                raise

    def health(connection: "ws_server.ServerConnection", request: "ws_server.Request") -> Any:
        if request.path == "/healthz":
            return connection.respond(http.HTTPStatus.OK, "OK\n")
        return None

    async def run() -> None:
        async with ws_server.serve(handler, HOST, args.port, compression=None, max_size=None,
                                   process_request=health) as server:
            print(f"openpi_baseline: serving on ws://{HOST}:{args.port}", file=sys.stderr, flush=True)
            await server.serve_forever()

    asyncio.run(run())


def observation(metadata: Dict[str, Any], robot: int) -> Dict[str, Any]:
    """Robot `robot`'s observation: random pixels and state of the signature's shapes, and a
    prompt of its own."""
    rng = np.random.default_rng(1000 + robot)
    obs: Dict[str, Any] = {}
    for spec in metadata["inputs"]:
        if spec["dtype"] == "str":
            obs[spec["name"]] = f"pick up the red cup, robot {robot}"
        elif np.dtype(spec["dtype"]).kind == "u":
            obs[spec["name"]] = rng.integers(0, 256, spec["shape"], dtype=np.dtype(spec["dtype"]))
        else:
            obs[spec["name"]] = rng.uniform(-1, 1, spec["shape"]).astype(np.dtype(spec["dtype"]))
    return obs


def robot_process(port: int, robot: int, warmup: float, seconds: float, ready: Any, results: Any) -> None:
    """One robot: connects, answers once, waits for all the others, then infers in a closed
    loop; puts (ok, errors, latencies of the measured window) on `results`."""
    from openpi_client.websocket_client_policy import WebsocketClientPolicy

    ok, errors, latencies = 0, [], []
    try:
        policy = WebsocketClientPolicy(HOST, port)
        obs = observation(policy.get_server_metadata(), robot)
        policy.infer(obs)
        ready.wait()
        # CLOCK_MONOTONIC is one clock for every process: the windows line up.
        measured = time.monotonic() + warmup
        end = measured + seconds
        while True:
            sent = time.monotonic()
            if sent >= end:
                break
            try:
                policy.infer(obs)
            except RuntimeError as e:  # the server's error text
                errors.append(str(e).splitlines()[-1][:200])
                continue
            done = time.monotonic()
            if measured <= sent and done <= end:
                ok += 1
                latencies.append(done - sent)
        # openpi's client has no close(); its connection is closed as a robot that shuts down
        # cleanly would, rather than left to the process's exit.
        policy._ws.close()
    except Exception as e:  # noqa: BLE001  (reported to the parent, which fails the run)
        errors.append(f"robot {robot}: {e!r}")
        ready.abort()
    results.put((ok, errors, latencies))


def load(args: argparse.Namespace) -> None:
    import multiprocessing

    # fork: the children start at once, with numpy and the client already imported.
    mp = multiprocessing.get_context("fork")
    ready = mp.Barrier(args.robots, timeout=300)
    results = mp.Queue()
    robots = [mp.Process(target=robot_process, args=(args.port, i, args.warmup_seconds, args.seconds, ready, results))
              for i in range(args.robots)]
    for p in robots:
        p.start()
    gathered = [results.get(timeout=args.warmup_seconds + args.seconds + 600) for _ in robots]
    for p in robots:
        p.join()
    ok = sum(g[0] for g in gathered)
    errors: List[str] = [e for g in gathered for e in g[1]]
    latencies = np.array([x for g in gathered for x in g[2]]) * 1000
    print(json.dumps({
        "ok": ok,
        "errors": errors[:10],
        "error_count": len(errors),
        "duration_seconds": args.seconds,
        "throughput_rps": ok / args.seconds,
        "p50_ms": float(np.percentile(latencies, 50)) if ok else None,
        "p99_ms": float(np.percentile(latencies, 99)) if ok else None,
    }))


def agree(args: argparse.Namespace) -> None:
    from openpi_client.websocket_client_policy import WebsocketClientPolicy

    answers = []
    for port in args.ports:
        policy = WebsocketClientPolicy(HOST, port)
        answers.append(policy.infer(observation(policy.get_server_metadata(), 0))["actions"])
        policy._ws.close()  # as in robot_process
    shapes = {a.shape for a in answers}
    diff = float(np.max(np.abs(answers[0] - answers[1]))) if len(shapes) == 1 else float("inf")
    print(f"openpi bench: both answer one observation alike to {diff:.2e} (shapes {shapes})", file=sys.stderr)
    if diff > args.tolerance:
        sys.exit(f"openpi bench: the two answers differ by {diff}, more than {args.tolerance}")


def main(argv: Optional[List[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    s = sub.add_parser("serve", help="the openpi-shaped baseline server")
    s.add_argument("--port", type=int, required=True)
    s.add_argument("--metadata-from", required=True, help="inferd's Unix socket: its metadata is sent")
    s.add_argument("--model", required=True, help="the TorchScript file inferd serves (its weights)")
    s.add_argument("--image-size", type=int, default=224)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--device", default="cpu")
    s.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    s.set_defaults(run=serve)
    lo = sub.add_parser("load", help="openpi robots, closed loop; prints a JSON report")
    lo.add_argument("--port", type=int, required=True)
    lo.add_argument("--robots", type=int, default=16)
    lo.add_argument("--seconds", type=float, default=10)
    lo.add_argument("--warmup-seconds", type=float, default=1)
    lo.set_defaults(run=load)
    a = sub.add_parser("agree", help="one observation to both; their actions must agree")
    a.add_argument("--tolerance", type=float, required=True)
    a.add_argument("ports", type=int, nargs=2)
    a.set_defaults(run=agree)
    args = parser.parse_args(argv)
    args.run(args)


if __name__ == "__main__":
    main()
