"""Average the weights of models that share a starting point ("model soup", Wortsman et al. 2022).

Checkpoints along one run, or the ends of runs from the same weights, lie in one basin; their uniform mean can score
above each of them at no training cost (``docs/training/s1-soups.json``). Members are our weights (``sX.json``) or
ultralytics training checkpoints (``.pt``, whose EMA is used, as ultralytics exports it). The mean is taken in fp32.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from ultralytics.nn.tasks import DetectionModel

from ..models.yolo import build_model, variant_of
from ..weights.files import load_weights
from .train import checkpoint_ema


def _member(source: str | Path) -> DetectionModel:
    return checkpoint_ema(source) if str(source).endswith(".pt") else load_weights(source)[0]


def soup(members: Sequence[str | Path]) -> DetectionModel:
    """The uniform mean of two or more models of one variant. Integer buffers (BatchNorm's batch counters) are not
    averaged: the first member's are kept."""
    if len(members) < 2:
        raise ValueError("a soup needs at least two members")
    models = [_member(m) for m in members]
    variants = {variant_of(m) for m in models}
    if len(variants) != 1:
        raise ValueError(f"a soup's members must share one variant, got {', '.join(sorted(variants))}")
    states = [{k: v.float() if v.is_floating_point() else v for k, v in m.state_dict().items()} for m in models]
    mean = {k: sum(s[k] for s in states) / len(states) if v.is_floating_point() else v for k, v in states[0].items()}
    names = models[0].names
    model = build_model(variants.pop(), nc=len(names), names=names)
    with torch.no_grad():
        model.load_state_dict(mean)
    return model.eval()
