"""The app's handlers, called directly as Gradio would call them: every tab, good input and bad input.

Weights are random-init with a "person" bias (``app_support.boxy_weights``) so that boxes appear; image size 320
keeps each call well under a second on two cores.
"""

from __future__ import annotations

import base64
import math

import av
import cv2
import gradio as gr
import numpy as np
import pytest
import torch
from app_support import BUS, CLIP_FRAMES, EXAMPLES, boxy_weights, load_app, png_header_only, write_video
from gradio_client import utils as client_utils
from matplotlib.backends.backend_agg import FigureCanvasAgg
from PIL import Image

from starnet_demo.inference import devices
from starnet_demo.inference.detector import clear_detectors
from starnet_demo.inference.runtimes import EXPORT_FORMATS, resolve_runtime
from starnet_demo.inference.spec import resolve_spec
from starnet_demo.ui import choices, files, handlers
from starnet_demo.viz.plots import tradeoff_figure
from starnet_demo.weights.files import record_metrics

SETTINGS = ("s1", "cpu", 0.25, 0.45, 320)


class Heard:
    """What a handler tells ``gr.Progress``, called as Gradio's tracker is: ``progress(fraction, desc=...)``."""

    def __init__(self):
        self.updates: list[tuple[float, str | None]] = []

    def __call__(self, fraction, desc=None, **_):
        self.updates.append((fraction, desc))

    def exports(self) -> list[str]:
        return [d for _, d in self.updates if d and d.startswith("exporting")]


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    return boxy_weights(tmp_path_factory.mktemp("app-weights"))


