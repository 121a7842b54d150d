"""Load test of the running app: N concurrent gradio_client users for a bounded time, reported as JSON.

``serve_app`` starts ``app.py`` in its own process on 127.0.0.1 (so its memory can be measured apart from the
clients', and a crash shows as a dead process); ``run`` warms every model up, then lets ``users`` threads, each with
its own ``gradio_client.Client`` (its own session), send a random mix of image requests, short videos, latency-tab runs,
star maps and webcam streams over the variants and devices until ``duration_s`` is up. The report gives requests done
and failed, p50/p95 latency and queue wait, overall (webcam streams apart) and per kind (a webcam frame counts as one),
the webcam's frames per second, throughput, and the server's RSS: peak, after warm-up and at the end, with the growth
between the two as the leak check. To find what grows with new inputs, requests can vary their image size
(``sizes``), runtime (``runtimes``) and video frame shape (``video_shapes``, odd aspect ratios included); the export
cache's size and the file count of Gradio's temporary folder are sampled with the RSS, as timelines.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import random
import re
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

APP = Path(__file__).resolve().parents[2] / "app.py"
EXAMPLES = APP.parent / "examples"
DEFAULT_MIX = {"image": 6, "video": 1, "latency": 1, "star": 1, "webcam": 1}
#: The short video's frame size (width, height) unless ``video_shapes`` says otherwise.
VIDEO_SHAPE = (320, 240)
STREAM_S = 10  # one webcam user streams this long (frames back to back, as fast as they are answered)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Server:
    url: str
    process: subprocess.Popen | None = None  # None: a server this process did not start (no RSS figures)
    log: Path | None = None

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process else None

    def alive(self) -> bool:
        """Whether the server process still runs (always True for one this process did not start)."""
        return self.process is None or self.process.poll() is None


@contextlib.contextmanager
def serve_app(env: dict[str, str] | None = None, app: str | Path = APP, timeout_s: float = 180,
              log: str | Path | None = None) -> Iterator[Server]:
    """``python app.py`` on a free 127.0.0.1 port with ``env`` added to this environment; stopped on exit.

    Its output goes to ``log`` (default: a temporary file, removed afterwards).
    """
    app = Path(app)
    if not app.is_file():
        raise FileNotFoundError(f"app not found: {app} (pass --url to test a running app)")
    port = free_port()
    own_log = log is None
    log_path = Path(log) if log else Path(tempfile.mkstemp(prefix="starnet-app-", suffix=".log")[1])
    full_env = {**os.environ, "GRADIO_SERVER_NAME": "127.0.0.1", "GRADIO_SERVER_PORT": str(port),
                "GRADIO_ANALYTICS_ENABLED": "False", "PYTHONUNBUFFERED": "1", **(env or {})}
    url = f"http://127.0.0.1:{port}/"
    with open(log_path, "wb") as out:
        proc = subprocess.Popen([sys.executable, str(app)], env=full_env, stdout=out, stderr=subprocess.STDOUT,
                                cwd=app.parent)
    try:
        deadline = time.monotonic() + timeout_s
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"the app exited with code {proc.returncode} before serving: "
                                   f"{_tail(log_path)}")
            try:
                with urllib.request.urlopen(url, timeout=5) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"the app did not serve {url} within {timeout_s:.0f} s: {_tail(log_path)}")
            time.sleep(0.5)
        yield Server(url, proc, log_path)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if own_log:
            log_path.unlink(missing_ok=True)


def _tail(path: Path, lines: int = 5) -> str:
    text = path.read_text(errors="replace").strip().splitlines() if path.is_file() else []
    return " | ".join(text[-lines:]) or "(no output)"


# ---------------------------------------------------------------- the users
def excerpt(source: Path, path: Path, frames: int = 8, size: tuple[int, int] = (320, 240)) -> Path:
    """The first ``frames`` frames of ``source`` (the example video), scaled to ``size``, as the mix's "short
    video": an H.264 mp4 the app accepts."""
    import av

    w, h = size
    with av.open(str(source)) as src, av.open(str(path), "w", options={"movflags": "+faststart"}) as out:
        stream = out.add_stream("libx264", rate=src.streams.video[0].average_rate or 10)
        stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
        for i, frame in enumerate(src.decode(video=0)):
            if i == frames:
                break
            out.mux(stream.encode(frame.reformat(width=w, height=h, format="yuv420p")))
        out.mux(stream.encode(None))
    return path


