#!/usr/bin/env python3
"""Turns a PyTorch MLP policy (a state dict) into inferd's built-in MLP format.

The output is a safetensors file: float32 tensors ``layers.{i}.weight`` ([out, in]) and
``layers.{i}.bias``, optional ``obs_mean``/``obs_std``, ``action_scale``,
``action_low``/``action_high``, and string metadata (format, activation, obs_eps, name,
version). See inferd's ``MlpPolicy::from_safetensors`` for the full contract.

By default the policy takes one float32 vector ``obs`` and answers one action vector
(``format_version`` 1, which every inferd reads). ``--inputs`` declares several named numeric
inputs instead: inferd converts each to float32, multiplies it by its ``scale`` (1/255 maps a
uint8 image to [0, 1]) and concatenates them in the listed order into the first layer's input,
so their sizes must add up to its width. ``--output-shape H,A`` answers an action chunk of H
steps of A values (the last layer gives H*A values, step after step); ``--action-clip`` and
the limits then hold per action value of a step. Either option writes ``format_version`` 2.

The state dict is read from a ``.pt`` file with ``torch.load(weights_only=True)`` (an rsl_rl
checkpoint's ``model_state_dict`` is found by itself) or from a ``.npz`` file of arrays.
Linear layers are the 2-D ``<prefix><index>.weight`` entries, in index order: for rsl_rl's
``ActorCritic`` the prefix is ``actor.`` (the default when such keys exist), for a bare
``nn.Sequential`` it is empty.

Examples::

    scripts/export_policy.py model_1500.pt policy.safetensors --activation elu \\
        --obs-normalizer actor_obs_normalizer --obs-eps 0.01 --action-scale 0.25 --action-clip 100
    scripts/export_policy.py weights.npz policy.safetensors --activation tanh --prefix net.
    scripts/export_policy.py manip.npz manip.safetensors --activation relu \\
        --inputs '[{"name": "image", "dtype": "|u1", "shape": [8, 8, 3], "scale": 0.00392156862745098},
                   {"name": "state", "dtype": "<f4", "shape": [8]}]' \\
        --output-shape 10,7 --action-clip 1
"""

import argparse
import json
import re
import struct
import sys

import numpy as np

FORMAT = "inferd-mlp"
FORMAT_VERSION = "1"
# Written when the policy declares named inputs or a chunked output.
FORMAT_VERSION_MULTI = "2"
ACTIVATIONS = ("elu", "relu", "tanh", "gelu")
# The numeric dtypes inferd converts to float32 for the built-in format (numpy's spelling).
INPUT_DTYPES = ("<f4", "<f2", "|u1", "|i1", "<i4", "<i8", "|b1")
INPUT_KEYS = {"name", "dtype", "shape", "scale"}


def check_inputs(inputs, width_in):
    """The input specs as inferd's metadata holds them, checked against the first layer.

    ``inputs`` is a list of dicts ``{"name", "dtype", "shape", "scale"?}``; raises ValueError
    naming the input at fault.
    """
    if not isinstance(inputs, list) or not inputs:
        raise ValueError("inputs must be a non-empty list of {name, dtype, shape, scale?}")
    specs, names, total = [], set(), 0
    for i, spec in enumerate(inputs):
        # A shape is checked after the dtype, so that a text input (which has none) is named
        # as text.
        if not isinstance(spec, dict) or not {"name", "dtype"} <= spec.keys():
            raise ValueError(f"input {i} must be a dict with name, dtype and shape")
        name = spec["name"]
        if unknown := sorted(spec.keys() - INPUT_KEYS):
            raise ValueError(f"input {name!r}: unknown keys {unknown}; allowed: {sorted(INPUT_KEYS)}")
        if not isinstance(name, str) or not name or name in names:
            raise ValueError(f"input {i}: name {name!r} is empty, not a string, or used twice")
        names.add(name)
        dtype = spec["dtype"]
        if dtype == "str":
            raise ValueError(
                f"input {name!r} is text; the built-in format takes numeric inputs only "
                "(export a TorchScript module for text inputs, see docs/models.md)"
            )
        if dtype not in INPUT_DTYPES:
            raise ValueError(f"input {name!r}: dtype {dtype!r} is none of {', '.join(INPUT_DTYPES)}")
        shape = spec.get("shape")
        if not isinstance(shape, list) or not all(isinstance(d, int) and d >= 1 for d in shape):
            raise ValueError(f"input {name!r}: shape {shape!r} must be a list of dimensions >= 1")
        out = {"name": name, "dtype": dtype, "shape": shape}
        if "scale" in spec:
            scale = float(spec["scale"])
            if not (np.isfinite(scale) and scale > 0):
                raise ValueError(f"input {name!r}: scale {scale} must be finite and positive")
            out["scale"] = scale
        specs.append(out)
        total += int(np.prod(shape, dtype=np.int64))
    if total != width_in:
        listed = ", ".join(f"{s['name']} {s['dtype']} {s['shape']}" for s in specs)
        raise ValueError(
            f"the inputs {listed} give {total} values per observation, "
            f"but the first layer takes {width_in}"
        )
    return specs


