"""The end-to-end video pipeline: decode → letterbox → infer → NMS → annotate → encode, each stage timed.

Three threads joined by small bounded queues: PyAV decodes on one, the detector and annotators run on the caller's
thread, PyAV's libx264 encodes on a third (H.264 in mp4, yuv420p, which browsers play). Decoding and encoding
release the GIL, so they overlap with inference; the bounded queues keep memory flat however long the video is.
"""

from __future__ import annotations

import math
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import supervision as sv

from ..media.video import VideoError, VideoInfo, probe
from .detector import Detector
from .runtimes import Progress

_END = object()


@dataclass
class VideoStats:
    """What one run of the pipeline did and how fast: ``fps`` is frames over wall time, decode and encode included."""

    frames: int = 0
    wall_s: float = 0.0
    width: int = 0
    height: int = 0
    source_fps: float = 0.0
    stage_ms: dict[str, list[float]] = field(default_factory=dict)

    @property
    def fps(self) -> float:
        return self.frames / self.wall_s if self.wall_s > 0 else 0.0

    def summary(self) -> dict[str, Any]:
        """Median and p90 ms per stage, plus frames, wall time and FPS (the benchmark's record fields)."""
        out: dict[str, Any] = {"video_frames": self.frames, "video_wall_s": round(self.wall_s, 3),
                               "video_fps": round(self.fps, 2), "video_size": f"{self.width}x{self.height}"}
        for stage, values in self.stage_ms.items():
            if values:
                out[f"video_{stage}_ms"] = round(float(np.median(values)), 3)
                out[f"video_{stage}_ms_p90"] = round(float(np.percentile(values, 90)), 3)
        return out


class _Worker(threading.Thread):
    """A daemon thread that remembers its exception so the caller can re-raise it."""

    def __init__(self, target: Callable[[], None]):
        super().__init__(daemon=True)
        self._fn, self.error = target, None

    def run(self) -> None:
        try:
            self._fn()
        except BaseException as e:  # re-raised on the caller's thread
            self.error = e


def _put(q: queue.Queue, item: Any, stop: threading.Event) -> bool:
    while not stop.is_set():
        try:
            q.put(item, timeout=0.1)
            return True
        except queue.Full:
            continue
    return False