@dataclass
class Record:
    kind: str
    variant: str
    device: str
    start_s: float  # since the measured phase began (negative: warm-up)
    latency_s: float
    queue_s: float | None  # submitted → processing started (None: not reported)
    ok: bool
    error: str | None = None


class Users:
    """The request mix: each call picks a kind by weight and a variant and device at random."""

    def __init__(self, variants: Sequence[str], devices: Sequence[str], mix: dict[str, float], imgsz: int,
                 media: Path, sizes: Sequence[int] = (), runtimes: Sequence[str] = ("pytorch",),
                 video_shapes: Sequence[tuple[int, int]] = (VIDEO_SHAPE,)):
        from PIL import Image
        from ultralytics.utils import ASSETS

        self.variants, self.devices, self.imgsz = list(variants), list(devices), imgsz
        self.sizes, self.runtimes = list(sizes or [imgsz]), list(runtimes)
        self.kinds, self.weights = list(mix), [float(w) for w in mix.values()]
        self.images = [ASSETS / "bus.jpg", ASSETS / "zidane.jpg"]
        self.clips = [excerpt(EXAMPLES / "vtest.mp4", media / f"clip-{w}x{h}.mp4", size=(w, h))
                      for w, h in video_shapes]
        self.frame = media / "frame.jpg"  # what the webcam tab asks the browser for: 640×480
        Image.open(ASSETS / "bus.jpg").convert("RGB").resize((640, 480)).save(self.frame)

    def variants_for(self, kind: str) -> list[str]:
        """The variants a kind of request may name: star maps exist for StarNet backbones only, not the YOLOv8n
        reference, so with one in the mix they go to the others."""
        from ..models.yolo import BASELINE

        starnets = [v for v in self.variants if v != BASELINE]
        return starnets if kind == "star" and starnets else self.variants

    def request(self, kind: str, variant: str, device: str, rng: random.Random) -> tuple[tuple, str]:
        """(arguments, api_name) of one request."""
        from gradio_client import handle_file

        image, size = handle_file(str(rng.choice(self.images))), rng.choice(self.sizes)
        runtime = rng.choice(self.runtimes)
        if kind == "image":
            return (image, variant, device, 0.25, 0.45, size, [], runtime), "/detect_image"
        if kind == "video":
            return (handle_file(str(rng.choice(self.clips))), variant, device, 0.25, 0.45, size, rng.random() < 0.5,
                    [], runtime), "/detect_video"
        if kind == "latency":
            return (image, [variant], device, size, 3, rng.random() < 0.3, 0.25, 0.45, runtime), "/latency"
        if kind == "star":
            return (image, variant, "2.0", size, 2, device), "/star_maps"
        raise ValueError(f"unknown request kind {kind!r}; use image, video, latency or star")

    def send(self, client, kind: str, variant: str, device: str, t0: float, rng: random.Random,
             timeout_s: float, session: str, stream_s: float = STREAM_S) -> list[Record]:
        """One request (one record), or for ``webcam`` one stream of ``stream_s`` seconds (a record per frame) in the
        Gradio session ``session``."""
        if kind == "webcam":
            return self.stream(client, variant, device, t0, stream_s, timeout_s, session)
        args, api = self.request(kind, variant, device, rng)
        submitted = time.monotonic()
        job = client.submit(*args, api_name=api)
        try:
            job.result(timeout=timeout_s)
            ok, error = True, None
        except Exception as e:  # a failed request is data here, not a crash
            ok, error = False, f"{type(e).__name__}: {(str(e).splitlines() or [''])[0][:200]}"
            job.cancel()
        done = time.monotonic()
        return [Record(kind, variant, device, submitted - t0, done - submitted, _queue_wait(job, submitted), ok,
                       error)]

    def stream(self, client, variant: str, device: str, t0: float, seconds: float, timeout_s: float,
               session: str) -> list[Record]:
        """A webcam user, in Gradio's streaming protocol (gradio_client does not speak it): join the ``/webcam``
        event with a frame, then send the next frame as each annotated one comes back, for ``seconds`` (or until the
        app's ``time_limit`` ends the stream); then close it. The first record's queue wait is the wait for a slot.

        ``session`` is the user's webcam page session, kept across their streams as a browser tab's would be (not the
        client's own session, whose event stream gradio_client reads)."""
        import httpx

        url = client.src if client.src.endswith("/") else client.src + "/"
        dep = next(d for d in client.config["dependencies"] if d.get("api_name") == "webcam")
        kinds = {c["id"]: c["type"] for c in client.config["components"]}
        records: list[Record] = []
        with httpx.Client(timeout=timeout_s) as http:
            with open(self.frame, "rb") as f:
                uploaded = http.post(f"{url}gradio_api/upload", files={"files": ("frame.jpg", f)}).json()[0]
            values = iter([{"path": uploaded, "meta": {"_type": "gradio.FileData"}}, variant, device, 0.25, 0.45,
                           self.sizes[0], [], self.runtimes[0]])
            body = {"data": [None if kinds[i] == "state" else next(values) for i in dep["inputs"]],
                    "fn_index": dep["id"], "session_hash": session, "event_data": None, "trigger_id": None}
            joined = sent = time.monotonic()
            event_id = http.post(f"{url}gradio_api/queue/join", json=body).json()["event_id"]
            started = None
            with http.stream("GET", f"{url}gradio_api/queue/data", params={"session_hash": session}) as events:
                for line in events.iter_lines():
                    msg = json.loads(line[5:]) if line.startswith("data:") else {}
                    if msg.get("msg") == "process_starts":
                        started = time.monotonic()
                    if msg.get("msg") not in ("process_streaming", "process_completed"):
                        continue
                    now, ok = time.monotonic(), msg.get("success", True)
                    error = None if ok else f"webcam: {(msg.get('output') or {}).get('error')}"
                    queue = (started - joined) if not records and started else None
                    records.append(Record("webcam", variant, device, sent - t0, now - sent, queue, ok, error))
                    if msg["msg"] == "process_completed" or not ok or now - joined >= seconds:
                        break
                    sent = time.monotonic()
                    http.post(f"{url}gradio_api/stream/{event_id}", json=body)
                http.post(f"{url}gradio_api/stream/{event_id}/close")
        return records