def check_output_shape(output_shape, width_out):
    """``output_shape`` as a list, [A] or [H, A], whose product is the last layer's width."""
    shape = [int(d) for d in output_shape]
    if not 1 <= len(shape) <= 2 or min(shape) < 1:
        raise ValueError(f"output shape {shape} must be [A] or [H, A] with dimensions >= 1")
    if int(np.prod(shape, dtype=np.int64)) != width_out:
        raise ValueError(f"output shape {shape} holds {int(np.prod(shape))} values, "
                         f"but the last layer gives {width_out}")
    return shape


def per_output(values, width_out, width, what):
    """``values`` as one float32 per output: given per output, per action value of a step
    (repeated for every step), or as one value for all."""
    v = np.asarray(values, np.float32).reshape(-1)
    if v.size == 1:
        return np.full(width_out, v[0], np.float32)
    if v.size == width_out:
        return v
    if v.size == width and width_out % width == 0:
        return np.tile(v, width_out // width)
    raise ValueError(f"{what} has {v.size} values, expected {width_out}, {width} or 1")


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
    inputs=None,
    output_shape=None,
):
    """Writes ``layers`` ([(weight [out, in], bias [out]), ...]) and the extras as a policy.

    ``inputs`` (a list of ``{"name", "dtype", "shape", "scale"?}``) declares named numeric
    inputs instead of the one float32 ``obs``; ``output_shape`` ([A] or [H, A]) the answer's
    shape. ``action_scale`` may be one value, one per action value of a step, or one per
    output; ``action_low``/``action_high`` one value or one per action value of a step.
    """
    if activation not in ACTIVATIONS:
        raise ValueError(f"activation must be one of {ACTIVATIONS}")
    if (obs_mean is None) != (obs_std is None):
        raise ValueError("obs_mean and obs_std go together")
    if (action_low is None) != (action_high is None):
        raise ValueError("action_low and action_high go together")
    width_in = np.shape(layers[0][0])[1]
    width_out = np.shape(layers[-1][0])[0]
    specs = None if inputs is None else check_inputs(inputs, width_in)
    shape = None if output_shape is None else check_output_shape(output_shape, width_out)
    # Values per action step: what the limits hold one pair per.
    width = width_out if shape is None else shape[-1]
    tensors = {}
    for i, (weight, bias) in enumerate(layers):
        tensors[f"layers.{i}.weight"] = weight
        tensors[f"layers.{i}.bias"] = bias
    if obs_mean is not None:
        tensors["obs_mean"] = np.broadcast_to(np.asarray(obs_mean, np.float32), (width_in,))
        tensors["obs_std"] = np.broadcast_to(np.asarray(obs_std, np.float32), (width_in,))
    if action_scale is not None:
        tensors["action_scale"] = per_output(action_scale, width_out, width, "action_scale")
    if action_low is not None:
        tensors["action_low"] = np.broadcast_to(np.asarray(action_low, np.float32), (width,))
        tensors["action_high"] = np.broadcast_to(np.asarray(action_high, np.float32), (width,))
    multi = specs is not None or shape is not None
    metadata = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION_MULTI if multi else FORMAT_VERSION,
        "activation": activation,
        "obs_eps": repr(float(obs_eps)),
        "name": name,
        "version": version,
        "output_name": "actions",
    }
    if specs is None:
        metadata["input_name"] = "obs"
    else:
        metadata["inputs"] = json.dumps(specs)
    if shape is not None:
        metadata["output_shape"] = json.dumps(shape)
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
    p.add_argument("--inputs", default=None, metavar="JSON",
                   help="named numeric inputs, concatenated in this order into the first layer: "
                        "a JSON list of {\"name\", \"dtype\", \"shape\", \"scale\"?}, or @FILE "
                        "holding one (default: one float32 input obs)")
    p.add_argument("--output-shape", default=None, metavar="H,A",
                   help="the answer's shape, e.g. 10,7 for a chunk of 10 steps of 7 values "
                        "(default: the last layer's width)")
    args = p.parse_args(argv)
    inputs = None
    if args.inputs is not None:
        text = args.inputs
        if text.startswith("@"):
            with open(text[1:]) as f:
                text = f.read()
        try:
            inputs = json.loads(text)
        except json.JSONDecodeError as e:
            p.error(f"--inputs is not JSON: {e}")
    output_shape = None
    if args.output_shape is not None:
        try:
            output_shape = [int(d) for d in args.output_shape.split(",")]
        except ValueError:
            p.error(f"--output-shape {args.output_shape!r} is not dimensions such as 10,7")

    state_dict = load_state_dict(args.state_dict)
    layers = linear_layers(state_dict, args.prefix)
    mean = std = None
    if args.obs_normalizer:
        mean = state_dict[f"{args.obs_normalizer}._mean"].reshape(-1)
        std = state_dict[f"{args.obs_normalizer}._std"].reshape(-1)
    clip = args.action_clip
    try:
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
            inputs=inputs,
            output_shape=output_shape,
        )
    except ValueError as e:
        p.error(str(e))
    widths = [layers[0][0].shape[1]] + [w.shape[0] for w, _ in layers]
    print(f"wrote {args.output}: {'->'.join(map(str, widths))} {args.activation}", file=sys.stderr)


if __name__ == "__main__":
    main()
