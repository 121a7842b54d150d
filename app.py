"""YOLOv8-StarNet demo: image, video and webcam detection, side-by-side latency, and the star operation made visible.

``python app.py`` serves it on http://127.0.0.1:7860 (``GRADIO_SERVER_NAME``/``GRADIO_SERVER_PORT`` change that); the
same file is the Space's ``app_file``. It only lays out the UI and wires components to the package's functions
(``starnet_demo.ui``). Every tab's main action is a named API endpoint (``/detect_image``, ``/detect_video``,
``/latency``, ``/star_maps``, ``/star_vs_sum``, ``/star_toy``, ``/cam``) taking models as ``s1``…``s4`` or
``yolov8n`` and devices as ``cpu``, ``cuda:0``, ….
"""

from __future__ import annotations

import logging
import os
import signal
import threading
from pathlib import Path

import gradio as gr
import PIL.Image
import torch

from starnet_demo.explain.cam import LAYERS
from starnet_demo.explain.swap import scope_choices
from starnet_demo.explain.toy import DATASETS, MAX_DEPTH
from starnet_demo.inference import devices
from starnet_demo.inference.detector import get_detector
from starnet_demo.media.images import MAX_PIXELS
from starnet_demo.media.video import MAX_BYTES, MAX_SECONDS, MAX_SIDE
from starnet_demo.models.backbone import VARIANTS
from starnet_demo.models.yolo import BASELINE, COCO_NAMES
from starnet_demo.ui import handlers
from starnet_demo.ui.choices import (
    auto_info,
    block_choices,
    default_block,
    device_choices,
    runtime_choices,
    variant_choices,
)
from starnet_demo.ui.files import file_outputs, use_examples_cache_of_these_weights
from starnet_demo.ui.handlers import detect_image, detect_video_file, latency, star_maps, webcam_frame

PIL.Image.MAX_IMAGE_PIXELS = MAX_PIXELS  # Pillow refuses (not merely warns about) anything over twice this
MAX_FILE_SIZE = MAX_BYTES  # Gradio rejects larger uploads before they reach a handler
EXAMPLES = Path(__file__).resolve().parent / "examples"
IMAGE_EXAMPLES = sorted(EXAMPLES.glob("*.jpg"), key=lambda p: (p.name not in ("bus.jpg", "zidane.jpg"), p.name))
VIDEO_EXAMPLES = sorted(EXAMPLES.glob("*.mp4"))
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
STAR_TEXT = """
**Why a product of two branches reaches a high-dimensional space.** Each StarNet block computes
`act(f1(x)) * f2(x)`: two 1×1 convolutions of the same features, multiplied element by element. Written out, every
output channel is a sum of products `w1_i x_i · w2_j x_j` over all pairs of input channels, the terms of a
polynomial kernel of degree 2. A block with *d* input channels thus works implicitly in a space of about *d²/2*
dimensions while only computing *d*-wide maps, and stacking *l* blocks raises this to about *d^(2^l)*: the same trick
as the kernel trick, done in the forward pass (Ma et al., *Rewrite the Stars*, CVPR 2024). Below: the two branches
and their product for one block, the channels with the most energy (mean square) and the mean over all channels.
"""

SWAP_TEXT = """
**The star, taken out of the trained detector.** The same weights, with `act(f1(x)) * f2(x)` replaced by
`act(f1(x)) + f2(x)` in the chosen blocks at inference (no retraining): how much of what the network computes runs
through the product. Below: the boxes both ways, and the chosen block's input to `g` both ways.
"""
TOY_TEXT = """
**The paper's claim, in seconds.** Two small nets, identical but for fusing their two branches by a product or a
sum, trained on the same 2D points from the same seed; at equal width the product reaches the richer boundary.
"""
CAM_TEXT = """
**Where each model looks.** EigenCAM (gradient-free): each model's first principal component of the maps its head
reads (`neck`) or of its deepest backbone map (`sppf`), over the same image, with the boxes of the same pass.
"""


