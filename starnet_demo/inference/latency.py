"""Latency of one detector on one image: median and p90 milliseconds per stage, after warm-up.

The app's Latency tab and ``python -m starnet_demo bench`` both call ``measure``, so the two always agree. The
detector times its own stages (synchronising CUDA before each clock read); ``measure`` adds the wall-clock time of the
whole ``detect`` call, the peak memory while it ran, the model's size, and the CPU threads the runtime computed on
(ultralytics resets PyTorch's on each ``predict``, so that count is read after the timed calls, not assumed).
"""

from __future__ import annotations

import os
import threading
import time
from functools import lru_cache
from typing import Any

import numpy as np
import torch

from .detector import Detector


@lru_cache(maxsize=64)
def _complexity(variant: str, imgsz: int) -> tuple[int, float]:
    from ..models.yolo import summary

    s = summary(variant, imgsz)
    return int(s["params"]), float(s["gflops"])


def _rss() -> int:
    """This process's resident memory in bytes (psutil where installed, else Linux's /proc)."""
    try:
        import psutil

        return psutil.Process().memory_info().rss
    except ImportError:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class _PeakRSS:
    """Samples this process's resident memory in a thread; CPU runtimes allocate outside torch's accounting."""

    def __init__(self, every_s: float = 0.005):
        self.every_s, self.peak, self._stop = every_s, 0, threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, _rss())
            self._stop.wait(self.every_s)

    def __enter__(self) -> _PeakRSS:
        self.peak = _rss()
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def _threads(detector: Detector, imgsz: int, torch_threads: int) -> int | None:
    """Intra-op threads of the detector's runtime: its backend's count where it sets one (ONNX Runtime, OpenVINO),
    else PyTorch's as the timed calls left it; None on CUDA and where a runtime chose its own."""
    if detector.device.startswith("cuda"):
        return None
    if detector.runtime in ("ultralytics", "pytorch"):
        return torch_threads
    return getattr(detector._backend((imgsz, imgsz)), "threads", None)


def _stats(values: list[float]) -> tuple[float, float]:
    a = np.asarray(values, dtype=np.float64)
    return round(float(np.median(a)), 3), round(float(np.percentile(a, 90)), 3)


class Samples:
    """Timed ``detect`` calls of one detector on one image, gathered in one or more batches.

    ``measure`` takes one batch; the benchmark interleaves batches of several detectors so that a busy shared
    machine slows them all alike.
    """

    STAGES = ("preprocess", "inference", "postprocess", "total", "e2e")

    def __init__(self, detector: Detector, image_rgb: np.ndarray, conf: float = 0.25, iou: float = 0.45,
                 imgsz: int | None = None):
        self.detector, self.image = detector, image_rgb
        self.kwargs = {"conf": conf, "iou": iou, "imgsz": imgsz or detector.imgsz}
        self.cuda = detector.device.startswith("cuda")
        self.values: dict[str, list[float]] = {s: [] for s in self.STAGES}
        self.peak_bytes, self.detections, self.torch_threads = 0, 0, torch.get_num_threads()

    def warm(self, n: int) -> None:
        for _ in range(n):
            self.detector.detect(self.image, **self.kwargs)

    def run(self, n: int) -> None:
        if self.cuda:
            torch.cuda.synchronize(self.detector.device)
            torch.cuda.reset_peak_memory_stats(self.detector.device)
        with _PeakRSS() as rss:
            for _ in range(n):
                t0 = time.perf_counter()
                detections, t = self.detector.detect(self.image, **self.kwargs)
                self.values["e2e"].append((time.perf_counter() - t0) * 1000)
                self.values["preprocess"].append(t.preprocess_ms)
                self.values["inference"].append(t.inference_ms)
                self.values["postprocess"].append(t.postprocess_ms)
                self.values["total"].append(t.total_ms)
                self.detections = len(detections)
        self.torch_threads = torch.get_num_threads()
        peak = torch.cuda.max_memory_allocated(self.detector.device) if self.cuda else rss.peak
        self.peak_bytes = max(self.peak_bytes, peak)

    def summary(self) -> dict[str, Any]:
        d, size = self.detector, self.kwargs["imgsz"]
        out: dict[str, Any] = {"variant": d.variant, "runtime": d.runtime, "device": d.device,
                               "precision": d.precision, "imgsz": size, "runs": len(self.values["e2e"])}
        for stage in ("preprocess", "inference", "postprocess", "total"):
            out[f"{stage}_ms"], out[f"{stage}_ms_p90"] = _stats(self.values[stage])
        out["e2e_ms_median"], out["e2e_ms_p90"] = _stats(self.values["e2e"])
        out["fps"] = round(1000 / out["e2e_ms_median"], 2) if out["e2e_ms_median"] > 0 else None
        out["detections"] = self.detections
        out["threads_used"] = _threads(d, size, self.torch_threads)
        out["params"], out["gflops"] = _complexity(d.variant, size)
        out["peak_memory_mb"] = round(self.peak_bytes / 2**20, 1)
        out["memory"] = "cuda_allocated" if self.cuda else "rss"
        return out


def measure(detector: Detector, image_rgb: np.ndarray, runs: int = 20, warmup: int = 3, conf: float = 0.25,
            iou: float = 0.45, imgsz: int | None = None) -> dict[str, Any]:
    """Run ``detector.detect`` ``warmup`` times untimed, then ``runs`` times timed.

    Returns ``{variant, runtime, device, precision, imgsz, runs, preprocess_ms, preprocess_ms_p90, inference_ms,
    inference_ms_p90, postprocess_ms, postprocess_ms_p90, total_ms, total_ms_p90, e2e_ms_median, e2e_ms_p90, fps,
    detections, threads_used, params, gflops, peak_memory_mb, memory}``. Stage figures are medians (``*_p90``: 90th
    percentile); ``total`` sums the three stages, ``e2e`` is the wall time of ``detect`` (it adds building
    ``sv.Detections``); ``fps`` is ``1000 / e2e_ms_median``. On CUDA ``peak_memory_mb`` is torch's peak allocation
    (``memory="cuda_allocated"``), on CPU the process's peak resident memory while measuring (``memory="rss"``).
    """
    if runs < 1 or warmup < 0:
        raise ValueError("runs must be >= 1 and warmup >= 0")
    samples = Samples(detector, image_rgb, conf, iou, imgsz)
    samples.warm(warmup)
    samples.run(runs)
    return samples.summary()
