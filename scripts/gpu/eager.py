#!/usr/bin/env python3
"""The GPU benchmark's baseline: a policy file run by PyTorch eager, as a training script
would run it (``policy(torch.from_numpy(obs).to(device)).cpu()`` under no_grad), host to host
like inferd's figure. Prints one line per batch size: ``batch=<b> us=<median microseconds>``.

    scripts/gpu/eager.py POLICY.safetensors [--device cuda] [--batches 1,8,64,256] [--iters 2000]
"""

import argparse
import os
import sys
import time

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from torch_policy import InferdMlp  # noqa: E402


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("policy")
    p.add_argument("--device", default="cuda")
    p.add_argument("--batches", default="1,8,64,256")
    p.add_argument("--iters", type=int, default=2000)
    p.add_argument("--warmup", type=int, default=200)
    args = p.parse_args(argv)

    device = torch.device(args.device)
    policy = InferdMlp.from_file(args.policy).to(device).eval()
    n_in = int(policy.meta["input_size"])
    rng = np.random.default_rng(0)
    with torch.no_grad():
        for batch in (int(b) for b in args.batches.split(",")):
            obs = rng.standard_normal((batch, n_in)).astype(np.float32)
            for _ in range(args.warmup):
                policy(torch.from_numpy(obs).to(device)).cpu()
            times = []
            for _ in range(args.iters):
                start = time.perf_counter_ns()
                policy(torch.from_numpy(obs).to(device)).cpu()
                times.append(time.perf_counter_ns() - start)
            print(f"batch={batch} us={np.median(times) / 1000:.2f}", flush=True)


if __name__ == "__main__":
    main()
