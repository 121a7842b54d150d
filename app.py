"""YOLOv8-StarNet demo: image, video and webcam detection, side-by-side latency, and the star operation made visible.

``python app.py`` serves it on http://127.0.0.1:7860 (``GRADIO_SERVER_NAME``/``GRADIO_SERVER_PORT`` change that); the
same file is the Space's ``app_file``. This file only wires the UI: models, annotation, video and latency live in the
``starnet_demo`` package. Every tab's main action is a named API endpoint (``/detect_image``, ``/detect_video``,
``/latency``, ``/star_maps``) taking variants as ``s1``…``s4`` and devices as ``cpu``, ``cuda:0``, ….
"""

from __future__ import annotations

import atexit
import base64
import functools
import logging
import math
import os
import shutil
import signal
import tempfile
import threading
import time
import uuid
import weakref
from contextlib import contextmanager, suppress
from functools import lru_cache
from pathlib import Path

import gradio as gr
import numpy as np
import pandas as pd
import PIL.Image
import supervision as sv
import torch

from starnet_demo import devices
from starnet_demo.annotate import DetectionAnnotator, StatsAnnotator, records
from starnet_demo.backbone import MAIN_VARIANTS, VARIANTS, StarNetBackbone, blocks
from starnet_demo.detector import Detector, get_detector
from starnet_demo.images import MAX_PIXELS, ImageError, read_image
from starnet_demo.latency import measure
from starnet_demo.model import BASELINE, COCO_NAMES
from starnet_demo.runtimes import available_runtimes, precisions, resolve_runtime, unavailable_reason
from starnet_demo.video import MAX_BYTES, MAX_SECONDS, MAX_SIDE, VideoError, detect_video
from starnet_demo.visualize import capture, gallery
from starnet_demo.weights import WeightsError, local_dir, read_config, weight_files

PIL.Image.MAX_IMAGE_PIXELS = MAX_PIXELS  # Pillow refuses (not merely warns about) anything over twice this
MAX_FILE_SIZE = MAX_BYTES  # Gradio rejects larger uploads before they reach a handler
EXAMPLES = Path(__file__).resolve().parent / "examples"
IMAGE_EXAMPLES = sorted(EXAMPLES.glob("*.jpg"), key=lambda p: (p.name not in ("bus.jpg", "zidane.jpg"), p.name))
VIDEO_EXAMPLES = sorted(EXAMPLES.glob("*.mp4"))
OUTPUT_KEEP_S = 300  # results are copied into Gradio's cache when returned; our files go after this long
# Queue settings, from `python -m starnet_demo loadtest` on the 2-core CPU machine (8 users, 60 s, S1-S4 at 320 px;
# figures in the README), all without a failed request:
# - WORKERS: the detection events (image, video, latency, star maps) share one pool of 2 workers. With a limit per
#   event instead, 1/2/4 gave 2.96/2.91/2.48 requests/s but a p95 of 4.0/7.1/12.8 s (videos starved behind images):
#   the CPU is the limit, so more requests in flight only stretch the tail. The shared pool of 2: 2.76 requests/s,
#   p95 3.8 s, and every kind's p95 under 4.5 s.
# - WEBCAM_STREAMS: a stream (frames back to back) takes about a core. Allowing 2 at once gave 4.4 -> 3.9 FPS per
#   stream and a request p95 of 3.6 -> 5.1 s, so 1; a second camera waits for the slot.
# - STREAM_LIMIT_S: so that wait is at most a minute, which is also plenty of live detection for one visitor.
# - QUEUE_MAX: 2 to 2.8 requests/s were served (with / without a webcam stream), so the last of 48 queued waits about
#   20 s; past that, "queue full, try again" is the better answer than an ever longer wait.
# - SESSIONS: Gradio keeps about 150 KB per browser session (400 new sessions: +60 MB of RSS) until an hour after it
#   closes, for up to 10,000 sessions (1.5 GB) by default; the load test's RSS crept up with each new session. 1000
#   bounds it at 150 MB, far above the visitors one such machine serves at once; the oldest idle sessions go first.
WORKERS, WEBCAM_STREAMS, STREAM_LIMIT_S, QUEUE_MAX, SESSIONS = 2, 1, 60, 48, 1000
WEBCAM_W, WEBCAM_H = 640, 480  # what the Webcam tab asks the camera for
log = logging.getLogger("app")
_told: weakref.WeakSet[Detector] = weakref.WeakSet()  # detectors whose weights notice was shown
STAR_TEXT = """
**Why a product of two branches reaches a high-dimensional space.** Each StarNet block computes
`act(f1(x)) * f2(x)`: two 1×1 convolutions of the same features, multiplied element by element. Written out, every
output channel is a sum of products `w1_i x_i · w2_j x_j` over all pairs of input channels, the terms of a
polynomial kernel of degree 2. A block with *d* input channels thus works implicitly in a space of about *d²/2*
dimensions while only computing *d*-wide maps, and stacking *l* blocks raises this to about *d^(2^l)*: the same trick
as the kernel trick, done in the forward pass (Ma et al., *Rewrite the Stars*, CVPR 2024). Below: the two branches
and their product for one block, the channels with the most energy (mean square) and the mean over all channels.
"""


