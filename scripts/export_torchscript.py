#!/usr/bin/env python3
"""Exports a PyTorch policy as a TorchScript module that inferd's torch backend serves.

Your module's forward takes the observation as two dicts and returns a dict:

    def forward(self, tensors: Dict[str, Tensor], texts: Dict[str, List[str]]) -> Dict[str, Tensor]

``tensors`` holds each tensor input stacked ``[n, ...shape]`` in its wire dtype (a uint8 image
stays uint8: convert it yourself), ``texts`` one list of ``n`` strings per text input, and it
returns every output ``[n, ...shape]`` by name. It must be ``torch.jit.script``-able.
``export()`` checks it against the signature you declare, wraps it into inferd's convention
and saves it:

    from export_torchscript import export
    export(policy,
           inputs=[{"name": "observation/image", "dtype": "|u1", "shape": [224, 224, 3]},
                   {"name": "observation/state", "dtype": "<f4", "shape": [8]},
                   {"name": "prompt", "dtype": "str", "max_bytes": 256}],
           outputs=[{"name": "actions", "dtype": "<f4", "shape": [10, 7]}],
           action_output="actions", path="policy.pt", name="my-policy", version="3")

inferd's convention, which the saved module follows (docs/models.md):

- ``inferd_metadata() -> Dict[str, str]``: ``name``, ``version``, ``inputs`` and ``outputs``
  (JSON lists of ``{"name", "dtype", "shape"}``; text inputs ``"dtype": "str"`` and
  ``max_bytes``), ``action_output``, and optionally ``action_low``/``action_high``
  (comma-separated, one per action value: ``A`` of ``[H, A]``).
- ``forward(self, tensors: Dict[str, Tensor], t_1: List[str], ..., t_k: List[str]) ->
  Dict[str, Tensor]``: the text inputs come positionally, one ``List[str]`` each, in the order
  of ``inputs``, because libtorch's C++ API, which inferd calls, cannot build a typed
  ``Dict[str, List[str]]`` argument. The wrapper turns them back into your ``texts`` dict.
- ``forward_dicts(tensors, texts)``: your forward as it is, for calling the saved module from
  Python (``torch.jit.load("policy.pt").forward_dicts(...)``).

Run as a script, it exports the tiny VLA of ``scripts/tiny_vla.py`` as an example:

    scripts/export_torchscript.py OUT.pt [--image-size 224] [--seed 0]
"""

import argparse
import json
import os
import sys
from typing import Dict, List

import torch
from torch import nn

# numpy's dtype strings, as inferd's wire and signature spell them, and torch's dtypes.
DTYPES = {
    "<f4": torch.float32,
    "<f2": torch.float16,
    "|u1": torch.uint8,
    "|i1": torch.int8,
    "<i4": torch.int32,
    "<i8": torch.int64,
    "|b1": torch.bool,
}
TEXT = "str"
DEFAULT_MAX_TEXT_BYTES = 1024
# The wrappers below take up to this many text inputs (TorchScript has no *args).
MAX_TEXT_INPUTS = 4


