"""The one letterbox: what every runtime, the star maps, CAM and the tests feed the network.

Ultralytics' ``LetterBox`` scales an image to fit a shape (square ``imgsz``, or for video the smallest stride-multiple
rectangle, ultralytics' rect mode) and pads it with grey 114, centred. ``content_box`` says where the picture sits in
the padded shape, so that maps computed on the letterbox can be cropped back to the picture.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
import torch
from ultralytics.data.augment import LetterBox

from ..errors import InputError

STRIDE = 32
MAX_IMGSZ = 1920
Shape = tuple[int, int]


def check_imgsz(imgsz: int | float) -> int:
    """Round up to a multiple of the stride, as ultralytics does; reject sizes no model runs at."""
    if isinstance(imgsz, bool) or not isinstance(imgsz, (int, float)) or imgsz != imgsz:  # NaN is not equal to itself
        raise InputError(f"image size must be a number from {STRIDE} to {MAX_IMGSZ}, got {imgsz!r:.40}")
    if not STRIDE <= imgsz <= MAX_IMGSZ:
        raise InputError(f"image size must be a number from {STRIDE} to {MAX_IMGSZ}, got {imgsz}")
    return -(-int(imgsz) // STRIDE) * STRIDE


def rect_shape(image_hw: Shape, imgsz: int) -> Shape:
    """The smallest stride-multiple ``(h, w)`` holding the image scaled to fit ``imgsz``, as ultralytics' rect mode."""
    h, w = image_hw
    r = min(imgsz / h, imgsz / w)
    return (-(-max(round(h * r), 1) // STRIDE) * STRIDE, -(-max(round(w * r), 1) // STRIDE) * STRIDE)


#: Short sides of a rect letterbox, as fractions of ``imgsz``: 4:3 and 16:9 frames fit exactly, any other aspect
#: ratio takes the next one up. So a stream of odd videos shares a few shapes, each of which costs an export and a
#: compiled model, instead of minting one per aspect ratio.
RECT_BUCKETS = (0.25, 0.5625, 0.75, 1.0)


def rect_bucket(image_hw: Shape, imgsz: int) -> Shape:
    """``rect_shape`` with each side rounded up to the next of ``RECT_BUCKETS`` (at most 7 shapes per ``imgsz``)."""
    sides = [-(-round(imgsz * f) // STRIDE) * STRIDE for f in RECT_BUCKETS]
    h, w = rect_shape(image_hw, imgsz)
    return next(s for s in sides if s >= h), next(s for s in sides if s >= w)


def letterbox(image: np.ndarray, shape: int | Shape = 640) -> np.ndarray:
    """``image`` (any channel order, ``uint8`` HWC) scaled to fit ``shape`` and padded, as the detector sees it."""
    shape = (shape, shape) if isinstance(shape, int) else tuple(shape)
    return LetterBox(shape, auto=False, stride=STRIDE)(image=image)


def blob(letterboxed: np.ndarray) -> np.ndarray:
    """HWC uint8 → 1×3×H×W float32 in [0, 1], in one OpenCV pass (the pixels are already RGB)."""
    return cv2.dnn.blobFromImage(letterboxed, scalefactor=1 / 255)


def to_tensor(letterboxed: np.ndarray) -> torch.Tensor:
    """A letterboxed RGB ``uint8`` image as a ``(1, 3, H, W)`` float tensor in [0, 1]."""
    return torch.from_numpy(np.ascontiguousarray(letterboxed.transpose(2, 0, 1))).unsqueeze(0).float() / 255


def content_box(shape_hw: Shape, imgsz: int | Shape) -> tuple[int, int, int, int]:
    """``(top, left, height, width)`` of a ``shape_hw`` picture inside its letterbox, placed as ``LetterBox`` does."""
    th, tw = (imgsz, imgsz) if isinstance(imgsz, int) else imgsz
    h, w = shape_hw
    r = min(th / h, tw / w)
    nh, nw = round(h * r), round(w * r)
    return round((th - nh) / 2 - 0.1), round((tw - nw) / 2 - 0.1), nh, nw


@dataclass(frozen=True)
class Square:
    """An image letterboxed to an ``imgsz`` square, as ``Detector.detect`` sees it, and where the picture sits in it:
    the input of the views that run a detector's PyTorch model themselves (star maps, star or sum, CAM)."""

    image: np.ndarray
    box: tuple[int, int, int, int]  # content_box: top, left, height, width

    @property
    def size(self) -> int:
        return self.image.shape[0]

    @property
    def picture(self) -> np.ndarray:
        """The letterboxed image without its padding."""
        top, left, h, w = self.box
        return self.image[top: top + h, left: left + w]

    def tensor(self, model: torch.nn.Module) -> torch.Tensor:
        """``to_tensor`` on ``model``'s device and in its dtype."""
        p = next(model.parameters())
        return to_tensor(self.image).to(p.device, p.dtype)


def square(image: np.ndarray, imgsz: int) -> Square:
    """``image`` letterboxed to a square of ``imgsz`` (checked and rounded up to the stride)."""
    size = check_imgsz(imgsz)
    return Square(letterbox(image, size), content_box(image.shape[:2], size))
