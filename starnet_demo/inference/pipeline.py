"""The end-to-end video pipeline: decode → letterbox → infer → NMS → annotate → encode, each stage timed.

Three threads joined by small bounded queues: PyAV decodes on one, the detector and annotators run on the caller's
thread, PyAV's libx264 encodes on a third (H.264 in mp4, yuv420p, which browsers play). Decoding and encoding
release the GIL, so they overlap with inference; the bounded queues keep memory flat however long the video is.

Frames come out as they are shown, not as they are stored: a rotation tag (a phone held upright) is applied, and each
frame keeps its timestamp, so a variable-frame-rate clip keeps its timing. A ``stop`` event, checked at every frame,
ends a run early (a cancelled request) with ``Cancelled``.
"""

from __future__ import annotations

import math
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np
import supervision as sv

from ..media.video import VideoError, VideoInfo, probe
from .detector import Detector
from .runtimes import Progress

_END = object()
TIME_BASE = Fraction(1, 1000)  # of the output's timestamps: milliseconds


class Cancelled(Exception):
    """The run was stopped from outside (``stop`` was set) before the video's end."""


@dataclass(frozen=True)
class VideoOptions:
    """How to detect and encode: ``conf``, ``iou``, ``imgsz`` and ``classes`` as ``Detector.detect`` takes them;
    ``max_frames`` (None: all); ``rect`` letterboxes to the smallest rectangle (see ``Detector``); ``queue_size``
    frames may wait between stages; ``crf`` and ``preset`` are libx264's."""

    conf: float = 0.25
    iou: float = 0.45
    imgsz: int | None = None
    classes: list[int] | None = None
    max_frames: int | None = None
    rect: bool = True
    queue_size: int = 8
    crf: int = 23
    preset: str = "veryfast"


@dataclass
class VideoStats:
    """What one run of the pipeline did and how fast: ``fps`` is frames over wall time, decode and encode included."""

    frames: int = 0
    wall_s: float = 0.0
    width: int = 0
    height: int = 0
    source_fps: float = 0.0
    seconds: float = 0.0  # of video written: from the first frame's timestamp to the end of the last
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

    def __init__(self, target: Callable[[], None], name: str):
        super().__init__(daemon=True, name=name)
        self._fn, self.error = target, None

    def run(self) -> None:
        try:
            self._fn()
        except BaseException as e:  # re-raised on the caller's thread
            self.error = e


def _put(q: queue.Queue, item: Any, *stops: threading.Event) -> bool:
    """Put ``item`` once there is room; False (not put) as soon as any of ``stops`` is set."""
    while not any(s.is_set() for s in stops):
        try:
            q.put(item, timeout=0.1)
            return True
        except queue.Full:
            continue
    return False


def upright(image: np.ndarray, rotation: int) -> np.ndarray:
    """A decoded frame as it is meant to be shown: ``rotation`` is the stream's display rotation in degrees
    counter-clockwise (PyAV's ``VideoFrame.rotation``, e.g. -90 for a phone held upright), a multiple of 90."""
    turns = round(rotation / 90) % 4
    return np.ascontiguousarray(np.rot90(image, turns)) if turns else image


class _Timeline:
    """Output timestamps (in ``TIME_BASE``) from the source frames' own, shifted to start at 0 and kept strictly
    increasing; a frame without one comes ``1 / fps`` after the one before."""

    def __init__(self, fps: float):
        self.step = 1 / fps
        self.start: float | None = None
        self.last_s: float | None = None
        self.last_pts = -1
        self.end_s = 0.0  # the end of the last frame, in seconds from the first

    def pts(self, seconds: float | None) -> int:
        if seconds is None:
            seconds = 0.0 if self.last_s is None else self.last_s + self.step
        if self.start is None:
            self.start = seconds
        pts = max(round((seconds - self.start) / TIME_BASE), self.last_pts + 1)
        self.last_s, self.last_pts = seconds, pts
        self.end_s = float(pts * TIME_BASE) + self.step
        return pts


def _decode(container, stream, frames_q: queue.Queue, halt: threading.Event, max_frames: int | None,
            stats: VideoStats) -> None:
    """The reader thread: upright BGR frames with their timestamps into ``frames_q``, then ``_END``."""
    import av

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
            image = upright(frame.to_ndarray(format="bgr24"), frame.rotation)
            stats.stage_ms["decode"].append((time.perf_counter() - t0) * 1e3)
            if not _put(frames_q, (image, frame.time), halt):
                return
            n += 1
    finally:
        _put(frames_q, _END, halt)


