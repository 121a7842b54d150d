"""YOLOv8-StarNet demo: image, video and webcam detection, side-by-side latency, and the star operation made visible.

``python app.py`` serves it on http://127.0.0.1:7860 (``GRADIO_SERVER_NAME``/``GRADIO_SERVER_PORT`` change that); the
same file is the Space's ``app_file``. This file only wires the UI: models, annotation, video and latency live in the
``starnet_demo`` package. Every tab's main action is a named API endpoint (``/detect_image``, ``/detect_video``,
``/latency``, ``/star_maps``) taking variants as ``s1``…``s4`` and devices as ``cpu``, ``cuda:0``, ….
"""

from __future__ import annotations

import atexit
import base64
import math
import os
import shutil
import tempfile
import time
import uuid
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path

import gradio as gr
import numpy as np
import pandas as pd
import PIL.Image
import supervision as sv

from starnet_demo import devices
from starnet_demo.annotate import DetectionAnnotator, StatsAnnotator, records
from starnet_demo.backbone import MAIN_VARIANTS, VARIANTS, StarNetBackbone, blocks
from starnet_demo.detector import Detector, get_detector
from starnet_demo.images import MAX_PIXELS, ImageError, read_image, to_rgb8
from starnet_demo.latency import measure
from starnet_demo.model import BASELINE, COCO_NAMES
from starnet_demo.runtimes import available_runtimes, unavailable_reason
from starnet_demo.video import MAX_BYTES, MAX_SECONDS, MAX_SIDE, VideoError, detect_video
from starnet_demo.visualize import capture, gallery
from starnet_demo.weights import WeightsError, local_dir, read_config, weight_files

PIL.Image.MAX_IMAGE_PIXELS = MAX_PIXELS  # Pillow refuses (not merely warns about) anything over twice this
MAX_FILE_SIZE = MAX_BYTES  # Gradio rejects larger uploads before they reach a handler
EXAMPLES = Path(__file__).resolve().parent / "examples"
IMAGE_EXAMPLES = sorted(EXAMPLES.glob("*.jpg"), key=lambda p: (p.name not in ("bus.jpg", "zidane.jpg"), p.name))
VIDEO_EXAMPLES = sorted(EXAMPLES.glob("*.mp4"))
OUTPUT_KEEP_S = 300  # annotated videos are copied into Gradio's cache when returned; ours go after this long
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
def variant_choices() -> list[tuple[str, str]]:
    """S1…S4 always (a missing one says so when used), the tiny variants only when their weights exist."""
    have = {v for v in VARIANTS if weight_files(v)[1].is_file()}
    return [(f"StarNet-{v.upper()}" + ("" if v in have else " (no weights yet)"), v)
            for v in VARIANTS if v in MAIN_VARIANTS or v in have]


def device_choices() -> list[tuple[str, str]]:
    return [(devices.label(d), d) for d in devices.available()]


def runtime_choices() -> list[str]:
    """``auto`` (the fastest for the device) and every runtime some device here can run."""
    return ["auto", *dict.fromkeys(r for d in devices.available() for r in available_runtimes(d))]


@contextmanager
def user_errors():
    """Turn the package's bad-input errors into ``gr.Error`` (shown to the user; the server carries on)."""
    try:
        yield
    except gr.Error:
        raise
    except WeightsError as e:
        raise gr.Error(f"Weights for this variant are not available: {e}. They load from {local_dir()}.") from None
    except (ImageError, VideoError, ValueError) as e:
        raise gr.Error(str(e)) from None


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
    """The cached detector. After a fallback to the CPU, a GPU-only runtime becomes ``auto``."""
    if runtime != "auto" and unavailable_reason(runtime, device):
        runtime = "auto"
    return get_detector(variant, device, runtime)


def class_ids(detector: Detector, classes: list[str] | None) -> list[int] | None:
    """Class names (the filter) to the model's class ids; None means every class."""
    if not classes:
        return None
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
        if not value:
            raise gr.Error("The image upload is empty.")
        if value.startswith("data:"):
            value = base64.b64decode(value.partition(",")[2])
    return read_image(value)


def run(device: str, fn):
    """``fn(device)``, retried on the CPU (with a visible notice) when the GPU is out of memory or busy."""
    result, notice = devices.run_on(device, fn)
    if notice:
        gr.Warning(notice)
    return result, notice


# ---------------------------------------------------------------- Image tab
@devices.zero_gpu(duration=30)
def detect_image(image, variant, device, conf, iou, imgsz, classes=None, runtime="pytorch"):
    """Detect objects in one image: annotated image, detections JSON, table, timings line."""
    with user_errors():
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
@lru_cache(maxsize=1)
def output_dir() -> Path:
    """This process's folder for annotated videos, removed at exit."""
    path = Path(tempfile.mkdtemp(prefix="starnet-demo-video-"))
    atexit.register(shutil.rmtree, path, ignore_errors=True)
    return path


def sweep_outputs(older_than_s: float = OUTPUT_KEEP_S) -> None:
    """Delete annotated videos Gradio has long since copied into its own cache."""
    now = time.time()
    for p in output_dir().glob("*.mp4"):
        if now - p.stat().st_mtime > older_than_s:
            p.unlink(missing_ok=True)


