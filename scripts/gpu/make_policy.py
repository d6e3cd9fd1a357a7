#!/usr/bin/env python3
"""Writes one random MLP policy twice: as inferd's built-in format (policy.safetensors) and as
the TorchScript module of the same weights (policy.pt), for the torch backend's tests.

    scripts/gpu/make_policy.py OUT_DIR [--widths 48,256,128,12] [--activation elu] [--seed 7]
"""

import argparse
import os
import sys

import numpy as np
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.dirname(HERE))

from export_policy import export  # noqa: E402  (scripts/export_policy.py)
from torch_policy import InferdMlp  # noqa: E402


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("out_dir")
    p.add_argument("--widths", default="48,256,128,12")
    p.add_argument("--activation", default="elu", choices=("elu", "relu", "tanh", "gelu"))
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--action-scale", type=float, default=0.5)
    p.add_argument("--action-clip", type=float, default=5.0)
    args = p.parse_args(argv)

    widths = [int(w) for w in args.widths.split(",")]
    rng = np.random.default_rng(args.seed)
    layers = []
    for n_in, n_out in zip(widths, widths[1:]):
        bound = 1.0 / np.sqrt(n_in)  # nn.Linear's default init range
        layers.append(
            (
                rng.uniform(-bound, bound, (n_out, n_in)).astype(np.float32),
                rng.uniform(-bound, bound, n_out).astype(np.float32),
            )
        )
    os.makedirs(args.out_dir, exist_ok=True)
    safetensors = os.path.join(args.out_dir, "policy.safetensors")
    export(
        layers,
        safetensors,
        activation=args.activation,
        obs_mean=rng.uniform(-0.1, 0.1, widths[0]).astype(np.float32),
        obs_std=rng.uniform(0.5, 1.5, widths[0]).astype(np.float32),
        obs_eps=1e-2,
        action_scale=args.action_scale,
        action_low=-args.action_clip,
        action_high=args.action_clip,
        name="torch-test-mlp",
        version=str(args.seed),
    )
    # The TorchScript module is read back from the file, so both hold the same bits.
    module = torch.jit.script(InferdMlp.from_file(safetensors).eval())
    module.save(os.path.join(args.out_dir, "policy.pt"))
    print(f"wrote {safetensors} and policy.pt: {args.widths} {args.activation}", file=sys.stderr)


if __name__ == "__main__":
    main()
