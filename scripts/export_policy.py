#!/usr/bin/env python3
"""Turns a PyTorch MLP policy (a state dict) into inferd's built-in MLP format.

The output is a safetensors file: float32 tensors ``layers.{i}.weight`` ([out, in]) and
``layers.{i}.bias``, optional ``obs_mean``/``obs_std``, ``action_scale``,
``action_low``/``action_high``, and string metadata (format, activation, obs_eps, name,
version). See inferd's ``MlpPolicy::from_safetensors`` for the full contract.

The state dict is read from a ``.pt`` file with ``torch.load(weights_only=True)`` (an rsl_rl
checkpoint's ``model_state_dict`` is found by itself) or from a ``.npz`` file of arrays.
Linear layers are the 2-D ``<prefix><index>.weight`` entries, in index order: for rsl_rl's
``ActorCritic`` the prefix is ``actor.`` (the default when such keys exist), for a bare
``nn.Sequential`` it is empty.

Examples::

    scripts/export_policy.py model_1500.pt policy.safetensors --activation elu \\
        --obs-normalizer actor_obs_normalizer --obs-eps 0.01 --action-scale 0.25 --action-clip 100
    scripts/export_policy.py weights.npz policy.safetensors --activation tanh --prefix net.
"""

import argparse
import json
import re
import struct
import sys

import numpy as np

FORMAT = "inferd-mlp"
FORMAT_VERSION = "1"
ACTIVATIONS = ("elu", "relu", "tanh", "gelu")


def load_state_dict(path):
    """A dict of name -> numpy array, from .pt (needs torch) or .npz."""
    if path.endswith(".npz"):
        with np.load(path) as npz:
            return {k: npz[k] for k in npz.files}
    import torch  # Only .pt files need it.

    obj = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(obj, dict) and "model_state_dict" in obj:
        obj = obj["model_state_dict"]
    return {k: v.detach().cpu().numpy() for k, v in obj.items()}


def linear_layers(state_dict, prefix=None):
    """[(weight, bias), ...] for the 2-D ``<prefix><i>.weight`` entries, in index order."""
    if prefix is None:
        prefix = "actor." if any(k.startswith("actor.") for k in state_dict) else ""
    pattern = re.compile(re.escape(prefix) + r"(\d+)\.weight$")
    found = sorted(
        (int(m.group(1)), name)
        for name in state_dict
        if (m := pattern.match(name)) and np.ndim(state_dict[name]) == 2
    )
    if not found:
        raise ValueError(f"no Linear layers named {prefix}<i>.weight in the state dict")
    layers = []
    for _, name in found:
        bias_name = name[: -len("weight")] + "bias"
        if bias_name not in state_dict:
            raise ValueError(f"{name} has no {bias_name}")
        layers.append((np.asarray(state_dict[name]), np.asarray(state_dict[bias_name])))
    return layers


def write_safetensors(path, tensors, metadata):
    """Writes float32 tensors and string metadata in the safetensors format.

    The format is an 8-byte little-endian header length, a JSON header of dtype/shape/offsets
    (padded to 8 bytes), then the raw data; inferd reads it with the Rust safetensors crate.
    """
    header = {"__metadata__": {k: str(v) for k, v in metadata.items()}}
    blobs, offset = [], 0
    for name, array in tensors.items():
        data = np.ascontiguousarray(array, dtype="<f4").tobytes()
        header[name] = {
            "dtype": "F32",
            "shape": list(np.shape(array)),
            "data_offsets": [offset, offset + len(data)],
        }
        blobs.append(data)
        offset += len(data)
    encoded = json.dumps(header, separators=(",", ":")).encode()
    encoded += b" " * (-len(encoded) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(encoded)))
        f.write(encoded)
        for data in blobs:
            f.write(data)


def export(
    layers,
    path,
    activation="elu",
    obs_mean=None,
    obs_std=None,
    obs_eps=1e-8,
    action_scale=None,
    action_low=None,
    action_high=None,
    name="mlp",
    version="1",
):
    """Writes ``layers`` ([(weight [out, in], bias [out]), ...]) and the extras as a policy."""
    if activation not in ACTIVATIONS:
        raise ValueError(f"activation must be one of {ACTIVATIONS}")
    if (obs_mean is None) != (obs_std is None):
        raise ValueError("obs_mean and obs_std go together")
    if (action_low is None) != (action_high is None):
        raise ValueError("action_low and action_high go together")
    width_in = np.shape(layers[0][0])[1]
    width_out = np.shape(layers[-1][0])[0]
    tensors = {}
    for i, (weight, bias) in enumerate(layers):
        tensors[f"layers.{i}.weight"] = weight
        tensors[f"layers.{i}.bias"] = bias
    if obs_mean is not None:
        tensors["obs_mean"] = np.broadcast_to(np.asarray(obs_mean, np.float32), (width_in,))
        tensors["obs_std"] = np.broadcast_to(np.asarray(obs_std, np.float32), (width_in,))
    if action_scale is not None:
        tensors["action_scale"] = np.broadcast_to(np.asarray(action_scale, np.float32), (width_out,))
    if action_low is not None:
        tensors["action_low"] = np.broadcast_to(np.asarray(action_low, np.float32), (width_out,))
        tensors["action_high"] = np.broadcast_to(np.asarray(action_high, np.float32), (width_out,))
    metadata = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "activation": activation,
        "obs_eps": repr(float(obs_eps)),
        "name": name,
        "version": version,
        "input_name": "obs",
        "output_name": "actions",
    }
    write_safetensors(path, tensors, metadata)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("state_dict", help=".pt (torch) or .npz file")
    p.add_argument("output", help="the .safetensors file to write")
    p.add_argument("--activation", choices=ACTIVATIONS, default="elu")
    p.add_argument("--prefix", default=None, help="Linear layer key prefix (default: actor. if present)")
    p.add_argument("--obs-normalizer", default=None,
                   help="key prefix of an empirical normalizer holding _mean and _std (rsl_rl)")
    p.add_argument("--obs-eps", type=float, default=1e-8, help="added to std before dividing")
    p.add_argument("--action-scale", type=float, default=None)
    p.add_argument("--action-clip", type=float, default=None, help="clamp actions to [-X, X]")
    p.add_argument("--name", default="mlp")
    p.add_argument("--version", default="1")
    args = p.parse_args(argv)

    state_dict = load_state_dict(args.state_dict)
    layers = linear_layers(state_dict, args.prefix)
    mean = std = None
    if args.obs_normalizer:
        mean = state_dict[f"{args.obs_normalizer}._mean"].reshape(-1)
        std = state_dict[f"{args.obs_normalizer}._std"].reshape(-1)
    clip = args.action_clip
    export(
        layers,
        args.output,
        activation=args.activation,
        obs_mean=mean,
        obs_std=std,
        obs_eps=args.obs_eps,
        action_scale=args.action_scale,
        action_low=None if clip is None else -clip,
        action_high=None if clip is None else clip,
        name=args.name,
        version=args.version,
    )
    widths = [layers[0][0].shape[1]] + [w.shape[0] for w, _ in layers]
    print(f"wrote {args.output}: {'->'.join(map(str, widths))} {args.activation}", file=sys.stderr)


if __name__ == "__main__":
    main()