def run_video(detector: Detector, source: str | Path, target: str | Path | None = None, *, conf: float = 0.25,
              iou: float = 0.45, imgsz: int | None = None, classes: list[int] | None = None,
              max_frames: int | None = None,
              annotate: Callable[[np.ndarray, sv.Detections], np.ndarray] | None = None,
              on_detections: Callable[[sv.Detections, int], sv.Detections] | None = None,
              progress: Progress | None = None, info: VideoInfo | None = None, queue_size: int = 8, crf: int = 23,
              preset: str = "veryfast", rect: bool = True) -> VideoStats:
    """Detect and annotate every frame of ``source``; write H.264 mp4 to ``target`` (None: skip encoding).

    ``annotate(frame_bgr, detections) -> frame_bgr`` draws (None: frames are written as decoded; the app and the
    benchmark pass ``viz.annotate.DetectionAnnotator(rgb=False).annotate``); ``on_detections`` may replace each
    frame's detections first (e.g. a tracker's update). Frames are BGR for the annotators and flipped to RGB for the
    detector, letterboxed to the smallest rectangle (``rect``, see ``Detector``). ``info`` is the source's
    ``media.video.probe``, done here without limits when not given. ``progress(fraction, desc=…)`` is called every
    few frames. Raises ``VideoError`` for a file with no decodable video frames.
    """
    import av  # PyAV: only video work needs it

    info = info or probe(source, max_bytes=math.inf, max_seconds=math.inf, max_side=math.inf)
    container = av.open(str(source))
    stream = container.streams.video[0]
    stream.thread_type = "AUTO"
    stats = VideoStats(width=info.width, height=info.height, source_fps=info.fps or 25.0,
                       stage_ms={s: [] for s in ("decode", "preprocess", "inference", "postprocess", "annotate",
                                                 "encode")})
    total = min(info.frames, max_frames or info.frames) or max_frames or 0
    stop = threading.Event()
    frames_q: queue.Queue = queue.Queue(maxsize=queue_size)
    out_q: queue.Queue = queue.Queue(maxsize=queue_size)

    def decode() -> None:
        n = 0
        try:
            frames = container.decode(stream)
            while max_frames is None or n < max_frames:
                t0 = time.perf_counter()
                try:
                    frame = next(frames)
                except StopIteration:
                    break
                except av.error.FFmpegError:  # a truncated or corrupt tail ends the video there
                    break
                image = frame.to_ndarray(format="bgr24")
                stats.stage_ms["decode"].append((time.perf_counter() - t0) * 1e3)
                if not _put(frames_q, image, stop):
                    return
                n += 1
        finally:
            _put(frames_q, _END, stop)

    def encode() -> None:
        out = av.open(str(target), "w") if target else None
        video = None
        try:
            while True:
                item = out_q.get()
                if item is _END:
                    break
                t0 = time.perf_counter()
                if out is not None:
                    h, w = item.shape[0] // 2 * 2, item.shape[1] // 2 * 2  # yuv420p needs even sizes
                    if video is None:
                        video = out.add_stream("libx264", rate=round(stats.source_fps) or 25)
                        video.width, video.height, video.pix_fmt = w, h, "yuv420p"
                        video.options = {"crf": str(crf), "preset": preset}
                    for packet in video.encode(av.VideoFrame.from_ndarray(
                            np.ascontiguousarray(item[:h, :w]), format="bgr24")):
                        out.mux(packet)
                stats.stage_ms["encode"].append((time.perf_counter() - t0) * 1e3)
            if video is not None:
                for packet in video.encode():
                    out.mux(packet)
        finally:
            if out is not None:
                out.close()

    reader, writer = _Worker(decode), _Worker(encode)
    start = time.perf_counter()
    reader.start()
    writer.start()
    try:
        while True:
            try:
                frame = frames_q.get(timeout=0.5)
            except queue.Empty:
                if reader.error or writer.error:
                    break
                continue
            if frame is _END:
                break
            detections, timings = detector.detect(np.ascontiguousarray(frame[..., ::-1]), conf=conf, iou=iou,
                                                  imgsz=imgsz, classes=classes, rect=rect)
            if on_detections is not None:
                detections = on_detections(detections, stats.frames)
            t0 = time.perf_counter()
            annotated = annotate(frame.copy(), detections) if annotate else frame
            stats.stage_ms["annotate"].append((time.perf_counter() - t0) * 1e3)
            stats.stage_ms["preprocess"].append(timings.preprocess_ms)
            stats.stage_ms["inference"].append(timings.inference_ms)
            stats.stage_ms["postprocess"].append(timings.postprocess_ms)
            if not _put(out_q, annotated, stop) or writer.error:
                break
            stats.frames += 1
            if progress is not None and stats.frames % 10 == 0:
                progress(stats.frames / total if total else 0.0, desc=f"frame {stats.frames}/{total or '?'}")
    finally:
        while writer.is_alive():  # let the writer drain and close the file
            try:
                out_q.put(_END, timeout=0.1)
                break
            except queue.Full:
                continue
        stop.set()  # unblocks the reader if we stopped early
        reader.join()
        writer.join()
        container.close()
    stats.wall_s = time.perf_counter() - start
    for worker in (reader, writer):
        if worker.error is not None:
            raise RuntimeError(f"video {'decoding' if worker is reader else 'encoding'} failed: "
                               f"{worker.error}") from worker.error
    if stats.frames == 0:
        raise VideoError(f"{Path(source).name} has no decodable video frames")
    return stats
