"""``python -m starnet_demo app-fps``: the Webcam tab against the camera, in a real browser, and where each frame's
time goes.

Headless Chromium's fake camera plays a Y4M clip made here at a known frame rate (``write_y4m``): the example photo
sliding sideways, each frame's index written as a bar code along its bottom edge. Chromium streams it through the
app's Webcam tab. In the page, a light observer does work only when something happens: each camera frame
(``requestVideoFrameCallback``: its time, and the bar code of every ``CAMERA_READ_EVERY``-th) and each annotated frame
shown (the output image's ``load``) has its bar code read off a 2-pixel strip; the JPEG encode of each frame sent is
timed by wrapping ``toDataURL``, and the browser's resource timings give each frame's upload (the ``/stream`` POST);
each result comes inline and names the frame it answers (``ui.webcam.inline_jpeg``). The app, started with
``STARNET_WEBCAM_TRACE``, writes its own timings per frame (decode, detect, annotate, encode). From these the tool
reports the shown rate (``new_fps``: frames showing a newer camera frame), the lag behind the live camera in frames
and ms, the median of each stage of a frame's trip (``stage_breakdown``) and the app's CPU time per handler call.

Beside it, ``handler_fps``: ``ui.handlers.webcam_frame`` alone, called in a process of its own on the same frames (the
clip, JPEG-encoded as the browser does) and on the app's cores: the rate the server could reach if the transport cost
nothing. ``split_cores`` gives the app and Chromium one half of this machine's cores each, as a visitor's browser runs
on another machine; without it they share every core, and the figures are a lower bound.

The app runs as ``python app.py`` (``loadtest.serve_app``) unless ``url`` names a running one. Needs Playwright
(``requirements-test.txt``) and a Chromium binary (``apt-get install chromium``).
"""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from ..inference.devices import cpu_info
from ..models.yolo import BASELINE
from ..ui.webcam import CAMERA_ID, OUTPUT_ID, RATES_ID
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
BROWSER_JPEG_QUALITY = 92  # what canvas.toDataURL("image/jpeg") uses, as Gradio's webcam calls it
# Reading a frame's bar code copies pixels back from the page's compositor; on every camera frame that cost the
# browser's core more than the app's frames did. The camera's rate and the lags need only some codes (``summarise``).
CAMERA_READ_EVERY = 10
SERVER_STAGES = ("decode", "detect", "annotate", "encode")  # the handler's own, from its trace
STAGES = ("camera_wait", "browser_encode", "upload", "queue_wait", *SERVER_STAGES, "message", "show", "render")

# Runs before the page's own scripts: times each JPEG the page encodes (Gradio's webcam: canvas.toDataURL) and the
# arrival of each result (the stream's message, as the page parses it: JSON.parse), and keeps every resource timing
# (each frame's upload, a POST to /stream/<event>).
INIT_JS = """(() => {
  const log = window.__appfps = {on: false, encodes: [], messages: [], shown: [], camera: [],
                                 origin: performance.timeOrigin};
  performance.setResourceTimingBufferSize(1e6);
  const parse = JSON.parse;
  JSON.parse = function (text, ...rest) {
    if (log.on && typeof text === 'string' && text.length > 1000) {
      const tag = /;answers=(\\d+)/.exec(text.slice(0, 2000));
      if (tag) log.messages.push({t: performance.now(), n: Number(tag[1])});
    }
    return parse.call(this, text, ...rest);
  };
  const toDataURL = HTMLCanvasElement.prototype.toDataURL;
  HTMLCanvasElement.prototype.toDataURL = function (...args) {
    const t0 = performance.now(), url = toDataURL.apply(this, args);
    if (log.on && args[0] === 'image/jpeg') log.encodes.push({t0, t1: performance.now(), n: url.length});
    return url;
  };
})()"""

