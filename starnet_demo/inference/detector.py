"""A loaded detector: one variant, on one device, with one runtime, returning ``supervision.Detections``.

Every runtime except ``ultralytics`` shares one pipeline: ultralytics' ``LetterBox`` to a square ``imgsz`` →
the runtime's forward pass (``runtimes.py``) → ultralytics' NMS and box rescaling. So runtimes differ only in how the
network is computed, and their detections agree. ``ultralytics`` is ultralytics' own ``YOLO.predict`` on the PyTorch
model, kept as the baseline the benchmark compares against.

Detectors are cached per (variant, device, runtime, imgsz, precision) and hold a lock: neither ultralytics models nor
compiled runtimes' requests are thread-safe.
"""

from __future__ import annotations

import copy
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np
import supervision as sv
import torch
from ultralytics.nn.tasks import DetectionModel
from ultralytics.utils import nms, ops

from ..models.star import StarMaps, capture_star
from ..models.yolo import as_yolo, build_model
from ..weights.files import WeightsError, load_weights
from ..weights.hub import resolve
from .preprocess import Shape, check_imgsz, letterbox, rect_shape, square
from .runtimes import Backend, Progress, check_precision, default_rewrite, is_cuda, load_backend, resolve_runtime


@dataclass(frozen=True)
class Timings:
    """Per-image milliseconds."""

    preprocess_ms: float
    inference_ms: float
    postprocess_ms: float

    @property
    def total_ms(self) -> float:
        return self.preprocess_ms + self.inference_ms + self.postprocess_ms


def normalise_device(device: str) -> str:
    """``0`` → ``cuda:0``; ``cpu``, ``cuda`` and ``cuda:N`` pass through."""
    device = str(device).strip().lower()
    return f"cuda:{device}" if device.isdigit() else device


def _check_rgb(image: np.ndarray) -> None:
    if not isinstance(image, np.ndarray) or image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        got = f"{image.dtype} {image.shape}" if isinstance(image, np.ndarray) else type(image).__name__
        raise ValueError(f"expected an RGB uint8 image (H, W, 3), got {got}")
    if min(image.shape[:2]) < 1:
        raise ValueError(f"empty image {image.shape}")


def load_model(variant: str, allow_untrained: bool = False):
    """(model, config) for a variant: the pinned Hub release, verified, else the weights folder (``hub.resolve``);
    config ``source`` says which, ``notice`` why not the Hub (one line for the UI; None when it was used).

    Without weights, a model with ``allow_untrained`` (the benchmark's timing only) is built untrained from a fixed
    seed, so that their exports are cached across processes; config ``trained`` is False.
    """
    try:
        resolved = resolve(variant)
    except WeightsError:
        if not allow_untrained:
            raise
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            model = build_model(variant).eval()
        return model, {"variant": variant, "trained": False}
    model, config = load_weights(resolved.path)
    return model, {**config, "source": resolved.source, "notice": resolved.notice}