@pytest.fixture(scope="module")
def app(weights, tmp_path_factory):
    """``app.py`` serving from the test weights; detectors stay cached across this module's tests, as in the app."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("STARNET_WEIGHTS_DIR", str(weights))
        mp.setenv("GRADIO_EXAMPLES_CACHE", str(tmp_path_factory.mktemp("examples-cache")))
        clear_detectors()
        yield load_app()
        clear_detectors()


# ---------------------------------------------------------------- Image tab
def test_detect_image_draws_boxes_and_returns_json(app):
    annotated, result, table, line, _ = handlers.detect_image(str(BUS), *SETTINGS)
    original = np.asarray(Image.open(BUS).convert("RGB"))
    assert annotated.shape == original.shape and annotated.dtype == np.uint8
    assert not np.array_equal(annotated, original)  # boxes were drawn
    dets = result["detections"]
    assert dets and set(dets[0]) == {"class", "class_id", "confidence", "box"}
    assert all(d["class"] == "person" and 0 < d["confidence"] <= 1 and len(d["box"]) == 4 for d in dets)
    assert all(0 <= d["box"][0] < d["box"][2] <= original.shape[1] for d in dets)
    assert list(table.columns) == ["class", "confidence", "x1", "y1", "x2", "y2"] and len(table) == len(dets)
    assert set(result["timings_ms"]) == {"preprocess", "inference", "postprocess"}
    assert handlers.objects(len(dets)) in line and result["notice"] is None


def test_counts_read_as_english():
    assert [handlers.objects(n) for n in (0, 1, 2)] == ["0 objects", "1 object", "2 objects"]


def test_detect_image_takes_what_gradio_sends(app):
    """With ``preprocess=False`` the handler gets the file payload dict; examples give a path; arrays work too."""
    from_payload = handlers.detect_image({"path": str(BUS), "meta": {"_type": "gradio.FileData"}}, *SETTINGS)[1]
    from_array = handlers.detect_image(np.asarray(Image.open(BUS).convert("RGB")), *SETTINGS)[1]
    assert from_payload["detections"] == from_array["detections"]


def test_class_filter(app):
    assert handlers.detect_image(str(BUS), *SETTINGS, classes=["person"])[1]["detections"]
    assert handlers.detect_image(str(BUS), *SETTINGS, classes=["bus"])[1]["detections"] == []
    with pytest.raises(gr.Error, match="unknown class"):
        handlers.detect_image(str(BUS), *SETTINGS, classes=["unicorn"])


@pytest.mark.parametrize("mode", ["L", "RGBA", "P", "I;16", "CMYK"])
def test_unusual_image_modes_are_converted(app, tmp_path, mode):
    im = Image.open(BUS).convert("RGB").resize((200, 150))
    im = Image.fromarray(np.asarray(im.convert("L"), dtype=np.uint16) * 257) if mode == "I;16" else im.convert(mode)
    path = tmp_path / f"img-{mode.replace(';', '')}.{'jpg' if mode == 'CMYK' else 'png'}"
    im.save(path)
    annotated, result, *_ = handlers.detect_image(str(path), *SETTINGS)
    assert annotated.shape == (150, 200, 3) and result["detections"]


def _bad_images(tmp_path):
    truncated = tmp_path / "truncated.jpg"
    truncated.write_bytes(BUS.read_bytes()[:4000])
    (tmp_path / "empty.jpg").write_bytes(b"")
    (tmp_path / "text.jpg").write_text("this is not a picture\n")
    (tmp_path / "noise.png").write_bytes(np.random.default_rng(0).bytes(5000))
    return {
        "empty.jpg": "empty",
        "text.jpg": "not an image",
        "noise.png": "not an image",
        "truncated.jpg": "could not be decoded",
        png_header_only(tmp_path / "huge.png", 20000, 20000).name: "megapixels",
    }


def test_bad_images_give_clear_errors(app, tmp_path):
    for name, message in _bad_images(tmp_path).items():
        with pytest.raises(gr.Error, match=message):
            handlers.detect_image(str(tmp_path / name), *SETTINGS)
    with pytest.raises(gr.Error, match="upload an image"):
        handlers.detect_image(None, *SETTINGS)


@pytest.mark.parametrize(("settings", "message"), [
    (("s9", "cpu", 0.25, 0.45, 320), "unknown variant"),
    (("s1", "cuda:7", 0.25, 0.45, 320), "not available"),
    (("s1", "cpu", math.nan, 0.45, 320), "confidence"),
    (("s1", "cpu", 0.25, 7, 320), "IoU"),
    (("s1", "cpu", 0.25, 0.45, 99999), "image size"),
    (("s2", "cpu", 0.25, 0.45, 320), "weights are not available on this server"),
])
def test_bad_settings_give_clear_errors(app, settings, message):
    with pytest.raises(gr.Error, match=message):
        handlers.detect_image(str(BUS), *settings)


def test_runtime_the_device_cannot_run_is_refused(app):
    assert choices.runtime_choices()[:2] == ["auto", "pytorch"]
    with pytest.raises(gr.Error, match="cannot run on cpu"):
        handlers.detect_image(str(BUS), *SETTINGS, runtime="cudagraph")


@pytest.mark.slow  # two OpenVINO/ONNX exports
def test_warm_up_exports_and_loads_the_default_detector(app, caplog, monkeypatch, tmp_path):
    monkeypatch.setenv("STARNET_EXPORT_DIR", str(tmp_path))
    clear_detectors()
    app.warm_up("s1").join(timeout=600)
    auto = resolve_runtime("auto", "cpu")
    exported = {p.name.split("-")[2] for p in tmp_path.glob(f"s1-{EXPORT_FORMATS[auto]}-*") if p.is_dir()}
    assert exported == {"640", "480x640"}  # the default square and the webcam's 640x480 frames
    assert "warm-up" not in caplog.text
    app.warm_up("s2").join(timeout=600)  # no s2 weights here: a warning, not a crash
    assert "warm-up of s2 skipped: no weights for s2" in caplog.text
    clear_detectors()  # the others use the default export folder


@pytest.mark.slow  # two OpenVINO/ONNX exports
def test_a_models_first_use_shows_its_export_and_a_second_use_nothing(app, monkeypatch, tmp_path):
    """With an empty export cache, the image handler reports S1's export step by step, at the request's size only
    (not the default 640 first); the same request again reports nothing, and the latency comparison then reports
    the export of the one model new to it, YOLOv8n."""
    monkeypatch.setenv("STARNET_EXPORT_DIR", str(tmp_path))
    clear_detectors()
    fmt = EXPORT_FORMATS[resolve_runtime("auto", "cpu")]
    try:
        first, again, compared = Heard(), Heard(), Heard()
        handlers.detect_image(str(BUS), "s1", "cpu", 0.25, 0.45, 512, progress=first)
        assert first.exports() == [f"exporting s1 to {fmt} at 512×512 (once; cached afterwards)"]
        fractions = [f for f, _ in first.updates]
        assert fractions == sorted(fractions) and fractions[0] >= 0 and first.updates[-1] == (1.0, "ready")
        handlers.detect_image(str(BUS), "s1", "cpu", 0.25, 0.45, 512, progress=again)
        assert again.updates == []
        handlers.latency(str(BUS), ["s1"], "cpu", 512, runs=1, baseline=True, progress=compared)
        assert compared.exports() == [f"exporting yolov8n to {fmt} at 512×512 (once; cached afterwards)"]
    finally:
        clear_detectors()  # the others use the default export folder


@pytest.mark.parametrize("call", [
    lambda p: handlers.detect_image(str(BUS), "s1", "cpu", 0.25, 0.45, 160, runtime="pytorch", progress=p),
    lambda p: handlers.latency(str(BUS), ["s1"], "cpu", 160, runs=1, baseline=False, runtime="pytorch", progress=p),
    lambda p: handlers.star_maps(str(BUS), "s1", "2.7", 160, top_k=1, progress=p),
    lambda p: handlers.star_vs_sum(str(BUS), "s1", "stage 2", "2.7", 160, progress=p),
    lambda p: handlers.cam(str(BUS), ["s1"], "neck", 160, progress=p),
], ids=["image", "latency", "star_maps", "star_vs_sum", "cam"])
def test_every_model_handler_shows_a_first_use_and_not_a_second(app, call):
    """Each handler that loads a model reports the load on the model's first use (PyTorch here: no export, which
    the slow test above covers) to the tracker Gradio passes, and a second request reports nothing."""
    clear_detectors()
    first, again = Heard(), Heard()
    call(first)
    call(again)
    assert any("s1" in desc for _, desc in first.updates) and first.updates[-1] == (1.0, "ready")
    assert all(0 <= f <= 1 for f, _ in first.updates)
    assert again.updates == []


# ---------------------------------------------------------------- devices
def test_gpu_failure_falls_back_to_cpu():
    def work(device):
        if device != "cpu":
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return device

    result, notice = devices.run_on("cuda:0", work)
    assert result == "cpu" and "out of memory" in notice and "ran on the CPU" in notice
    assert devices.run_on("cpu", work) == ("cpu", None)
    with pytest.raises(ValueError):  # a bad input is not a GPU problem: no retry
        devices.run_on("cuda:0", lambda d: (_ for _ in ()).throw(ValueError("bad input")))


def test_models_are_loaded_once_per_variant_and_device(app):
    first = handlers.load_detector(resolve_spec("s1", "cpu"))
    handlers.detect_image(str(BUS), "yolov8n", "cpu", 0.25, 0.45, 320)  # switch away and back
    handlers.detect_image(str(BUS), *SETTINGS)
    assert handlers.load_detector(resolve_spec("s1", "cpu")) is first


def test_device_choices_explain_a_missing_gpu(app):
    values = [v for _, v in choices.device_choices()]
    assert values[0] == "cpu"
    if torch.cuda.is_available():
        assert "cuda:0" in values and devices.why_no_gpu() is None
    else:
        assert values == ["cpu"] and "Only the CPU" in devices.why_no_gpu()


def test_variant_choices_list_main_variants_and_tiny_ones_with_weights(app, weights):
    values = [v for _, v in choices.variant_choices()]
    assert values == ["s1", "s2", "s3", "s4", "yolov8n"]
    assert [v for _, v in choices.variant_choices(reference=False)] == ["s1", "s2", "s3", "s4"]
    assert "no weights" in dict((v, label) for label, v in choices.variant_choices())["s2"]
    boxy_weights(weights, ("s050",))
    try:
        assert "s050" in [v for _, v in choices.variant_choices()]
    finally:
        for f in weights.glob("s050.*"):
            f.unlink()


def test_variant_labels_give_the_held_out_map_and_flag_undertrained_weights(app, tmp_path, monkeypatch):
    folder = boxy_weights(tmp_path, ("s1", "s2", "s3", "yolov8n"))
    teacher = {"teacher_map50": 0.56}
    record_metrics(folder / "s1.json", {"map50": 0.337, **teacher})
    record_metrics(folder / "s2.json", {"map50": 0.0004, **teacher})
    record_metrics(folder / "yolov8n.json", {"map50": 0.5645, **teacher})
    monkeypatch.setenv("STARNET_WEIGHTS_DIR", str(folder))
    labels = {v: label for label, v in choices.variant_choices()}
    assert labels == {"s1": "StarNet-S1 · mAP50 0.34", "s2": "StarNet-S2 · mAP50 0.00 (undertrained)",
                      "s3": "StarNet-S3", "s4": "StarNet-S4 (no weights yet)",
                      "yolov8n": "YOLOv8n (reference) · mAP50 0.56"}


# ---------------------------------------------------------------- Video tab
def detect_video(app, *args, **kwargs):
    """The video handler's result: the last value its generator yields (the ones before are ``gr.skip()``)."""
    *waiting, result = handlers.detect_video_file(*args, **kwargs)
    assert all(v == (gr.skip(),) * 4 for v in waiting)
    return result