# Started once the stream runs: reads the bar code of each camera frame and each annotated frame shown, from a strip
# two pixels high (read_code, in the page), and logs when each was presented.
OBSERVE_JS = """([bits, above, outSelector, every]) => {
  const log = window.__appfps, cells = 2 * bits + 2;
  const canvas = document.createElement('canvas');
  canvas.width = cells * 4; canvas.height = 2;
  const g = canvas.getContext('2d', {willReadFrequently: true});
  function code(source, w, h) {
    if (!w || !h) return null;
    const strip = Math.floor(h / 10), cell = Math.floor(w / cells);
    g.drawImage(source, 0, h - strip - above + strip / 4, cells * cell, strip / 2, 0, 0, cells * 4, 2);
    const d = g.getImageData(0, 0, cells * 4, 2).data;
    const bright = (i) => {
      let n = 0;
      for (const y of [0, 1]) for (const x of [4 * i + 1, 4 * i + 2]) {
        const k = (y * cells * 4 + x) * 4;
        n += (d[k] + d[k + 1] + d[k + 2] > 384) ? 1 : 0;
      }
      return n / 4;
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
  const video = document.querySelector('video');
  const track = video && video.srcObject && video.srcObject.getVideoTracks()[0];
  log.settings = track ? track.getSettings() : null;
  let presented = 0;
  const onCamera = (now) => {
    const read = presented++ % every === 0;
    log.camera.push({t: now, code: read ? code(video, video.videoWidth, video.videoHeight) : null});
    video.requestVideoFrameCallback(onCamera);
  };
  if (video) video.requestVideoFrameCallback(onCamera);
  const seen = new WeakSet();
  const watch = () => {
    const img = document.querySelector(outSelector);
    if (!img || seen.has(img)) return;
    seen.add(img);
    img.addEventListener('load', () => {
      const t_load = performance.now(), tag = /^data:[^,]*;answers=(\\d+)/.exec(img.src.slice(0, 64));
      const c = code(img, img.naturalWidth, img.naturalHeight), n = tag ? Number(tag[1]) : null;
      requestAnimationFrame(() => log.shown.push({n, t_load, t_paint: performance.now(), code: c}));
    });
  };
  watch();
  new MutationObserver(watch).observe(document.body, {childList: true, subtree: true});
  log.on = true;
}"""

# The uploads (the server has answered at responseStart); the results come inline, in the stream's messages.
RESOURCES_JS = """() => performance.getEntriesByType('resource')
  .filter(e => /\\/stream\\/[^/?]+$/.test(e.name))
  .map(e => ({name: e.name, start: e.startTime, answer: e.responseStart, end: e.responseEnd}))"""


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


