"""The app's tabs, one builder each: components laid out and wired to ``ui.handlers``, nothing else.

``app.build_app`` lays out the shared controls and calls these in order. Every main action is a named API endpoint,
with ``preprocess=False``: handlers decode uploads and check every value themselves, so bad files and bad API values
get a clear message instead of Gradio's bare "Error". The detection events share one pool of workers
(``concurrency_id="detect"``, sized by ``app.WORKERS``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import gradio as gr

from ..explain.cam import LAYERS
from ..explain.swap import scope_choices
from ..explain.toy import DATASETS, MAX_DEPTH
from ..media.video import MAX_BYTES, MAX_SECONDS, MAX_SIDE
from ..models.yolo import BASELINE
from . import handlers, webcam
from .choices import block_choices, default_block, variant_choices
from .files import file_outputs

WEBCAM_W, WEBCAM_H = 640, 480  # what the Webcam tab asks the camera for

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


@dataclass(frozen=True)
class Controls:
    """The row of controls every tab reads: ``settings`` is ``[variant, device, conf, iou, imgsz]``."""

    variant: gr.Dropdown
    device: gr.Dropdown
    runtime: gr.Dropdown
    classes: gr.Dropdown
    conf: gr.Slider
    iou: gr.Slider
    imgsz: gr.Slider

    @property
    def settings(self) -> list[gr.components.Component]:
        return [self.variant, self.device, self.conf, self.iou, self.imgsz]


def image_tab(c: Controls, examples: list[Path]) -> None:
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
        image_btn.click(file_outputs(handlers.detect_image), [image_in, *c.settings, c.classes, c.runtime], outputs,
                        api_name="detect_image", preprocess=False, concurrency_id="detect")
        gr.Examples([[str(p), "s1", "cpu", 0.25, 0.45, 640] for p in examples], [image_in, *c.settings],
                    outputs, fn=file_outputs(handlers.detect_image), cache_examples=True, cache_mode="lazy",
                    visible_columns=[0], label="Examples (S1, CPU, 640 px)")


def video_tab(c: Controls, examples: list[Path]) -> None:
    with gr.Tab("Video"):
        gr.Markdown(f"Up to {MAX_SECONDS:.0f} s, {MAX_BYTES // 2**20} MB and {MAX_SIDE} px on the long side "
                    "(1080p). The result is an H.264 mp4 without sound, turned upright if the video says it was "
                    "filmed rotated (a phone held upright), each frame at its own time (a variable frame rate is "
                    "kept). Stop cancels the work at once.")
        with gr.Row():
            video_in = gr.Video(label="Video", sources=["upload"], elem_id="video-in")
            video_out = gr.Video(label="Detections", buttons=["download"])
        track = gr.Checkbox(label="Track objects (ByteTrack) and draw their paths")
        with gr.Row():
            video_btn = gr.Button("Detect", variant="primary", elem_id="video-run")
            stop_btn = gr.Button("Stop", variant="stop", elem_id="video-stop")
        video_table = gr.Dataframe(headers=["class", "max_in_frame", "frames", "tracks"],
                                   label="Per class: most in one frame, frames seen, distinct tracks")
        with gr.Accordion("JSON (as the API returns it)", open=False):
            video_json = gr.JSON()
        video_files = gr.File(label="Every frame's detections as JSON and CSV (column frame)", file_count="multiple")
        run = video_btn.click(handlers.detect_video_file, [video_in, *c.settings, track, c.classes, c.runtime],
                              [video_out, video_json, video_table, video_files], api_name="detect_video",
                              concurrency_id="detect", preprocess=False)
        stop_btn.click(None, cancels=[run], api_visibility="private")
        gr.Examples([[str(p)] for p in examples], [video_in])


def webcam_tab(c: Controls, time_limit_s: float, streams: int) -> None:
    with gr.Tab("Webcam"):
        gr.Markdown("Live detection on your camera at 640×480 (with more than one camera, pick one with the "
                    "button beside Record). Frames that arrive while one is being detected are dropped, so the "
                    "picture stays current; the line below gives the camera's rate, the rate shown and the lag.")
        with gr.Row():
            cam = gr.Image(sources=["webcam"], streaming=True, type="numpy", label="Camera", elem_id=webcam.CAMERA_ID,
                           webcam_options=gr.WebcamOptions(mirror=False, constraints={
                               "video": {"width": {"ideal": WEBCAM_W}, "height": {"ideal": WEBCAM_H}}}))
            with gr.Column():
                cam_out = gr.Image(label="Detections", elem_id=webcam.OUTPUT_ID)
                webcam.rates_line()
        cam_state = gr.State(None)
        cam.stream(handlers.webcam_frame, [cam, cam_state, *c.settings, c.classes, c.runtime], [cam_out, cam_state],
                   api_name="webcam", stream_every=1 / 30, time_limit=time_limit_s, concurrency_limit=streams,
                   preprocess=False, postprocess=False,  # frames in and out as data URLs (ui.webcam)
                   show_progress="hidden")  # no running clock over the live picture


def latency_tab(c: Controls, example: str | None) -> None:
    with gr.Tab("Latency"):
        gr.Markdown("Each model runs the same image on the chosen device: warm-up, then median and p90 per stage "
                    "(CUDA synchronised). The YOLOv8n reference is the COCO-trained model that taught the "
                    "StarNets. Accuracy is each model's recorded held-out mAP50 (128 COCO images); the plot puts "
                    "it against the latency just measured here. Other users share this machine.")
        with gr.Row():
            lat_image = gr.Image(example, type="filepath", image_mode=None, label="Image", height=360)
            with gr.Column():
                lat_variants = gr.CheckboxGroup(variant_choices(reference=False), value=["s1", "s4"],
                                                label="StarNet variants")
                lat_baseline = gr.Checkbox(True, label="Include the YOLOv8n reference")
                lat_runs = gr.Slider(1, 50, value=10, step=1, label="Timed runs per model")
                lat_btn = gr.Button("Measure", variant="primary")
        lat_table = gr.Dataframe(label="Latency and accuracy")
        with gr.Row():
            lat_plot = gr.BarPlot(x="model", y="ms", color="stage", title="Median ms per stage", y_title="ms")
            lat_tradeoff = gr.Plot(label="Held-out mAP50 against median total ms, on this device", format="png")
        lat_gallery = gr.Gallery(label="Same image, each model", columns=3)
        with gr.Accordion("JSON (as the API returns it)", open=False):
            lat_json = gr.JSON()
        lat_btn.click(file_outputs(handlers.latency),
                      [lat_image, lat_variants, c.device, c.imgsz, lat_runs, lat_baseline, c.conf, c.iou, c.runtime],
                      [lat_table, lat_plot, lat_tradeoff, lat_gallery, lat_json], api_name="latency",
                      preprocess=False, concurrency_id="detect")


def star_tab(c: Controls, example: str | None) -> gr.Dropdown:
    """The Star operation tab; returns its block picker, which follows the chosen variant."""
    with gr.Tab("Star operation"):
        gr.Markdown(STAR_TEXT)
        with gr.Row():
            star_image = gr.Image(example, type="filepath", image_mode=None, label="Image", height=360)
            with gr.Column():
                block = gr.Dropdown(block_choices("s1"), value=default_block("s1"), label="Block (stage.index)")
                top_k = gr.Slider(1, 8, value=3, step=1, label="Top channels per tensor")
                star_btn = gr.Button("Show", variant="primary")
        star_gallery = gr.Gallery(label="Star maps", columns=4, height="auto")
        with gr.Accordion("Channel energies (JSON)", open=False):
            star_json = gr.JSON()
        star_btn.click(file_outputs(handlers.star_maps), [star_image, c.variant, block, c.imgsz, top_k, c.device],
                       [star_gallery, star_json], api_name="star_maps", preprocess=False, concurrency_id="detect")
    return block


def why_stars_tab(c: Controls, example: str | None) -> tuple[gr.Dropdown, gr.Dropdown]:
    """Star or sum, the 2D toy and EigenCAM; returns the star-or-sum block and scope pickers, which follow the
    chosen variant."""
    with gr.Tab("Why stars"):
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
                         [sw_image, c.variant, sw_scope, sw_block, c.imgsz, c.conf, c.iou, c.device],
                         [sw_gallery, sw_json], api_name="star_vs_sum", preprocess=False, concurrency_id="detect")
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
            cam_btn.click(file_outputs(handlers.cam), [cam_image, cam_models, cam_layer, c.imgsz, c.conf, c.iou,
                                                       c.device],
                          [cam_gallery, cam_json], api_name="cam", preprocess=False, concurrency_id="detect")
    return sw_block, sw_scope
