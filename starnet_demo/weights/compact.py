"""Compact tensors for the weights files: the large convolution weights as int8 with one scale per output channel.

The committed weights were fp16 already (about 55 MB for S1-S4), which left no room in a 64 MiB upload to a GPU
machine for training images. 8-bit storage of the big dense and depthwise kernels halves that. Which tensors stay
fp16 was measured on the held-out split (``docs/training/weights-int8.json``): on S1, int8 everywhere cost 0.007
mAP50; keeping the stem (whose BatchNorm amplifies some channels 27x), the class-score convs and the small tensors in
fp16 kept it within 0.002 of its fp16 figures. A ``scope`` narrows packing further for a model that needs it.

A packed tensor ``k`` is stored as ``k`` (int8) plus ``k`` + ``SCALE`` (float32, one per output channel), and
``unpack`` gives back float32: the model a weights file describes is the dequantized one, the one evaluated.
"""

from __future__ import annotations

import re

import torch

#: Key suffix of a packed tensor's scales; ":" never occurs in a state-dict key, so it cannot clash.
SCALE = ":scale"
#: Tensors smaller than this stay fp16: they are a few percent of the bytes and include the most sensitive ones.
MIN_ELEMENTS = 16384
#: The StarNet stem and Detect's class-score convs (``cv3.<level>.2``) stay fp16.
KEEP = re.compile(r"\.stem_\d+\.|\.cv3\.\d+\.2\.")
#: Scopes that ``experiments/compact_weights.py`` tries in turn: every packable tensor, all but the Detect head's, then
#: the backbone's only (S2's neck and head lost 0.009 mAP50 as int8, its backbone nothing).
SCOPES = ("", r"^model\.(?!20\.)", r"^model\.0\.")


def describe(scope: str = "") -> str:
    where = f" whose key matches {scope!r}" if scope else ""
    return (f"int8 with a float32 scale per output channel for conv weights of {MIN_ELEMENTS}+ elements{where} "
            "(except the stem and the class-score convs), float16 otherwise")


def packable(key: str, tensor: torch.Tensor, scope: str = "") -> bool:
    return (tensor.is_floating_point() and tensor.ndim >= 2 and tensor.numel() >= MIN_ELEMENTS
            and not KEEP.search(key) and re.search(scope, key) is not None)


def pack(state: dict[str, torch.Tensor], dtype: torch.dtype = torch.float16,
         scope: str = "") -> dict[str, torch.Tensor]:
    """``state`` with packable tensors (of keys matching ``scope``) as int8 + scales, the other floats as ``dtype``."""
    out: dict[str, torch.Tensor] = {}
    for key, tensor in state.items():
        tensor = tensor.detach().cpu()
        if packable(key, tensor, scope):
            flat = tensor.float().reshape(tensor.shape[0], -1)
            scale = flat.abs().amax(dim=1).clamp_min(1e-12) / 127
            out[key] = torch.round(flat / scale[:, None]).clamp(-127, 127).to(torch.int8).reshape(tensor.shape)
            out[key + SCALE] = scale
        else:
            out[key] = tensor.to(dtype) if tensor.is_floating_point() else tensor
    return {k: v.contiguous() for k, v in out.items()}


def unpack(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A state dict as stored (packed or not) → plain tensors, packed ones dequantized to float32."""
    out = {}
    for key, tensor in state.items():
        if key.endswith(SCALE):
            continue
        scale = state.get(key + SCALE)
        if scale is not None:
            tensor = (tensor.float().reshape(tensor.shape[0], -1) * scale.float()[:, None]).reshape(tensor.shape)
        out[key] = tensor
    return out