def _queue_wait(job, submitted: float) -> float | None:
    """Seconds from submission to the server's "process_starts", from the job's status updates."""
    from gradio_client.utils import Status

    updates, started = job.communicator.updates if job.communicator else None, None
    while updates is not None and not updates.empty():
        update = updates.get_nowait()
        if started is None and getattr(update, "code", None) == Status.PROCESSING and update.time:
            started = update.time.timestamp()
    if started is None:
        return None
    return max(0.0, started - (time.time() - (time.monotonic() - submitted)))


def folder_usage(folder: Path, older_than_s: float | None = None) -> tuple[int, int, int]:
    """(files, bytes, files changed longer than ``older_than_s`` ago by ctime, as Gradio ages them; 0 without it)
    under ``folder`` ((0, 0, 0) when it does not exist); files vanishing meanwhile are skipped."""
    files = size = stale = 0
    now = time.time()
    for root, _, names in os.walk(folder):
        for name in names:
            with contextlib.suppress(OSError):
                st = os.stat(os.path.join(root, name))
                size += st.st_size
                files += 1
                stale += older_than_s is not None and now - st.st_ctime > older_than_s
    return files, size, stale


class FolderSampler(threading.Thread):
    """Files and bytes in each watched folder (the export cache, Gradio's temporary folder) every ``every_s``; for the
    folders named in ``stale_s``, also the files older than that, which a sweep with that age should have removed."""

    def __init__(self, folders: dict[str, Path], t0: float, every_s: float = 2.0,
                 stale_s: dict[str, float] | None = None):
        super().__init__(daemon=True)
        self.folders, self.t0, self.every_s, self.stale_s = folders, t0, every_s, dict(stale_s or {})
        self.samples: dict[str, list[tuple[float, int, int, int]]] = {name: [] for name in folders}
        self.stop = threading.Event()

    def sample(self) -> None:
        t = time.monotonic() - self.t0
        for name, folder in self.folders.items():
            self.samples[name].append((t, *folder_usage(folder, self.stale_s.get(name))))

    def run(self) -> None:
        while not self.stop.wait(self.every_s):
            self.sample()

    def report(self, measured_from: float) -> dict[str, Any]:
        """Per folder: files and MB at the start, end and peak; over the last half of the measured phase, whether the
        file count stayed within 10 % (and 20 files) of its peak (``files_flat_last_half``, strict: a video's result
        files arrive together) and its linear trend across that half as a share of its mean
        (``files_trend_last_half_pct``: growth shows there, the mix's noise averages out); the timeline
        ``[s, files, MB]``; for a folder with a sweep age, that age and the most files older than it at once
        (``files_stale_peak``)."""
        out = {}
        for name, samples in self.samples.items():
            if not samples:
                continue
            files = [f for _, f, _, _ in samples]
            measured = [(t, f) for t, f, _, _ in samples if t >= measured_from]
            last = [(t, f) for t, f in measured if t >= (measured[0][0] + measured[-1][0]) / 2] if measured else []
            half = [f for _, f in last]
            out[name] = {"path": str(self.folders[name]), "files_start": files[0], "files_end": files[-1],
                         "files_peak": max(files), "mb_start": round(samples[0][2] / 2**20, 1),
                         "mb_end": round(samples[-1][2] / 2**20, 1),
                         "mb_peak": round(max(b for _, _, b, _ in samples) / 2**20, 1),
                         "files_flat_last_half": bool(half) and max(half) - min(half) <= max(20, 0.1 * max(half)),
                         "files_trend_last_half_pct": _trend_pct(last),
                         **({"stale_after_s": self.stale_s[name],
                             "files_stale_peak": max(n for _, _, _, n in samples)} if name in self.stale_s else {}),
                         "timeline": [[round(t, 1), f, round(b / 2**20, 1)] for t, f, b, _ in samples]}
        return out