def test_detect_video_writes_browser_playable_h264_with_counts(app, clip):
    path, summary, table, _ = detect_video(app, str(clip), *SETTINGS, track=True)
    with av.open(path) as c:
        s = c.streams.video[0]
        assert (s.codec_context.name, s.codec_context.pix_fmt) == ("h264", "yuv420p")
        assert sum(1 for _ in c.decode(video=0)) == summary["frames"] == CLIP_FRAMES
    assert summary["tracked"] and not summary["truncated"] and summary["processing_fps"] > 0
    person = next(r for r in summary["counts"] if r["class"] == "person")
    assert person["frames"] == CLIP_FRAMES and person["max_in_frame"] >= 1 and person["tracks"] >= 1
    assert list(table.columns) == ["class", "max_in_frame", "frames", "tracks"]


def test_video_outputs_are_cleaned_up(app, clip):
    path = detect_video(app, str(clip), *SETTINGS)[0]
    assert path.startswith(str(files.output_dir()))
    files.sweep_outputs(older_than_s=0)
    assert not list(files.output_dir().iterdir())


def _bad_videos(tmp_path, clip):
    (tmp_path / "empty.mp4").write_bytes(b"")
    (tmp_path / "text.mp4").write_text("not a video\n")
    (tmp_path / "truncated.mp4").write_bytes(
        write_video(tmp_path / "whole.mp4", frames=6, faststart=False).read_bytes()[:3000])
    with av.open(str(tmp_path / "audio.mp4"), "w") as out:  # an mp4 with sound and no picture
        stream = out.add_stream("aac", rate=16000)
        frame = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp", layout="mono")
        frame.sample_rate = 16000
        out.mux(stream.encode(frame))
        out.mux(stream.encode(None))
    with av.open(str(tmp_path / "noframes.mp4"), "w") as out:  # a video stream with no frame in it
        stream = out.add_stream("libx264", rate=10)
        stream.width, stream.height, stream.pix_fmt = 64, 64, "yuv420p"
        out.start_encoding()
    garbled = bytearray(write_video(tmp_path / "garbled.mp4", frames=6).read_bytes())
    start = garbled.index(b"mdat") + 4  # keep the index, zero every frame
    garbled[start:] = bytes(len(garbled) - start)
    (tmp_path / "garbled.mp4").write_bytes(garbled)
    return {
        "empty.mp4": "empty",
        "text.mp4": "not a video",
        "truncated.mp4": "not a video",
        "audio.mp4": "no video stream",
        "noframes.mp4": "no video stream",
        "garbled.mp4": "no frame that can be decoded",
        write_video(tmp_path / "long.mp4", frames=3, fps=0.02).name: "limit is 60 s",
        write_video(tmp_path / "wide.mp4", frames=1, size=(2000, 64)).name: "long side",
    }


