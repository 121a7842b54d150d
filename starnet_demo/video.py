"""Detection on an uploaded video for the app: checks and caps, optional ByteTrack tracking, per-class counts.

The frame loop itself is ``pipeline.run_video`` (PyAV decode → detect → annotate → libx264 encode, overlapped, with
bounded queues, so memory stays flat however long the video is). This module adds what an upload needs around it:
``probe`` refuses what cannot or should not be processed with a ``VideoError`` meant for the user, ``Tracker`` puts
ultralytics' ByteTrack behind ``sv.Detections`` (supervision 0.31 no longer ships one), ``Counter`` counts per class,
and a failed run leaves no output file behind.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import av
import numpy as np
import supervision as sv
from ultralytics.engine.results import Boxes
from ultralytics.trackers.byte_tracker import BYTETracker
from ultralytics.utils import YAML, IterableSimpleNamespace
from ultralytics.utils.checks import check_yaml

from .annotate import DetectionAnnotator
from .detector import Detector
from .pipeline import run_video
from .runtimes import Progress

MAX_BYTES = 200 * 2**20  # uploads above this are refused
MAX_SECONDS = 60.0  # longer videos are refused: ~6 min of work for S1 on a 2-core CPU
MAX_SIDE = 1920  # frames up to 1080p; larger ones would make a public CPU app wait for minutes


class VideoError(ValueError):
    """A video that cannot be processed; the message is meant for the user."""


@dataclass(frozen=True)
class VideoInfo:
    width: int
    height: int
    fps: float
    frames: int  # as the container states it; 0 when it does not say
    seconds: float


@dataclass
class VideoResult:
    path: Path
    frames: int
    seconds: float  # of video written
    elapsed_s: float  # wall time: decode + detect + annotate + encode
    fps: float  # frames processed per second of wall time
    width: int
    height: int
    tracked: bool
    truncated: bool = False  # the file broke off before its stated end
    counts: list[dict] = field(default_factory=list)


def probe(path: str | Path, max_bytes: int = MAX_BYTES, max_seconds: float = MAX_SECONDS,
          max_side: int = MAX_SIDE) -> VideoInfo:
    """Size, frame rate and duration of a video (its first frame decoded as a check), or a ``VideoError`` saying why
    it cannot be used."""
    path = Path(path)
    if not path.is_file():
        raise VideoError(f"video file not found: {path.name}")
    size = path.stat().st_size
    if size == 0:
        raise VideoError(f"{path.name} is empty (0 bytes)")
    if size > max_bytes:
        raise VideoError(f"{path.name} is {size / 2**20:.0f} MB; the limit is {max_bytes / 2**20:.0f} MB")
    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise VideoError(f"{path.name} has no video stream")
            stream = container.streams.video[0]
            rate = stream.average_rate or stream.guessed_rate or stream.base_rate
            fps = float(rate) if rate else 0.0
            if stream.duration and stream.time_base:
                seconds = float(stream.duration * stream.time_base)
            elif container.duration:
                seconds = container.duration / av.time_base
            else:
                seconds = stream.frames / fps if stream.frames and fps else 0.0
            info = VideoInfo(stream.codec_context.width, stream.codec_context.height, fps, stream.frames or 0,
                             seconds)
            try:
                next(container.decode(stream))
            except (StopIteration, av.error.FFmpegError):
                raise VideoError(f"{path.name} has no frame that can be decoded") from None
    except VideoError:
        raise
    except (av.error.FFmpegError, UnicodeDecodeError, ValueError) as e:
        # FFmpeg's reason without the file name (on a server, a path in Gradio's cache); other errors' first line
        reason = getattr(e, "strerror", None) or (str(e).splitlines() or [type(e).__name__])[0][:120]
        raise VideoError(f"{path.name} is not a video that can be read ({reason})") from None
    if info.width < 1 or info.height < 1:
        raise VideoError(f"{path.name} has a video stream with no picture size")
    if max(info.width, info.height) > max_side:
        raise VideoError(f"{path.name} is {info.width}×{info.height}; the limit is {max_side} pixels on the long "
                         "side (1080p). Please downscale it.")
    if info.seconds > max_seconds:
        raise VideoError(f"{path.name} is {info.seconds:.0f} s long; the limit is {max_seconds:.0f} s. "
                         "Please cut it shorter.")
    return info


class Tracker:
    """ultralytics' ByteTrack on ``sv.Detections``. Detect with ``conf=tracker.low``: ByteTrack's second stage
    keeps tracks alive through low-confidence detections; new tracks still need ``conf``."""

    def __init__(self, conf: float = 0.25, fps: float = 30.0):
        cfg = IterableSimpleNamespace(**YAML.load(check_yaml("bytetrack.yaml")))
        cfg.track_high_thresh = cfg.new_track_thresh = conf
        cfg.track_buffer = max(1, round(cfg.track_buffer * fps / 30))  # the buffer is in frames at 30 FPS
        self.low = min(conf, cfg.track_low_thresh)
        self._tracker = BYTETracker(cfg)

    def update(self, detections: sv.Detections, shape_hw: tuple[int, int]) -> sv.Detections:
        """The detections that belong to a track, with ``tracker_id`` set and the track's smoothed box."""
        data = np.hstack([detections.xyxy, detections.confidence[:, None], detections.class_id[:, None]])
        rows = self._tracker.update(Boxes(data.astype(np.float32), shape_hw))
        if len(rows) == 0:
            return detections[np.zeros(len(detections), dtype=bool)]
        tracked = detections[rows[:, 7].astype(int)]
        tracked.xyxy = rows[:, :4].astype(np.float32)
        tracked.tracker_id = rows[:, 4].astype(int)
        return tracked


