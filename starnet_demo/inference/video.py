"""Detection on an uploaded video for the app: optional ByteTrack tracking, per-class counts, and a failed run
leaves no output file behind.

The frame loop itself is ``pipeline.run_video`` (PyAV decode → detect → annotate → libx264 encode, overlapped, with
bounded queues, so memory stays flat however long the video is), handed the upload's ``media.video.probe``.
``Tracker`` puts ultralytics' ByteTrack behind ``sv.Detections`` (supervision 0.31 no longer ships one), ``Counter``
counts per class.
"""

from __future__ import annotations

import threading
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import supervision as sv
from ultralytics.engine.results import Boxes
from ultralytics.trackers.byte_tracker import BYTETracker
from ultralytics.utils import YAML, IterableSimpleNamespace
from ultralytics.utils.checks import check_yaml

from ..media.video import MAX_BYTES, MAX_SECONDS, MAX_SIDE, probe
from .detector import Detector
from .pipeline import VideoOptions, run_video
from .runtimes import Progress

Annotate = Callable[[np.ndarray, sv.Detections], np.ndarray]


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
                 annotate: Annotate | None = None, max_seconds: float = MAX_SECONDS, max_bytes: int = MAX_BYTES,
                 max_side: int = MAX_SIDE, progress: Progress | None = None,
                 on_frame: Callable[[sv.Detections, int], None] | None = None,
                 stop: threading.Event | None = None) -> VideoResult:
    """Detect (and optionally track) objects in every frame of ``path``; write the H.264 mp4 to ``out_path``, drawn
    by ``annotate(frame_bgr, detections)`` (see ``pipeline.run_video``). ``on_frame(detections, frame_index)`` hears
    each frame's final detections (tracked, when tracking), e.g. to write them to a file.

    ``progress(fraction, desc=…)`` is ``gr.Progress``'s signature. Frames past ``max_seconds`` are not read even if the
    header under-states the length. Setting ``stop`` ends the run within a frame (``pipeline.Cancelled``). The output
    file is removed if anything fails or the run is stopped.
    """
    out_path = Path(out_path)
    try:
        info = probe(path, max_bytes=max_bytes, max_seconds=max_seconds, max_side=max_side)
        fps = info.fps if 0 < info.fps <= 240 else 25.0
        limit = int(max_seconds * fps) + 1
        tracker = Tracker(conf, fps) if track else None
        counter = Counter()

        def on_detections(detections: sv.Detections, index: int) -> sv.Detections:
            if tracker is not None:
                detections = tracker.update(detections, (info.height, info.width))
            counter.update(detections)
            if on_frame is not None:
                on_frame(detections, index)
            return detections

        options = VideoOptions(conf=tracker.low if tracker else conf, iou=iou, imgsz=imgsz, classes=classes,
                               max_frames=limit)
        stats = run_video(detector, path, out_path, options, annotate=annotate, on_detections=on_detections,
                          progress=progress, info=info, stop=stop)
    except BaseException:
        out_path.unlink(missing_ok=True)
        raise
    expected = min(info.frames, limit) if info.frames else 0
    return VideoResult(out_path, stats.frames, stats.seconds, stats.wall_s, stats.fps, stats.width,
                       stats.height, track, truncated=stats.frames < expected - 1, counts=counter.rows(track))