def build_app() -> gr.Blocks:
    use_examples_cache_of_these_weights()
    with gr.Blocks(title="YOLOv8-StarNet", delete_cache=(600, 1800)) as demo:
        gr.Markdown("# YOLOv8-StarNet\nYOLOv8n's neck and head on a StarNet backbone ([Rewrite the Stars]"
                    "(https://arxiv.org/abs/2403.19967), CVPR 2024). Pick a model and a device, then a tab.")
        with gr.Row():
            variant = gr.Dropdown(variant_choices(), value="s1", label="Model")
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
            image_files = gr.File(label="Detections as JSON and CSV", file_count="multiple", elem_id="image-files")
            outputs = [image_out, image_json, image_table, image_line, image_files]
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
            video_files = gr.File(label="Every frame's detections as JSON and CSV (column frame)",
                                  file_count="multiple")
            video_btn.click(detect_video_file, [video_in, *settings, track, classes, runtime],
                            [video_out, video_json, video_table, video_files], api_name="detect_video",
                            concurrency_id="detect", preprocess=False)
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
                       api_name="webcam", stream_every=1 / 30, time_limit=STREAM_LIMIT_S,
                       concurrency_limit=WEBCAM_STREAMS, preprocess=False)

        with gr.Tab("Latency"):
            gr.Markdown("Each model runs the same image on the chosen device: warm-up, then median and p90 per stage "
                        "(CUDA synchronised). The YOLOv8n reference is the COCO-trained model that taught the "
                        "StarNets. Accuracy is each model's recorded held-out mAP50 (128 COCO images); the plot puts "
                        "it against the latency just measured here. Other users share this machine.")
            with gr.Row():
                lat_image = gr.Image(str(IMAGE_EXAMPLES[0]) if IMAGE_EXAMPLES else None, type="filepath",
                                     image_mode=None, label="Image", height=360)
                with gr.Column():
                    lat_variants = gr.CheckboxGroup(variant_choices(reference=False), value=["s1", "s4"],
                                                    label="StarNet variants")
                    lat_baseline = gr.Checkbox(True, label="Include the YOLOv8n reference")
                    lat_runs = gr.Slider(1, 50, value=10, step=1, label="Timed runs per model")
                    lat_btn = gr.Button("Measure", variant="primary")
            lat_table = gr.Dataframe(label="Latency and accuracy")
            with gr.Row():
                lat_plot = gr.BarPlot(x="model", y="ms", color="stage", title="Median ms per stage", y_title="ms")
                lat_tradeoff = gr.ScatterPlot(x="ms", y="mAP50", color="model", title="Held-out mAP50 against "
                                              "median total ms, on this device", x_title="ms", y_title="mAP50")
            lat_gallery = gr.Gallery(label="Same image, each model", columns=3)
            with gr.Accordion("JSON (as the API returns it)", open=False):
                lat_json = gr.JSON()
            lat_btn.click(file_outputs(latency),
                          [lat_image, lat_variants, device, imgsz, lat_runs, lat_baseline, conf, iou, runtime],
                          [lat_table, lat_plot, lat_tradeoff, lat_gallery, lat_json], api_name="latency",
                          preprocess=False, concurrency_id="detect")

        with gr.Tab("Star operation"):
            gr.Markdown(STAR_TEXT)
            with gr.Row():
                star_image = gr.Image(str(IMAGE_EXAMPLES[0]) if IMAGE_EXAMPLES else None, type="filepath",
                                      image_mode=None, label="Image", height=360)
                with gr.Column():
                    block = gr.Dropdown(block_choices("s1"), value=default_block("s1"), label="Block (stage.index)")
                    top_k = gr.Slider(1, 8, value=3, step=1, label="Top channels per tensor")
                    star_btn = gr.Button("Show", variant="primary")
            star_gallery = gr.Gallery(label="Star maps", columns=4, height="auto")
            with gr.Accordion("Channel energies (JSON)", open=False):
                star_json = gr.JSON()
            star_btn.click(file_outputs(star_maps), [star_image, variant, block, imgsz, top_k, device],
                           [star_gallery, star_json], api_name="star_maps", preprocess=False, concurrency_id="detect")

        with gr.Tab("Why stars"):
            example = str(IMAGE_EXAMPLES[0]) if IMAGE_EXAMPLES else None
            with gr.Tab("Star or sum"):
                gr.Markdown(SWAP_TEXT)
                with gr.Row():
                    sw_image = gr.Image(example, type="filepath", image_mode=None, label="Image", height=360)
                    with gr.Column():
                        sw_scope = gr.Dropdown(scope_choices("s1"), value=["stage 2"], multiselect=True,
                                               label="Sum instead of star in")
                        sw_block = gr.Dropdown(block_choices("s1"), value=default_block("s1"), label="Maps of block")
                        sw_btn = gr.Button("Compare", variant="primary", elem_id="star-vs-sum-run")
                sw_gallery = gr.Gallery(label="Star (as trained) and sum: boxes, then the block's maps", columns=4,
                                        height="auto", elem_id="star-vs-sum-gallery")
                gr.Dataframe(handlers.star_vs_sum_measured(), interactive=False, label="Measured: StarNet-S1, "
                             "held-out mAP (coco-mini val, 128 images, 640 px) with the sum swapped in (± s.e.)")
                with gr.Accordion("JSON", open=False):
                    sw_json = gr.JSON()
                sw_btn.click(file_outputs(handlers.star_vs_sum),
                             [sw_image, variant, sw_scope, sw_block, imgsz, conf, iou, device], [sw_gallery, sw_json],
                             api_name="star_vs_sum", preprocess=False, concurrency_id="detect")
            with gr.Tab("Toy: star or sum in 2D"):
                gr.Markdown(TOY_TEXT)
                with gr.Row():
                    toy_set = gr.Dropdown(list(DATASETS), value="spirals", label="Dataset")
                    toy_width = gr.Slider(1, handlers.TOY_MAX_WIDTH, value=8, step=1, label="Width (both nets)")
                    toy_depth = gr.Slider(1, MAX_DEPTH, value=2, step=1, label="Depth (blocks)")
                    toy_seed = gr.Number(0, precision=0, minimum=0, label="Seed")
                toy_btn = gr.Button("Train both", variant="primary", elem_id="toy-run")
                toy_line = gr.Markdown(elem_id="toy-line")
                with gr.Row():
                    toy_figure = gr.Image(label="Decision boundaries: star (left), sum (right)", elem_id="toy-out")
                    toy_plot = gr.LinePlot(handlers.toy_sweep("spirals", 2), x="width", y="accuracy", color="fusion",
                                           title="Committed sweep: mean held-out accuracy over seeds")
                with gr.Accordion("JSON", open=False):
                    toy_json = gr.JSON()
                toy_btn.click(file_outputs(handlers.star_toy), [toy_set, toy_width, toy_depth, toy_seed],
                              [toy_figure, toy_line, toy_plot, toy_json], api_name="star_toy", preprocess=False,
                              concurrency_id="detect")
            with gr.Tab("Where each model looks"):
                gr.Markdown(CAM_TEXT)
                with gr.Row():
                    cam_image = gr.Image(example, type="filepath", image_mode=None, label="Image", height=360)
                    with gr.Column():
                        cam_models = gr.CheckboxGroup(variant_choices(), value=["s1", BASELINE], label="Models")
                        cam_layer = gr.Radio(list(LAYERS), value="neck", label="Layer")
                        cam_btn = gr.Button("Show", variant="primary", elem_id="cam-run")
                cam_gallery = gr.Gallery(label="EigenCAM and boxes", columns=3, height="auto", elem_id="cam-gallery")
                with gr.Accordion("JSON", open=False):
                    cam_json = gr.JSON()
                cam_btn.click(file_outputs(handlers.cam), [cam_image, cam_models, cam_layer, imgsz, conf, iou, device],
                              [cam_gallery, cam_json], api_name="cam", preprocess=False, concurrency_id="detect")

        def blocks_of(v: str):
            if v not in VARIANTS:
                return gr.skip(), gr.skip(), gr.skip()
            return (gr.Dropdown(block_choices(v), value=default_block(v)),
                    gr.Dropdown(block_choices(v), value=default_block(v)), gr.Dropdown(scope_choices(v)))

        variant.change(blocks_of, variant, [block, sw_block, sw_scope], api_visibility="private")
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