def test_bad_videos_give_clear_errors_and_leave_no_files(app, tmp_path, clip):
    for name, message in _bad_videos(tmp_path, clip).items():
        with pytest.raises(gr.Error, match=message):
            detect_video(app, str(tmp_path / name), *SETTINGS)
    assert not list(files.output_dir().glob("*.mp4"))
    with pytest.raises(gr.Error, match="upload a video"):
        detect_video(app, None, *SETTINGS)


def test_a_full_disk_mid_video_is_named_and_leaves_no_file(app, clip, tmp_path, monkeypatch):
    """The annotated video goes to a file that fills the disk (a link to /dev/full: every write fails with ENOSPC):
    the user reads that the disk is full, and neither the partial outputs nor the upload are left."""
    monkeypatch.setenv("GRADIO_TEMP_DIR", str(tmp_path / "gradio"))
    upload = tmp_path / "gradio" / "0123abcd" / "clip.mp4"
    upload.parent.mkdir(parents=True)
    upload.write_bytes(clip.read_bytes())
    full = files.output_dir() / "full.mp4"
    full.symlink_to("/dev/full")
    monkeypatch.setattr(handlers, "output_path", lambda suffix: full if suffix == ".mp4" else files.output_path(suffix))
    before = set(files.output_dir().iterdir()) - {full}
    with pytest.raises(gr.Error, match="disk is full"):
        detect_video(app, {"path": str(upload)}, *SETTINGS)
    assert set(files.output_dir().iterdir()) == before and not upload.exists()


