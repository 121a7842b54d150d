"""One validation of a detection request's settings, for the app, its API and the CLI alike: every bad value fails
with an ``InputError`` (a ``ValueError``) that names the setting."""

from __future__ import annotations

import math
from typing import NamedTuple

from ..errors import InputError
from ..models.backbone import VARIANTS
from ..models.yolo import BASELINE
from . import devices
from .preprocess import check_imgsz

#: The image sizes the app serves, the UI slider's stops: each size costs an export and a compiled model per model
#: and runtime (tens of MB each, ``docs/operations.md``), so a request's size is snapped to one of a few.
SIZE_STEP = 64
SERVED_SIZES = tuple(range(2 * SIZE_STEP, 1280 + 1, SIZE_STEP))


def served_size(imgsz: int | float) -> int:
    """The served size nearest a valid image size (``check_imgsz``'s range), the larger one on a tie: 150 → 128,
    160 → 192, 1920 → 1280."""
    check_imgsz(imgsz)
    return min(SERVED_SIZES, key=lambda s: (abs(s - imgsz), -s))


class Settings(NamedTuple):
    variant: str
    device: str
    conf: float
    iou: float
    imgsz: int


def check_variant(variant: object) -> str:
    """``s1``, ``S1``, ``StarNet-S1`` → ``s1``; ``yolov8n`` is the reference model."""
    name = str(variant or "").lower().removeprefix("starnet-").removeprefix("starnet_")
    if name not in VARIANTS and name != BASELINE:
        raise InputError(f"unknown variant {variant!r:.40}; choose one of {', '.join([*VARIANTS, BASELINE])}")
    return name


def check_number(name: str, value: object, lo: float, hi: float) -> float:
    """A finite number from ``lo`` to ``hi`` (booleans and NaN refused), or an ``InputError`` naming the setting."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
            or not lo <= value <= hi:
        raise InputError(f"{name} must be a number from {lo} to {hi}, got {value!r:.40}")
    return float(value)


def check_int(name: str, value: object, lo: int, hi: int) -> int:
    """A whole number from ``lo`` to ``hi`` (a Slider may send 8.0), or a one-line ``InputError``."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not lo <= value <= hi or value != int(value):
        raise InputError(f"{name} must be a whole number from {lo} to {hi}, got {value!r:.40}")
    return int(value)


def check_settings(variant: object, device: object, conf: object, iou: object, imgsz: object) -> Settings:
    """Validated, normalised settings (the image size snapped to a served one: ``served_size``)."""
    return Settings(check_variant(variant), devices.normalise(device), check_number("confidence", conf, 0, 1),
                    check_number("IoU", iou, 0, 1), served_size(imgsz))


def class_ids(names: dict[int, str], classes: object) -> list[int] | None:
    """Class names (a filter) to a model's class ids; no names means every class."""
    if not classes:
        return None
    if isinstance(classes, str):
        classes = [classes]
    if not isinstance(classes, (list, tuple)) or not all(isinstance(c, str) for c in classes):
        raise InputError(f"classes must be a list of class names, got {classes!r:.80}")
    ids = {name: i for i, name in names.items()}
    unknown = [c for c in classes if c not in ids]
    if unknown:
        raise InputError(f"unknown class(es) {unknown}; this model knows {len(ids)} COCO classes")
    return [ids[c] for c in classes]
