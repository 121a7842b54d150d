"""Pictures of the star operation: ``act(f1(x))``, ``f2(x)`` and their product in one StarNet block, for one image.

The tensors come from ``Detector.star_maps`` (the image letterboxed as the detector sees it, the maps cropped to the
picture), and OpenCV colormaps turn each map into an RGB tile for a ``gr.Gallery``: the product's mean over the
image, then per tensor its channel mean and the most energetic channels.
"""

from __future__ import annotations

import cv2
import numpy as np
import torch

from ..models.star import StarMaps

TENSORS = (("act_f1", "act(f1(x))"), ("f2", "f2(x)"), ("star", "act(f1(x)) * f2(x)"))
TILE = 256  # long side of a gallery tile, in pixels


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