def _encode(target: str | Path | None, out_q: queue.Queue, halt: threading.Event, stop: threading.Event,
            options: VideoOptions, stats: VideoStats) -> None:
    """The writer thread: frames from ``out_q`` to H.264 (yuv420p) in mp4 at their own times, until ``_END``; a
    stopped run's output is not kept, so it quits without encoding the rest."""
    import av

    out = av.open(str(target), "w") if target else None
    timeline = _Timeline(stats.source_fps)
    video = None
    try:
        while not stop.is_set():
            try:
                item = out_q.get(timeout=0.1)
            except queue.Empty:
                if halt.is_set():
                    break
                continue
            if item is _END:
                break
            image, seconds = item
            t0 = time.perf_counter()
            if out is not None:
                h, w = image.shape[0] // 2 * 2, image.shape[1] // 2 * 2  # yuv420p needs even sizes
                if video is None:
                    video = out.add_stream("libx264", rate=round(stats.source_fps) or 25)
                    video.width, video.height, video.pix_fmt = w, h, "yuv420p"
                    video.codec_context.time_base = TIME_BASE
                    video.options = {"crf": str(options.crf), "preset": options.preset}
                frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(image[:h, :w]), format="bgr24")
                frame.pts, frame.time_base = timeline.pts(seconds), TIME_BASE
                for packet in video.encode(frame):
                    out.mux(packet)
            stats.stage_ms["encode"].append((time.perf_counter() - t0) * 1e3)
        if video is not None:
            for packet in video.encode():
                out.mux(packet)
        stats.seconds = timeline.end_s
    finally:
        if out is not None:
            out.close()


def run_video(detector: Detector, source: str | Path, target: str | Path | None = None,
              options: VideoOptions = VideoOptions(), *,  # noqa: B008 (frozen: a shared default is safe)
              annotate: Callable[[np.ndarray, sv.Detections], np.ndarray] | None = None,
              on_detections: Callable[[sv.Detections, int], sv.Detections] | None = None,
              progress: Progress | None = None, info: VideoInfo | None = None,
              stop: threading.Event | None = None) -> VideoStats:
    """Detect and annotate every frame of ``source``; write H.264 mp4 to ``target`` (None: skip encoding).

    ``annotate(frame_bgr, detections) -> frame_bgr`` draws (None: frames are written as decoded; the app and the
    benchmark pass ``viz.annotate.DetectionAnnotator(rgb=False).annotate``); ``on_detections`` may replace each
    frame's detections first (e.g. a tracker's update). Frames are BGR for the annotators and flipped to RGB for the
    detector. ``info`` is the source's ``media.video.probe``, done here without limits when not given.
    ``progress(fraction, desc=…)`` is called every few frames. Setting ``stop`` ends the run within a frame with
    ``Cancelled``. Raises ``VideoError`` for a file with no decodable video frames.
    """
    import av  # PyAV: only video work needs it

    info = info or probe(source, max_bytes=math.inf, max_seconds=math.inf, max_side=math.inf)
    stop = stop or threading.Event()
    halt = threading.Event()  # the stages' own: set when this run ends, for whatever reason
    container = av.open(str(source))
    stream = container.streams.video[0]
    stream.thread_type = "AUTO"
    stats = VideoStats(width=info.width, height=info.height, source_fps=info.fps or 25.0,
                       stage_ms={s: [] for s in ("decode", "preprocess", "inference", "postprocess", "annotate",
                                                 "encode")})
    total = min(info.frames, options.max_frames or info.frames) or options.max_frames or 0
    frames_q: queue.Queue = queue.Queue(maxsize=options.queue_size)
    out_q: queue.Queue = queue.Queue(maxsize=options.queue_size)
    reader = _Worker(lambda: _decode(container, stream, frames_q, halt, options.max_frames, stats), "video-decode")
    writer = _Worker(lambda: _encode(target, out_q, halt, stop, options, stats), "video-encode")
    start = time.perf_counter()
    reader.start()
    writer.start()
    try:
        while not stop.is_set():
            try:
                item = frames_q.get(timeout=0.5)
            except queue.Empty:
                if reader.error or writer.error:
                    break
                continue
            if item is _END:
                break
            frame, seconds = item
            detections, timings = detector.detect(np.ascontiguousarray(frame[..., ::-1]), conf=options.conf,
                                                  iou=options.iou, imgsz=options.imgsz, classes=options.classes,
                                                  rect=options.rect)
            if on_detections is not None:
                detections = on_detections(detections, stats.frames)
            t0 = time.perf_counter()
            annotated = annotate(frame.copy(), detections) if annotate else frame
            stats.stage_ms["annotate"].append((time.perf_counter() - t0) * 1e3)
            stats.stage_ms["preprocess"].append(timings.preprocess_ms)
            stats.stage_ms["inference"].append(timings.inference_ms)
            stats.stage_ms["postprocess"].append(timings.postprocess_ms)
            if not _put(out_q, (annotated, seconds), halt, stop) or writer.error:  # a stopped writer takes no more
                break
            stats.frames += 1
            if progress is not None and (stats.frames % 10 == 0 or stats.frames == total):
                progress(stats.frames / total if total else 0.0, desc=f"frame {stats.frames}/{total or '?'}")
    finally:
        while writer.is_alive() and not stop.is_set():  # let the writer drain and close the file
            try:
                out_q.put(_END, timeout=0.1)
                break
            except queue.Full:
                continue
        halt.set()  # unblocks the reader if we stopped early, and the writer if stopped
        reader.join()
        writer.join()
        container.close()
    stats.wall_s = time.perf_counter() - start
    if target is None:
        stats.seconds = stats.frames / stats.source_fps
    if stop.is_set():
        raise Cancelled(f"stopped after {stats.frames} frames")
    for worker in (reader, writer):
        if worker.error is not None:
            raise RuntimeError(f"video {'decoding' if worker is reader else 'encoding'} failed: "
                               f"{worker.error}") from worker.error
    if stats.frames == 0:
        raise VideoError(f"{Path(source).name} has no decodable video frames")
    return stats
