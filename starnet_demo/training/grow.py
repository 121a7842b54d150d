"""Grow a trained StarNet detector into a wider and deeper variant that computes the same function (Net2Net).

Chen, Goodfellow and Shlens, "Net2Net: Accelerating Learning via Knowledge Transfer" (ICLR 2016). timm's S3 is S1
made wider (24 → 32 channels per stage unit) plus one block, and S4 is S3 made deeper, so a trained S1 becomes an S3
or S4 that detects exactly as well, and training goes on from there instead of from scratch.

* Wider: new channel j of a stage copies old channel ``map[j]`` (the old channels map to themselves, the new ones to
  random old ones). Per-channel tensors (depthwise convs, BatchNorms, biases) are gathered with the map; every dense
  conv that reads a widened tensor gathers its input weights with the map and divides them by the number of copies
  of each source channel, so its output is unchanged. Inside a block, ``f1`` and ``f2`` share one hidden map, so that
  ``act(f1(x)) * f2(x)`` is copied too, and ``g`` divides by the hidden copies.
* Deeper: a new block is a copy of the stage's last block with its ``dwconv2`` (the last conv on the residual
  branch, without BatchNorm) set to zero, which makes the block the identity.

Copies stay copies under training (their gradients are equal), so ``noise`` adds Gaussian noise, as a fraction of
each dense conv's weight standard deviation, to break the symmetry; it costs a little of the starting accuracy.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from ultralytics.nn.tasks import DetectionModel

from ..models.yolo import ADAPTER_LAYERS, backbone, build_model, variant_of


@dataclass(frozen=True)
class _Map:
    """Which old channel each new channel copies, and how many copies each old channel has."""

    index: torch.Tensor
    counts: torch.Tensor

    @classmethod
    def identity(cls, n: int) -> _Map:
        return cls(torch.arange(n), torch.ones(n))

    @classmethod
    def widen(cls, old: int, new: int, generator: torch.Generator) -> _Map:
        index = torch.cat([torch.arange(old), torch.randint(0, old, (new - old,), generator=generator)])
        return cls(index, torch.bincount(index, minlength=old).float())


def _take(t: torch.Tensor, dim: int, m: _Map, divide: bool = False) -> torch.Tensor:
    out = t.index_select(dim, m.index)
    if divide:
        shape = [1] * t.dim()
        shape[dim] = -1
        out = out / m.counts[m.index].view(shape).to(t.dtype)
    return out


@torch.no_grad()
def _copy_conv(src: nn.Conv2d, dst: nn.Conv2d, out: _Map, inp: _Map | None) -> None:
    """A dense conv (``inp`` given: its input widened too) or a depthwise one (``inp`` None)."""
    w = _take(src.weight, 0, out)
    dst.weight.copy_(_take(w, 1, inp, divide=True) if inp is not None else w)
    if src.bias is not None:
        dst.bias.copy_(_take(src.bias, 0, out))


@torch.no_grad()
def _copy_bn(src: nn.BatchNorm2d, dst: nn.BatchNorm2d, out: _Map) -> None:
    for name in ("weight", "bias", "running_mean", "running_var"):
        getattr(dst, name).copy_(_take(getattr(src, name), 0, out))
    dst.num_batches_tracked.copy_(src.num_batches_tracked)


def _copy_convbn(src: nn.Module, dst: nn.Module, out: _Map, inp: _Map | None) -> None:
    _copy_conv(src.conv, dst.conv, out, inp)
    if hasattr(src, "bn"):
        _copy_bn(src.bn, dst.bn, out)


def _copy_block(src: nn.Module, dst: nn.Module, dim: _Map, generator: torch.Generator) -> None:
    """One star block, widened: its residual stream by ``dim``, its hidden width by a fresh shared map."""
    hidden = src.f1.conv.out_channels
    h = _Map.widen(hidden, dst.f1.conv.out_channels, generator)
    _copy_convbn(src.dwconv, dst.dwconv, dim, None)
    _copy_convbn(src.f1, dst.f1, h, dim)
    _copy_convbn(src.f2, dst.f2, h, dim)
    _copy_convbn(src.g, dst.g, dim, h)
    _copy_convbn(src.dwconv2, dst.dwconv2, dim, None)


def _shape(body: nn.Module) -> tuple[int, list[int], list[int]]:
    """Stem width, stage widths and stage depths of a timm StarNet."""
    stages = [getattr(body, f"stages_{i}") for i in range(4)]
    return body.stem_0.conv.out_channels, [s[0].conv.out_channels for s in stages], [len(s) - 1 for s in stages]


def check_growth(source: str, target: str) -> None:
    """Raise ValueError unless ``target`` is ``source`` made wider and/or deeper, which growth can preserve."""
    if source == target:
        raise ValueError(f"cannot grow {source} into itself")
    a, b = (_shape(backbone(build_model(v)).body) for v in (source, target))
    if a[0] != b[0]:
        raise ValueError(f"cannot grow {source} into {target}: their stems differ ({a[0]} vs {b[0]} channels)")
    for what, old, new in (("channels", a[1], b[1]), ("blocks", a[2], b[2])):
        if any(n < o for o, n in zip(old, new, strict=True)):
            raise ValueError(f"cannot grow {source} into {target}: {target} has fewer {what} per stage "
                             f"({'/'.join(map(str, new))} against {'/'.join(map(str, old))}), so the function "
                             "cannot be kept")


@torch.no_grad()
def grow(model: DetectionModel, target: str, noise: float = 0.0, seed: int = 0) -> DetectionModel:
    """``model`` (a YOLOv8-StarNet) as the bigger variant ``target``, computing the same function when ``noise`` is
    0. Everything after the backbone (adapters' outputs, SPPF, neck, head) is copied unchanged."""
    source = variant_of(model)
    check_growth(source, target)
    generator = torch.Generator().manual_seed(seed)
    grown = build_model(target, nc=len(model.names), names=model.names)
    own = {k: v for k, v in model.state_dict().items() if not k.startswith("model.0.")}
    adapters = {f"model.{i}.conv.weight" for i in ADAPTER_LAYERS}
    grown.load_state_dict({k: v for k, v in own.items() if k not in adapters}, strict=False)
    src, dst = backbone(model).body, backbone(grown).body
    dst.stem_0.load_state_dict(src.stem_0.state_dict())
    prev = _Map.identity(src.stem_0.conv.out_channels)
    maps = []
    for i in range(4):
        s_stage, d_stage = getattr(src, f"stages_{i}"), getattr(dst, f"stages_{i}")
        m = _Map.widen(s_stage[0].conv.out_channels, d_stage[0].conv.out_channels, generator)
        _copy_convbn(s_stage[0], d_stage[0], m, prev)
        for j in range(1, len(d_stage)):
            _copy_block(s_stage[min(j, len(s_stage) - 1)], d_stage[j], m, generator)
            if j >= len(s_stage):  # a new block: the identity until trained
                d_stage[j].dwconv2.conv.weight.zero_()
                d_stage[j].dwconv2.conv.bias.zero_()
        maps.append(m)
        prev = m
    for layer, m in zip(ADAPTER_LAYERS, maps[1:], strict=True):  # the adapters read P3/P4/P5 (stages 1-3)
        conv = grown.model[layer].conv
        conv.weight.copy_(_take(model.model[layer].conv.weight, 1, m, divide=True))
    if noise:
        parts = (dst.stages_0, dst.stages_1, dst.stages_2, dst.stages_3, *(grown.model[i] for i in ADAPTER_LAYERS))
        for conv in (c for part in parts for c in part.modules() if isinstance(c, nn.Conv2d) and c.groups == 1):
            w = conv.weight
            w.add_(torch.randn(w.shape, generator=generator) * (noise * float(w.std())))
    return grown.eval()