class Detector:
    """Thread-safe ``detect(image) -> (Detections, Timings)`` for one variant, device and runtime.

    ``runtime`` is one of ``runtimes.RUNTIMES`` or ``auto`` (the fastest for the device; ``self.runtime`` says which).
    ``precision`` defaults to the runtime's default for the device (``self.precision``), ``rewrite`` to the rewrites
    that pay on the runtime (``runtimes.BEST_REWRITE``; ``rewrite.REWRITES``). ``progress(fraction, desc=…)``
    hears about export and compilation, which happen once per input shape (see ``prepare``).

    Inputs are letterboxed to a square ``imgsz``; ``detect(..., rect=True)`` letterboxes to the smallest rectangle
    instead (ultralytics' rect mode: 640×480 for a 4:3 video, a quarter fewer pixels), which suits video, whose frames
    all share one shape. Each new shape costs one export on the exported runtimes.
    """

    def __init__(self, variant: str, device: str = "cpu", runtime: str = "pytorch", imgsz: int = 640,
                 precision: str | None = None, rewrite: str | None = None, progress: Progress | None = None,
                 allow_untrained: bool = False):
        self.device = normalise_device(device)
        self.runtime = resolve_runtime(runtime, self.device)
        self.precision = check_precision(self.runtime, self.device, precision, variant)
        self.variant, self.imgsz, self.rewrite = variant, check_imgsz(imgsz), rewrite or default_rewrite(self.runtime)
        self.model, self.config = load_model(variant, allow_untrained)
        self.names: dict[int, str] = dict(self.model.names)
        self._backends: dict[Shape, Backend] = {}
        self._lock = threading.Lock()
        self._cuda = is_cuda(self.device)
        if self.runtime == "ultralytics":
            self._yolo = as_yolo(copy.deepcopy(self.model))  # its predictor fuses the model in place: keep ours intact
        else:
            self.prepare(self.imgsz, progress)

    @property
    def trained(self) -> bool:
        return self.config.get("trained", True)

    @property
    def notice(self) -> str | None:
        """Why the weights are not the pinned Hub release (a fallback to local weights), or None."""
        return self.config.get("notice")

    def __repr__(self) -> str:
        return f"Detector({self.variant}, {self.device}, {self.runtime}, {self.precision}, imgsz={self.imgsz})"

    def prepare(self, imgsz: int | None = None, progress: Progress | None = None,
                image_hw: tuple[int, int] | None = None) -> None:
        """Build the runtime for ``imgsz`` now (export, compile, capture), so a later ``detect`` does not wait.

        ``image_hw`` prepares the rect shape for images of that size instead of the square.
        """
        if self.runtime == "ultralytics":
            return
        size = check_imgsz(imgsz or self.imgsz)
        with self._lock:
            self._backend(rect_shape(image_hw, size) if image_hw else (size, size), progress)

    def _backend(self, shape: Shape, progress: Progress | None = None) -> Backend:
        if shape not in self._backends:
            self._backends[shape] = load_backend(self.model, self.runtime, self.device, shape, self.precision,
                                                 self.rewrite, progress)
        return self._backends[shape]

    def _clock(self) -> float:
        if self._cuda:
            torch.cuda.synchronize(self.device)
        return time.perf_counter()

    def detect(self, image: np.ndarray, conf: float = 0.25, iou: float = 0.45, imgsz: int | None = None,
               classes: list[int] | None = None, max_det: int = 300, rect: bool = False
               ) -> tuple[sv.Detections, Timings]:
        """Detect objects in an RGB ``uint8`` image of shape ``(H, W, 3)``."""
        _check_rgb(image)
        size = check_imgsz(imgsz or self.imgsz)
        with self._lock:
            if self.runtime == "ultralytics":
                return self._detect_ultralytics(image, conf, iou, size, classes, max_det)
            shape = rect_shape(image.shape[:2], size) if rect else (size, size)
            backend = self._backend(shape)
            t0 = self._clock()
            letterboxed = letterbox(image, shape)
            x = backend.prepare(letterboxed)
            t1 = self._clock()
            preds = backend(x)
            t2 = self._clock()
            detections = self.to_detections(preds, shape, image.shape[:2], conf, iou, classes, max_det)
            t3 = self._clock()
        return detections, Timings((t1 - t0) * 1e3, (t2 - t1) * 1e3, (t3 - t2) * 1e3)

    def star_maps(self, image: np.ndarray, block: str, imgsz: int | None = None) -> tuple[np.ndarray, StarMaps]:
        """``act(f1(x))``, ``f2(x)`` and their product in star block ``block`` (``"stage.index"``) for an RGB image
        letterboxed as ``detect`` does it: the picture without its padding, and the maps over that picture. It runs
        the PyTorch model, which every detector keeps whatever its runtime."""
        _check_rgb(image)
        sq = square(image, imgsz or self.imgsz)
        with self.pytorch() as model:
            _, maps = capture_star(model, sq.tensor(model), keys=[str(block)])
        return sq.picture, maps[str(block)].crop(sq.box, (sq.size, sq.size))

    @contextmanager
    def pytorch(self) -> Iterator[DetectionModel]:
        """The eager PyTorch model (every detector keeps it unfused, with each block's ``f1`` and ``f2``, whatever
        its runtime), held under the detector's lock for the ``with``: explanations hook into it and run it
        themselves (``explain``), and no other request may run it or register hooks meanwhile."""
        with self._lock:
            yield self.model

    def to_detections(self, preds: torch.Tensor | tuple, shape: Shape, image_hw: tuple[int, int], conf: float = 0.25,
                      iou: float = 0.45, classes: list[int] | None = None, max_det: int = 300) -> sv.Detections:
        """``detect``'s postprocessing, for callers that run the model themselves (``pytorch``): NMS on the raw
        predictions for a ``shape`` letterbox of an ``image_hw`` image, boxes scaled back to the image."""
        preds = preds[0] if isinstance(preds, (tuple, list)) else preds
        det = nms.non_max_suppression(preds.float(), conf, iou, classes, max_det=max_det)[0]
        det[:, :4] = ops.scale_boxes(shape, det[:, :4], image_hw)
        return self._to_supervision(det.cpu().numpy())

    def _to_supervision(self, det: np.ndarray) -> sv.Detections:
        """``[x1, y1, x2, y2, conf, cls]`` rows → Detections with ``class_name``, as ``from_ultralytics`` makes."""
        class_id = det[:, 5].astype(int)
        return sv.Detections(xyxy=det[:, :4].astype(np.float32), confidence=det[:, 4].astype(np.float32),
                             class_id=class_id,
                             data={"class_name": np.array([self.names[int(c)] for c in class_id], dtype=object)})

    def _detect_ultralytics(self, image: np.ndarray, conf: float, iou: float, size: int,
                            classes: list[int] | None, max_det: int) -> tuple[sv.Detections, Timings]:
        # rect=False: the same square letterbox as the other runtimes, so detections and timings compare like for like
        result = self._yolo.predict(np.ascontiguousarray(image[..., ::-1]), conf=conf, iou=iou, imgsz=size,
                                    device=self.device, classes=classes, max_det=max_det, rect=False, verbose=False,
                                    **({"quantize": 16} if self.precision == "fp16" else {}))[0]
        speed = result.speed
        return sv.Detections.from_ultralytics(result), Timings(speed["preprocess"], speed["inference"],
                                                               speed["postprocess"])


_detectors: dict[tuple, Detector] = {}
_key_locks: dict[tuple, threading.Lock] = {}
_registry_lock = threading.Lock()


def get_detector(variant: str, device: str = "cpu", runtime: str = "pytorch", imgsz: int = 640,
                 precision: str | None = None, progress: Progress | None = None) -> Detector:
    """The process-wide Detector for these settings, loaded on first use (``progress`` hears about that load).

    ``auto`` and explicit names share one detector: the key holds the resolved runtime and precision.
    """
    device = normalise_device(device)
    resolved = resolve_runtime(runtime, device)
    key: tuple[Any, ...] = (variant, device, resolved, check_imgsz(imgsz),
                            check_precision(resolved, device, precision, variant))
    with _registry_lock:
        if key in _detectors:
            return _detectors[key]
        lock = _key_locks.setdefault(key, threading.Lock())
    with lock:  # one load per key; other keys load in parallel
        if key not in _detectors:
            _detectors[key] = Detector(variant, device, resolved, imgsz, key[4], progress=progress)
        return _detectors[key]


def clear_detectors() -> None:
    """Forget every cached detector (tests; freeing memory)."""
    with _registry_lock:
        _detectors.clear()