class Counter:
    """Per class: most objects in one frame, frames it appears in, and (when tracking) distinct tracks."""

    def __init__(self):
        self.max_in_frame: dict[str, int] = defaultdict(int)
        self.frames: dict[str, int] = defaultdict(int)
        self.tracks: dict[str, set[int]] = defaultdict(set)

    def update(self, detections: sv.Detections) -> None:
        names = np.asarray(detections.data.get("class_name", detections.class_id)).astype(str)
        for name, n in zip(*np.unique(names, return_counts=True), strict=True):
            self.max_in_frame[name] = max(self.max_in_frame[name], int(n))
            self.frames[name] += 1
        if detections.tracker_id is not None:
            for name, tid in zip(names, detections.tracker_id, strict=True):
                self.tracks[name].add(int(tid))

    def rows(self, tracked: bool) -> list[dict]:
        out = []
        for name in sorted(self.frames, key=lambda n: (-self.frames[n], n)):
            row = {"class": name, "max_in_frame": self.max_in_frame[name], "frames": self.frames[name]}
            if tracked:
                row["tracks"] = len(self.tracks[name])
            out.append(row)
        return out


def detect_video(path: str | Path, detector: Detector, out_path: str | Path, *, conf: float = 0.25,
                 iou: float = 0.45, imgsz: int | None = None, classes: list[int] | None = None, track: bool = False,
                 max_seconds: float = MAX_SECONDS, max_bytes: int = MAX_BYTES, max_side: int = MAX_SIDE,
                 progress: Progress | None = None) -> VideoResult:
    """Detect (and optionally track) objects in every frame of ``path``; write the annotated H.264 mp4 to ``out_path``.

    ``progress(fraction, desc=…)`` is ``gr.Progress``'s signature. Frames past ``max_seconds`` are not read even if the
    header under-states the length. The output file is removed if anything fails.
    """
    out_path = Path(out_path)
    try:
        info = probe(path, max_bytes=max_bytes, max_seconds=max_seconds, max_side=max_side)
        fps = info.fps if 0 < info.fps <= 240 else 25.0
        limit = int(max_seconds * fps) + 1
        annotator = DetectionAnnotator(trace=track, rgb=False)
        tracker = Tracker(conf, fps) if track else None
        counter = Counter()

        def on_detections(detections: sv.Detections, _: int) -> sv.Detections:
            if tracker is not None:
                detections = tracker.update(detections, (info.height, info.width))
            counter.update(detections)
            return detections

        stats = run_video(detector, path, out_path, conf=tracker.low if tracker else conf, iou=iou, imgsz=imgsz,
                          classes=classes, max_frames=limit, annotate=annotator.annotate,
                          on_detections=on_detections, progress=progress)
    except BaseException:
        out_path.unlink(missing_ok=True)
        raise
    expected = min(info.frames, limit) if info.frames else 0
    return VideoResult(out_path, stats.frames, stats.frames / fps, stats.wall_s, stats.fps, stats.width,
                       stats.height, track, truncated=stats.frames < expected - 1, counts=counter.rows(track))