def test_video_cut_off_part_way_keeps_the_frames_before(app, tmp_path):
    whole = write_video(tmp_path / "whole.mp4", frames=12)  # faststart: the index comes first, frames after
    with av.open(str(whole)) as c:
        ninth = [p.pos for p in c.demux(video=0) if p.size][8]
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(whole.read_bytes()[:ninth + 10])  # breaks off inside the ninth frame
    path, summary, *_ = detect_video(app, str(cut), *SETTINGS)
    assert 0 < summary["frames"] < 12 and summary["truncated"]
    files.sweep_outputs(older_than_s=0)


# ---------------------------------------------------------------- Webcam tab
def shown_frame(value: dict) -> tuple[str, np.ndarray]:
    """The webcam output's data URL: its header, and the RGB picture."""
    head, data = value["url"].split(",", 1)
    return head, cv2.imdecode(np.frombuffer(base64.b64decode(data), np.uint8), cv2.IMREAD_COLOR)[..., ::-1]


def test_webcam_frame_overlays_fps_and_keeps_state(app):
    frame = np.asarray(Image.open(BUS).convert("RGB").resize((640, 480)))
    out, state = handlers.webcam_frame(frame, None, *SETTINGS)
    out, state = handlers.webcam_frame(frame, state, *SETTINGS)
    head, shown = shown_frame(out)
    assert shown.shape == frame.shape and state["frames"] == 2 and state["fps"].fps > 0
    assert np.abs(shown[-30:, :200].astype(int) - frame[-30:, :200]).mean() > 20  # the overlay's corner
    assert head == "data:image/jpeg;base64"  # an array, not a camera's data URL: no frame to name


def test_webcam_result_goes_inline_and_names_its_frame(app):
    """The browser sends a JPEG data URL; the result is a JPEG data URL tagged with that URL's length, sent as is
    (no file: Gradio's own image output would cache one per frame) and drawn by Gradio's Image."""
    rgb = np.asarray(Image.open(BUS).convert("RGB").resize((640, 480)))
    sent = "data:image/jpeg;base64," + base64.b64encode(cv2.imencode(".jpg", rgb[..., ::-1])[1]).decode()
    out, _ = handlers.webcam_frame({"url": sent, "meta": {"_type": "gradio.FileData"}}, None, *SETTINGS)
    head, shown = shown_frame(out)
    assert head == f"data:image/jpeg;answers={len(sent)};base64" and shown.shape == rgb.shape
    assert not client_utils.is_file_obj_with_meta(out)  # so Gradio moves nothing to its cache
    fn = next(f for f in app.build_app().fns.values() if f.api_name == "webcam")
    assert fn.postprocess is False and fn.preprocess is False


def test_missing_webcam_frame_is_skipped_not_fatal(app):
    out, state = handlers.webcam_frame(None, None, *SETTINGS)
    assert out == gr.skip() and state is None  # the last picture stays


# ---------------------------------------------------------------- Latency tab
def test_latency_times_variants_and_baseline_side_by_side(app):
    table, plot, tradeoff, shots, results = handlers.latency(str(BUS), ["s1"], "cpu", 320, runs=2, baseline=True)
    assert list(table["model"]) == ["StarNet-S1", "YOLOv8n (reference)"]
    assert {"mAP50 (held out)", "runtime", "params (M)", "GFLOPs", "total ms (median / p90)"} <= set(table.columns)
    # the test weights carry no recorded figures: no accuracy to plot, and the table says so
    assert list(table["mAP50 (held out)"]) == ["not measured"] * 2 and tradeoff is None
    assert [r["map50"] for r in results] == [None, None]
    assert set(plot["stage"]) == {"preprocess", "inference", "postprocess"} and len(plot) == 6
    assert len(shots) == 2 and shots[0][0].shape == np.asarray(Image.open(BUS)).shape
    assert all(r["runs"] == 2 and r["total_ms"] > 0 and r["total_ms_p90"] >= r["total_ms"] for r in results)
    with pytest.raises(gr.Error, match="at least one"):
        handlers.latency(str(BUS), [], "cpu", 320, runs=2, baseline=False)


