"""A corpus of the inputs a public demo gets that it must not choke on, and a way to send them to the running app.

``CASES`` is static data, one request each to a named endpoint; ``File("name")`` in its arguments is a corpus file
that ``write_corpus(folder)`` generates (all of them in about a second) and that is uploaded when sent. ``error`` is
a regular expression the app's message must match; None means the input is odd but usable and the request must
succeed (a 1×1 or CMYK image, a variable-frame-rate video); ``notice`` is a warning the app must show. Big images are
PNGs of zeros compressed row by row, so a 20000×20000 image is 50 KB on disk and never exists in memory here.

Most cases go through gradio_client. ``raw`` ones go through Gradio's own queue protocol (``queue_call``), for what
gradio_client cannot send: non-finite numbers (its JSON encoder refuses them), a server path in place of an upload,
and streaming events such as the webcam's.
"""

from __future__ import annotations

import io
import json
import struct
import uuid
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import cv2
import httpx
import numpy as np
from app_support import BUS, write_video
from gradio_client import Client
from PIL import Image

from starnet_demo.media.video import MAX_SECONDS

GOOD = (0.25, 0.45, 160)  # conf, iou, imgsz of every request: 160 px keeps each one well under a second


@dataclass(frozen=True)
class File:
    """A corpus file, by name; ``BUS`` and other real paths are sent as they are."""

    name: str


@dataclass(frozen=True)
class Case:
    name: str
    api: str
    args: tuple
    error: str | None = None  # regex the error message must match; None: the request must succeed
    notice: str | None = None  # regex of a warning the app must show
    raw: bool = False  # send with ``queue_call`` instead of gradio_client


def image_args(upload, variant="s1", device="cpu", conf=GOOD[0], iou=GOOD[1], imgsz=GOOD[2], classes=None,
               runtime="pytorch") -> tuple:
    return upload, variant, device, conf, iou, imgsz, classes or [], runtime


def video_args(upload, variant="s1", device="cpu", conf=GOOD[0], iou=GOOD[1], imgsz=GOOD[2]) -> tuple:
    return upload, variant, device, conf, iou, imgsz, False, [], "pytorch"