# ---------------------------------------------------------------- shared plumbing: choices, validation, errors
def variant_label(variant: str) -> str:
    """``StarNet-S1 · mAP50 0.34``: the held-out figure from the weights config, so that a user who picks a weak
    variant knows it before its boxes disappoint; "no weights yet" when there are none."""
    config = weight_files(variant)[1]
    if not config.is_file():
        return f"StarNet-{variant.upper()} (no weights yet)"
    try:
        metrics = read_config(config).get("metrics") or {}
    except WeightsError:
        return f"StarNet-{variant.upper()} (unreadable weights)"
    map50, teacher = metrics.get("map50"), metrics.get("teacher_map50")
    if map50 is None:
        return f"StarNet-{variant.upper()}"
    weak = " (undertrained)" if teacher and map50 < 0.25 * teacher else ""
    return f"StarNet-{variant.upper()} · mAP50 {map50:.2f}{weak}"


def variant_choices() -> list[tuple[str, str]]:
    """S1…S4 always (a missing one says so when used), the tiny variants only when their weights exist."""
    have = {v for v in VARIANTS if weight_files(v)[1].is_file()}
    return [(variant_label(v), v) for v in VARIANTS if v in MAIN_VARIANTS or v in have]


def device_choices() -> list[tuple[str, str]]:
    return [(devices.label(d), d) for d in devices.available()]


def runtime_choices() -> list[str]:
    """``auto`` (the fastest for the device) and every runtime some device here can run."""
    return ["auto", *dict.fromkeys(r for d in devices.available() for r in available_runtimes(d))]


def auto_info() -> str:
    """What ``auto`` means on this machine's CPU (OpenVINO bf16 where the CPU runs bf16 natively)."""
    cpu = resolve_runtime("auto", "cpu")
    return f"auto: {cpu} {precisions(cpu, 'cpu')[0]} on CPU, CUDA graphs on GPU. Exported on first use."


@contextmanager
def user_errors(*uploads):
    """Turn the package's bad-input errors into ``gr.Error`` (shown to the user; the server carries on), and anything
    unexpected into a one-line ``gr.Error`` too (its traceback goes to the server log), never Gradio's bare "Error".

    ``uploads`` (raw file payloads) that are refused as files are deleted from Gradio's cache at once: they cannot be
    used, and a public app should not keep them (up to ``MAX_FILE_SIZE`` each) until the cache sweep.
    """
    try:
        yield
    except gr.Error:
        raise
    except WeightsError as e:
        raise gr.Error(f"Weights for this variant are not available: {e}. They load from {local_dir()}.") from None
    except (ImageError, VideoError) as e:
        for upload in uploads:
            discard_upload(upload)
        raise gr.Error(str(e)) from None
    except ValueError as e:
        raise gr.Error(str(e)) from None
    except Exception as e:
        log.exception("request failed")
        raise gr.Error(f"The request failed on the server ({type(e).__name__}); it was logged. Try other settings "
                       "or another file.") from None


def upload_path(value) -> str | None:
    """The file path in what a file component sends raw (a payload dict) or in a plain path; None if there is none."""
    if isinstance(value, dict):
        value = value.get("path")
    return value if isinstance(value, (str, Path)) and str(value) else None