class _Wrap0(nn.Module):
    """A policy with no text input, in inferd's convention."""

    meta: Dict[str, str]
    text_names: List[str]

    def __init__(self, policy, meta, text_names):
        super().__init__()
        self.policy = policy
        self.meta = meta
        self.text_names = text_names

    def forward(self, tensors: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
        texts: Dict[str, List[str]] = {}
        return self.policy(tensors, texts)

    @torch.jit.export
    def forward_dicts(
        self, tensors: Dict[str, torch.Tensor], texts: Dict[str, List[str]]
    ) -> Dict[str, torch.Tensor]:
        return self.policy(tensors, texts)

    @torch.jit.export
    def inferd_metadata(self) -> Dict[str, str]:
        return self.meta


class _Wrap1(_Wrap0):
    """A policy with one text input."""

    def forward(
        self, tensors: Dict[str, torch.Tensor], t1: List[str]
    ) -> Dict[str, torch.Tensor]:
        texts: Dict[str, List[str]] = {self.text_names[0]: t1}
        return self.policy(tensors, texts)


class _Wrap2(_Wrap0):
    """A policy with two text inputs."""

    def forward(
        self, tensors: Dict[str, torch.Tensor], t1: List[str], t2: List[str]
    ) -> Dict[str, torch.Tensor]:
        texts: Dict[str, List[str]] = {self.text_names[0]: t1, self.text_names[1]: t2}
        return self.policy(tensors, texts)


class _Wrap3(_Wrap0):
    """A policy with three text inputs."""

    def forward(
        self, tensors: Dict[str, torch.Tensor], t1: List[str], t2: List[str], t3: List[str]
    ) -> Dict[str, torch.Tensor]:
        texts: Dict[str, List[str]] = {
            self.text_names[0]: t1,
            self.text_names[1]: t2,
            self.text_names[2]: t3,
        }
        return self.policy(tensors, texts)


class _Wrap4(_Wrap0):
    """A policy with four text inputs."""

    def forward(
        self,
        tensors: Dict[str, torch.Tensor],
        t1: List[str],
        t2: List[str],
        t3: List[str],
        t4: List[str],
    ) -> Dict[str, torch.Tensor]:
        texts: Dict[str, List[str]] = {
            self.text_names[0]: t1,
            self.text_names[1]: t2,
            self.text_names[2]: t3,
            self.text_names[3]: t4,
        }
        return self.policy(tensors, texts)


WRAPPERS = [_Wrap0, _Wrap1, _Wrap2, _Wrap3, _Wrap4]


def _check_specs(inputs, outputs, action_output, action_low, action_high):
    """Refuses, with a message naming it, what inferd would refuse at load."""
    names = set()
    for spec in inputs:
        name, dtype = spec["name"], spec["dtype"]
        if name in names:
            raise ValueError(f"two inputs are named {name!r}")
        names.add(name)
        if "scale" in spec:
            raise ValueError(f"input {name!r}: scale is the built-in format's; convert in forward")
        if dtype == TEXT:
            if spec.get("shape", []) != [] or int(spec.get("max_bytes", 1)) < 1:
                raise ValueError(f"text input {name!r} has no shape and max_bytes >= 1")
        elif dtype not in DTYPES:
            raise ValueError(f"input {name!r}: dtype {dtype!r} is none of {list(DTYPES)} or 'str'")
        elif any(int(d) < 1 for d in spec["shape"]):
            raise ValueError(f"input {name!r}: every dimension must be at least 1")
    texts = [s for s in inputs if s["dtype"] == TEXT]
    if len(texts) > MAX_TEXT_INPUTS:
        raise ValueError(f"at most {MAX_TEXT_INPUTS} text inputs; got {len(texts)}")
    by_name = {}
    for spec in outputs:
        if spec["name"] in by_name:
            raise ValueError(f"two outputs are named {spec['name']!r}")
        if spec["dtype"] not in DTYPES:
            raise ValueError(f"output {spec['name']!r}: dtype {spec['dtype']!r} is none of {list(DTYPES)}")
        by_name[spec["name"]] = spec
    action = by_name.get(action_output)
    if action is None:
        raise ValueError(f"the action output {action_output!r} is not one of the outputs")
    if action["dtype"] != "<f4" or len(action["shape"]) not in (1, 2):
        raise ValueError(f"the action output {action_output!r} must be '<f4' of shape [A] or [H, A]")
    if (action_low is None) != (action_high is None):
        raise ValueError("action_low and action_high come together")
    width = action["shape"][-1]
    for limit in (action_low, action_high):
        if limit is not None and len(limit) != width:
            raise ValueError(f"action limits need {width} values (A of the action output)")


def example_inputs(inputs, rows, generator=None):
    """Random tensors and texts of the signature for ``rows`` observations: (tensors, texts)."""
    tensors, texts = {}, {}
    for spec in inputs:
        if spec["dtype"] == TEXT:
            texts[spec["name"]] = [f"example {i}" for i in range(rows)]
            continue
        shape = [rows] + list(spec["shape"])
        dtype = DTYPES[spec["dtype"]]
        if dtype.is_floating_point:
            t = torch.rand(shape, generator=generator).to(dtype)
        elif dtype == torch.bool:
            t = torch.randint(0, 2, shape, generator=generator).bool()
        else:
            t = torch.randint(0, 100, shape, generator=generator).to(dtype)
        tensors[spec["name"]] = t
    return tensors, texts


def call(module, tensors, texts, inputs):
    """Calls a module of inferd's convention as inferd does: texts positionally, in the order
    of ``inputs``."""
    return module(tensors, *[texts[s["name"]] for s in inputs if s["dtype"] == TEXT])


def _check_outputs(got, outputs, rows, what):
    if set(got) != {s["name"] for s in outputs}:
        raise ValueError(f"{what} returned outputs {sorted(got)}; the signature has {[s['name'] for s in outputs]}")
    for spec in outputs:
        t = got[spec["name"]]
        want = [rows] + list(spec["shape"])
        if t.dtype != DTYPES[spec["dtype"]] or list(t.shape) != want:
            raise ValueError(
                f"{what} returned {spec['name']!r} as {t.dtype} {list(t.shape)}; the signature "
                f"says {spec['dtype']} {want}"
            )


def export(
    module,
    inputs,
    outputs,
    path,
    action_output="actions",
    name="policy",
    version="1",
    action_low=None,
    action_high=None,
):
    """Wraps ``module`` into inferd's convention, checks it, saves it to ``path``, and returns
    the scripted module.

    ``inputs``: list of ``{"name", "dtype", "shape"}`` (dtype a numpy string such as ``"|u1"``)
    or ``{"name", "dtype": "str", "max_bytes"}``; ``outputs``: list of ``{"name", "dtype",
    "shape"}``; ``action_output``: the output the safety filter acts on, float32 ``[A]`` or
    ``[H, A]``; ``action_low``/``action_high``: optional bounds, ``A`` values each.
    """
    inputs = [dict(s) for s in inputs]
    outputs = [dict(s) for s in outputs]
    for spec in inputs:
        if spec["dtype"] == TEXT:
            spec.setdefault("max_bytes", DEFAULT_MAX_TEXT_BYTES)
            spec.setdefault("shape", [])
    _check_specs(inputs, outputs, action_output, action_low, action_high)
    meta = {
        "name": str(name),
        "version": str(version),
        "inputs": json.dumps(inputs),
        "outputs": json.dumps(outputs),
        "action_output": action_output,
    }
    if action_low is not None:
        meta["action_low"] = ",".join(repr(float(v)) for v in action_low)
        meta["action_high"] = ",".join(repr(float(v)) for v in action_high)
    text_names = [s["name"] for s in inputs if s["dtype"] == TEXT]
    module = module.eval()
    wrapper = WRAPPERS[len(text_names)](module, meta, text_names)
    scripted = torch.jit.script(wrapper)
    # The scripted module, called as inferd calls it, must give what the eager one gives, in
    # the declared names, dtypes and shapes, for one observation and for a batch.
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for rows in (1, 3):
            tensors, texts = example_inputs(inputs, rows, generator)
            got = call(scripted, tensors, texts, inputs)
            _check_outputs(got, outputs, rows, "the scripted module")
            want = module(tensors, texts)
            for spec in outputs:
                if not torch.allclose(got[spec["name"]].float(), want[spec["name"]].float(), rtol=1e-4, atol=1e-5):
                    raise ValueError(f"the scripted module's {spec['name']!r} differs from the eager module's")
    scripted.save(path)
    return scripted


def main(argv=None):
    p = argparse.ArgumentParser(description="Exports the tiny VLA (scripts/tiny_vla.py) as an example.")
    p.add_argument("out", help="the TorchScript file to write, e.g. tiny_vla.pt")
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import tiny_vla  # noqa: E402  (scripts/tiny_vla.py)

    torch.manual_seed(args.seed)
    policy = tiny_vla.TinyVla(args.image_size)
    export(
        policy,
        inputs=tiny_vla.inputs(args.image_size),
        outputs=tiny_vla.OUTPUTS,
        action_output="actions",
        path=args.out,
        name="tiny-vla",
        version=str(args.seed),
    )
    print(f"wrote {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
