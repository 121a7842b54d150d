"""Pictures of the star operation: ``act(f1(x))``, ``f2(x)`` and their product in one StarNet block, for one image.

The image is letterboxed exactly as the detector does it (ultralytics' ``LetterBox`` to a square ``imgsz``), the
tensors come from ``star.capture_star`` on the detector's PyTorch model, and OpenCV colormaps turn each map into an
RGB tile for a ``gr.Gallery``: the product's mean over the image, then per tensor its channel mean and the most
energetic channels.
"""

from __future__ import annotations

import math
from contextlib import AbstractContextManager, nullcontext

import cv2
import numpy as np
import torch
from ultralytics.data.augment import LetterBox
from ultralytics.nn.tasks import DetectionModel

from .detector import STRIDE, check_imgsz
from .star import StarMaps, capture_star

TENSORS = (("act_f1", "act(f1(x))"), ("f2", "f2(x)"), ("star", "act(f1(x)) * f2(x)"))
TILE = 256  # long side of a gallery tile, in pixels


def letterbox(rgb: np.ndarray, imgsz: int = 640) -> np.ndarray:
    """The RGB image as the detector sees it."""
    size = check_imgsz(imgsz)
    return LetterBox((size, size), auto=False, stride=STRIDE)(image=rgb)


def heatmap(values: torch.Tensor | np.ndarray, size_wh: tuple[int, int], colormap: int = cv2.COLORMAP_INFERNO,
            smooth: bool = False) -> np.ndarray:
    """A 2-D map, min-max scaled, coloured and resized to ``size_wh``, as RGB ``uint8``."""
    a = values.numpy() if isinstance(values, torch.Tensor) else np.asarray(values, dtype=np.float32)
    lo, hi = float(a.min()), float(a.max())
    scaled = ((a - lo) / (hi - lo) * 255 if hi > lo else np.zeros_like(a)).astype(np.uint8)
    scaled = cv2.resize(scaled, size_wh, interpolation=cv2.INTER_LINEAR if smooth else cv2.INTER_NEAREST)
    return cv2.cvtColor(cv2.applyColorMap(scaled, colormap), cv2.COLOR_BGR2RGB)


def overlay(rgb: np.ndarray, values: torch.Tensor, alpha: float = 0.5) -> np.ndarray:
    """``values`` as a smooth heatmap blended over ``rgb`` (same field of view)."""
    h, w = rgb.shape[:2]
    return cv2.addWeighted(rgb, 1 - alpha, heatmap(values, (w, h), smooth=True), alpha, 0)


def _tile_size(h: int, w: int) -> tuple[int, int]:
    scale = TILE / max(h, w)
    return max(1, round(w * scale)), max(1, round(h * scale))


def content_box(shape_hw: tuple[int, int], imgsz: int) -> tuple[int, int, int, int]:
    """``(top, left, height, width)`` of the picture inside the letterboxed square, placed as ``LetterBox`` does."""
    h, w = shape_hw
    r = min(imgsz / h, imgsz / w)
    nh, nw = round(h * r), round(w * r)
    return round((imgsz - nh) / 2 - 0.1), round((imgsz - nw) / 2 - 0.1), nh, nw


def crop(maps: StarMaps, box: tuple[int, int, int, int], imgsz: int) -> StarMaps:
    """The maps over the picture only: the padding's flat grey would otherwise set the colour scale."""
    top, left, h, w = box
    stride = imgsz / maps.shape[1]
    rows = slice(math.floor(top / stride), math.ceil((top + h) / stride))
    cols = slice(math.floor(left / stride), math.ceil((left + w) / stride))
    return StarMaps(maps.key, *(getattr(maps, n)[:, rows, cols] for n in ("act_f1", "f2", "star")))


def capture(model: DetectionModel, rgb: np.ndarray, key: str, imgsz: int = 640,
            lock: AbstractContextManager | None = None) -> tuple[np.ndarray, StarMaps]:
    """Run ``model`` once on ``rgb`` as the detector sees it, with the star hooks on block ``key``.

    Returns the letterboxed picture without its padding, and the block's maps over that picture.
    """
    size = check_imgsz(imgsz)
    boxed = letterbox(rgb, size)
    p = next(model.parameters())
    x = torch.from_numpy(np.ascontiguousarray(boxed.transpose(2, 0, 1))).unsqueeze(0).to(p.device, p.dtype) / 255
    with lock or nullcontext():
        _, maps = capture_star(model, x, keys=[key])
    top, left, h, w = box = content_box(rgb.shape[:2], size)
    return boxed[top: top + h, left: left + w], crop(maps[key], box, size)


def gallery(boxed: np.ndarray, maps: StarMaps, top_k: int = 3) -> list[tuple[np.ndarray, str]]:
    """Gallery items ``(image, caption)``: the overlay, then per tensor its channel mean and ``top_k`` channels."""
    c, h, w = maps.shape
    size = _tile_size(h, w)
    star_mean = maps.star.mean(0)
    items = [(overlay(boxed, star_mean), f"block {maps.key}: mean of act(f1(x)) * f2(x) over the image "
                                         f"({c} channels, {w}×{h} grid)")]
    for which, title in TENSORS:
        t = getattr(maps, which)
        items.append((heatmap(t.mean(0), size), f"{title}: mean of {c} channels"))
        energy = maps.energy(which)
        for ch in maps.top_channels(top_k, which):
            items.append((heatmap(t[ch], size), f"{title}: channel {ch} (energy {energy[ch]:.3g})"))
    return items
