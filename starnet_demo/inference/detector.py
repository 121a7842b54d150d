"""A loaded detector: one resolved ``ModelSpec`` (variant, device, runtime, precision, …), returning
``supervision.Detections``.

Every runtime except ``ultralytics`` shares one pipeline: ultralytics' ``LetterBox`` to a square ``imgsz`` (or, for
video and webcam frames, one of a few rectangles: ``preprocess.rect_bucket``) → the runtime's forward pass
(``backends``) → ultralytics' NMS and box rescaling. So runtimes differ only in how the network is computed, and their
detections agree. ``ultralytics`` is ultralytics' own ``YOLO.predict`` on the PyTorch model, kept as the baseline the
benchmark compares against.

Detectors and their per-shape backends live in one bounded pool (``pool.ModelPool``), keyed on the spec; the
detectors of a spec share a lock: neither ultralytics models nor compiled runtimes' requests are thread-safe.
"""

from __future__ import annotations

import contextlib
import copy
import threading
import time
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np
import supervision as sv
import torch
from ultralytics.nn.tasks import DetectionModel
from ultralytics.utils import nms, ops

from ..errors import InputError
from ..models.star import StarMaps, capture_star
from ..models.yolo import as_yolo, build_model
from ..weights.files import build
from ..weights.hub import forget_located
from .backends import Backend, load_backend
from .pool import ModelPool
from .preprocess import Shape, check_imgsz, letterbox, rect_bucket, square
from .runtimes import EXPORT_FORMATS, Progress, is_cuda
from .spec import ModelSpec, resolve_spec

#: The process's models: detectors (keyed on their spec) and backends (keyed on spec and input shape).
POOL = ModelPool()


class SpecLock:
    """The lock of the live detectors of one spec, not of one ``Detector``: a detector the pool dropped while a
    request still runs it and the one loaded again for the next request fetch the same backends from the pool, and
    neither an OpenVINO infer request nor a captured CUDA graph may run twice at once (the 10-minute soak hit "Infer
    Request is busy"). Held weakly (``threading.Lock`` cannot be), so it lives exactly as long as such a detector."""

    __slots__ = ("_lock", "__weakref__")

    def __init__(self):
        self._lock = threading.Lock()

    def __enter__(self) -> SpecLock:
        self._lock.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self._lock.release()

    def locked(self) -> bool:
        return self._lock.locked()


_LOCKS: weakref.WeakValueDictionary[ModelSpec, SpecLock] = weakref.WeakValueDictionary()
_LOCKS_GUARD = threading.Lock()


@dataclass(frozen=True)
class Timings:
    """Per-image milliseconds."""

    preprocess_ms: float
    inference_ms: float
    postprocess_ms: float

    @property
    def total_ms(self) -> float:
        return self.preprocess_ms + self.inference_ms + self.postprocess_ms


def _check_rgb(image: np.ndarray) -> None:
    if not isinstance(image, np.ndarray) or image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        got = f"{image.dtype} {image.shape}" if isinstance(image, np.ndarray) else type(image).__name__
        raise InputError(f"expected an RGB uint8 image (H, W, 3), got {got}")
    if min(image.shape[:2]) < 1:
        raise InputError(f"empty image {image.shape}")


def load_model(spec: ModelSpec) -> tuple[DetectionModel, dict[str, Any]]:
    """(model, config) for a spec: its located weights, or without any (``allow_untrained``, the benchmark's timing
    only) a model built untrained from a fixed seed, so that its exports are cached across processes."""
    if spec.weights is None:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            model = build_model(spec.variant).eval()
        return model, {"variant": spec.variant, "trained": False}
    w = spec.weights
    return build(w.config, w.tensors), {**w.config, "source": w.source, "notice": w.notice}


def _tensor_bytes(model: torch.nn.Module) -> int:
    return sum(t.numel() * t.element_size() for t in (*model.parameters(), *model.buffers()))


class Detector:
    """Thread-safe ``detect(image) -> (Detections, Timings)`` for one ``ModelSpec`` (``spec.resolve_spec``).

    ``progress(fraction, desc=…)`` hears about export and compilation, which happen once per input shape (see
    ``prepare``). Inputs are letterboxed to a square ``imgsz``; ``detect(..., rect=True)`` letterboxes to a rectangle
    instead (ultralytics' rect mode, rounded up to one of ``preprocess.RECT_BUCKETS``: 640×480 for a 4:3 video, a
    quarter fewer pixels than the square), which suits video, whose frames all share one shape.
    """

    def __init__(self, spec: ModelSpec, progress: Progress | None = None, prepare: bool = True):
        self.spec = spec
        self.variant, self.device, self.runtime, self.precision = spec.variant, spec.device, spec.runtime, \
            spec.precision
        self.imgsz, self.rewrite = spec.imgsz, spec.rewrite
        self.model, self.config = load_model(spec)
        self.names: dict[int, str] = dict(self.model.names)
        with _LOCKS_GUARD:
            self._lock = _LOCKS.setdefault(spec, SpecLock())
        self._cuda = is_cuda(self.device)
        self.prepared = False  # whether the square ``imgsz`` backend was built (``prepare``)
        if self.runtime == "ultralytics":
            self._yolo = as_yolo(copy.deepcopy(self.model))  # its predictor fuses the model in place: keep ours intact
        elif prepare:
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
            self._backend(rect_bucket(image_hw, size) if image_hw else (size, size), progress)
        self.prepared = self.prepared or (image_hw is None and size == self.imgsz)

    def _backend(self, shape: Shape, progress: Progress | None = None) -> Backend:
        """The backend for an input shape, from the pool (loaded, and exported, on first use)."""
        def load() -> Backend:
            s = self.spec
            return load_backend(self.model, s.runtime, s.device, shape, s.precision, s.rewrite, progress, s.threads)

        return POOL.get((self.spec, shape), load, floor=self._least_cost, owner=self.spec)

    def _least_cost(self, backend: Backend) -> int:
        """The least a backend may be said to cost: its model files on disk, else the PyTorch model's tensors."""
        path = getattr(backend, "path", None)
        if self.runtime in EXPORT_FORMATS and path is not None:
            with contextlib.suppress(OSError):  # evicted from the export cache meanwhile
                return sum(p.stat().st_size for p in path.parent.glob(f"{path.stem}.*") if p.is_file())
        return _tensor_bytes(self.model)

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
            shape = rect_bucket(image.shape[:2], size) if rect else (size, size)
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


def detector_for(spec: ModelSpec, progress: Progress | None = None, imgsz: int | None = None) -> Detector:
    """The pooled detector of a resolved spec, loaded on first use (``progress`` hears about that load), with its
    backend for a square ``imgsz`` (default: the spec's) built now, so that a request at another size does not
    export the default size first. That backend is built outside the detector's pool entry, so each entry's cost is
    its own."""
    detector = POOL.get(spec, lambda: Detector(spec, progress, prepare=False), floor=lambda d: _tensor_bytes(d.model))
    if detector.runtime != "ultralytics" and (imgsz is not None or not detector.prepared):
        detector.prepare(imgsz, progress=progress)
    return detector


def get_detector(variant: str, device: str = "cpu", runtime: str = "pytorch", imgsz: int = 640,
                 precision: str | None = None, progress: Progress | None = None) -> Detector:
    """The pooled detector for these settings (``resolve_spec``; ``auto`` and the name it resolves to share one)."""
    return detector_for(resolve_spec(variant, device, runtime, imgsz, precision), progress)


def clear_detectors() -> None:
    """Forget every pooled model and located weights file (tests; freeing memory)."""
    POOL.clear()
    forget_located()
