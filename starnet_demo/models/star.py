"""Seeing the star operation: ``act(f1(x)) * f2(x)`` in every StarNet block, from one ordinary forward pass.

Forward hooks on each block's ``act`` (its output is ``act(f1(x))``) and ``f2``, and a pre-hook on ``g`` (its input is
the product), record the three tensors while the detector runs; the hooks are removed before returning.
``swapped_to_sum`` uses the same three hooks to replace the product by a sum (``explain/swap.py``).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from ultralytics.nn.tasks import DetectionModel

from .backbone import blocks
from .yolo import backbone


@dataclass
class StarMaps:
    """One block's tensors for one image, each ``(C, H, W)`` on the CPU in float32."""

    key: str  # "stage.block", e.g. "2.5"
    act_f1: torch.Tensor
    f2: torch.Tensor
    star: torch.Tensor

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.star.shape)

    def energy(self, which: str = "star") -> torch.Tensor:
        """Per-channel mean square of ``act_f1``, ``f2`` or ``star``: how active each channel is."""
        t = getattr(self, which)
        return (t * t).mean(dim=(1, 2))

    def top_channels(self, k: int = 4, which: str = "star") -> list[int]:
        return self.energy(which).topk(min(k, self.shape[0])).indices.tolist()

    def crop(self, box: tuple[int, int, int, int], input_hw: tuple[int, int]) -> StarMaps:
        """The maps over ``box`` (``top, left, height, width`` in input pixels) only: over a letterbox's picture, so
        that the padding's flat grey does not set the colour scale."""
        top, left, h, w = box
        sy, sx = input_hw[0] / self.shape[1], input_hw[1] / self.shape[2]
        rows = slice(math.floor(top / sy), math.ceil((top + h) / sy))
        cols = slice(math.floor(left / sx), math.ceil((left + w) / sx))
        return StarMaps(self.key, *(getattr(self, n)[:, rows, cols] for n in ("act_f1", "f2", "star")))


def block_keys(model: DetectionModel) -> list[str]:
    """``stage.block`` keys of every star block, in forward order."""
    return list(blocks(backbone(model)))


@torch.no_grad()
def capture_star(model: DetectionModel, image: torch.Tensor,
                 keys: list[str] | None = None) -> tuple[torch.Tensor, dict[str, StarMaps]]:
    """Run ``model`` once on a ``(1, 3, H, W)`` image; return its predictions and the star tensors per block."""
    if image.ndim != 4 or image.shape[0] != 1:
        raise ValueError(f"expected one image shaped (1, 3, H, W), got {tuple(image.shape)}")
    wanted = blocks(backbone(model))
    if keys is not None:
        unknown = sorted(set(keys) - set(wanted))
        if unknown:
            raise ValueError(f"unknown block(s) {unknown}; this model has {list(wanted)}")
        wanted = {k: wanted[k] for k in keys}
    seen: dict[str, dict[str, torch.Tensor]] = {k: {} for k in wanted}

    def keep(key: str, name: str, tensor: torch.Tensor) -> None:
        seen[key][name] = tensor[0].detach().float().cpu()

    handles = []
    for key, block in wanted.items():
        handles += [
            block.act.register_forward_hook(lambda m, a, out, k=key: keep(k, "act_f1", out)),
            block.f2.register_forward_hook(lambda m, a, out, k=key: keep(k, "f2", out)),
            block.g.register_forward_pre_hook(lambda m, a, k=key: keep(k, "star", a[0])),
        ]
    try:
        preds = model(image)
    finally:
        for h in handles:
            h.remove()
    return preds, {k: StarMaps(k, v["act_f1"], v["f2"], v["star"]) for k, v in seen.items()}


@contextmanager
def swapped_to_sum(model: DetectionModel, keys: Iterable[str]) -> Iterator[list[str]]:
    """Inside the ``with``, the named star blocks feed ``g`` with ``act(f1(x)) + f2(x)`` instead of the product: the
    paper's sum ablation, on trained weights and without retraining. Yields the keys, in forward order.

    Forward hooks keep each block's ``act`` and ``f2`` outputs and a pre-hook on ``g`` hands it their sum, so the
    result is exactly the sum block (the product is still computed, then dropped), fused or not; a ``capture_star``
    started inside the ``with`` records the sum as ``star`` in those blocks. The hooks are removed on exit.
    """
    every = blocks(backbone(model))
    keys = list(dict.fromkeys(str(k) for k in ([keys] if isinstance(keys, str) else keys)))
    unknown = [k for k in keys if k not in every]
    if unknown:
        raise ValueError(f"unknown block(s) {unknown}; this model has {list(every)}")
    handles = []
    for key in (k for k in every if k in keys):
        block, kept = every[key], {}
        handles += [
            block.act.register_forward_hook(lambda m, a, out, kept=kept: kept.__setitem__("act_f1", out)),
            block.f2.register_forward_hook(lambda m, a, out, kept=kept: kept.__setitem__("f2", out)),
            block.g.register_forward_pre_hook(lambda m, a, kept=kept: (kept.pop("act_f1") + kept.pop("f2"),)),
        ]
    try:
        yield [k for k in every if k in keys]
    finally:
        for h in handles:
            h.remove()
