"""The app's handlers, one per named API endpoint, as Gradio calls them: raw values in (``preprocess=False``),
Gradio-ready values out.

Each one validates its settings (``inference.settings``), reads the upload (``media``), runs a cached detector on
the chosen device, retried on the CPU when a GPU is out of memory or busy (``devices.run_on``), and shapes the result.
Bad input becomes a one-line ``gr.Error`` as written, a fault of ours a logged one with an id to quote
(``errors.user_errors``); the server carries on either way.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import threading
import time
import weakref
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import gradio as gr
import numpy as np
import pandas as pd
import supervision as sv

from ..errors import InputError
from ..explain import cam as cams
from ..explain import swap, toy
from ..inference import devices
from ..inference.detector import Detector, detector_for
from ..inference.latency import measure
from ..inference.runtimes import Progress
from ..inference.settings import Settings, check_int, check_number, check_settings, class_ids
from ..inference.spec import ModelSpec, resolve_spec
from ..inference.video import detect_video
from ..media.images import read_image
from ..media.sinks import DetectionFiles
from ..models.yolo import BASELINE
from ..viz.annotate import DetectionAnnotator, StatsAnnotator, records
from ..viz.plots import tradeoff_figure
from ..viz.starmaps import gallery, overlay
from ..weights.hub import Located
from . import webcam
from .choices import block_choices, model_name, recorded_metrics
from .errors import discard_upload, upload_path, user_errors
from .files import output_path, sweep_outputs
from .jobs import Job

T = TypeVar("T")
# The toy's widest net here: width 64 at depth 6 trains both nets in about 13 s on one core of the shared 2-core
# machine (8 s at width 32, 3 s at the default 8), and a request should not hold a worker much longer
# (``toy.MAX_WIDTH`` allows 256).
TOY_MAX_WIDTH = 64
log = logging.getLogger("app")
_told: weakref.WeakSet[Located] = weakref.WeakSet()  # weights whose plain notice was shown


def objects(n: int) -> str:
    """"1 object", "3 objects": the count in the lines and overlays a user reads."""
    return f"{n} object{'' if n == 1 else 's'}"


def load_image(value: Any) -> np.ndarray:
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


def load_detector(spec: ModelSpec, progress: Progress | None = None, imgsz: int | None = None) -> Detector:
    """The pooled detector of a resolved choice, with its backend for a square ``imgsz`` built now when given: a first
    use's load, export and compilation (seconds) are reported to ``progress`` (``gr.Progress``'s signature) instead
    of passing in silence inside the detection. That the weights are not the pinned Hub release is said once per
    process and model, plainly (the reason is in the server log, from ``hub.locate``)."""
    detector = detector_for(spec, progress, imgsz)
    if spec.weights is not None and spec.weights.notice and spec.weights not in _told:
        _told.add(spec.weights)
        gr.Warning(f"{spec.variant.upper()} weights: {spec.weights.notice}.")
    return detector


def detection_files() -> DetectionFiles:
    """A CSV and a JSON file for a request's detections, in the app's results folder."""
    return DetectionFiles(output_path("-detections.csv"), output_path("-detections.json"))


def check_models(variants: Any, extra: tuple[str, ...] = ()) -> list[str]:
    """The models a multi-model tab was asked for (a name or a list of names), then ``extra``, without repeats."""
    variants = [variants] if isinstance(variants, str) else variants
    if variants is not None and not isinstance(variants, (list, tuple)):
        raise gr.Error(f"variants must be a list such as ['s1', 's4'], got {variants!r:.80}")
    models = list(dict.fromkeys([*(variants or []), *extra]))
    if not models:
        raise gr.Error("Select at least one model.")
    return models


def check_block(variant: str, block: Any) -> str:
    """A star block of this StarNet (``stage.index``), or a one-line ``InputError``."""
    if variant == BASELINE:
        raise InputError("YOLOv8n has no star blocks; pick a StarNet variant")
    if str(block) not in block_choices(variant):
        raise InputError(f"block {block!r:.20} is not in {variant}; choose one of {', '.join(block_choices(variant))}")
    return str(block)


def on_device(s: Settings, runtime: str, fn: Callable[[Detector], T], toast: bool = True,
              progress: Progress | None = None, imgsz: int | None = None) -> tuple[T, str | None]:
    """``fn(detector)`` for the request's model choice, resolved once (``resolve_spec``), on the chosen device;
    retried on the CPU (``ModelSpec.on``, with a notice) when the GPU cannot take it. ``progress`` hears about a
    first use's load and export, and about those of the square ``imgsz`` backend when ``fn`` runs one
    (``load_detector``)."""
    spec = resolve_spec(s.variant, s.device, runtime)
    result, notice = devices.run_on(spec.device, lambda dev: fn(load_detector(
        spec if dev == spec.device else spec.on(dev), progress, imgsz)))
    if notice and toast:
        gr.Warning(notice)
    return result, notice


# ---------------------------------------------------------------- Image tab
def detect_image(image, variant, device, conf, iou, imgsz, classes=None, runtime="auto",
                 progress=gr.Progress()):  # noqa: B008 (Gradio injects progress through this default)
    """Detect objects in one image: annotated image, detections JSON, table, timings line, and the detections as
    JSON and CSV files (supervision's sinks). A model's first use shows its export's progress."""
    with user_errors(image):
        s = check_settings(variant, device, conf, iou, imgsz)
        rgb = load_image(image)
        (detections, t), notice = on_device(s, runtime, lambda det: det.detect(
            rgb, conf=s.conf, iou=s.iou, imgsz=s.imgsz, classes=class_ids(det.names, classes)), progress=progress,
            imgsz=s.imgsz)
    rows = records(detections)
    table = pd.DataFrame([[r["class"], r["confidence"], *r["box"]] for r in rows],
                         columns=["class", "confidence", "x1", "y1", "x2", "y2"])
    timings = {"preprocess": round(t.preprocess_ms, 2), "inference": round(t.inference_ms, 2),
               "postprocess": round(t.postprocess_ms, 2)}
    result = {"variant": s.variant, "device": s.device if not notice else "cpu", "imgsz": s.imgsz,
              "detections": rows, "timings_ms": timings, "notice": notice}
    line = (f"**{objects(len(rows))}** · preprocess {timings['preprocess']:.1f} ms · inference "
            f"{timings['inference']:.1f} ms · postprocess {timings['postprocess']:.1f} ms")
    with detection_files() as sink:
        sink.append(detections)
    return DetectionAnnotator().annotate(rgb, detections), result, table, line, sink.paths


# ---------------------------------------------------------------- Video tab
def detect_video_file(video, variant, device, conf, iou, imgsz, track=False, classes=None, runtime="auto",
                      progress=gr.Progress()):  # noqa: B008 (Gradio injects progress through this default)
    """Detect (and optionally track) objects in every frame: H.264 mp4, summary JSON, per-class counts table, and
    every frame's detections as JSON and CSV files, each row with its ``frame`` index.

    A generator: the video runs on a ``Job`` while this yields nothing new, so that a cancel or a client that goes
    away stops the work within a frame and removes its files and the upload (``ui.jobs``). The last value is the
    result."""
    path = upload_path(video)
    if not path:
        raise gr.Error("Please upload a video first.")
    sweep_outputs()
    with user_errors(video):
        s = check_settings(variant, device, conf, iou, imgsz)
    out = output_path(".mp4")
    progress(0, desc="Detecting")

    def attempt(det: Detector, stop: threading.Event):
        with detection_files() as sink:  # per attempt: a retry on the CPU writes the files afresh
            return detect_video(
                path, det, out, conf=s.conf, iou=s.iou, imgsz=s.imgsz, classes=class_ids(det.names, classes),
                track=bool(track), annotate=DetectionAnnotator(trace=bool(track), rgb=False).annotate,
                progress=progress, on_frame=lambda detections, i: sink.append(detections, frame=i),
                stop=stop), sink.paths

    finished = False
    try:
        with Job(lambda stop: on_device(s, runtime, lambda det: attempt(det, stop), toast=False),
                 name="video-job") as job:
            while job.running(wait_s=0.5):
                yield gr.skip(), gr.skip(), gr.skip(), gr.skip()
        finished = True
    finally:
        if not finished:  # closed at a yield: the job has stopped and removed its own files
            discard_upload(video)
    with user_errors(video):
        (res, downloads), notice = job.result()
    if notice:
        gr.Warning(notice)
    summary = {"variant": s.variant, "device": s.device if not notice else "cpu", "frames": res.frames,
               "seconds": round(res.seconds, 2), "processing_fps": round(res.fps, 2), "width": res.width,
               "height": res.height, "tracked": res.tracked, "truncated": res.truncated, "counts": res.counts,
               "notice": notice}
    if res.truncated:
        gr.Warning(f"The video is damaged after frame {res.frames}; the frames before it were processed.")
    yield str(res.path), summary, pd.DataFrame(res.counts), downloads


# ---------------------------------------------------------------- Webcam tab
def webcam_frame(frame, state, variant, device, conf, iou, imgsz, classes=None, runtime="auto"):
    """One streamed frame in, annotated frame with FPS/latency out. Gradio keeps only the newest pending frame, so
    frames that arrive while this runs are dropped, never queued. The result is a JPEG data URL that names the
    frame it answers (``webcam.inline_jpeg``), for the page's lag."""
    if frame is None:
        gr.Warning("No frame from the webcam yet: allow camera access and press Record.")
        return gr.skip(), state
    state = state or {"fps": sv.FPSMonitor(), "frames": 0}
    t0, wall = time.perf_counter(), time.time()
    with user_errors(frame):
        s = check_settings(variant, device, conf, iou, imgsz)
        rgb = load_image(frame)
        t1 = time.perf_counter()
        # rect: every frame of a stream has one shape, so letterbox to the smallest rectangle (640x480 for a 4:3
        # camera, as the video tab does): a quarter fewer pixels than the square. No toast per frame: the overlay.
        detections, notice = on_device(s, runtime, lambda det: det.detect(
            rgb, conf=s.conf, iou=s.iou, imgsz=s.imgsz, classes=class_ids(det.names, classes), rect=True)[0],
            toast=False)
    t2 = time.perf_counter()
    state["fps"].tick()
    state["frames"] += 1
    text = f"{s.variant.upper()} | {state['fps'].fps:.1f} FPS | {(t2 - t0) * 1000:.0f} ms | {objects(len(detections))}"
    if notice:
        text += " | on CPU: GPU unavailable"
    out = StatsAnnotator().annotate(DetectionAnnotator(smart_labels=False).annotate(rgb, detections), text)
    t3 = time.perf_counter()
    shown = webcam.inline_jpeg(out, _url_length(frame))
    if WEBCAM_TRACE:
        _trace_frame(frame, wall, t0, t1, t2, t3, time.perf_counter())
    return shown, state


# ``app-fps`` sets this to a file: one JSON line of server timings per webcam frame, keyed by the frame's payload size.
WEBCAM_TRACE = os.environ.get("STARNET_WEBCAM_TRACE")
_trace_lock = threading.Lock()


def _url_length(frame: Any) -> int | None:
    """The length of a camera frame's data URL (the browser's webcam sends one): what names the frame, page-side."""
    url = frame.get("url") if isinstance(frame, dict) else None
    return len(url) if isinstance(url, str) and url.startswith("data:") else None


def _trace_frame(frame: Any, wall: float, *t: float) -> None:
    line = {"n": _url_length(frame), "start": round(wall * 1000, 3),
            "decode_ms": round((t[1] - t[0]) * 1000, 3), "detect_ms": round((t[2] - t[1]) * 1000, 3),
            "annotate_ms": round((t[3] - t[2]) * 1000, 3), "encode_ms": round((t[4] - t[3]) * 1000, 3),
            "end": round((wall + t[4] - t[0]) * 1000, 3)}
    with _trace_lock, open(WEBCAM_TRACE, "a") as f:
        f.write(json.dumps(line) + "\n")


# ---------------------------------------------------------------- Latency tab
def latency(image, variants, device, imgsz, runs=10, baseline=True, conf=0.25, iou=0.45, runtime="auto",
            progress=gr.Progress()):  # noqa: B008 (Gradio injects progress through this default)
    """Time each selected model (and the YOLOv8n reference) on one image: table, stage bar plot, accuracy against
    latency (a figure, None when no model has a recorded mAP50), annotated gallery, JSON. Each row carries the
    model's recorded held-out mAP50. A model's first use shows its export's progress, outside the timing."""
    models = check_models(variants, (BASELINE,) if baseline else ())
    results, shots = [], []
    with user_errors(image):
        runs = check_number("runs", runs, 1, 100)
        rgb = load_image(image)
        for model in models:
            s = check_settings(model, device, conf, iou, imgsz)

            def work(det: Detector, s: Settings = s):
                r = measure(det, rgb, runs=int(runs), warmup=2, conf=s.conf, iou=s.iou, imgsz=s.imgsz)
                return r, det.detect(rgb, conf=s.conf, iou=s.iou, imgsz=s.imgsz)[0]

            (r, detections), _ = on_device(s, runtime, work, progress=progress, imgsz=s.imgsz)
            metrics = recorded_metrics(s.variant)
            results.append({"model": model_name(s.variant), "variant": s.variant, "map50": metrics.get("map50"),
                            "map50_se": metrics.get("map50_se"), **r})
            shots.append((DetectionAnnotator().annotate(rgb, detections),
                          f"{model_name(s.variant)}: {r['total_ms']:.0f} ms, {objects(len(detections))}"))
    table = pd.DataFrame([{
        "model": r["model"], "mAP50 (held out)": _accuracy(r), "runtime": f"{r['runtime']} {r['precision']}",
        "params (M)": round(r["params"] / 1e6, 2), "GFLOPs": r["gflops"],
        **{f"{s} ms (median / p90)": f"{r[f'{s}_ms']:.1f} / {r[f'{s}_ms_p90']:.1f}"
           for s in ("preprocess", "inference", "postprocess", "total")},
        "FPS": r["fps"]} for r in results])
    stages = pd.DataFrame([{"model": r["model"], "stage": s, "ms": r[f"{s}_ms"]} for r in results
                           for s in ("preprocess", "inference", "postprocess")])
    tradeoff = tradeoff_figure([(r["model"], r["total_ms"], r["map50"]) for r in results if r["map50"] is not None])
    return table, stages, tradeoff, shots, results


def _accuracy(r: dict) -> str:
    if r["map50"] is None:
        return "not measured"
    return f"{r['map50']:.3f} ± {r['map50_se']:.3f}" if r.get("map50_se") is not None else f"{r['map50']:.3f}"


# ---------------------------------------------------------------- Star operation tab
def star_maps(image, variant, block, imgsz=640, top_k=3, device="cpu",
              progress=gr.Progress()):  # noqa: B008 (Gradio injects progress through this default)
    """Heatmaps of act(f1(x)), f2(x) and their product for one block: gallery items and a summary JSON."""
    with user_errors(image):
        s = check_settings(variant, device, 0.25, 0.45, imgsz)
        block = check_block(s.variant, block)
        top_k = check_number("top channels", top_k, 1, 16)
        rgb = load_image(image)
        # the hooks need the PyTorch model, which every detector keeps
        (boxed, maps), _ = on_device(s, "pytorch", lambda det: det.star_maps(rgb, block, s.imgsz),
                                     progress=progress)
        items = gallery(boxed, maps, top_k=int(top_k))
    energy = {w: [round(float(v), 5) for v in maps.energy(w)] for w in ("act_f1", "f2", "star")}
    return items, {"variant": s.variant, "block": maps.key, "shape_chw": list(maps.shape), "energy": energy}


# ---------------------------------------------------------------- Why stars tab
def star_vs_sum(image, variant, swap_in, block, imgsz=640, conf=0.25, iou=0.45, device="cpu",
                progress=gr.Progress()):  # noqa: B008 (Gradio injects progress through this default)
    """Detections and one block's maps with the star as trained and with a sum swapped into ``swap_in`` (``all``,
    ``stage N``, block keys, or a list of them): gallery items (detections both ways, then the block's maps) and a
    summary JSON."""
    with user_errors(image):
        s = check_settings(variant, device, conf, iou, imgsz)
        block = check_block(s.variant, block)
        swapped = swap.swap_keys(s.variant, swap_in)
        rgb = load_image(image)
        r, _ = on_device(s, "pytorch", lambda det: swap.star_vs_sum(det, rgb, swapped, block, s.conf, s.iou, s.imgsz),
                         progress=progress)
    where = "all blocks" if len(swapped) == len(block_choices(s.variant)) else ", ".join(
        [swap_in] if isinstance(swap_in, str) else map(str, swap_in))
    kept = r.kept()
    fused = "act(f1(x)) + f2(x)" if block in r.swapped else "act(f1(x)) * f2(x), the sum upstream"
    items = [(DetectionAnnotator().annotate(rgb, r.star.detections),
              f"star, as trained: {objects(len(r.star.detections))}"),
             (DetectionAnnotator().annotate(rgb, r.sum.detections),
              f"sum in {where}: {objects(len(r.sum.detections))} ({kept} of the star's {len(r.star.detections)} "
              "still found)"),
             (overlay(r.picture, r.star.maps.star.mean(0)), f"block {block}, star: mean of act(f1(x)) * f2(x)"),
             (overlay(r.picture, r.sum.maps.star.mean(0)), f"block {block}, sum in {where}: mean of {fused}")]
    info = {"variant": s.variant, "swapped": r.swapped, "block": block, "kept": kept,
            **{p.fusion: {"objects": len(p.detections), "detections": records(p.detections),
                          "block_energy": round(float(p.maps.energy().mean()), 5)} for p in (r.star, r.sum)}}
    return items, info


def star_vs_sum_measured() -> pd.DataFrame:
    """The committed measurement (``python -m starnet_demo.explain.swap``) as a table; empty if there is none."""
    columns = ["sum in", "blocks", "mAP50", "mAP50-95"]
    if not swap.MEASURED.is_file():
        return pd.DataFrame(columns=columns)
    rows = json.loads(swap.MEASURED.read_text())["rows"]
    return pd.DataFrame([[r["sum_in"] if r["sum_in"] != "none" else "nowhere (as trained)", r["blocks"],
                          f"{r['map50']:.3f} ± {r['map50_se']:.3f}", f"{r['map50_95']:.3f} ± {r['map50_95_se']:.3f}"]
                         for r in rows], columns=columns)


def star_toy(dataset, width=8, depth=2, seed=0):
    """Train the toy's star and sum nets (same data, seed and steps) on a 2D set: both decision boundaries, a line
    with their test accuracies, the committed sweep over widths for this set and depth, and a summary JSON."""
    with user_errors():
        width = check_int("width", width, 1, TOY_MAX_WIDTH)
        depth = check_int("depth", depth, 1, toy.MAX_DEPTH)
        seed = check_int("seed", seed, 0, 2**31 - 1)
        summary, figure = toy.compare(str(dataset), width, depth, seed=seed)
    line = (f"**star {summary['star_test_acc']:.1%} · sum {summary['sum_test_acc']:.1%}** held-out accuracy on "
            f"{dataset}, width {width}, depth {depth}, {summary['params']} parameters each")
    return figure, line, toy_sweep(str(dataset), depth), summary


def toy_sweep(dataset: str, depth: int) -> pd.DataFrame:
    """Mean test accuracy by width and fusion for one set and depth, from the committed sweep
    (``docs/explain/toy.json``); empty where it has no such cells."""
    cells = json.loads(toy.MEASURED.read_text())["cells"] if toy.MEASURED.is_file() else []
    return pd.DataFrame([{"width": c["width"], "fusion": f, "accuracy": c[f"{f}_acc"]} for c in cells
                         if c["dataset"] == dataset and c["depth"] == depth for f in ("star", "sum")],
                        columns=["width", "fusion", "accuracy"])


def cam(image, variants, layer="neck", imgsz=640, conf=0.25, iou=0.45, device="cpu",
        progress=gr.Progress()):  # noqa: B008 (Gradio injects progress through this default)
    """EigenCAM heat maps of each chosen model over one image, with the boxes of the same forward pass: gallery
    items and a summary JSON."""
    models = check_models(variants)
    with user_errors(image):
        if layer not in cams.LAYERS:
            raise InputError(f"unknown layer {layer!r:.20}; choose one of {', '.join(cams.LAYERS)}")
        rgb = load_image(image)
        shots, info = [], []
        for model in models:
            s = check_settings(model, device, conf, iou, imgsz)
            c, _ = on_device(s, "pytorch", lambda det, s=s: cams.eigencam(det, rgb, layer, s.conf, s.iou, s.imgsz),
                             progress=progress)
            shots.append((DetectionAnnotator().annotate(overlay(rgb, c.heat), c.detections),
                          f"{model_name(s.variant)}: {objects(len(c.detections))}"))
            info.append({"variant": s.variant, "objects": len(c.detections), "detections": records(c.detections)})
    return shots, {"layer": layer, "imgsz": s.imgsz, "models": info}