def _slope(t: Any, y: Any) -> float | None:
    """The least-squares line's rise of ``y`` per unit of ``t``; none from fewer than 3 points or one instant."""
    t, y = np.asarray(t, dtype=float), np.asarray(y, dtype=float)
    return float(np.polyfit(t, y, 1)[0]) if len(t) > 2 and np.ptp(t) > 0 else None


def _trend_pct(points: list[tuple[float, int]]) -> float | None:
    """The least-squares line's rise across ``points`` (``(s, count)``), in percent of their mean count."""
    t, n = np.asarray(points, dtype=float).reshape(-1, 2).T
    slope = _slope(t, n)
    if slope is None or n.mean() == 0:
        return None
    return round(float(slope * np.ptp(t) / n.mean() * 100), 2)


def watched_folders() -> dict[str, Path]:
    """The export cache and Gradio's temporary folder as a server started from this environment uses them."""
    from ..inference.exports import cache_root

    gradio = Path(os.environ.get("GRADIO_TEMP_DIR") or Path(tempfile.gettempdir()) / "gradio")
    return {"export_cache": cache_root(), "gradio_temp": gradio}


class RssSampler(threading.Thread):
    """The server process's resident memory, children included (an export runs in a child of about 1 GB), every
    ``every_s`` seconds; also the server's alone, and every ``pss_every``-th time the proportional set size (PSS) of
    server and children together, which counts the library pages they share once (RSS counts them in each)."""

    def __init__(self, pid: int, t0: float, every_s: float = 0.25, pss_every: int = 8):
        import psutil

        super().__init__(daemon=True)
        self.process, self.t0, self.every_s, self.pss_every = psutil.Process(pid), t0, every_s, pss_every
        self.samples: list[tuple[float, int]] = []
        self.alone: list[int] = []
        self.pss: list[tuple[float, int]] = []
        self.stop = threading.Event()

    def processes(self) -> list:
        import psutil

        try:
            return [self.process, *self.process.children(recursive=True)]
        except psutil.Error:
            return []

    def sample(self) -> int:
        """One reading, kept with the others, so that the peak covers the start, after-warm-up and end readings."""
        import psutil

        t, rss, alone = time.monotonic() - self.t0, 0, 0
        procs = self.processes()
        for p in procs:
            with contextlib.suppress(psutil.Error):
                mine = p.memory_info().rss
                rss += mine
                if p is self.process:
                    alone = mine
        self.samples.append((t, rss))
        self.alone.append(alone)
        if len(self.samples) % self.pss_every == 1:  # reading smaps takes tens of ms: not every time
            self.pss.append((t, sum(_pss(p.pid) for p in procs)))
        return rss

    def run(self) -> None:
        while not self.stop.wait(self.every_s):
            self.sample()


def _pss(pid: int) -> int:
    """A process's proportional set size in bytes (0 when gone or not on Linux)."""
    with contextlib.suppress(OSError, ValueError, StopIteration), open(f"/proc/{pid}/smaps_rollup") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("Pss:")) * 1024
    return 0


def _stats(values: Sequence[float]) -> dict[str, float | None]:
    if not values:
        return {"p50": None, "p95": None, "max": None, "mean": None}
    a = np.asarray(values, dtype=float)
    return {"p50": round(float(np.percentile(a, 50)), 3), "p95": round(float(np.percentile(a, 95)), 3),
            "max": round(float(a.max()), 3), "mean": round(float(a.mean()), 3)}