# ---------------------------------------------------------------- file makers
def blank_png(width: int, height: int) -> bytes:
    """A valid 1-bit grayscale PNG of zeros of any size, streamed through zlib (``width * height / 8`` bytes raw)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    row = b"\0" * (1 + (width + 7) // 8)  # filter byte + packed bits
    z, parts, rows_per_part = zlib.compressobj(9), [], max(1, (8 << 20) // len(row))
    for start in range(0, height, rows_per_part):
        parts.append(z.compress(row * min(rows_per_part, height - start)))
    parts.append(z.flush())
    header = chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0))
    return b"\x89PNG\r\n\x1a\n" + header + chunk(b"IDAT", b"".join(parts)) + chunk(b"IEND", b"")


def photo(size=(200, 150)) -> Image.Image:
    return Image.open(BUS).convert("RGB").resize(size)


def encoded(im: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format=fmt, **kw)
    return buf.getvalue()


def truncated(data: bytes, keep: float = 0.5) -> bytes:
    return data[: int(len(data) * keep)]


def corrupt_png() -> bytes:
    data = bytearray(encoded(photo(), "PNG"))
    idat = data.index(b"IDAT") + 8
    data[idat: idat + 64] = bytes(64)  # zeros inside the zlib stream
    return bytes(data)


def rgb48_png() -> bytes:
    ok, buf = cv2.imencode(".png", np.asarray(photo())[..., ::-1].astype(np.uint16) * 257)
    return buf.tobytes()


def gray16_png() -> bytes:
    return encoded(Image.fromarray(np.asarray(photo().convert("L"), dtype=np.uint16) * 257), "PNG")


def float_tiff() -> bytes:
    return encoded(Image.fromarray(np.asarray(photo().convert("L"), np.float32) / 255), "TIFF")


def audio_only_mp4(path: Path, seconds: float = 1.0) -> None:
    """An mp4 holding one AAC stream and no video."""
    rate = 44100
    with av.open(str(path), "w") as out:
        stream = out.add_stream("aac", rate=rate)
        stream.layout = "mono"
        samples = np.zeros((1, 1024), dtype=np.float32)
        for i in range(int(seconds * rate / 1024)):
            frame = av.AudioFrame.from_ndarray(samples, format="fltp", layout="mono")
            frame.sample_rate, frame.pts = rate, i * 1024
            out.mux(stream.encode(frame))
        out.mux(stream.encode(None))


def zero_frame_mkv(path: Path) -> None:
    """A Matroska file with an H.264 video stream that holds no frame (mp4 drops an empty track altogether)."""
    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx264", rate=10)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        out.start_encoding()


def undecodable_mp4(path: Path) -> None:
    """A well-formed mp4 whose every frame is garbage: the index is intact, the sample data zeros."""
    data = bytearray(write_video(path, frames=10).read_bytes())
    box = data.index(b"mdat") - 4  # the box: 4-byte size, "mdat", payload
    start, end = box + 8, box + struct.unpack(">I", data[box: box + 4])[0]
    data[start:end] = bytes(end - start)
    path.write_bytes(bytes(data))


def truncated_mp4(faststart: bool, keep: float) -> Callable[[Path], None]:
    """An mp4 cut short: with the index at the end (as cameras write) nothing is left to read; with it first
    (``faststart``) the frames before the cut still are."""
    def make(path: Path) -> None:
        path.write_bytes(truncated(write_video(path, frames=30, faststart=faststart).read_bytes(), keep))
    return make


def vfr_mp4(path: Path, frames: int = 8) -> None:
    """Variable frame rate: explicit timestamps 40, 100, 40, 250 … ms apart (ms time base)."""
    src = np.asarray(photo((320, 240)))
    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx264", rate=25)
        stream.width, stream.height, stream.pix_fmt = 320, 240, "yuv420p"
        stream.codec_context.time_base = Fraction(1, 1000)
        pts = 0
        for i in range(frames):
            frame = av.VideoFrame.from_ndarray(np.roll(src, i * 8, axis=1), format="rgb24")
            frame.pts, frame.time_base = pts, Fraction(1, 1000)
            pts += (40, 100, 40, 250)[i % 4]
            out.mux(stream.encode(frame))
        out.mux(stream.encode(None))


MAKERS: dict[str, Callable[[], bytes] | Callable[[Path], None]] = {
    "empty.jpg": lambda: b"",
    "truncated.jpg": lambda: truncated(encoded(photo(), "JPEG")),
    "corrupt.jpg": lambda: encoded(photo(), "JPEG")[:3] + bytes(range(256)) * 8,
    "truncated.png": lambda: truncated(encoded(photo(), "PNG")),
    "corrupt.png": corrupt_png,
    "notes.jpg": lambda: b"just some text\n" * 40,
    "bomb.png": lambda: blank_png(10_000, 10_000),  # 100 MP: over twice Pillow's limit, which the app sets
    "huge.png": lambda: blank_png(20_000, 20_000),
    "big.png": lambda: blank_png(8_000, 6_000),  # 48 MP: under Pillow's refusal, over the app's own cap
    "tiny.png": lambda: encoded(Image.new("RGB", (1, 1), "red"), "PNG"),
    "gray.jpg": lambda: encoded(photo().convert("L"), "JPEG"),
    "rgba.png": lambda: encoded(photo().convert("RGBA"), "PNG"),
    "gray16.png": gray16_png,
    "rgb48.png": rgb48_png,
    "cmyk.jpg": lambda: encoded(photo().convert("CMYK"), "JPEG"),
    "palette.gif": lambda: encoded(photo().convert("P"), "GIF", transparency=0),
    "float.tif": float_tiff,
    "clip.mp4": lambda path: write_video(path, frames=6),
    "empty.mp4": lambda: b"",
    "notes.mp4": lambda: b"not a video\n" * 40,
    "audio.mp4": audio_only_mp4,
    "zero-frames.mkv": zero_frame_mkv,
    "zeroed.mp4": undecodable_mp4,
    "truncated-moov-last.mp4": truncated_mp4(faststart=False, keep=0.5),
    "truncated-faststart.mp4": truncated_mp4(faststart=True, keep=0.8),
    "vfr.mp4": vfr_mp4,
    # over the cap, cheaply: one 64×48 frame a second
    "long.mp4": lambda path: write_video(path, frames=int(MAX_SECONDS) + 5, size=(64, 48), fps=1),
}


def write_corpus(folder: Path) -> Path:
    """Generate every corpus file into ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    for name, make in MAKERS.items():
        path = folder / name
        if make.__code__.co_argcount:
            make(path)
        else:
            path.write_bytes(make())
    return folder


