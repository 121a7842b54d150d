"""Helpers shared by the tests: models and weights that do something, test media, and serving ``app.py`` locally.

Random-init weights detect nothing, so ``boxy_weights`` raises one "person" logit bias of the Detect head: the
network, NMS, annotation and UI all run for real and every image gets a few boxes. Tests point
``STARNET_WEIGHTS_DIR`` at the folder; the detector cache is cleared around each server so no other test's weights
leak in.
"""

from __future__ import annotations

import importlib.util
import os
import threading
import time
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn

from starnet_demo.inference.detector import clear_detectors
from starnet_demo.models.yolo import build_model
from starnet_demo.tools.loadtest import free_port
from starnet_demo.weights.files import save_weights

ROOT = Path(__file__).resolve().parent.parent
CLIP_FRAMES = 8  # of conftest's ``clip``
EXAMPLES = ROOT / "examples"
BUS = EXAMPLES / "bus.jpg"


def load_app():
    """``app.py`` as a module (it sits at the repository root, outside the package)."""
    spec = importlib.util.spec_from_file_location("app", ROOT / "app.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def with_real_batchnorms(variant: str = "s050", seed: int = 0) -> nn.Module:
    """A random-init model in eval mode whose BatchNorms are not identities, so that folding them is a real change."""
    torch.manual_seed(seed)
    model = build_model(variant).eval()
    with torch.no_grad():
        for bn in (m for m in model.modules() if isinstance(m, nn.BatchNorm2d)):
            bn.weight.uniform_(0.5, 1.5)
            bn.bias.uniform_(-0.2, 0.2)
            bn.running_mean.uniform_(-0.2, 0.2)
            bn.running_var.uniform_(0.5, 2.0)
    return model


def boxy_weights(folder: Path, variants: tuple[str, ...] = ("s1", "yolov8n")) -> Path:
    """Random-init weights whose stride-32 Detect branch scores every anchor 0.5 "person": after NMS a handful of
    large boxes on any image (5 at 320 px, 16 at 640 px)."""
    for v in variants:
        if (folder / f"{v}.json").is_file():
            continue
        torch.manual_seed(0)
        model = build_model(v)
        with torch.no_grad():
            model.model[-1].cv3[-1][-1].bias[0] = 0.0
        save_weights(model, folder, meta={"recipe": "test: random init, person bias on P5"})
    return folder


def server_env(root: Path, variants: tuple[str, ...] = ("s1", "yolov8n")) -> dict[str, str]:
    """The environment of ``app.py`` served in its own process (``tools.loadtest.serve_app``) under ``root``: a
    private Gradio cache and temporary folder (so that what a request leaves behind can be counted), ``boxy_weights``
    of ``variants``, its own examples cache, and the Hub left alone."""
    dirs = {"GRADIO_TEMP_DIR": root / "gradio", "TMPDIR": root / "tmp"}
    for d in dirs.values():
        d.mkdir(parents=True, exist_ok=True)
    return {**{k: str(v) for k, v in dirs.items()}, "HF_HUB_OFFLINE": "1",
            "STARNET_WEIGHTS_DIR": str(boxy_weights(root / "weights", variants)),
            "GRADIO_EXAMPLES_CACHE": str(root / "examples-cache")}


def png_header_only(path: Path, width: int, height: int) -> Path:
    """A PNG that claims ``width``×``height`` (e.g. 20000×20000) but holds a 1×1 image: refused before decoding."""
    import io

    buf = io.BytesIO()
    Image.new("RGB", (1, 1)).save(buf, format="PNG")
    data = bytearray(buf.getvalue())
    ihdr = data.index(b"IHDR")
    data[ihdr + 4: ihdr + 12] = width.to_bytes(4, "big") + height.to_bytes(4, "big")
    data[ihdr + 17: ihdr + 21] = zlib.crc32(bytes(data[ihdr: ihdr + 17])).to_bytes(4, "big")
    path.write_bytes(bytes(data))
    return path


@contextmanager
def serve(weights_dir: Path, cache_dir: Path) -> Iterator[tuple[object, str]]:
    """``app.py`` served on 127.0.0.1 from ``weights_dir`` (examples cached in ``cache_dir``); yields (app, url)."""
    saved = {k: os.environ.get(k) for k in ("STARNET_WEIGHTS_DIR", "GRADIO_EXAMPLES_CACHE")}
    os.environ["STARNET_WEIGHTS_DIR"], os.environ["GRADIO_EXAMPLES_CACHE"] = str(weights_dir), str(cache_dir)
    clear_detectors()
    app = load_app()
    demo = app.build_app()
    try:
        _, url, _ = app.launch(demo, server_name="127.0.0.1", server_port=free_port(), prevent_thread_lock=True,
                               quiet=True)
        yield app, url
    finally:
        demo.close()
        clear_detectors()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def video_threads() -> list[threading.Thread]:
    """The threads of videos in progress in this process: each job's own, its decoder's and its encoder's."""
    return [t for t in threading.enumerate() if t.name.startswith("video-")]


def encoding() -> bool:
    """Whether a video is being encoded in this process: its model loaded, its frames being written."""
    return any(t.name == "video-encode" for t in video_threads())


def wait_for(condition: Callable[[], object], timeout: float) -> float:
    """Seconds until ``condition()`` held; fails after ``timeout``."""
    start = time.monotonic()
    while not condition():
        assert time.monotonic() - start < timeout, f"not within {timeout} s"
        time.sleep(0.02)
    return time.monotonic() - start


def stream_webcam(page, seconds: float, timeout_ms: int = 60_000) -> tuple[int, float]:
    """Start the Webcam tab's stream (Chromium's fake camera) and watch it; returns (annotated frames back, FPS)."""
    page.get_by_role("tab", name="Webcam").click()
    page.get_by_text("Click to Access Webcam").click()
    page.locator("button:visible", has_text="Record").first.click()
    out = page.locator("#webcam-out img")
    out.wait_for(timeout=timeout_ms)
    seen: dict[str, float] = {}
    start = time.monotonic()
    while time.monotonic() - start < seconds:
        src = out.get_attribute("src")
        if src and src not in seen:
            seen[src] = time.monotonic()
        time.sleep(0.01)
    stamps = sorted(seen.values())
    fps = (len(stamps) - 1) / (stamps[-1] - stamps[0]) if len(stamps) > 1 else 0.0
    return len(stamps), fps


def write_video(path: Path, frames: int = 8, size: tuple[int, int] = (320, 240), fps: float = 10,
                faststart: bool = True) -> Path:
    """A short H.264 clip panning across ultralytics' bus.jpg (people and a bus): the tests' clips. ``faststart``
    puts the mp4 index first, so that a truncated file still opens."""
    from fractions import Fraction

    import av
    from ultralytics.utils import ASSETS

    w, h = size
    src = np.asarray(Image.open(ASSETS / "bus.jpg").convert("RGB").resize((w * 2, h * 2)))
    options = {"movflags": "+faststart"} if faststart else {}
    with av.open(str(path), "w", options=options) as out:
        stream = out.add_stream("libx264", rate=Fraction(fps).limit_denominator(1000))
        stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
        for i in range(frames):
            x = (i * 8) % w
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(src[h // 2: h // 2 + h, x: x + w]), format="rgb24")
            out.mux(stream.encode(frame))
        out.mux(stream.encode(None))
    return path
