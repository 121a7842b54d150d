"""Reading a user's video safely: ``probe`` opens it once with PyAV, decodes its first frame as a check, and
refuses what cannot or should not be processed (no stream, no decodable frame, too big, too long, too large a
picture) with a ``VideoError`` meant for the user. Its ``VideoInfo`` is handed on to the pipeline."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import av

from ..errors import UploadError

MAX_BYTES = 200 * 2**20  # uploads above this are refused
MAX_SECONDS = 60.0  # longer videos are refused: ~6 min of work for S1 on a 2-core CPU
MAX_SIDE = 1920  # frames up to 1080p; larger ones would make a public CPU app wait for minutes


class VideoError(UploadError):
    """A video that cannot be processed; the message is meant for the user."""


@dataclass(frozen=True)
class VideoInfo:
    width: int  # as shown: a rotation tag of ±90° swaps the stored sizes
    height: int
    fps: float  # the average rate; a variable-frame-rate clip keeps its own timestamps (``pipeline.run_video``)
    frames: int  # as the container states it; 0 when it does not say
    seconds: float
    rotation: int = 0  # degrees counter-clockwise to turn the stored frames upright (PyAV's ``VideoFrame.rotation``)


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
            try:
                first = next(container.decode(stream))
            except (StopIteration, av.error.FFmpegError):
                raise VideoError(f"{path.name} has no frame that can be decoded") from None
            rotation = round(first.rotation / 90) * 90
            w, h = stream.codec_context.width, stream.codec_context.height
            if rotation % 180:
                w, h = h, w
            info = VideoInfo(w, h, fps, stream.frames or 0, seconds, rotation)
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
