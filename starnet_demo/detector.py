"""A loaded detector: one variant, on one device, with one runtime, returning ``supervision.Detections``.

Prediction (letterbox, inference, NMS) is ultralytics' predictor; this class adds weight resolution, a lock (ultralytics
models are not thread-safe), and a cache so that each (variant, device, runtime) is loaded once per process.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import supervision as sv

from .model import BASELINE, as_yolo, build_model
from .weights import load_weights, resolve_local


@dataclass(frozen=True)
class Timings:
    """Per-image milliseconds, as ultralytics measures them."""

    preprocess_ms: float
    inference_ms: float
    postprocess_ms: float

    @property
    def total_ms(self) -> float:
        return self.preprocess_ms + self.inference_ms + self.postprocess_ms


class Detector:
    """Thread-safe ``detect(image) -> (Detections, Timings)`` for one variant, device and runtime."""

    def __init__(self, variant: str, device: str = "cpu", runtime: str = "pytorch", imgsz: int = 640):
        if runtime != "pytorch":
            raise ValueError(f"unknown runtime {runtime!r}")
        self.variant, self.device, self.runtime, self.imgsz = variant, device, runtime, imgsz
        if variant == BASELINE:
            model, self.config = build_model(BASELINE).eval(), {"variant": BASELINE, "trained": False}
        else:
            model, self.config = load_weights(resolve_local(variant))
        self.model = model
        self.names: dict[int, str] = dict(model.names)
        self._yolo = as_yolo(model)
        self._lock = threading.Lock()

    def detect(self, image: np.ndarray, conf: float = 0.25, iou: float = 0.45, imgsz: int | None = None,
               classes: list[int] | None = None) -> tuple[sv.Detections, Timings]:
        """Detect objects in an RGB ``uint8`` image of shape ``(H, W, 3)``."""
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise ValueError(f"expected an RGB uint8 image (H, W, 3), got {image.dtype} {image.shape}")
        with self._lock:
            result = self._yolo.predict(np.ascontiguousarray(image[..., ::-1]), conf=conf, iou=iou,
                                        imgsz=imgsz or self.imgsz, device=self.device, classes=classes,
                                        verbose=False)[0]
        speed = result.speed
        return sv.Detections.from_ultralytics(result), Timings(speed["preprocess"], speed["inference"],
                                                               speed["postprocess"])


@lru_cache(maxsize=32)
def get_detector(variant: str, device: str = "cpu", runtime: str = "pytorch", imgsz: int = 640) -> Detector:
    """The process-wide Detector for these settings, loaded on first use."""
    return Detector(variant, device, runtime, imgsz)