def discard_upload(value) -> None:
    """Delete an uploaded file (and its folder, if now empty) if it lies in Gradio's upload cache; else nothing."""
    path = upload_path(value)
    if path is None:
        return
    path, cache = Path(path).resolve(), Path(gr.utils.get_upload_folder()).resolve()
    if cache in path.parents and path.is_file():
        path.unlink(missing_ok=True)
        with suppress(OSError):
            path.parent.rmdir()


def check_settings(variant, device, conf, iou, imgsz) -> tuple[str, str, float, float, int]:
    """Validated, normalised settings; anything else fails with a message naming the setting."""
    variant = str(variant or "").lower().removeprefix("starnet-")
    if variant not in VARIANTS and variant != BASELINE:
        raise ValueError(f"unknown variant {variant!r}; choose one of {', '.join(VARIANTS)}")
    devices.check(str(device))
    numbers = {"confidence": (conf, 0.0, 1.0), "IoU": (iou, 0.0, 1.0), "image size": (imgsz, 32, 1280)}
    for name, (value, lo, hi) in numbers.items():
        if not isinstance(value, (int, float)) or not math.isfinite(value) or not lo <= value <= hi:
            raise ValueError(f"{name} must be a number from {lo} to {hi}, got {value!r}")
    return variant, str(device), float(conf), float(iou), max(32, round(imgsz / 32) * 32)


def check_runtime(runtime, device: str) -> str:
    runtime = str(runtime or "pytorch")
    reason = None if runtime == "auto" else unavailable_reason(runtime, device)
    if reason:
        raise ValueError(f"runtime {runtime!r} cannot run on {device}: {reason}")
    return runtime


def load_detector(variant: str, device: str, runtime: str = "pytorch") -> Detector:
    """The cached detector. After a fallback to the CPU, a GPU-only runtime becomes ``auto``.

    Weights come from the pinned Hub release, else ``weights/`` (``hub.resolve``); why not the Hub (unreachable, or
    a download refused as tampered) is shown once per loaded model, in the request that loaded it.
    """
    if runtime != "auto" and unavailable_reason(runtime, device):
        runtime = "auto"
    detector = get_detector(variant, device, runtime)
    if detector.notice and detector not in _told:
        _told.add(detector)
        log.warning("%s: %s", variant, detector.notice)
        gr.Warning(f"{variant.upper()} weights: {detector.notice}")
    return detector


def class_ids(detector: Detector, classes: list[str] | None) -> list[int] | None:
    """Class names (the filter) to the model's class ids; None means every class."""
    if not classes:
        return None
    if isinstance(classes, str):
        classes = [classes]
    if not isinstance(classes, (list, tuple)) or not all(isinstance(c, str) for c in classes):
        raise ValueError(f"classes must be a list of class names, got {classes!r:.80}")
    ids = {name: i for i, name in detector.names.items()}
    unknown = [c for c in classes if c not in ids]
    if unknown:
        raise ValueError(f"unknown class(es) {unknown}; this model knows {len(ids)} COCO classes")
    return [ids[c] for c in classes]


def load_image(value) -> np.ndarray:
    """An RGB array from what the Image component sends raw: a file payload, a path or an array."""
    if value is None:
        raise gr.Error("Please upload an image first.")
    if isinstance(value, dict):
        value = value.get("path") or value.get("url")
        if not value or not isinstance(value, str):
            raise gr.Error("The image upload is empty.")
        if value.startswith("data:"):
            value = base64.b64decode(value.partition(",")[2])
    if not isinstance(value, (str, Path, bytes, np.ndarray)):
        raise gr.Error(f"Expected an image file, got {type(value).__name__}.")
    return read_image(value)


def run(device: str, fn):
    """``fn(device)``, retried on the CPU (with a visible notice) when the GPU is out of memory or busy."""
    result, notice = devices.run_on(device, fn)
    if notice:
        gr.Warning(notice)
    return result, notice


# ---------------------------------------------------------------- results handed to Gradio as files
@lru_cache(maxsize=1)
def output_dir() -> Path:
    """This process's folder for results (annotated videos and images), removed at exit."""
    path = Path(tempfile.mkdtemp(prefix="starnet-demo-outputs-"))
    atexit.register(shutil.rmtree, path, ignore_errors=True)
    return path