def _summary(records: Sequence[Record]) -> dict[str, Any]:
    done = [r for r in records if r.ok]
    return {"done": len(done), "failed": len(records) - len(done),
            "latency_s": _stats([r.latency_s for r in done]),
            "queue_wait_s": _stats([r.queue_s for r in done if r.queue_s is not None])}


def run(url: str, users: int = 8, duration_s: float = 60, warmup_s: float = 10, pid: int | None = None,
        variants: Sequence[str] = ("s1",), devices: Sequence[str] = ("cpu",), mix: dict[str, float] | None = None,
        imgsz: int = 320, seed: int = 0, timeout_s: float = 300, flat_pct: float = 10.0,
        log=None, sizes: Sequence[int] = (), runtimes: Sequence[str] = ("pytorch",),
        video_shapes: Sequence[tuple[int, int]] = (VIDEO_SHAPE,), folders: dict[str, Path] | None = None
        ) -> dict[str, Any]:
    """Drive the app at ``url`` with ``users`` concurrent gradio_client users; the JSON-ready report.

    First every (variant, device) is loaded with one request of each kind, then the users run for ``warmup_s``
    (memory pools and caches settle; RSS at its end is the baseline) and then for ``duration_s``, the measured phase.
    ``pid`` (the server process) enables the RSS figures; ``flat_pct`` is the growth allowed for ``rss.flat``.
    Each user starts its next request when the previous one answers, so ``users`` is also the most requests in
    flight. Each request picks its image size from ``sizes`` (default ``[imgsz]``), its runtime from ``runtimes``
    and its video from ``video_shapes`` (width, height); ``folders`` (default ``watched_folders()``) are sampled.
    """
    from gradio_client import Client

    mix = dict(mix or DEFAULT_MIX)
    say = log or (lambda line: None)
    with tempfile.TemporaryDirectory(prefix="starnet-loadtest-") as media:
        plan = Users(variants, devices, mix, imgsz, Path(media), sizes, runtimes, video_shapes)
        start = time.monotonic()
        from ..ui.files import GRADIO_CACHE

        every, age = GRADIO_CACHE  # Gradio's sweep: a file may outlive its age by one round, and a round can race
        disk = FolderSampler(watched_folders() if folders is None else folders, start,
                             stale_s={"gradio_temp": age + 2 * every})
        disk.sample()
        disk.start()
        sampler = RssSampler(pid, start) if pid else None
        if sampler:
            rss_start = sampler.sample()
            sampler.start()
        # download_files=False: the users only need to know that a request was answered; downloading its files would
        # land them in this process's GRADIO_TEMP_DIR, which is the server's too when it runs from this environment
        client = Client(url, verbose=False, download_files=False)
        say(f"warm-up: loading {len(plan.variants)} variant(s) x {len(plan.devices)} device(s)")
        rng = random.Random(seed)
        loads = [r for v in plan.variants for d in plan.devices for kind in mix if v in plan.variants_for(kind)
                 for r in plan.send(client, kind, v, d, start, rng, timeout_s, uuid.uuid4().hex, stream_s=1)]

        phase = {"t0": time.monotonic() + warmup_s, "end": time.monotonic() + warmup_s + duration_s}
        records: list[Record] = []
        lock = threading.Lock()

        def user(i: int) -> None:
            rng = random.Random(seed * 1000 + i + 1)
            own, session = Client(url, verbose=False, download_files=False), uuid.uuid4().hex
            while time.monotonic() < phase["end"]:
                kind = rng.choices(plan.kinds, plan.weights)[0]
                done = plan.send(own, kind, rng.choice(plan.variants_for(kind)), rng.choice(plan.devices),
                                 phase["t0"], rng, timeout_s, session)
                with lock:
                    records.extend(done)

        say(f"{users} users: {warmup_s:.0f} s warm-up, then {duration_s:.0f} s measured")
        threads = [threading.Thread(target=user, args=(i,), daemon=True) for i in range(users)]
        for t in threads:
            t.start()
        rss_warm = None
        if sampler:
            time.sleep(max(0.0, phase["t0"] - time.monotonic()))
            rss_warm = sampler.sample()
        for t in threads:
            t.join()
        finished = time.monotonic()
        disk.stop.set()
        disk.join()
        disk.sample()
        if sampler:
            sampler.stop.set()
            sampler.join()
            rss_end = sampler.sample()

    measured = [r for r in records if r.start_s >= 0]
    requests = [r for r in measured if r.kind != "webcam"]  # webcam frames are reported apart
    report: dict[str, Any] = {
        "url": url, "users": users, "duration_s": duration_s, "warmup_s": warmup_s, "imgsz": imgsz, "mix": mix,
        "sizes": plan.sizes, "runtimes": plan.runtimes, "video_shapes": [list(s) for s in video_shapes],
        "variants": list(plan.variants), "devices": list(plan.devices), "cpu_count": os.cpu_count(),
        "load_requests": _summary(loads), "warmup_requests": _summary([r for r in records if r.start_s < 0]),
        **_summary(requests),
        "throughput_rps": round(len([r for r in requests if r.ok]) / max(finished - phase["t0"], 1e-9), 2),
        # whether the load was steady: what the folders hold follows the request rate (files per request x age)
        "requests_per_min_by_half": [round(sum(lo <= r.start_s < hi for r in requests) / (duration_s / 2) * 60, 1)
                                     for lo, hi in ((0, duration_s / 2), (duration_s / 2, math.inf))],
        "by_kind": {k: _summary([r for r in measured if r.kind == k]) for k in mix},
        "webcam_fps": _stats([1 / r.latency_s for r in measured if r.kind == "webcam" and r.ok and r.latency_s > 0]),
        "errors": sorted({r.error for r in [*loads, *records] if r.error})[:10],
        "folders": disk.report(phase["t0"] - start),
    }
    if sampler:
        after = [(t, b) for t, b in sampler.samples if t >= phase["t0"] - start]
        times = np.asarray([t for t, _ in after]) / 60
        mb = np.asarray([b for _, b in after]) / 2**20
        slope = _slope(times, mb)
        late = times >= (times[0] + times[-1]) / 2 if len(times) else times
        late_slope = _slope(times[late], mb[late])
        growth = (rss_end - rss_warm) / rss_warm * 100 if rss_warm else None
        report["rss_mb"] = {
            "start": round(rss_start / 2**20, 1), "after_warmup": round(rss_warm / 2**20, 1),
            "end": round(rss_end / 2**20, 1), "peak": round(max(b for _, b in sampler.samples) / 2**20, 1),
            "peak_measured": round(float(mb.max()), 1) if len(mb) else None,
            "peak_server_alone": round(max(sampler.alone) / 2**20, 1),
            "peak_pss": round(max((b for _, b in sampler.pss), default=0) / 2**20, 1),
            "growth_pct": round(growth, 2) if growth is not None else None,
            "slope_mb_per_min": round(slope, 2) if slope is not None else None,
            "slope_last_half_mb_per_min": round(late_slope, 2) if late_slope is not None else None,
            "flat": growth is not None and growth <= flat_pct,
            "timeline": [[round(t, 1), round(b / 2**20, 1)] for t, b in sampler.samples[::20]],
        }
    return report


