"""Exact graph rewrites for inference: same function, fewer operations.

1. **Fold every BatchNorm.** timm's ``ConvBN`` pairs are ultralytics ``Conv`` modules (see ``backbone.py``), so
   ultralytics' own ``DetectionModel.fuse()`` folds them with the neck's and head's; ``fold_batchnorms`` runs it and
   checks that no ``BatchNorm2d`` is left.
2. **Merge each star block's ``f1`` and ``f2``.** Both are 1×1 convolutions of the same input, so one convolution with
   their weights stacked (twice the output channels) followed by a split computes both in one pass. The block becomes
   a ``MergedStarBlock``, a subclass of timm's ``Block`` whose forward reads ``f12``; everything else (timm's
   ``act(f1) * f2`` star, ``g``, ``dwconv2``, the residual) is unchanged, and it traces and exports like any module.

``optimise`` applies both to a copy; ``star.py``'s hooks need ``f1``/``f2`` and so run on the original model.
"""

from __future__ import annotations

import copy

import torch
from timm.models.starnet import Block
from torch import nn
from ultralytics.nn.tasks import DetectionModel

from .backbone import StarNetBackbone, blocks

REWRITES = ("none", "fold", "fold+merge")


class MergedStarBlock(Block):
    """timm's StarNet ``Block`` with ``f1`` and ``f2`` computed by one convolution ``f12``."""

    f12: nn.Conv2d

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        residual = x
        x1, x2 = self.f12(self.dwconv(x)).chunk(2, dim=1)
        x = self.act(x1) * x2
        x = self.dwconv2(self.g(x))
        return residual + self.drop_path(x)


def _conv(module: nn.Module) -> nn.Conv2d:
    """The ``nn.Conv2d`` of a timm ``ConvBN`` without BatchNorm (f1/f2 have none)."""
    if isinstance(module, nn.Conv2d):
        return module
    if hasattr(module, "bn"):
        raise ValueError("f1/f2 unexpectedly carry a BatchNorm; fold it first")
    return module.conv


def merge_block(block: Block) -> MergedStarBlock:
    """Turn one timm ``Block`` into a ``MergedStarBlock`` in place (its ``f1``/``f2`` are removed)."""
    f1, f2 = _conv(block.f1), _conv(block.f2)
    if (f1.kernel_size, f1.stride, f1.padding, f1.groups) != ((1, 1), (1, 1), (0, 0), 1) or \
            f1.weight.shape != f2.weight.shape:
        raise ValueError("f1 and f2 must be matching ungrouped 1x1 convolutions")
    bias = f1.bias is not None
    f12 = nn.Conv2d(f1.in_channels, 2 * f1.out_channels, 1, bias=bias, device=f1.weight.device,
                    dtype=f1.weight.dtype)
    with torch.no_grad():
        f12.weight.copy_(torch.cat([f1.weight, f2.weight]))
        if bias:
            f12.bias.copy_(torch.cat([f1.bias, f2.bias]))
    del block.f1, block.f2
    block.f12 = f12
    block.__class__ = MergedStarBlock
    return block


def merge_star_pairs(model: DetectionModel) -> int:
    """Merge ``f1``/``f2`` in every star block of a YOLOv8-StarNet; returns how many (0 for the YOLOv8n baseline)."""
    first = model.model[0]
    if not isinstance(first, StarNetBackbone):
        return 0
    todo = [b for b in blocks(first).values() if not isinstance(b, MergedStarBlock)]
    for block in todo:
        merge_block(block)
    return len(todo)


def fold_batchnorms(model: DetectionModel) -> DetectionModel:
    """Fold every BatchNorm into its convolution with ultralytics' ``fuse()``; fails if any is left."""
    model.fuse(verbose=False)
    left = [name for name, m in model.named_modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if left:
        raise RuntimeError(f"BatchNorm left after fuse(): {left[:3]}")
    return model


def optimise(model: DetectionModel, rewrite: str = "fold+merge") -> DetectionModel:
    """An eval-mode copy of ``model`` with the given rewrites applied (``none``, ``fold`` or ``fold+merge``)."""
    if rewrite not in REWRITES:
        raise ValueError(f"unknown rewrite {rewrite!r}; choose from {', '.join(REWRITES)}")
    out = copy.deepcopy(model).eval()
    for p in out.parameters():
        p.requires_grad_(False)
    if rewrite != "none":
        fold_batchnorms(out)
    if rewrite == "fold+merge":
        merge_star_pairs(out)
    return out