def sweep_outputs(older_than_s: float = OUTPUT_KEEP_S) -> None:
    """Delete results Gradio has long since copied into its own cache."""
    now = time.time()
    for p in output_dir().iterdir():
        with suppress(FileNotFoundError):  # a concurrent request's sweep got there first
            if now - p.stat().st_mtime > older_than_s:
                p.unlink()


def as_file(image: np.ndarray) -> str:
    """An RGB image as a WebP file of ours (what Gradio would have made of the array)."""
    path = output_dir() / f"{uuid.uuid4().hex}.webp"
    PIL.Image.fromarray(image).save(path)
    return str(path)


def file_outputs(fn):
    """``fn`` with the images it returns (arrays, and gallery items of arrays) written to files first.

    Gradio caches a returned array by rewriting, in place, a file named by the image's hash, so concurrent requests
    with the same result (same image and settings) truncate each other's downloads; the load test hit this at two
    concurrent requests. A returned file is copied into the cache atomically instead.
    """
    def files(value):
        if isinstance(value, np.ndarray) and value.ndim == 3:
            return as_file(value)
        if isinstance(value, list) and value and all(isinstance(v, tuple) and isinstance(v[0], np.ndarray)
                                                     for v in value):
            return [(as_file(image), caption) for image, caption in value]
        return value

    @functools.wraps(fn)
    def handler(*args, **kwargs):
        sweep_outputs()
        return tuple(files(v) for v in fn(*args, **kwargs))

    return handler


# ---------------------------------------------------------------- Image tab
@devices.zero_gpu(duration=30)
def detect_image(image, variant, device, conf, iou, imgsz, classes=None, runtime="pytorch"):
    """Detect objects in one image: annotated image, detections JSON, table, timings line."""
    with user_errors(image):
        variant, device, conf, iou, imgsz = check_settings(variant, device, conf, iou, imgsz)
        runtime = check_runtime(runtime, device)
        rgb = load_image(image)

        def work(dev):
            det = load_detector(variant, dev, runtime)
            return det.detect(rgb, conf=conf, iou=iou, imgsz=imgsz, classes=class_ids(det, classes))

        (detections, t), notice = run(device, work)
    rows = records(detections)
    table = pd.DataFrame([[r["class"], r["confidence"], *r["box"]] for r in rows],
                         columns=["class", "confidence", "x1", "y1", "x2", "y2"])
    timings = {"preprocess": round(t.preprocess_ms, 2), "inference": round(t.inference_ms, 2),
               "postprocess": round(t.postprocess_ms, 2)}
    result = {"variant": variant, "device": device if not notice else "cpu", "imgsz": imgsz, "detections": rows,
              "timings_ms": timings, "notice": notice}
    line = (f"**{len(rows)} objects** · preprocess {timings['preprocess']:.1f} ms · inference "
            f"{timings['inference']:.1f} ms · postprocess {timings['postprocess']:.1f} ms")
    return DetectionAnnotator().annotate(rgb, detections), result, table, line


# ---------------------------------------------------------------- Video tab
@devices.zero_gpu(duration=120)
def detect_video_file(video, variant, device, conf, iou, imgsz, track=False, classes=None, runtime="pytorch",
                      progress=gr.Progress()):  # noqa: B008 (Gradio injects progress through this default)
    """Detect (and optionally track) objects in every frame: H.264 mp4, summary JSON, per-class counts table."""
    path = upload_path(video)
    if not path:
        raise gr.Error("Please upload a video first.")
    sweep_outputs()
    with user_errors(video):
        variant, device, conf, iou, imgsz = check_settings(variant, device, conf, iou, imgsz)
        runtime = check_runtime(runtime, device)
        out = output_dir() / f"{uuid.uuid4().hex}.mp4"
        progress(0, desc="Detecting")

        def work(dev):
            det = load_detector(variant, dev, runtime)
            return detect_video(path, det, out, conf=conf, iou=iou, imgsz=imgsz, classes=class_ids(det, classes),
                                track=bool(track), progress=progress)

        res, notice = run(device, work)
    summary = {"variant": variant, "device": device if not notice else "cpu", "frames": res.frames,
               "seconds": round(res.seconds, 2), "processing_fps": round(res.fps, 2), "width": res.width,
               "height": res.height, "tracked": res.tracked, "truncated": res.truncated, "counts": res.counts,
               "notice": notice}
    if res.truncated:
        gr.Warning(f"The video is damaged after frame {res.frames}; the frames before it were processed.")
    return str(res.path), summary, pd.DataFrame(res.counts)


