"""YOLOv8-StarNet demo: image, video and webcam detection, side-by-side latency, and the star operation made visible.

``python app.py`` serves it on http://127.0.0.1:7860 (``GRADIO_SERVER_NAME``/``GRADIO_SERVER_PORT`` change that); the
same file is the Space's ``app_file``. It only lays out the UI and wires components to the package's functions
(``starnet_demo.ui``). Every tab's main action is a named API endpoint (``/detect_image``, ``/detect_video``,
``/latency``, ``/star_maps``, ``/star_vs_sum``, ``/star_toy``, ``/cam``) taking models as ``s1``…``s4`` or
``yolov8n`` and devices as ``cpu``, ``cuda:0``, ….
"""

from __future__ import annotations

import atexit
import logging
import os
import signal
import threading
from pathlib import Path

import gradio as gr
import PIL.Image
import torch

from starnet_demo.explain.swap import scope_choices
from starnet_demo.inference import devices, exports
from starnet_demo.inference.detector import get_detector
from starnet_demo.inference.settings import SERVED_SIZES, SIZE_STEP
from starnet_demo.media.images import MAX_PIXELS
from starnet_demo.media.video import MAX_BYTES
from starnet_demo.models.backbone import VARIANTS
from starnet_demo.models.yolo import COCO_NAMES
from starnet_demo.ui import files, tabs
from starnet_demo.ui.choices import (
    auto_info,
    block_choices,
    default_block,
    device_choices,
    runtime_choices,
    variant_choices,
)
from starnet_demo.ui.errors import route_failed
from starnet_demo.ui.files import (
    GRADIO_CACHE,
    gradio_cache_dir,
    keep_gradio_sweeping,
    output_dir,
    use_examples_cache_of_these_weights,
)
from starnet_demo.ui.tabs import WEBCAM_H, WEBCAM_W

PIL.Image.MAX_IMAGE_PIXELS = MAX_PIXELS  # Pillow refuses (not merely warns about) anything over twice this
MAX_FILE_SIZE = MAX_BYTES  # Gradio rejects larger uploads before they reach a handler
EXAMPLES = Path(__file__).resolve().parent / "examples"
IMAGE_EXAMPLES = sorted(EXAMPLES.glob("*.jpg"), key=lambda p: (p.name not in ("bus.jpg", "zidane.jpg"), p.name))
VIDEO_EXAMPLES = sorted(EXAMPLES.glob("*.mp4"))
# Queue settings, from `python -m starnet_demo loadtest` (the runs and the reasons: docs/operations.md, "Queue
# settings"): one pool of WORKERS for the detection events, WEBCAM_STREAMS live streams of at most STREAM_LIMIT_S,
# QUEUE_MAX requests waiting, SESSIONS browser sessions kept.
WORKERS, WEBCAM_STREAMS, STREAM_LIMIT_S, QUEUE_MAX, SESSIONS = 2, 1, 60, 48, 1000
log = logging.getLogger("app")