@devices.zero_gpu(duration=120)
def detect_video_file(video, variant, device, conf, iou, imgsz, track=False, classes=None, runtime="pytorch",
                      progress=gr.Progress()):  # noqa: B008 (Gradio injects progress through this default)
    """Detect (and optionally track) objects in every frame: H.264 mp4, summary JSON, per-class counts table."""
    if not video:
        raise gr.Error("Please upload a video first.")
    sweep_outputs()
    with user_errors():
        variant, device, conf, iou, imgsz = check_settings(variant, device, conf, iou, imgsz)
        runtime = check_runtime(runtime, device)
        out = output_dir() / f"{uuid.uuid4().hex}.mp4"
        progress(0, desc="Detecting")

        def work(dev):
            det = load_detector(variant, dev, runtime)
            return detect_video(video, det, out, conf=conf, iou=iou, imgsz=imgsz, classes=class_ids(det, classes),
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
    with user_errors():
        variant, device, conf, iou, imgsz = check_settings(variant, device, conf, iou, imgsz)
        runtime = check_runtime(runtime, device)
        rgb = to_rgb8(frame)

        def work(dev):
            det = load_detector(variant, dev, runtime)
            return det.detect(rgb, conf=conf, iou=iou, imgsz=imgsz, classes=class_ids(det, classes))[0]

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
    models = [*(variants or []), *([BASELINE] if baseline else [])]
    if not models:
        raise gr.Error("Select at least one variant.")
    if not isinstance(runs, (int, float)) or not 1 <= runs <= 100:
        raise gr.Error("runs must be from 1 to 100")
    results, shots = [], []
    with user_errors():
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
    with user_errors():
        variant, device, _, _, imgsz = check_settings(variant, device, 0.25, 0.45, imgsz)
        if variant == BASELINE:
            raise ValueError("the YOLOv8n baseline has no star blocks; pick a StarNet variant")
        if str(block) not in block_keys(variant):
            raise ValueError(f"block {block!r} is not in {variant}; choose one of {', '.join(block_keys(variant))}")
        rgb = load_image(image)

        def work(dev):
            det = get_detector(variant, dev, "pytorch")  # the hooks need the PyTorch model
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
            runtime = gr.Dropdown(runtime_choices(), value="pytorch", label="Runtime",
                                  info="auto: OpenVINO on CPU, CUDA graphs on GPU. ONNX/OpenVINO export on first use.")
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
            # preprocess=False: the handler decodes the upload itself, so bad files get a clear message.
            image_btn.click(detect_image, [image_in, *settings, classes, runtime], outputs, api_name="detect_image",
                            preprocess=False)
            gr.Examples([[str(p), "s1", "cpu", 0.25, 0.45, 640] for p in IMAGE_EXAMPLES], [image_in, *settings],
                        outputs, fn=detect_image, cache_examples=True, cache_mode="lazy", visible_columns=[0],
                        label="Examples (S1, CPU, 640 px)")

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
                            [video_out, video_json, video_table], api_name="detect_video", concurrency_limit=1)
            gr.Examples([[str(p)] for p in VIDEO_EXAMPLES], [video_in])

        with gr.Tab("Webcam"):
            gr.Markdown("Live detection on your camera at 640×480. Frames that arrive while one is being detected "
                        "are dropped, so the picture stays current; the overlay gives the FPS and latency.")
            with gr.Row():
                cam = gr.Image(sources=["webcam"], streaming=True, type="numpy", label="Camera",
                               webcam_options=gr.WebcamOptions(mirror=False, constraints={
                                   "video": {"width": {"ideal": 640}, "height": {"ideal": 480}}}))
                cam_out = gr.Image(label="Detections", format="jpeg", elem_id="webcam-out")
            cam_state = gr.State(None)
            cam.stream(webcam_frame, [cam, cam_state, *settings, classes, runtime], [cam_out, cam_state],
                       api_name="webcam", stream_every=0.05, time_limit=120, concurrency_limit=2)

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
            lat_btn.click(latency, [lat_image, lat_variants, device, imgsz, lat_runs, lat_baseline, conf, iou, runtime],
                          [lat_table, lat_plot, lat_gallery, lat_json], api_name="latency", preprocess=False,
                          concurrency_limit=1)

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
            star_btn.click(star_maps, [star_image, variant, block, imgsz, top_k, device], [star_gallery, star_json],
                           api_name="star_maps", preprocess=False)
            variant.change(lambda v: gr.Dropdown(block_keys(v), value=default_block(v)) if v in VARIANTS
                           else gr.skip(), variant, block, api_visibility="private")
    return demo


def launch(demo: gr.Blocks, **kwargs):
    """Queue and serve ``demo`` with the app's limits; ``kwargs`` go to ``launch`` (tests pick host and port)."""
    demo.queue(default_concurrency_limit=2, max_size=64)
    return demo.launch(theme=gr.themes.Soft(), max_file_size=MAX_FILE_SIZE, **kwargs)


if __name__ == "__main__":
    launch(build_app())
