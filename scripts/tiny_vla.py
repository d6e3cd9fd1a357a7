#!/usr/bin/env python3
"""The tiny VLA: a small vision-language-action policy of the DROID shape, for inferd's torch
backend tests and ``scripts/bench.sh vla``.

Two uint8 camera images ``[S, S, 3]`` (``observation/exterior_image_1_left`` and
``observation/wrist_image_left``), a float32 state ``[8]`` (``observation/state``) and a
``prompt`` (at most 256 bytes) in; an action chunk ``actions`` float32 ``[10, 7]`` out. The
architecture is the one fixed in issue 12's benchmark: both cameras through one shared CNN
(conv 5x5 stride 2 to 32 channels, 3x3 stride 2 to 64, 3x3 stride 2 to 128, ReLU after each,
global average pool); the two image features, the state and a prompt embedding (a 256-entry
embedding bag over the prompt's characters, ``ord(c) % 256``) concatenated, then an MLP
(512, 512, ReLU) to the 70 outputs. Its weights are PyTorch's default initialization after
``torch.manual_seed(seed)``, so a seed gives the same policy every time.

    scripts/tiny_vla.py OUT.pt [--image-size S (224)] [--seed N (0)]
                        [--reference OUT.json [--observations K (8)]]

writes the TorchScript module (inferd's convention, through ``scripts/export_torchscript.py``)
and, with ``--reference``, ``K`` different observations, each with the actions PyTorch's eager
forward gives for it alone, plus observation 0 again under another prompt (``variant``).
Importable: ``from tiny_vla import TinyVla, export``.
"""

import argparse
import json
import os
import sys
from typing import Dict, List

import numpy as np
import torch
from torch import nn

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import export_torchscript  # noqa: E402  (scripts/export_torchscript.py)

EXTERIOR = "observation/exterior_image_1_left"
WRIST = "observation/wrist_image_left"
STATE = "observation/state"
PROMPT = "prompt"
STATE_SIZE = 8
PROMPT_MAX_BYTES = 256
STEPS, ACTION_SIZE = 10, 7
PROMPT_FEATURES = 128
OUTPUTS = [{"name": "actions", "dtype": "<f4", "shape": [STEPS, ACTION_SIZE]}]

PROMPTS = [
    "pick up the red cup",
    "open the top drawer",
    "put the marker in the bowl",
    "close the laptop",
    "wipe the table with the towel",
    "stack the blue block on the green one",
    "push the button",
    "hand me the screwdriver",
    "fold the cloth in half",
    "turn the faucet off",
]


def inputs(image_size=224):
    """The tiny VLA's inputs, as export_torchscript.export takes them."""
    image = {"dtype": "|u1", "shape": [image_size, image_size, 3]}
    return [
        {"name": EXTERIOR, **image},
        {"name": WRIST, **image},
        {"name": STATE, "dtype": "<f4", "shape": [STATE_SIZE]},
        {"name": PROMPT, "dtype": "str", "max_bytes": PROMPT_MAX_BYTES},
    ]


class TinyVla(nn.Module):
    """The tiny VLA; see the module docstring. ``forward(tensors, texts)`` takes the inputs
    stacked ``[n, ...]`` (images uint8) and returns ``{"actions": [n, 10, 7]}``."""

    def __init__(self, image_size=224):
        super().__init__()
        self.image_size = image_size
        self.encoder = nn.Sequential(
            nn.Conv2d(3, 32, 5, stride=2, padding=2),
            nn.ReLU(),
            nn.Conv2d(32, 64, 3, stride=2, padding=1),
            nn.ReLU(),
            nn.Conv2d(64, 128, 3, stride=2, padding=1),
            nn.ReLU(),
        )
        self.prompt_embedding = nn.EmbeddingBag(256, PROMPT_FEATURES, mode="mean")
        self.head = nn.Sequential(
            nn.Linear(2 * 128 + STATE_SIZE + PROMPT_FEATURES, 512),
            nn.ReLU(),
            nn.Linear(512, 512),
            nn.ReLU(),
            nn.Linear(512, STEPS * ACTION_SIZE),
        )

    def forward(
        self, tensors: Dict[str, torch.Tensor], texts: Dict[str, List[str]]
    ) -> Dict[str, torch.Tensor]:
        # Literal names: TorchScript cannot read the module's str constants.
        exterior = tensors["observation/exterior_image_1_left"]
        wrist = tensors["observation/wrist_image_left"]
        n = exterior.shape[0]
        # Both cameras in one call of the shared encoder; uint8 HWC to float CHW in [0, 1].
        images = torch.cat([exterior, wrist], 0).permute(0, 3, 1, 2).float() / 255.0
        features = self.encoder(images).mean(dim=[2, 3])
        ids: List[int] = []
        offsets: List[int] = []
        for prompt in texts["prompt"]:
            offsets.append(len(ids))
            for c in prompt:
                ids.append(ord(c) % 256)
        device = exterior.device
        words = self.prompt_embedding(
            torch.tensor(ids, dtype=torch.long, device=device),
            torch.tensor(offsets, dtype=torch.long, device=device),
        )
        x = torch.cat([features[:n], features[n:], tensors["observation/state"], words], 1)
        return {"actions": self.head(x).reshape(n, 10, 7)}