IMAGE, VIDEO = "/detect_image", "/detect_video"
NAN, INF = float("nan"), float("inf")
CASES = [
    # --- images that cannot be used
    Case("zero-byte jpeg", IMAGE, image_args(File("empty.jpg")), r"empty\.jpg is empty \(0 bytes\)"),
    Case("truncated jpeg", IMAGE, image_args(File("truncated.jpg")), r"truncated\.jpg could not be decoded"),
    Case("corrupt jpeg", IMAGE, image_args(File("corrupt.jpg")), r"corrupt\.jpg is not an image"),
    Case("truncated png", IMAGE, image_args(File("truncated.png")), r"truncated\.png could not be decoded"),
    Case("corrupt png", IMAGE, image_args(File("corrupt.png")), r"corrupt\.png could not be decoded"),
    Case("text renamed .jpg", IMAGE, image_args(File("notes.jpg")), r"notes\.jpg is not an image"),
    Case("decompression bomb", IMAGE, image_args(File("bomb.png")), r"bomb\.png is too large to decode safely"),
    Case("20000x20000 image", IMAGE, image_args(File("huge.png")), r"huge\.png is too large to decode safely"),
    Case("over the app's pixel cap", IMAGE, image_args(File("big.png")), r"48 megapixels.*downscale"),
    # --- images that are odd but usable
    Case("1x1 image", IMAGE, image_args(File("tiny.png"))),
    Case("grayscale", IMAGE, image_args(File("gray.jpg"))),
    Case("RGBA", IMAGE, image_args(File("rgba.png"))),
    Case("16-bit grayscale", IMAGE, image_args(File("gray16.png"))),
    Case("16-bit RGB", IMAGE, image_args(File("rgb48.png"))),
    Case("CMYK jpeg", IMAGE, image_args(File("cmyk.jpg"))),
    Case("palette with transparency", IMAGE, image_args(File("palette.gif"))),
    Case("float TIFF", IMAGE, image_args(File("float.tif"))),
    # --- videos
    Case("zero-byte mp4", VIDEO, video_args(File("empty.mp4")), r"empty\.mp4 is empty \(0 bytes\)"),
    Case("text renamed .mp4", VIDEO, video_args(File("notes.mp4")),
         r"^notes\.mp4 is not a video that can be read \(Invalid data found when processing input\)$"),
    Case("mp4 without a video stream", VIDEO, video_args(File("audio.mp4")), r"audio\.mp4 has no video stream"),
    Case("zero-frame video", VIDEO, video_args(File("zero-frames.mkv")),
         r"zero-frames\.mkv is not a video that can be read \(End of file\)"),
    Case("mp4 with no decodable frame", VIDEO, video_args(File("zeroed.mp4")), r"no frame that can be decoded"),
    Case("truncated mp4, index at the end", VIDEO, video_args(File("truncated-moov-last.mp4")),
         r"not a video that can be read \(Invalid data"),
    Case("truncated mp4, index first", VIDEO, video_args(File("truncated-faststart.mp4")),
         notice=r"damaged after frame \d+; the frames before it were processed"),
    Case("variable frame rate", VIDEO, video_args(File("vfr.mp4"))),
    Case("longer than the cap", VIDEO, video_args(File("long.mp4")),
         rf"{int(MAX_SECONDS) + 5} s long; the limit is {MAX_SECONDS:.0f} s"),
    # --- settings sent through the API
    Case("NaN confidence", IMAGE, image_args(BUS, conf=NAN), r"confidence must be a number .* got nan", raw=True),
    Case("confidence above 1", IMAGE, image_args(BUS, conf=5.0), r"confidence must be a number"),
    Case("negative IoU", IMAGE, image_args(BUS, iou=-1.0), r"IoU must be a number"),
    Case("infinite image size", IMAGE, image_args(BUS, imgsz=INF), r"image size must be a number", raw=True),
    Case("image size 0", IMAGE, image_args(BUS, imgsz=0), r"image size must be a number"),
    Case("image size as text", IMAGE, image_args(BUS, imgsz="big"), r"image size must be a number"),
    Case("unknown variant", IMAGE, image_args(BUS, variant="s9"), r"unknown variant 's9'"),
    Case("missing device", IMAGE, image_args(BUS, device="cuda:7"), r"device 'cuda:7' is not available"),
    Case("unknown runtime", IMAGE, image_args(BUS, runtime="tensorrt"), r"unknown runtime 'tensorrt'"),
    Case("unknown class", IMAGE, image_args(BUS, classes=["unicorn"]), r"unknown class"),
    Case("classes not names", IMAGE, image_args(BUS, classes=[3]), r"classes must be a list of class names"),
    Case("no settings at all", IMAGE, (BUS, None, None, None, None, None, None, None), r"unknown variant"),
    Case("NaN confidence on video", VIDEO, video_args(File("clip.mp4"), conf=NAN), r"confidence", raw=True),
    Case("image size as text on video", VIDEO, video_args(File("clip.mp4"), imgsz="big"), r"image size"),
    Case("out-of-range IoU on video", VIDEO, video_args(File("clip.mp4"), iou=7), r"IoU must be a number"),
    Case("NaN runs on latency", "/latency", (BUS, ["s1"], "cpu", 160, NAN, False, *GOOD[:2], "pytorch"),
         r"runs must be a number", raw=True),
    Case("variants not a list", "/latency", (BUS, 3, "cpu", 160, 1, False), r"variants must be a list"),
    Case("infinite top-k on star maps", "/star_maps", (BUS, "s1", "1.1", 160, INF, "cpu"), r"top channels",
         raw=True),
    Case("unknown star block", "/star_maps", (BUS, "s1", "9.9", 160, 1, "cpu"), r"block '9\.9' is not in s1"),
    # --- why stars
    Case("unknown swap scope", "/star_vs_sum", (BUS, "s1", ["stage 9"], "2.7", *GOOD[2:], *GOOD[:2], "cpu"),
         r"cannot swap 'stage 9'"),
    Case("star vs sum on YOLOv8n", "/star_vs_sum", (BUS, "yolov8n", ["all"], "2.7", *GOOD[2:], *GOOD[:2], "cpu"),
         r"YOLOv8n has no star blocks"),
    Case("NaN image size on star vs sum", "/star_vs_sum", (BUS, "s1", ["all"], "2.7", NAN, *GOOD[:2], "cpu"),
         r"image size must be a number", raw=True),
    Case("unknown toy dataset", "/star_toy", ("squares", 4, 1, 0), r"unknown dataset 'squares'"),
    Case("NaN toy width", "/star_toy", ("moons", NAN, 1, 0), r"width must be a whole number", raw=True),
    Case("toy deeper than allowed", "/star_toy", ("moons", 4, 99, 0), r"depth must be a whole number from 1 to 6"),
    Case("unknown CAM layer", "/cam", (BUS, ["s1"], "head", *GOOD[2:], *GOOD[:2], "cpu"), r"unknown layer 'head'"),
    Case("unknown variant on CAM", "/cam", (BUS, ["s9"], "neck", *GOOD[2:], *GOOD[:2], "cpu"),
         r"unknown variant 's9'"),
    Case("text renamed .jpg on CAM", "/cam", (File("notes.jpg"), ["s1"], "neck", *GOOD[2:], *GOOD[:2], "cpu"),
         r"notes\.jpg is not an image"),
    Case("a server file instead of an upload", IMAGE,
         image_args({"path": "/etc/hostname", "meta": {"_type": "gradio.FileData"}}), r"not uploaded by a user",
         raw=True),
    # --- webcam
    Case("webcam None frame", "/webcam", (None, "s1", "cpu", *GOOD, [], "pytorch"),
         notice=r"No frame from the webcam", raw=True),
    Case("webcam frame not an image", "/webcam", (File("notes.jpg"), "s1", "cpu", *GOOD, [], "pytorch"),
         r"notes\.jpg is not an image", raw=True),
    Case("webcam NaN confidence", "/webcam", (BUS, "s1", "cpu", NAN, 0.45, 160, [], "pytorch"), r"confidence",
         raw=True),
]