# ---------------------------------------------------------------- Webcam tab
def webcam_frame(frame, state, variant, device, conf, iou, imgsz, classes=None, runtime="pytorch"):
    """One streamed frame in, annotated frame with FPS/latency out. Gradio keeps only the newest pending frame, so
    frames that arrive while this runs are dropped, never queued."""
    if frame is None:
        gr.Warning("No frame from the webcam yet: allow camera access and press Record.")
        return gr.skip(), state
    state = state or {"fps": sv.FPSMonitor(), "frames": 0}
    t0 = time.perf_counter()
    with user_errors(frame):
        variant, device, conf, iou, imgsz = check_settings(variant, device, conf, iou, imgsz)
        runtime = check_runtime(runtime, device)
        rgb = load_image(frame)

        def work(dev):
            det = load_detector(variant, dev, runtime)
            # rect: every frame of a stream has one shape, so letterbox to the smallest rectangle (640x480 for a
            # 4:3 camera, as the video tab does): a quarter fewer pixels than the square
            return det.detect(rgb, conf=conf, iou=iou, imgsz=imgsz, classes=class_ids(det, classes), rect=True)[0]

        detections, notice = devices.run_on(device, work)  # no toast per frame; the overlay says it
    state["fps"].tick()
    state["frames"] += 1
    ms = (time.perf_counter() - t0) * 1000
    text = f"{variant.upper()} | {state['fps'].fps:.1f} FPS | {ms:.0f} ms | {len(detections)} objects"
    if notice:
        text += " | on CPU: GPU unavailable"
    return StatsAnnotator().annotate(DetectionAnnotator().annotate(rgb, detections), text), state


# ---------------------------------------------------------------- Latency tab
@devices.zero_gpu(duration=120)
def latency(image, variants, device, imgsz, runs=10, baseline=True, conf=0.25, iou=0.45, runtime="pytorch"):
    """Time each selected variant (and the YOLOv8n baseline) on one image: table, bar plot, annotated gallery, JSON."""
    variants = [variants] if isinstance(variants, str) else variants
    if variants is not None and not isinstance(variants, (list, tuple)):
        raise gr.Error(f"variants must be a list such as ['s1', 's4'], got {variants!r:.80}")
    models = [*(variants or []), *([BASELINE] if baseline else [])]
    if not models:
        raise gr.Error("Select at least one variant.")
    if not isinstance(runs, (int, float)) or not 1 <= runs <= 100:  # also refuses NaN
        raise gr.Error(f"runs must be a number from 1 to 100, got {runs!r:.40}")
    results, shots = [], []
    with user_errors(image):
        runtime = check_runtime(runtime, device)
        rgb = load_image(image)
        for model in models:
            variant, device_, conf_, iou_, imgsz_ = check_settings(model, device, conf, iou, imgsz)

            def work(dev, variant=variant, conf_=conf_, iou_=iou_, imgsz_=imgsz_):
                det = load_detector(variant, dev, runtime)
                r = measure(det, rgb, runs=int(runs), warmup=2, conf=conf_, iou=iou_, imgsz=imgsz_)
                return r, det.detect(rgb, conf=conf_, iou=iou_, imgsz=imgsz_)[0]

            (r, detections), _ = run(device_, work)
            name = "YOLOv8n (untrained baseline)" if variant == BASELINE else f"StarNet-{variant.upper()}"
            results.append({"model": name, **r})
            shots.append((DetectionAnnotator().annotate(rgb, detections), f"{name}: {r['total_ms']:.0f} ms"))
    table = pd.DataFrame([{
        "model": r["model"], "runtime": f"{r['runtime']} {r['precision']}", "params (M)": round(r["params"] / 1e6, 2),
        "GFLOPs": r["gflops"],
        **{f"{s} ms (median / p90)": f"{r[f'{s}_ms']:.1f} / {r[f'{s}_ms_p90']:.1f}"
           for s in ("preprocess", "inference", "postprocess", "total")},
        "FPS": r["fps"]} for r in results])
    plot = pd.DataFrame([{"model": r["model"], "stage": s, "ms": r[f"{s}_ms"]} for r in results
                         for s in ("preprocess", "inference", "postprocess")])
    return table, plot, shots, results


