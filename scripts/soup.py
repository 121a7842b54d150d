"""Average the weights of models that share a starting point ("model soup", Wortsman et al. 2022).

Checkpoints along one run, or the ends of runs from the same weights, lie in one basin; their uniform mean can score
above each of them at no training cost. This is how ``docs/training/s1-soups.json`` was made:

    PYTHONPATH=. python scripts/soup.py s1 /tmp/soup weights/s1.json runs/x-s1-distill/weights/epoch{0,1,2,3}.pt

Members are our weights (``sX.json``) or ultralytics training checkpoints (``.pt``, whose EMA is used, as ultralytics
exports it). The mean is taken in fp32 and saved as the project's fp16 weights, ready for
``python -m starnet_demo eval --variant sX --weights /tmp/soup/sX.json --against weights``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from starnet_demo.models.yolo import build_model
from starnet_demo.training.train import checkpoint_ema
from starnet_demo.weights.files import load_weights, save_weights


def member_state(source: str) -> tuple[dict[str, torch.Tensor], dict[int, str]]:
    """A member's tensors in fp32 and its class names, from our weights or a training checkpoint."""
    model = checkpoint_ema(source) if source.endswith(".pt") else load_weights(source)[0]
    return {k: v.float() if v.is_floating_point() else v for k, v in model.state_dict().items()}, model.names


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("variant")
    parser.add_argument("out", type=Path, help="folder for the soup's weights")
    parser.add_argument("members", nargs="+", help="weights configs (.json) or training checkpoints (.pt)")
    args = parser.parse_args()
    if len(args.members) < 2:
        parser.error("a soup needs at least two members")
    states, names = zip(*(member_state(m) for m in args.members), strict=True)
    # Integer buffers (BatchNorm's batch counters) are not averaged: the first member's are kept.
    mean = {k: sum(s[k] for s in states) / len(states) if v.is_floating_point() else v for k, v in states[0].items()}
    model = build_model(args.variant, nc=len(names[0]), names=names[0])
    model.load_state_dict(mean)
    print(save_weights(model, args.out, {"imgsz": 640, "soup_of": list(args.members)}))


if __name__ == "__main__":
    main()