def make(image_size=224, seed=0):
    """The eager tiny VLA of ``seed``, in eval mode."""
    torch.manual_seed(seed)
    return TinyVla(image_size).eval()


def export(path, image_size=224, seed=0):
    """Writes the tiny VLA of ``seed`` to ``path`` as a TorchScript module in inferd's
    convention; returns (eager module, scripted module)."""
    policy = make(image_size, seed)
    scripted = export_torchscript.export(
        policy,
        inputs=inputs(image_size),
        outputs=OUTPUTS,
        action_output="actions",
        path=path,
        name="tiny-vla",
        version=str(seed),
    )
    return policy, scripted


def observations(count, image_size, seed=0):
    """``count`` different observations: (images, images, states, prompts) as numpy / str."""
    rng = np.random.default_rng(seed + 1000)
    shape = (count, image_size, image_size, 3)
    exterior = rng.integers(0, 256, shape, dtype=np.uint8)
    wrist = rng.integers(0, 256, shape, dtype=np.uint8)
    state = rng.uniform(-1, 1, (count, STATE_SIZE)).astype(np.float32)
    prompts = [PROMPTS[i % len(PROMPTS)] + (f" #{i}" if i >= len(PROMPTS) else "") for i in range(count)]
    return exterior, wrist, state, prompts


def actions(policy, exterior, wrist, state, prompt):
    """The eager policy's actions for one observation alone, float32 [10, 7]."""
    with torch.no_grad():
        out = policy(
            {
                EXTERIOR: torch.from_numpy(exterior[None].copy()),
                WRIST: torch.from_numpy(wrist[None].copy()),
                STATE: torch.from_numpy(state[None].copy()),
            },
            {PROMPT: [prompt]},
        )
    return out["actions"][0].numpy()


def reference(policy, count, image_size, seed=0):
    """``count`` observations with their actions, and observation 0 under another prompt, as
    JSON-ready dicts (arrays flattened, row-major)."""
    exterior, wrist, state, prompts = observations(count, image_size, seed)

    def entry(i, prompt):
        return {
            EXTERIOR: exterior[i].reshape(-1).tolist(),
            WRIST: wrist[i].reshape(-1).tolist(),
            STATE: [float(v) for v in state[i]],
            PROMPT: prompt,
            "actions": [float(v) for v in actions(policy, exterior[i], wrist[i], state[i], prompt).reshape(-1)],
        }

    return {
        "image_size": image_size,
        "observations": [entry(i, prompts[i]) for i in range(count)],
        "variant": entry(0, "do something else entirely"),
    }


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("out", help="the TorchScript file to write")
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--reference", help="also write observations and their eager actions here (JSON)")
    p.add_argument("--observations", type=int, default=8)
    args = p.parse_args(argv)
    policy, _ = export(args.out, args.image_size, args.seed)
    if args.reference:
        with open(args.reference, "w") as f:
            json.dump(reference(policy, args.observations, args.image_size, args.seed), f)
    print(f"wrote {args.out}" + (f" and {args.reference}" if args.reference else ""), file=sys.stderr)


if __name__ == "__main__":
    main()