# ---------------------------------------------------------------- Star operation tab
@lru_cache(maxsize=16)
def block_keys(variant: str) -> list[str]:
    """``stage.block`` keys of a variant (from its architecture; no weights needed)."""
    return list(blocks(StarNetBackbone(variant)))


def default_block(variant: str) -> str:
    """The last block of the stride-16 stage: deep enough to be semantic, fine enough to see objects."""
    keys = block_keys(variant)
    return [k for k in keys if k.startswith("2.")][-1] if any(k.startswith("2.") for k in keys) else keys[-1]


@devices.zero_gpu(duration=30)
def star_maps(image, variant, block, imgsz=640, top_k=3, device="cpu"):
    """Heatmaps of act(f1(x)), f2(x) and their product for one block: gallery items and a summary JSON."""
    with user_errors(image):
        variant, device, _, _, imgsz = check_settings(variant, device, 0.25, 0.45, imgsz)
        if variant == BASELINE:
            raise ValueError("the YOLOv8n baseline has no star blocks; pick a StarNet variant")
        if str(block) not in block_keys(variant):
            raise ValueError(f"block {block!r} is not in {variant}; choose one of {', '.join(block_keys(variant))}")
        if not isinstance(top_k, (int, float)) or not 1 <= top_k <= 16:  # also refuses NaN
            raise ValueError(f"top channels must be a number from 1 to 16, got {top_k!r:.40}")
        rgb = load_image(image)

        def work(dev):
            det = load_detector(variant, dev, "pytorch")  # the hooks need the PyTorch model
            return capture(det.model, rgb, str(block), imgsz, lock=det._lock)

        (boxed, maps), _ = run(device, work)
        items = gallery(boxed, maps, top_k=int(top_k))
    energy = {w: [round(float(v), 5) for v in maps.energy(w)] for w in ("act_f1", "f2", "star")}
    return items, {"variant": variant, "block": maps.key, "shape_chw": list(maps.shape), "energy": energy}


# ---------------------------------------------------------------- UI
def use_examples_cache_of_these_weights() -> None:
    """Lazily cached example outputs belong to the weights that made them: one cache folder per S1 weights file,
    so retrained weights never show old boxes. An explicit ``GRADIO_EXAMPLES_CACHE`` wins."""
    try:
        digest = read_config(weight_files("s1")[1]).get("sha256", "")[:12]
    except WeightsError:
        digest = "none"
    os.environ.setdefault("GRADIO_EXAMPLES_CACHE", str(Path(".gradio", "cached_examples", f"s1-{digest}")))