def clip_frames(frames: int = 200, size: tuple[int, int] = (640, 480),
                image: str | Path | None = None) -> Iterator[np.ndarray]:
    """The clip's RGB frames: ``image`` (default: the bus photo) sliding sideways, each frame's index in a bar code
    along the bottom (``frame_code``)."""
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
    for i in range(frames):
        rgb = np.ascontiguousarray(src[:, i * step: i * step + w])
        rgb[h - h // 10 - ABOVE: h - ABOVE] = frame_code(i, size)
        yield rgb


def write_y4m(path: str | Path, frames: int = 200, size: tuple[int, int] = (640, 480), fps: int = 20,
              image: str | Path | None = None) -> Path:
    """A Y4M clip of ``clip_frames`` (what Chromium's fake camera plays, looping, at the ``F`` rate of its header)."""
    w, h = size
    rgbs = clip_frames(frames, size, image)  # checks the arguments before the file is opened
    first = next(rgbs)
    with open(path, "wb") as f:
        f.write(f"YUV4MPEG2 W{w} H{h} F{fps}:1 Ip A1:1 C420jpeg\n".encode())
        for rgb in (first, *rgbs):
            f.write(b"FRAME\n" + cv2.cvtColor(rgb, cv2.COLOR_RGB2YUV_I420).tobytes())
    return Path(path)


# ---------------------------------------------------------------- cores
def split_cores(cores: set[int] | None = None) -> tuple[set[int], set[int]]:
    """This process's usable cores in two halves, (app, browser): the first half for the app."""
    cores = sorted(cores if cores is not None else os.sched_getaffinity(0))
    if len(cores) < 2:
        raise ValueError("--split-cores needs at least 2 usable cores")
    half = len(cores) // 2
    return set(cores[:half]), set(cores[half:])


def descendants(pid: int, skip: int | None = None) -> list[int]:
    """``pid`` and every process below it (Linux ``/proc``), leaving out ``skip`` and what is below it."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:  # the process ended meanwhile
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        if p == skip:
            continue
        out.append(p)
        todo.extend(children.get(p, []))
    return out


def pin(pid: int, cores: set[int], skip: int | None = None) -> int:
    """Every thread of ``pid`` and of the processes below it (but ``skip``'s) onto ``cores`` (what they start later
    inherits it); returns how many threads were pinned."""
    n = 0
    for p in descendants(pid, skip):
        for task in Path(f"/proc/{p}/task").glob("[0-9]*"):
            try:
                os.sched_setaffinity(int(task.name), cores)
                n += 1
            except (OSError, ValueError):  # ended meanwhile
                pass
    return n


def cpu_seconds(pid: int) -> float:
    """CPU seconds (user and system) spent so far by ``pid`` and the processes below it."""
    ticks = 0
    for p in descendants(pid):
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        ticks += int(fields[11]) + int(fields[12])  # utime, stime
    return ticks / os.sysconf("SC_CLK_TCK")


# ---------------------------------------------------------------- the handler alone
def _jpeg_payloads(frames: int, size: tuple[int, int]) -> list[dict[str, str]]:
    """The clip's frames as the browser sends them: JPEG data URLs at the browser's default quality."""
    out = []
    for rgb in clip_frames(frames, size):
        jpeg = cv2.imencode(".jpg", rgb[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, BROWSER_JPEG_QUALITY])[1]
        out.append({"url": "data:image/jpeg;base64," + base64.b64encode(jpeg.tobytes()).decode()})
    return out


def _handler_rate(cores: set[int] | None, variant: str, runtime: str, imgsz: int, frames: int,
                  size: tuple[int, int], seconds: float, warm_up: int) -> dict[str, Any]:
    """In a process of its own: ``webcam_frame`` called back to back on the clip's frames for ``seconds`` (after
    ``warm_up`` calls), on ``cores``; the rate and the handler's own stage medians (from its trace)."""
    if cores:
        pin(os.getpid(), cores)
    trace = Path(tempfile.mkstemp(prefix="app-fps-handler-", suffix=".jsonl")[1])
    os.environ.update(STARNET_WEBCAM_TRACE=str(trace), HF_HUB_OFFLINE="1")  # as the app started here has it
    try:
        import torch

        from ..ui import handlers

        torch.set_num_threads(max(1, (os.cpu_count() or 1) // 2))  # as app.py sets it: cores // app.WORKERS
        payloads, state = _jpeg_payloads(frames, size), None
        for i in range(warm_up):
            _, state = handlers.webcam_frame(payloads[i % len(payloads)], state, variant, "cpu", 0.25, 0.45, imgsz,
                                             None, runtime)
        trace.write_text("")
        n, start, cpu = 0, time.perf_counter(), time.process_time()
        while time.perf_counter() - start < seconds:
            _, state = handlers.webcam_frame(payloads[n % len(payloads)], state, variant, "cpu", 0.25, 0.45, imgsz,
                                             None, runtime)
            n += 1
        elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu
        lines = [json.loads(line) for line in trace.read_text().splitlines()]
    finally:
        trace.unlink(missing_ok=True)
    return {"fps": round(n / elapsed, 2), "calls": n, "seconds": round(elapsed, 2),
            "cpu_ms_per_call": round(cpu / n * 1000, 2),
            "cores": sorted(cores) if cores else None, "torch_threads": torch.get_num_threads(),
            "stages_ms": {k: _median([x[f"{k}_ms"] for x in lines]) for k in SERVER_STAGES}}


def handler_rate(cores: set[int] | None, variant: str, runtime: str, imgsz: int, frames: int = 200,
                 size: tuple[int, int] = (640, 480), seconds: float = 10, warm_up: int = 5) -> dict[str, Any]:
    """``_handler_rate`` in a fresh process (its threads on ``cores`` only, nothing of this process's state)."""
    with ProcessPoolExecutor(1, mp_context=get_context("spawn")) as pool:
        return pool.submit(_handler_rate, cores, variant, runtime, imgsz, frames, size, seconds, warm_up).result()


# ---------------------------------------------------------------- summaries
def _median(values: list[float]) -> float | None:
    return round(float(np.median(values)), 2) if values else None


def _stats(values: list[float]) -> dict[str, float | None]:
    if not values:
        return {"median": None, "p90": None}
    return {"median": round(float(np.median(values)), 2), "p90": round(float(np.percentile(values, 90)), 2)}


def summarise(shown: list[dict[str, Any]], camera: list[dict[str, Any]], loop: int, declared_fps: float,
              seconds: float) -> dict[str, Any]:
    """Rates and lags from the page's log over its last ``seconds``: ``shown`` (``t_paint`` ms and the ``code`` of
    each annotated frame shown, None where unread) and ``camera`` (``t`` ms and ``code`` of each camera frame).

    The app can answer one camera frame twice (the page sends on a timer), so ``new_fps`` counts only frames that show
    a newer camera frame than the one before (among consecutive read pairs). The lag of a shown frame: how many
    camera frames the camera had moved on when it was painted (``lag_frames``), and how long after the camera
    presented that frame (``lag_ms``), from the last camera frame read before it and the camera's rate.
    ``camera_frames_seen_fps``: the frames the page's video presented (read or not).
    """
    end = max([f["t_paint"] for f in shown] + [c["t"] for c in camera] + [0.0])
    shown = [f for f in shown if f["t_paint"] >= end - seconds * 1000]
    cams = [c for c in camera if c["t"] >= end - seconds * 1000 - 2000]  # 2 s more, to find the frames shown late
    window = [c for c in cams if c["t"] >= end - seconds * 1000]
    recent = [c for c in window if c["code"] is not None]
    # The camera's rate is how fast its codes advance, not how often the page read one: a window sized from a
    # reading rate would match a code a clip loop earlier.
    advanced = sum((b["code"] - a["code"]) % loop for a, b in zip(recent, recent[1:], strict=False))
    span = recent[-1]["t"] - recent[0]["t"] if len(recent) > 2 else 0
    camera_fps = advanced / span * 1000 if span > 0 and advanced else None
    seen_fps = (len(window) - 1) / (window[-1]["t"] - window[0]["t"]) * 1000 if len(window) > 2 else None
    fps = (len(shown) - 1) / (shown[-1]["t_paint"] - shown[0]["t_paint"]) * 1000 if len(shown) > 2 else 0.0
    reference = camera_fps or declared_fps
    lags, lag_ms = [], []
    for f in shown:
        live = next((c for c in reversed(cams) if c["t"] <= f["t_paint"] and c["code"] is not None), None)
        if f["code"] is None or live is None:
            continue
        # When the camera presented that code: the last read frame's time less the frames between them at the
        # camera's rate (negative where the shown frame came after that read); the lag in frames is that time at the
        # camera's rate.
        ahead = (live["code"] - f["code"]) % loop
        ahead -= loop if ahead > loop / 2 else 0
        lag_ms.append(f["t_paint"] - live["t"] + ahead / reference * 1000)
        lags.append(round(lag_ms[-1] * reference / 1000, 1))
    steps = [(b["code"] - a["code"]) % loop for a, b in zip(shown, shown[1:], strict=False)
             if a["code"] is not None and b["code"] is not None]
    new_fps = fps * sum(s > 0 for s in steps) / len(steps) if steps else None
    return {
        "frames_shown": len(shown), "fps": round(fps, 2),
        "new_fps": round(new_fps, 2) if new_fps is not None else None,
        "camera_fps_declared": declared_fps, "camera_fps_measured": round(camera_fps, 2) if camera_fps else None,
        "camera_frames_seen_fps": round(seen_fps, 2) if seen_fps else None,
        "share_of_camera": round(new_fps / reference, 3) if new_fps is not None and reference else None,
        "lag_frames": _stats(lags), "lag_ms": _stats(lag_ms),
        "camera_frames_per_new_frame": _stats([s for s in steps if s > 0]),
        "codes_read": sum(f["code"] is not None for f in shown),
    }


def stage_breakdown(log: dict[str, Any], resources: list[dict[str, Any]], trace: list[dict[str, Any]],
                    seconds: float) -> dict[str, Any]:
    """Each shown frame's trip, stage by stage, in ms (medians and p90s over the last ``seconds``), from the page's
    log (page ms), its resource timings and the server's trace (epoch ms, put on the page's clock with its
    ``origin``). A shown frame names the camera frame it answers (``n``, the length of that frame's data URL:
    ``ui.webcam.inline_jpeg``); its server call is the last one with that ``n`` that ended before it loaded, the
    encode the last one of that length before the call, and its upload the first POST after the encode.

    ``camera_wait``: from the camera presenting the frame to the page encoding it (the page grabs the video on its
    ``stream_every`` timer); ``upload``: from the POST's start to the server's answer (the frame is stored as the
    newest, replacing any not yet detected); ``queue_wait``: from then until the handler takes it (the page sends on
    its timer whether or not a frame is in flight, so this is how long the newest frame waits for the detection
    before it); ``encode``: the result's JPEG data URL; ``message``: from the handler's end to the page parsing the
    stream's message with the result (Gradio's send, the network); ``show``: from then to the result's image loading
    (the page's update, the image's decode); ``render``: from then to the next animation frame. The stages add up to
    the lag in ms. ``sent`` and ``server_calls``: frames uploaded and handler calls in the window (the
    difference was dropped, never detected).
    """
    origin = log["origin"]
    server = sorted(({**s, "start": s["start"] - origin, "end": s["end"] - origin} for s in trace),
                    key=lambda s: s["end"])
    uploads = sorted(resources, key=lambda r: r["start"])
    encodes, messages = log["encodes"], log.get("messages", [])
    end = max([f["t_paint"] for f in log["shown"]] + [0.0])
    rows = []
    for f in log["shown"]:
        if f["t_paint"] < end - seconds * 1000:
            continue
        row: dict[str, float | None] = dict.fromkeys(STAGES)
        row["render"] = f["t_paint"] - f["t_load"]
        s = next((s for s in reversed(server) if s["n"] == f["n"] and s["end"] <= f["t_load"]), None)
        if f["n"] is not None and s:
            row.update(decode=s["decode_ms"], detect=s["detect_ms"], annotate=s["annotate_ms"],
                       encode=s["encode_ms"])
            m = next((m for m in messages if m["n"] == s["n"] and s["end"] <= m["t"] <= f["t_load"]), None)
            if m:
                row["message"], row["show"] = m["t"] - s["end"], f["t_load"] - m["t"]
            e = next((e for e in reversed(encodes) if e["n"] == s["n"] and e["t1"] <= s["start"]), None)
            u = e and next((u for u in uploads if u["start"] >= e["t0"]), None)
            if e:
                row["browser_encode"] = e["t1"] - e["t0"]
                grabbed = next((c["t"] for c in reversed(log["camera"]) if c["t"] <= e["t0"]), None)
                row["camera_wait"] = e["t0"] - grabbed if grabbed is not None else None
            if u and u["answer"]:
                row["upload"], row["queue_wait"] = u["answer"] - u["start"], s["start"] - u["answer"]
        rows.append(row)
    out = {k: _stats([r[k] for r in rows if r[k] is not None]) for k in STAGES}
    start = end - seconds * 1000
    return {"frames": len(rows), "matched_to_server": sum(r["detect"] is not None for r in rows),
            "sent": sum(u["start"] >= start for u in uploads), "server_calls": sum(s["start"] >= start for s in server),
            "median_sum_ms": round(sum(v["median"] or 0 for v in out.values()), 2), "ms": out}


# ---------------------------------------------------------------- the browser run
def _choose(page, label: str, option: str | re.Pattern) -> None:
    page.get_by_label(label).first.click()
    page.get_by_role("option", name=option).first.click()


def measure_webcam(browser, url: str, variant: str, runtime: str, imgsz: int, seconds: float, loop: int,
                   declared_fps: float, settle_s: float = 3.0, screenshot: Path | None = None,
                   trace: Path | None = None, app_pid: int | None = None, timeout_ms: int = 180_000) -> dict[str, Any]:
    """Stream the fake camera through the Webcam tab with these settings; ``settle_s`` seconds (model load, export
    and the first frames) are streamed before the ``seconds`` that count. ``trace``: the app's
    ``STARNET_WEBCAM_TRACE`` file, for the server's stages; ``app_pid``: the app's process, for the CPU time it spent
    per handler call (``app_cpu_ms_per_call``, beside the handler alone's ``cpu_ms_per_call``: Gradio's share)."""
    from ..ui.choices import model_name

    context = browser.new_context(viewport={"width": 1280, "height": 1000}, permissions=["camera"])
    context.add_init_script(INIT_JS)
    page = context.new_page()
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
        page.locator(f"#{OUTPUT_ID} img").wait_for(timeout=timeout_ms)  # the first annotated frame
        page.wait_for_function("() => { const v = document.querySelector('video'); return v && v.videoWidth > 0; }")
        page.evaluate(OBSERVE_JS, [BITS, ABOVE, f"#{OUTPUT_ID} img", CAMERA_READ_EVERY])
        time.sleep(settle_s)
        cpu = cpu_seconds(app_pid) if app_pid else None
        time.sleep(seconds)
        cpu = cpu_seconds(app_pid) - cpu if app_pid else None
        page.evaluate("() => { window.__appfps.on = false; }")
        log, resources = page.evaluate("() => window.__appfps"), page.evaluate(RESOURCES_JS)
        if screenshot:  # the camera, the detections and the rates line: the tab as a visitor sees it
            boxes = [page.locator(f"#{i}").bounding_box() for i in (CAMERA_ID, OUTPUT_ID, RATES_ID)]
            x0, y0 = min(b["x"] for b in boxes), min(b["y"] for b in boxes)
            x1, y1 = max(b["x"] + b["width"] for b in boxes), max(b["y"] + b["height"] for b in boxes)
            page.screenshot(path=str(screenshot), quality=80, type="jpeg",
                            clip={"x": x0, "y": y0, "width": x1 - x0, "height": y1 - y0})
    finally:
        context.close()
    server = [json.loads(line) for line in trace.read_text().splitlines()] if trace and trace.is_file() else []
    settings = log.get("settings") or {}
    stages = stage_breakdown(log, resources, server, seconds)
    return {"variant": variant, "runtime": runtime, "imgsz": imgsz, "seconds": seconds,
            "camera_size": f"{settings.get('width')}x{settings.get('height')}",
            "camera_settings_fps": settings.get("frameRate"),
            **summarise(log["shown"], log["camera"], loop, declared_fps, seconds),
            "app_cpu_ms_per_call": (round(cpu * 1000 / stages["server_calls"], 2)
                                    if cpu is not None and stages["server_calls"] else None),
            "stages": stages}


@contextmanager
def _app(url: str | None, weights_dir: str | Path | None, log: str | Path | None,
         trace: Path) -> Iterator[tuple[str, int | None]]:
    if url:
        yield url, None
        return
    from .loadtest import serve_app

    env = {"HF_HUB_OFFLINE": "1", "STARNET_WEBCAM_TRACE": str(trace),
           **({"STARNET_WEIGHTS_DIR": str(weights_dir)} if weights_dir else {})}
    with serve_app(env, log=log) as server:
        yield server.url, server.pid


@contextmanager
def _on_cores(cores: set[int] | None) -> Iterator[None]:
    """This thread on ``cores`` for the block, so that what it starts runs there (and inherits it)."""
    if not cores:
        yield
        return
    before = os.sched_getaffinity(0)
    os.sched_setaffinity(0, cores)
    try:
        yield
    finally:
        os.sched_setaffinity(0, before)


def run(variants: list[str], runtime: str = "auto", imgsz: list[int] | None = None, seconds: float = 20,
        camera_fps: int = 20, camera_size: tuple[int, int] = (640, 480), frames: int = 200, url: str | None = None,
        weights_dir: str | Path | None = None, screenshots: str | Path | None = None, settle_s: float = 3.0,
        chromium: str | Path = CHROMIUM, server_log: str | Path | None = None, split: bool = False,
        handler_seconds: float = 10, trace: str | Path | None = None,
        log: Callable[[str], None] = print) -> dict[str, Any]:
    """Per variant and image size: the handler alone (``handler_rate``, 0 ``handler_seconds`` skips it), then the
    Webcam tab in Chromium (``measure_webcam``), the camera at ``camera_fps``. ``split``: the app (and the handler
    alone) on one half of the cores, Chromium on the other (``split_cores``). ``trace``: the server trace file of the
    app at ``url`` (an app started here writes one of its own). Returns the report (machine, camera, results)."""
    if not Path(chromium).is_file():
        raise FileNotFoundError(f"Chromium not found at {chromium}: apt-get install chromium")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        raise RuntimeError("app-fps needs Playwright: pip install playwright") from None
    bad = [v for v in variants if v != BASELINE and not re.fullmatch(r"s\d+", v)]
    if bad:
        raise ValueError(f"unknown variant(s) {', '.join(bad)}")
    app_cores, browser_cores = split_cores() if split else (None, None)
    shots = Path(screenshots) if screenshots else None
    if shots:
        shots.mkdir(parents=True, exist_ok=True)
    folder = Path(tempfile.mkdtemp(prefix="app-fps-"))
    sizes = imgsz or [640]
    try:
        camera = write_y4m(folder / "camera.y4m", frames, camera_size, camera_fps)
        handler = {}
        if handler_seconds > 0:
            for variant in variants:
                for size in sizes:
                    h = handler_rate(app_cores, variant, runtime, size, frames, camera_size, handler_seconds)
                    handler[variant, size] = h
                    log(f"app-fps: {variant} {runtime} {size} px, the handler alone: {h['fps']} frames/s")
        server_trace = Path(trace) if trace else folder / "server.jsonl"
        results = []
        with _on_cores(app_cores), _app(url, weights_dir, server_log, server_trace) as (address, app_pid):
            if app_pid and app_cores:
                pin(app_pid, app_cores)
            with _on_cores(browser_cores), sync_playwright() as pw:
                browser = pw.chromium.launch(executable_path=str(chromium),
                                             args=[*FLAGS, f"--use-file-for-fake-video-capture={camera}"])
                try:
                    for variant in variants:
                        for size in sizes:
                            if browser_cores:
                                pin(os.getpid(), browser_cores, app_pid)  # Chromium and all it started since
                            shot = shots / f"webcam_{variant}_{runtime}_{size}.jpg" if shots else None
                            r = measure_webcam(browser, address, variant, runtime, size, seconds, frames, camera_fps,
                                               settle_s, shot, server_trace, app_pid)
                            h = handler.get((variant, size))
                            r["handler_fps"] = h["fps"] if h else None
                            r["new_over_handler"] = (round(r["new_fps"] / h["fps"], 3)
                                                     if h and r["new_fps"] is not None else None)
                            r["handler_alone"] = h
                            results.append(r)
                            log(f"app-fps: {variant} {runtime} {size} px: {r['new_fps']} new frames/s "
                                f"(handler alone {r['handler_fps']}, ratio {r['new_over_handler']}; camera "
                                f"{r['camera_fps_measured']} FPS); lag {r['lag_frames']['median']} frames "
                                f"({r['lag_ms']['median']} ms)")
                finally:
                    browser.close()
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    return {"machine": {**cpu_info(), "logical_cores": os.cpu_count(),
                        "load_avg_1min_end": round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None},
            "cores": {"split": split, "app": sorted(app_cores) if app_cores else None,
                      "browser": sorted(browser_cores) if browser_cores else None},
            "camera": {"source": "Chromium fake camera playing a Y4M clip (tools/appfps.write_y4m)",
                       "size": f"{camera_size[0]}x{camera_size[1]}", "fps": camera_fps, "loop_frames": frames},
            "app": url or "app.py started by the tool", "results": results}


def to_markdown(report: dict[str, Any]) -> str:
    """The report as two markdown tables: rates and lag per setting, then each stage's median (p90) ms."""
    cores = report["cores"]
    where = (f"app on core(s) {cores['app']}, Chromium on {cores['browser']}" if cores["split"]
             else "app and Chromium sharing every core")
    lines = [f"{report['machine']['cpu']}, {report['machine']['logical_cores']} logical cores; {where}; camera "
             f"{report['camera']['size']} at {report['camera']['fps']} FPS.", "",
             "| model | runtime | px | handler alone FPS | shown new FPS | ratio | camera FPS | lag frames (p90) | "
             "lag ms (p90) | app CPU ms/call | handler CPU ms/call |", "|" + "---|" * 11]
    for r in report["results"]:
        h = r.get("handler_alone") or {}
        lines.append(f"| {r['variant'].upper()} | {r['runtime']} | {r['imgsz']} | {r['handler_fps']} | {r['new_fps']} "
                     f"| {r['new_over_handler']} | {r['camera_fps_measured']} | {r['lag_frames']['median']} "
                     f"({r['lag_frames']['p90']}) | {r['lag_ms']['median']} ({r['lag_ms']['p90']}) | "
                     f"{r['app_cpu_ms_per_call']} | {h.get('cpu_ms_per_call')} |")
    lines += ["", "| model | px | " + " | ".join(STAGES) + " | sum |", "|" + "---|" * (len(STAGES) + 3)]
    for r in report["results"]:
        ms = r["stages"]["ms"]
        lines.append(f"| {r['variant'].upper()} | {r['imgsz']} | "
                     + " | ".join(f"{ms[k]['median']} ({ms[k]['p90']})" for k in STAGES)
                     + f" | {r['stages']['median_sum_ms']} |")
    return "\n".join(lines)


def write(report: dict[str, Any], out: str | Path) -> Path:
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    return out