def parse_shapes(text: str) -> list[tuple[int, int]]:
    """``320x240,300x500`` → [(320, 240), (300, 500)] (width x height, even sides for H.264)."""
    shapes = []
    for item in text.split(","):
        w, _, h = item.strip().lower().partition("x")
        if not (w.isdigit() and h.isdigit() and 16 <= int(w) <= 1920 and 16 <= int(h) <= 1920):
            raise ValueError(f"video shape {item.strip()!r} is not WIDTHxHEIGHT with sides from 16 to 1920")
        shapes.append((int(w) // 2 * 2, int(h) // 2 * 2))
    return shapes


def parse_mix(text: str) -> dict[str, float]:
    """``image=6,video=1`` → {"image": 6.0, "video": 1.0}."""
    mix = {}
    for item in text.split(","):
        kind, _, weight = item.partition("=")
        if kind.strip() not in DEFAULT_MIX:
            raise ValueError(f"unknown request kind {kind.strip()!r} in --mix; use {', '.join(DEFAULT_MIX)}")
        mix[kind.strip()] = float(weight or 1)
    return mix


#: A JSON list of numbers only, as ``indent`` spreads it over lines: the timelines are thousands of them.
_NUMBERS = re.compile(r"\[\s+([-+0-9.eE,\s]+?)\s+\]")


def write(report: dict[str, Any], path: str | Path) -> Path:
    """The report as indented JSON, each list of numbers on one line (a 10-minute soak: 4,600 lines → 1,100, and
    45 % of the bytes)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    text = _NUMBERS.sub(lambda m: "[" + re.sub(r",\s+", ", ", m[1]) + "]", json.dumps(report, indent=2))
    path.write_text(text + "\n")
    return path