def build_app() -> gr.Blocks:
    use_examples_cache_of_these_weights()
    with gr.Blocks(title="YOLOv8-StarNet", delete_cache=(600, 1800)) as demo:
        gr.Markdown("# YOLOv8-StarNet\nYOLOv8n's neck and head on a StarNet backbone ([Rewrite the Stars]"
                    "(https://arxiv.org/abs/2403.19967), CVPR 2024). Pick a variant and a device, then a tab.")
        with gr.Row():
            variant = gr.Dropdown(variant_choices(), value="s1", label="Variant")
            device = gr.Dropdown(device_choices(), value="cpu", label="Device",
                                 info=devices.why_no_gpu() or "GPU out of memory or busy: runs on the CPU instead.")
            runtime = gr.Dropdown(runtime_choices(), value="auto", label="Runtime",
                                  info=auto_info())
            classes = gr.Dropdown(sorted(COCO_NAMES.values()), value=[], multiselect=True, label="Only these classes")
        with gr.Row():
            conf = gr.Slider(0.01, 1.0, value=0.25, step=0.01, label="Confidence")
            iou = gr.Slider(0.05, 1.0, value=0.45, step=0.01, label="IoU (NMS)")
            imgsz = gr.Slider(160, 1280, value=640, step=32, label="Image size")
        settings = [variant, device, conf, iou, imgsz]

        with gr.Tab("Image"):
            with gr.Row():
                image_in = gr.Image(type="filepath", image_mode=None, label="Image",
                                    sources=["upload", "clipboard", "webcam"])
                image_out = gr.Image(label="Detections", buttons=["download", "fullscreen"], elem_id="image-out")
            image_btn = gr.Button("Detect", variant="primary")
            image_line = gr.Markdown(elem_id="image-line")
            image_table = gr.Dataframe(headers=["class", "confidence", "x1", "y1", "x2", "y2"], label="Detections",
                                       max_height=300)
            with gr.Accordion("JSON (as the API returns it)", open=False):
                image_json = gr.JSON()
            outputs = [image_out, image_json, image_table, image_line]
            # preprocess=False on every event: handlers decode uploads and check every value themselves, so bad
            # files and bad API values get a clear message instead of Gradio's bare "Error".
            image_btn.click(file_outputs(detect_image), [image_in, *settings, classes, runtime], outputs,
                            api_name="detect_image", preprocess=False, concurrency_id="detect")
            gr.Examples([[str(p), "s1", "cpu", 0.25, 0.45, 640] for p in IMAGE_EXAMPLES], [image_in, *settings],
                        outputs, fn=file_outputs(detect_image), cache_examples=True, cache_mode="lazy",
                        visible_columns=[0], label="Examples (S1, CPU, 640 px)")

        with gr.Tab("Video"):
            gr.Markdown(f"Up to {MAX_SECONDS:.0f} s, {MAX_BYTES // 2**20} MB and {MAX_SIDE} px on the long side "
                        "(1080p). The result is an H.264 mp4 without sound.")
            with gr.Row():
                video_in = gr.Video(label="Video", sources=["upload"])
                video_out = gr.Video(label="Detections", buttons=["download"])
            track = gr.Checkbox(label="Track objects (ByteTrack) and draw their paths")
            video_btn = gr.Button("Detect", variant="primary")
            video_table = gr.Dataframe(headers=["class", "max_in_frame", "frames", "tracks"],
                                       label="Per class: most in one frame, frames seen, distinct tracks")
            with gr.Accordion("JSON (as the API returns it)", open=False):
                video_json = gr.JSON()
            video_btn.click(detect_video_file, [video_in, *settings, track, classes, runtime],
                            [video_out, video_json, video_table], api_name="detect_video", concurrency_id="detect",
                            preprocess=False)
            gr.Examples([[str(p)] for p in VIDEO_EXAMPLES], [video_in])

        with gr.Tab("Webcam"):
            gr.Markdown("Live detection on your camera at 640×480. Frames that arrive while one is being detected "
                        "are dropped, so the picture stays current; the overlay gives the FPS and latency.")
            with gr.Row():
                cam = gr.Image(sources=["webcam"], streaming=True, type="numpy", label="Camera",
                               webcam_options=gr.WebcamOptions(mirror=False, constraints={
                                   "video": {"width": {"ideal": WEBCAM_W}, "height": {"ideal": WEBCAM_H}}}))
                cam_out = gr.Image(label="Detections", format="jpeg", elem_id="webcam-out")
            cam_state = gr.State(None)
            cam.stream(webcam_frame, [cam, cam_state, *settings, classes, runtime], [cam_out, cam_state],
                       api_name="webcam", stream_every=0.05, time_limit=STREAM_LIMIT_S,
                       concurrency_limit=WEBCAM_STREAMS, preprocess=False)

        with gr.Tab("Latency"):
            gr.Markdown("Each variant runs the same image on the chosen device: warm-up, then median and p90 per "
                        "stage (CUDA synchronised). The YOLOv8n baseline has the same neck and head but is "
                        "**untrained**: its timing is real, its boxes are not. Other users share this machine.")
            with gr.Row():
                lat_image = gr.Image(str(IMAGE_EXAMPLES[0]) if IMAGE_EXAMPLES else None, type="filepath",
                                     image_mode=None, label="Image", height=360)
                with gr.Column():
                    lat_variants = gr.CheckboxGroup(variant_choices(), value=["s1", "s4"], label="Variants")
                    lat_baseline = gr.Checkbox(True, label="Include YOLOv8n baseline")
                    lat_runs = gr.Slider(1, 50, value=10, step=1, label="Timed runs per model")
                    lat_btn = gr.Button("Measure", variant="primary")
            lat_table = gr.Dataframe(headers=["model", "params (M)", "GFLOPs", "total ms (median / p90)"],
                                     label="Latency")
            lat_plot = gr.BarPlot(x="model", y="ms", color="stage", title="Median ms per stage", y_title="ms")
            lat_gallery = gr.Gallery(label="Same image, each model", columns=3)
            with gr.Accordion("JSON (as the API returns it)", open=False):
                lat_json = gr.JSON()
            lat_btn.click(file_outputs(latency),
                          [lat_image, lat_variants, device, imgsz, lat_runs, lat_baseline, conf, iou, runtime],
                          [lat_table, lat_plot, lat_gallery, lat_json], api_name="latency", preprocess=False,
                          concurrency_id="detect")

        with gr.Tab("Star operation"):
            gr.Markdown(STAR_TEXT)
            with gr.Row():
                star_image = gr.Image(str(IMAGE_EXAMPLES[0]) if IMAGE_EXAMPLES else None, type="filepath",
                                      image_mode=None, label="Image", height=360)
                with gr.Column():
                    block = gr.Dropdown(block_keys("s1"), value=default_block("s1"), label="Block (stage.index)")
                    top_k = gr.Slider(1, 8, value=3, step=1, label="Top channels per tensor")
                    star_btn = gr.Button("Show", variant="primary")
            star_gallery = gr.Gallery(label="Star maps", columns=4, height="auto")
            with gr.Accordion("Channel energies (JSON)", open=False):
                star_json = gr.JSON()
            star_btn.click(file_outputs(star_maps), [star_image, variant, block, imgsz, top_k, device],
                           [star_gallery, star_json], api_name="star_maps", preprocess=False, concurrency_id="detect")
            variant.change(lambda v: gr.Dropdown(block_keys(v), value=default_block(v)) if v in VARIANTS
                           else gr.skip(), variant, block, api_visibility="private")
    return demo


