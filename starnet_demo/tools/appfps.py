"""``python -m starnet_demo app-fps``: the Webcam tab against the camera, in a real browser.

Headless Chromium's fake camera plays a Y4M clip made here at a known frame rate (``write_y4m``): the example photo
sliding sideways, each frame's index written as a bar code along its bottom edge. Chromium streams it through the
app's Webcam tab; a script in the page times every annotated frame that comes back and reads two indices off the bar
codes, the frame that was annotated and the frame the camera shows at that moment. So the tool reports the camera's
own rate (counted in the page, beside the rate the clip declares), the app's rate as a share of it, how many camera
frames each returned frame lags behind the live picture, and how many it moved on since the previous one (1: every
camera frame was annotated). Chromium, the app and its detector share this machine's CPU, as a visitor's browser
does not, so the figures are a lower bound for a visitor on a separate machine.

The app runs as ``python app.py`` (``loadtest.serve_app``) unless ``--url`` names a running one. Needs Playwright
(``requirements-test.txt``) and a Chromium binary (``apt-get install chromium``).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from ..inference.devices import cpu_info
from ..models.yolo import BASELINE
from .bench import default_image

CHROMIUM = Path("/usr/bin/chromium")
FLAGS = ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--use-fake-device-for-media-stream", "--use-fake-ui-for-media-stream"]
BITS = 8  # a clip of up to 2**BITS frames loops without two frames sharing a code
# Each bit is a pair of cells, the bit and its complement, between a white and a black end cell: a box or label drawn
# over part of the code leaves a pair equal or an end wrong, so the code is not read rather than misread.
CELLS = 2 * BITS + 2
ABOVE = 48  # the code's distance from the bottom edge, clear of the app's FPS line (``viz.annotate.StatsAnnotator``)

# Runs in the page: decodes the bar code of an image or video element, and logs every new annotated frame with the
# index it carries and the index the camera shows at that moment; counts the camera's frames as the page gets them.
MONITOR_JS = """([bits, above, outSelector]) => {
  const cells = 2 * bits + 2;
  const canvas = document.createElement('canvas');
  const g = canvas.getContext('2d', {willReadFrequently: true});
  function decode(source, w, h) {  // read_code, in the page
    if (!w || !h) return null;
    canvas.width = w; canvas.height = h;
    g.drawImage(source, 0, 0, w, h);
    const strip = Math.floor(h / 10), cell = Math.floor(w / cells), y = h - strip - above;
    const bright = (i) => {
      const d = g.getImageData(i * cell + cell / 4, y + strip / 4, cell / 2, strip / 2).data;
      let n = 0;
      for (let k = 0; k < d.length; k += 4) n += (d[k] + d[k + 1] + d[k + 2] > 384) ? 1 : 0;
      return n / (d.length / 4);
    };
    if (bright(0) < 0.75 || bright(cells - 1) > 0.25) return null;
    let v = 0;
    for (let i = 0; i < bits; i++) {
      const b = bright(1 + 2 * i), c = bright(2 + 2 * i);
      if (!((b >= 0.75 && c <= 0.25) || (b <= 0.25 && c >= 0.75))) return null;
      v = v * 2 + (b >= 0.75 ? 1 : 0);
    }
    return v;
  }
  const log = window.__appfps = {frames: [], camera: [], settings: null};
  const video = document.querySelector('video');
  const track = video && video.srcObject && video.srcObject.getVideoTracks()[0];
  log.settings = track ? track.getSettings() : null;
  const onCamera = (now) => { log.camera.push(now); video.requestVideoFrameCallback(onCamera); };
  if (video) video.requestVideoFrameCallback(onCamera);
  let last = null;
  const poll = async () => {
    const img = document.querySelector(outSelector);
    const src = img && img.getAttribute('src');
    if (src && src !== last) {
      last = src;
      const t = performance.now();
      const live = video ? decode(video, video.videoWidth, video.videoHeight) : null;
      const shown = new Image();
      shown.src = src;
      try { await shown.decode(); } catch (e) { setTimeout(poll, 5); return; }
      log.frames.push({t, camera: live, annotated: decode(shown, shown.naturalWidth, shown.naturalHeight)});
    }
    setTimeout(poll, 5);
  };
  poll();
}"""


def frame_code(index: int, size: tuple[int, int]) -> np.ndarray:
    """The bar code strip of frame ``index`` as an RGB array ``(h // 10, w, 3)``: a white cell, each of the BITS bits
    (MSB first; white is 1) followed by its complement, a black cell. It sits ``ABOVE`` pixels above the bottom."""
    w, h = size
    strip, cell = h // 10, w // CELLS
    row = np.zeros((strip, w, 3), np.uint8)
    bits = [(index >> (BITS - 1 - i)) & 1 for i in range(BITS)]
    for i, white in enumerate([1, *(v for b in bits for v in (b, 1 - b)), 0]):
        row[:, i * cell: (i + 1) * cell] = 255 if white else 0
    return row


def read_code(rgb: np.ndarray) -> int | None:
    """The frame index in an RGB frame's bar code, as the page script reads it: the share of bright pixels in the
    middle of each cell, so a thin box edge across a cell changes nothing; None where a pair is not a bit and its
    complement or the end cells are not white and black (something drawn over the code)."""
    h, w = rgb.shape[:2]
    strip, cell = h // 10, w // CELLS
    y = h - strip - ABOVE + strip // 4
    band = rgb[y: y + strip // 2].astype(np.int32).sum(axis=2) > 384
    bright = [band[:, i * cell + cell // 4: i * cell + cell // 4 + cell // 2].mean() for i in range(CELLS)]
    if bright[0] < 0.75 or bright[-1] > 0.25:
        return None
    pairs = [(bright[1 + 2 * i], bright[2 + 2 * i]) for i in range(BITS)]
    if not all((b >= 0.75 and c <= 0.25) or (b <= 0.25 and c >= 0.75) for b, c in pairs):
        return None
    return int("".join("1" if b >= 0.75 else "0" for b, _ in pairs), 2)


def write_y4m(path: str | Path, frames: int = 200, size: tuple[int, int] = (640, 480), fps: int = 20,
              image: str | Path | None = None) -> Path:
    """A Y4M clip (what Chromium's fake camera plays, looping, at the ``F`` rate of its header) of ``image``
    (default: the bus photo) sliding sideways, each frame's index in a bar code along the bottom (``frame_code``)."""
    if not 2 <= frames <= 2**BITS:
        raise ValueError(f"frames must be 2 to {2**BITS} (the bar code's range), got {frames}")
    w, h = size
    if w % 2 or h % 2 or w < 16 * CELLS or h < 160:
        raise ValueError(f"camera size must be even and at least {16 * CELLS}x160, got {w}x{h}")
    picture = cv2.imread(str(image or default_image()), cv2.IMREAD_COLOR)
    if picture is None:
        raise ValueError(f"cannot read image {image or default_image()}")
    step = max(1, w // 160)
    src = cv2.cvtColor(cv2.resize(picture, (w + frames * step, h)), cv2.COLOR_BGR2RGB)
    with open(path, "wb") as f:
        f.write(f"YUV4MPEG2 W{w} H{h} F{fps}:1 Ip A1:1 C420jpeg\n".encode())
        for i in range(frames):
            rgb = np.ascontiguousarray(src[:, i * step: i * step + w])
            rgb[h - h // 10 - ABOVE: h - ABOVE] = frame_code(i, size)
            f.write(b"FRAME\n" + cv2.cvtColor(rgb, cv2.COLOR_RGB2YUV_I420).tobytes())
    return Path(path)


def summarise(frames: list[dict[str, Any]], camera: list[float], loop: int, declared_fps: float,
              seconds: float) -> dict[str, Any]:
    """Rates and lags from the page's log over its last ``seconds``: ``frames`` (``t`` ms, ``camera`` and
    ``annotated`` indices, None where unread) and ``camera`` (ms of each camera frame the page got).

    The app streams on a timer of its own, so it can send one camera frame twice: ``new_fps`` counts only returned
    frames that show a newer camera frame than the one before (among consecutive read pairs), and
    ``share_of_camera`` is that over the camera's rate.
    """
    def stats(values: list[float]) -> dict[str, float | None]:
        if not values:
            return {"median": None, "p90": None}
        return {"median": round(float(np.median(values)), 2), "p90": round(float(np.percentile(values, 90)), 2)}

    end = max([f["t"] for f in frames] + camera + [0.0])
    frames = [f for f in frames if f["t"] >= end - seconds * 1000]
    camera = [t for t in camera if t >= end - seconds * 1000]
    camera_fps = (len(camera) - 1) / (camera[-1] - camera[0]) * 1000 if len(camera) > 2 else None
    fps = (len(frames) - 1) / (frames[-1]["t"] - frames[0]["t"]) * 1000 if len(frames) > 2 else 0.0
    reference = camera_fps or declared_fps
    lags = [(f["camera"] - f["annotated"]) % loop for f in frames
            if f["camera"] is not None and f["annotated"] is not None]
    steps = [(b["annotated"] - a["annotated"]) % loop for a, b in zip(frames, frames[1:], strict=False)
             if a["annotated"] is not None and b["annotated"] is not None]
    new_fps = fps * sum(s > 0 for s in steps) / len(steps) if steps else None
    return {
        "frames_back": len(frames), "fps": round(fps, 2), "new_fps": round(new_fps, 2) if new_fps is not None else None,
        "camera_fps_declared": declared_fps, "camera_fps_measured": round(camera_fps, 2) if camera_fps else None,
        "share_of_camera": round(new_fps / reference, 3) if new_fps is not None and reference else None,
        "lag_frames": stats(lags), "lag_ms": stats([lag / reference * 1000 for lag in lags]),
        "camera_frames_per_new_frame": stats([s for s in steps if s > 0]),
        "codes_read": sum(f["annotated"] is not None for f in frames),
    }


def _choose(page, label: str, option: str | re.Pattern) -> None:
    page.get_by_label(label).first.click()
    page.get_by_role("option", name=option).first.click()


def measure_webcam(browser, url: str, variant: str, runtime: str, imgsz: int, seconds: float, loop: int,
                   declared_fps: float, settle_s: float = 3.0, screenshot: Path | None = None,
                   timeout_ms: int = 180_000) -> dict[str, Any]:
    """Stream the fake camera through the Webcam tab with these settings; ``settle_s`` seconds (model load, export
    and the first frames) are streamed before the ``seconds`` that count."""
    from ..ui.choices import model_name

    page = browser.new_context(viewport={"width": 1280, "height": 1000}, permissions=["camera"]).new_page()
    try:
        page.goto(url)
        page.wait_for_selector(".gradio-container")  # Gradio keeps connections open: never wait for network idle
        _choose(page, "Model", re.compile("^" + re.escape(model_name(variant))))
        _choose(page, "Runtime", re.compile(f"^{re.escape(runtime)}$"))
        size = page.get_by_label("Image size").and_(page.locator("input[type=number]")).first
        size.fill(str(imgsz))
        size.press("Enter")
        page.get_by_role("tab", name="Webcam").click()
        page.get_by_text("Click to Access Webcam").click()
        page.locator("button:visible", has_text="Record").first.click()
        page.locator("#webcam-out img").wait_for(timeout=timeout_ms)  # the first annotated frame
        page.wait_for_function("() => { const v = document.querySelector('video'); return v && v.videoWidth > 0; }")
        page.evaluate(MONITOR_JS, [BITS, ABOVE, "#webcam-out img"])
        time.sleep(settle_s + seconds)
        log = page.evaluate("() => window.__appfps")
        if screenshot:
            page.screenshot(path=str(screenshot))
    finally:
        page.close()
    result = summarise(log["frames"], log["camera"], loop, declared_fps, seconds)
    settings = log.get("settings") or {}
    return {"variant": variant, "runtime": runtime, "imgsz": imgsz, "seconds": seconds,
            "camera_size": f"{settings.get('width')}x{settings.get('height')}",
            "camera_settings_fps": settings.get("frameRate"), **result}


@contextmanager
def _app(url: str | None, weights_dir: str | Path | None, log: str | Path | None) -> Iterator[str]:
    if url:
        yield url
        return
    from .loadtest import serve_app

    env = {"HF_HUB_OFFLINE": "1", **({"STARNET_WEIGHTS_DIR": str(weights_dir)} if weights_dir else {})}
    with serve_app(env, log=log) as server:
        yield server.url


def run(variants: list[str], runtime: str = "auto", imgsz: list[int] | None = None, seconds: float = 20,
        camera_fps: int = 20, camera_size: tuple[int, int] = (640, 480), frames: int = 200, url: str | None = None,
        weights_dir: str | Path | None = None, screenshots: str | Path | None = None, settle_s: float = 3.0,
        chromium: str | Path = CHROMIUM, server_log: str | Path | None = None,
        log: Callable[[str], None] = print) -> dict[str, Any]:
    """One webcam measurement per variant and image size (``measure_webcam``), the camera at ``camera_fps``;
    returns the report (machine, camera, one result per setting)."""
    if not Path(chromium).is_file():
        raise FileNotFoundError(f"Chromium not found at {chromium}: apt-get install chromium")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        raise RuntimeError("app-fps needs Playwright: pip install playwright") from None
    bad = [v for v in variants if v != BASELINE and not re.fullmatch(r"s\d+", v)]
    if bad:
        raise ValueError(f"unknown variant(s) {', '.join(bad)}")
    shots = Path(screenshots) if screenshots else None
    if shots:
        shots.mkdir(parents=True, exist_ok=True)
    folder = Path(tempfile.mkdtemp(prefix="app-fps-"))
    try:
        camera = write_y4m(folder / "camera.y4m", frames, camera_size, camera_fps)
        results = []
        with _app(url, weights_dir, server_log) as address, sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=str(chromium),
                                         args=[*FLAGS, f"--use-file-for-fake-video-capture={camera}"])
            try:
                for variant in variants:
                    for size in imgsz or [640]:
                        shot = shots / f"webcam_{variant}_{runtime}_{size}.png" if shots else None
                        results.append(measure_webcam(browser, address, variant, runtime, size, seconds, frames,
                                                      camera_fps, settle_s, shot))
                        r = results[-1]
                        log(f"app-fps: {variant} {runtime} {size} px: {r['new_fps']} new frames/s = "
                            f"{r['share_of_camera']} of the camera's {r['camera_fps_measured']} FPS; lag "
                            f"{r['lag_frames']['median']} frames ({r['lag_ms']['median']} ms)")
            finally:
                browser.close()
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    return {"machine": {**cpu_info(), "logical_cores": os.cpu_count(),
                        "load_avg_1min_end": round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None},
            "camera": {"source": "Chromium fake camera playing a Y4M clip (tools/appfps.write_y4m)",
                       "size": f"{camera_size[0]}x{camera_size[1]}", "fps": camera_fps, "loop_frames": frames},
            "app": url or "app.py started by the tool", "results": results}


def write(report: dict[str, Any], out: str | Path) -> Path:
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    return out