# ---------------------------------------------------------------- sending
def resolve(args: tuple, folder: Path) -> tuple:
    return tuple(folder / a.name if isinstance(a, File) else a for a in args)


def upload(url: str, path: Path) -> dict:
    """Upload a file the way the browser does; returns the payload a file input takes."""
    with open(path, "rb") as f:
        r = httpx.post(f"{url}gradio_api/upload", files={"files": (path.name, f)}, timeout=60)
    r.raise_for_status()
    return {"path": r.json()[0], "orig_name": path.name, "meta": {"_type": "gradio.FileData"}}


def queue_call(client: Client, api_name: str, *args, timeout_s: float = 120) -> tuple[bool, Any, list[str]]:
    """One event through Gradio's queue protocol, as the browser sends it: (success, output data or error message,
    warnings shown). A streaming event stops at its first output; a generating one (the video) at its last."""
    url = client.src if client.src.endswith("/") else client.src + "/"
    dep = next(d for d in client.config["dependencies"] if d.get("api_name") == api_name.lstrip("/"))
    kinds = {c["id"]: c["type"] for c in client.config["components"]}
    values = iter(upload(url, a) if isinstance(a, Path) else a for a in args)
    data = [None if kinds[i] == "state" else next(values) for i in dep["inputs"]]
    session = uuid.uuid4().hex
    body = json.dumps({"data": data, "fn_index": dep["id"], "session_hash": session, "event_data": None,
                       "trigger_id": None})  # json.dumps writes NaN and Infinity, as a non-Python client may
    warnings = []
    with httpx.Client(timeout=timeout_s) as http:
        joined = http.post(f"{url}gradio_api/queue/join", content=body, headers={"content-type": "application/json"})
        event_id = joined.raise_for_status().json()["event_id"]
        with http.stream("GET", f"{url}gradio_api/queue/data", params={"session_hash": session}) as events:
            for line in events.iter_lines():
                if not line.startswith("data:"):
                    continue
                msg = json.loads(line[5:])
                if msg["msg"] == "log" and msg.get("level") == "warning":
                    warnings.append(msg.get("log"))
                elif msg["msg"] in ("process_completed", "process_streaming"):
                    if msg["msg"] == "process_streaming":  # free the stream's slot now, not at its time limit
                        http.post(f"{url}gradio_api/stream/{event_id}/close")
                    out = msg.get("output") or {}
                    if msg.get("success", True):
                        return True, out.get("data"), warnings
                    return False, out.get("error") or "Error", warnings
    raise RuntimeError(f"{api_name}: the event stream ended without a result")