def launch(demo: gr.Blocks, **kwargs):
    """Queue and serve ``demo`` with the app's limits; ``kwargs`` go to ``launch`` (tests pick host and port)."""
    demo.queue(default_concurrency_limit=WORKERS, max_size=QUEUE_MAX)  # see WORKERS
    # show_error: errors raised by Gradio itself before a handler runs (e.g. a file path that was not uploaded) carry
    # Gradio's message instead of a bare "Error"; the handlers' own errors are gr.Error messages either way.
    return demo.launch(theme=gr.themes.Soft(), max_file_size=MAX_FILE_SIZE, show_error=True,
                       state_session_capacity=SESSIONS, **kwargs)


def warm_up(variant: str = "s1") -> threading.Thread:
    """Export and load the default settings' detector in the background, for images and for the webcam's rect
    frames, so the first visitor does not wait for either export."""
    def load():
        try:
            get_detector(variant, "cpu", "auto").prepare(image_hw=(WEBCAM_H, WEBCAM_W))
        except Exception as e:  # no weights, no runtime: the first request says why, as a gr.Error
            log.warning("warm-up of %s skipped: %s", variant, e)

    thread = threading.Thread(target=load, name="warm-up", daemon=True)
    thread.start()
    return thread


if __name__ == "__main__":
    # One intra-op thread per worker: WORKERS requests and a webcam stream keep the cores busy already, and two-thread
    # ops stall whenever something else holds the other core. Measured as above: 1.65 -> 3.25 requests/s, p95 4.6 ->
    # 1.6 s, webcam 4.3 -> 10 FPS, and RSS flat after warm-up (+2.7% -> -0.4%). Set here, not on import (tests).
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // WORKERS))
    app = build_app()
    # A stop (SIGTERM, as a Space restart sends) closes the app, so that Gradio deletes the files it cached for
    # requests and the interpreter exits normally (atexit deletes our results folder) instead of being killed.
    signal.signal(signal.SIGTERM, lambda *_: app.close())
    warm_up()
    launch(app)