def build_app() -> gr.Blocks:
    """The shared row of controls, then one builder per tab (``starnet_demo.ui.tabs``)."""
    use_examples_cache_of_these_weights()
    output_dir()  # made now, which sweeps the results of processes that died without cleaning up
    gradio_cache_dir()  # likewise Gradio's uploads; before the Blocks, which read GRADIO_TEMP_DIR
    keep_gradio_sweeping()  # delete_cache's sweep, which a race between requests would end for good
    example = str(IMAGE_EXAMPLES[0]) if IMAGE_EXAMPLES else None
    with gr.Blocks(title="YOLOv8-StarNet", delete_cache=GRADIO_CACHE) as demo:
        gr.Markdown("# YOLOv8-StarNet\nYOLOv8n's neck and head on a StarNet backbone ([Rewrite the Stars]"
                    "(https://arxiv.org/abs/2403.19967), CVPR 2024). Pick a model and a device, then a tab.")
        with gr.Row():
            variant = gr.Dropdown(variant_choices(), value="s1", label="Model")
            device = gr.Dropdown(device_choices(), value="cpu", label="Device",
                                 info=devices.why_no_gpu() or "GPU out of memory or busy: runs on the CPU instead.")
            runtime = gr.Dropdown(runtime_choices(), value="auto", label="Runtime", info=auto_info())
            classes = gr.Dropdown(sorted(COCO_NAMES.values()), value=[], multiselect=True, label="Only these classes")
        with gr.Row():
            conf = gr.Slider(0.01, 1.0, value=0.25, step=0.01, label="Confidence")
            iou = gr.Slider(0.05, 1.0, value=0.45, step=0.01, label="IoU (NMS)")
            imgsz = gr.Slider(SERVED_SIZES[0], SERVED_SIZES[-1], value=640, step=SIZE_STEP, label="Image size")
        controls = tabs.Controls(variant, device, runtime, classes, conf, iou, imgsz)
        tabs.image_tab(controls, IMAGE_EXAMPLES)
        tabs.video_tab(controls, VIDEO_EXAMPLES)
        tabs.webcam_tab(controls, STREAM_LIMIT_S, WEBCAM_STREAMS)
        tabs.latency_tab(controls, example)
        block = tabs.star_tab(controls, example)
        sw_block, sw_scope = tabs.why_stars_tab(controls, example)

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
    # route_failed: a full disk during an upload is named (HTTP 507), not a bare 500, and leaves no partial file.
    return demo.launch(theme=gr.themes.Soft(), max_file_size=MAX_FILE_SIZE, show_error=True,
                       state_session_capacity=SESSIONS, app_kwargs={"exception_handlers": {OSError: route_failed}},
                       **kwargs)


def warm_up(variant: str = "s1") -> threading.Thread:
    """Repair the export cache, then export and load the default settings' detector in the background, for images
    and for the webcam's rect frames, so the first visitor does not wait for either export."""
    def load():
        exports.repair()  # what a crash or a full disk left in the export cache is exported afresh, not failed on
        try:
            get_detector(variant, "cpu", "auto").prepare(image_hw=(WEBCAM_H, WEBCAM_W))
        except Exception as e:  # no weights, no runtime: the first request says why, as a gr.Error
            log.warning("warm-up of %s skipped: %s", variant, e)

    thread = threading.Thread(target=load, name="warm-up", daemon=True)
    thread.start()
    return thread


if __name__ == "__main__":
    # The server's log: loads, exports, pool evictions and sweeps at INFO; our faults with their tracebacks.
    logging.basicConfig(level=os.environ.get("STARNET_LOG_LEVEL", "INFO"),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # a line per HTTP call Gradio and the Hub client make
    # One intra-op thread per worker: WORKERS requests and a webcam stream keep the cores busy already, and two-thread
    # ops stall whenever something else holds the other core. Measured as above: 1.65 -> 3.25 requests/s, p95 4.6 ->
    # 1.6 s, webcam 4.3 -> 10 FPS, and RSS flat after warm-up (+2.7% -> -0.4%). Set here, not on import (tests).
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // WORKERS))
    app = build_app()
    # A stop (SIGTERM, as a Space restart sends) closes the app, so that Gradio deletes the files it cached for
    # requests and the interpreter exits normally (atexit deletes our results folder) instead of being killed.
    signal.signal(signal.SIGTERM, lambda *_: app.close())
    warming = warm_up()
    launch(app)
    # Gradio deletes the copies it records when its server shuts down; those it does not record (a generator's
    # results) go here, once the server has stopped.
    files.sweep_outputs(older_than_s=0)
    warming.join(timeout=5)
    if warming.is_alive():
        # A warm-up still inside an export or an OpenVINO compile aborts the interpreter's teardown ("terminate
        # called without an active exception": its native threads outlive Python's). Run the exit handlers (our
        # results folder, logging), then leave without that teardown.
        log.info("stopping during the warm-up; exiting without waiting for it")
        atexit._run_exitfuncs()
        os._exit(0)