# ---------------------------------------------------------------- Star operation tab
def test_star_maps_gallery(app):
    items, info = handlers.star_maps(str(BUS), "s1", "2.7", 320, top_k=2)
    assert len(items) == 1 + 3 * (1 + 2)
    assert all(img.dtype == np.uint8 and img.ndim == 3 for img, _ in items)
    # bus.jpg is 240 px wide in the 320 px square: 15 cells of stride 16, plus the two it cuts at its edges
    assert info["block"] == "2.7" and info["shape_chw"][1:] == [20, 16]
    assert len(info["energy"]["star"]) == info["shape_chw"][0]


@pytest.mark.parametrize("shape_hw", [(1080, 810), (300, 451), (101, 997)])
def test_star_maps_cover_the_picture_not_the_padding(shape_hw):
    from starnet_demo.inference.preprocess import content_box, letterbox

    boxed = letterbox(np.full((*shape_hw, 3), 255, np.uint8), 320)
    ys, xs = np.nonzero(boxed[..., 0] == 255)
    assert content_box(shape_hw, 320) == (ys.min(), xs.min(), np.ptp(ys) + 1, np.ptp(xs) + 1)


def test_star_maps_blocks_follow_the_variant(app):
    assert choices.block_choices("s1")[-1] == "3.2" and choices.block_choices("s4")[-1] == "3.4"
    assert choices.default_block("s4").startswith("2.") and choices.block_choices("yolov8n") == []
    with pytest.raises(gr.Error, match="not in s1"):
        handlers.star_maps(str(BUS), "s1", "9.9", 320)


def test_app_builds_with_every_tab(app):
    demo = app.build_app()
    names = {fn.api_name for fn in demo.fns.values()}
    assert {"detect_image", "detect_video", "latency", "star_maps", "webcam"} <= names
    # Gradio finds each model handler's progress tracker through the file_outputs wrapper, and injects it
    tracked = {fn.api_name for fn in demo.fns.values() if fn.tracks_progress}
    assert tracked == {"detect_image", "detect_video", "latency", "star_maps", "star_vs_sum", "cam"}
    assert len(list(EXAMPLES.glob("*.jpg"))) >= 5 and (EXAMPLES / "vtest.mp4").is_file()


def test_latency_rows_carry_the_recorded_map50(app, weights):
    config = weights / "s1.json"
    before = config.read_text()
    record_metrics(config, {"map50": 0.385, "map50_se": 0.028})
    try:
        table, _, tradeoff, _, results = handlers.latency(str(BUS), ["s1"], "cpu", 320, runs=1, baseline=False)
    finally:
        config.write_text(before)
    assert results[0]["map50"] == 0.385 and list(table["mAP50 (held out)"]) == ["0.385 ± 0.028"]
    assert plotted(tradeoff) == {"StarNet-S1": (results[0]["total_ms"], 0.385)}


def plotted(fig) -> dict[str, tuple[float, float]]:
    """``{label: (x, y)}`` of a tradeoff figure's points, after checking that each point has one label, naming it,
    and that every point and label lies strictly inside the axes."""
    (ax,) = fig.axes
    renderer = FigureCanvasAgg(fig).get_renderer()
    points = [tuple(xy) for c in ax.collections for xy in c.get_offsets()]
    labels = {t.get_text(): tuple(t.xy) for t in ax.texts}
    assert len(labels) == len(ax.texts) == len(points) and sorted(labels.values()) == sorted(points)
    (x0, x1), (y0, y1), frame = ax.get_xlim(), ax.get_ylim(), ax.get_window_extent(renderer)
    for t in ax.texts:
        x, y = t.xy
        assert x0 < x < x1 and y0 < y < y1, (t.get_text(), (x, y), (x0, x1), (y0, y1))
        box = t.get_window_extent(renderer)
        assert frame.x0 < box.x0 and box.x1 < frame.x1 and frame.y0 < box.y0 and box.y1 < frame.y1, t.get_text()
    return {name: (float(x), float(y)) for name, (x, y) in labels.items()}


def test_the_tradeoff_plot_names_each_model_and_keeps_it_off_the_edges():
    """Three models as measured on the Latency tab (S4 the slowest, the reference the most accurate and fastest):
    each point labelled with its model, none on an axis' edge; one model alone (a zero range) is padded too."""
    points = [("StarNet-S1", 41.0, 0.385), ("StarNet-S4", 96.5, 0.401), ("YOLOv8n (reference)", 30.2, 0.52)]
    assert plotted(tradeoff_figure(points)) == {name: (ms, m) for name, ms, m in points}
    assert plotted(tradeoff_figure(points[:1])) == {"StarNet-S1": (41.0, 0.385)}
    assert tradeoff_figure([]) is None
