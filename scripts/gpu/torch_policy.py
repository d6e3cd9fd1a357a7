"""inferd's built-in MLP policy format as a PyTorch module.

``InferdMlp.from_file(path)`` reads a policy file (safetensors, the format of
``scripts/export_policy.py``) into an ``nn.Module`` that computes what inferd's cpu and cuda
backends compute: ``(x - mean) / (std + eps)``, Linear layers with the activation between
them, then the action scale. Scripted with ``torch.jit.script`` it is a module inferd's torch
backend serves: ``forward`` maps ``[rows, input_size]`` to ``[rows, output_size]``, and the
exported ``inferd_metadata()`` gives the signature (see inferd/src/backend/torch.rs).
"""

import json
import struct
from typing import Dict

import numpy as np
import torch
from torch import nn

ACTIVATIONS = {"elu": nn.ELU, "relu": nn.ReLU, "tanh": nn.Tanh, "gelu": nn.GELU}


def read_safetensors(path):
    """(name -> float32 array, metadata dict) from a safetensors file of F32 tensors."""
    with open(path, "rb") as f:
        (header_len,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(header_len))
        data = f.read()
    metadata = header.pop("__metadata__", {})
    tensors = {}
    for name, info in header.items():
        if info["dtype"] != "F32":
            raise ValueError(f"{name} is {info['dtype']}, expected F32")
        start, end = info["data_offsets"]
        tensors[name] = np.frombuffer(data[start:end], dtype="<f4").reshape(info["shape"])
    return tensors, metadata


class InferdMlp(nn.Module):
    """The built-in MLP format; see the module docstring."""

    meta: Dict[str, str]
    normalize: bool
    obs_eps: float

    def __init__(self, tensors, metadata):
        super().__init__()
        count = sum(1 for k in tensors if k.startswith("layers.") and k.endswith(".weight"))
        activation = ACTIVATIONS[metadata.get("activation", "elu")]
        modules = []
        for i in range(count):
            weight = torch.from_numpy(np.array(tensors[f"layers.{i}.weight"]))
            bias = torch.from_numpy(np.array(tensors[f"layers.{i}.bias"]))
            linear = nn.Linear(weight.shape[1], weight.shape[0])
            with torch.no_grad():
                linear.weight.copy_(weight)
                linear.bias.copy_(bias)
            modules.append(linear)
            if i + 1 < count:
                modules.append(activation())
        self.net = nn.Sequential(*modules)
        n_in = modules[0].in_features
        n_out = modules[-1].out_features
        self.normalize = "obs_mean" in tensors
        self.obs_eps = float(metadata.get("obs_eps", "1e-8"))
        mean = tensors.get("obs_mean", np.zeros(n_in, np.float32))
        std = tensors.get("obs_std", np.ones(n_in, np.float32))
        scale = tensors.get("action_scale", np.ones(n_out, np.float32))
        self.register_buffer("obs_mean", torch.from_numpy(np.array(mean)))
        self.register_buffer("obs_std", torch.from_numpy(np.array(std)))
        self.register_buffer("action_scale", torch.from_numpy(np.array(scale)).expand(n_out).clone())
        self.meta = {
            "name": metadata.get("name", "mlp"),
            "version": metadata.get("version", "1"),
            "input_name": metadata.get("input_name", "obs"),
            "output_name": metadata.get("output_name", "actions"),
            "input_size": str(n_in),
            "output_size": str(n_out),
        }
        if "action_low" in tensors:
            self.meta["action_low"] = ",".join(repr(float(v)) for v in tensors["action_low"])
            self.meta["action_high"] = ",".join(repr(float(v)) for v in tensors["action_high"])

    @classmethod
    def from_file(cls, path):
        return cls(*read_safetensors(path))

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        if self.normalize:
            obs = (obs - self.obs_mean) / (self.obs_std + self.obs_eps)
        return self.net(obs) * self.action_scale

    @torch.jit.export
    def inferd_metadata(self) -> Dict[str, str]:
        return self.meta
