"""The video pipeline: every frame decoded, detected, annotated and encoded to H.264, each stage timed; frames come
out upright and at their own times, and a stop ends a run within a frame."""

from __future__ import annotations

import threading
from fractions import Fraction

import av
import numpy as np
import pytest
import torch
from app_support import CLIP_FRAMES, write_video

from starnet_demo.inference.detector import clear_detectors, get_detector
from starnet_demo.inference.pipeline import Cancelled, VideoOptions, run_video, upright
from starnet_demo.media.video import VideoError, probe
from starnet_demo.models.yolo import build_model
from starnet_demo.viz.annotate import DetectionAnnotator
from starnet_demo.weights.files import save_weights

FRAMES = 12  # of the clip the truncation test cuts


@pytest.fixture(scope="module")
def detector(tmp_path_factory):
    folder = tmp_path_factory.mktemp("weights")
    torch.manual_seed(0)
    save_weights(build_model("s050"), folder)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("STARNET_WEIGHTS_DIR", str(folder))
        clear_detectors()
        yield get_detector("s050", "cpu", "pytorch", imgsz=128)
        clear_detectors()


def test_every_frame_goes_through_and_out_as_h264(clip, detector, tmp_path):
    seen, fractions = [], []
    target = tmp_path / "out.mp4"
    stats = run_video(detector, clip, target, VideoOptions(conf=0.001),
                      annotate=DetectionAnnotator(rgb=False).annotate, on_detections=lambda d, i: seen.append(i) or d,
                      progress=lambda f, desc: fractions.append(f))
    assert stats.frames == CLIP_FRAMES and seen == list(range(CLIP_FRAMES))
    assert fractions and 0 < fractions[-1] <= 1
    with av.open(str(target)) as container:
        stream = container.streams.video[0]
        assert stream.codec_context.name == "h264"
        assert (stream.codec_context.width, stream.codec_context.height) == (320, 240)
        assert sum(1 for _ in container.decode(stream)) == CLIP_FRAMES
    summary = stats.summary()
    for stage in ("decode", "preprocess", "inference", "postprocess", "annotate", "encode"):
        assert len(stats.stage_ms[stage]) == CLIP_FRAMES and summary[f"video_{stage}_ms"] > 0, stage
    assert summary["video_frames"] == CLIP_FRAMES and summary["video_fps"] > 0 and summary["video_size"] == "320x240"


def test_max_frames_and_no_target(clip, detector):
    stats = run_video(detector, clip, None, VideoOptions(max_frames=5))
    assert stats.frames == 5 and len(stats.stage_ms["inference"]) == 5


@pytest.mark.parametrize(("content", "message"), [(b"", "bad.mp4 is empty"),
                                                   (b"not a video at all" * 100, "not a video that can be read")])
def test_not_a_video_is_a_video_error(detector, tmp_path, content, message):
    path = tmp_path / "bad.mp4"
    path.write_bytes(content)
    with pytest.raises(VideoError, match=message):
        run_video(detector, path, tmp_path / "out.mp4")
    assert not (tmp_path / "out.mp4").exists()


def test_truncated_video_keeps_what_decodes(detector, tmp_path):
    """An mp4 with its index first (faststart) that breaks off in its ninth frame: the frames before come through."""
    whole = write_video(tmp_path / "whole.mp4", frames=FRAMES, faststart=True)
    with av.open(str(whole)) as c:
        ninth = [p.pos for p in c.demux(video=0) if p.size][8]
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(whole.read_bytes()[:ninth + 10])
    stats = run_video(detector, cut, tmp_path / "out.mp4")
    assert 0 < stats.frames < FRAMES  # the decoder holds back a few frames it cannot finish


def frames_of(path) -> tuple[list[np.ndarray], list[float]]:
    """Every frame of ``path`` as stored (RGB) and its timestamp in seconds."""
    with av.open(str(path)) as c:
        frames = list(c.decode(video=0))
    return [f.to_ndarray(format="rgb24") for f in frames], [f.time for f in frames]


def test_a_rotation_tag_comes_out_upright(detector, tmp_path):
    """A phone clip: frames stored 64×32 (a white band on the left) with a display rotation of 90° counter-clockwise,
    as a player shows them. The output is stored upright: 32 wide, 64 high, the band along the bottom."""
    source = tmp_path / "phone.mp4"
    with av.open(str(source), "w") as out:
        stream = out.add_stream("libx264", rate=10)
        stream.width, stream.height, stream.pix_fmt = 64, 32, "yuv420p"
        stream.set_display_rotation(90)
        for _ in range(3):
            image = np.zeros((32, 64, 3), np.uint8)
            image[:, :16] = 255
            out.mux(stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")))
        out.mux(stream.encode(None))
    info = probe(source)
    assert (info.width, info.height, info.rotation) == (32, 64, 90)
    run_video(detector, source, tmp_path / "out.mp4", info=info)
    frames, _ = frames_of(tmp_path / "out.mp4")
    assert len(frames) == 3 and frames[0].shape == (64, 32, 3)
    assert frames[0][-12:].mean() > 200 and frames[0][:40].mean() < 50  # the band is at the bottom
    with av.open(str(tmp_path / "out.mp4")) as c:  # and no tag is left to turn it again
        assert next(c.decode(video=0)).rotation == 0


def test_upright_turns_counter_clockwise():
    image = np.arange(6).reshape(2, 3)
    assert upright(image, 0) is image
    assert upright(image, 90).tolist() == [[2, 5], [1, 4], [0, 3]]
    assert upright(image, -90).tolist() == upright(image, 270).tolist() == [[3, 0], [4, 1], [5, 2]]


def test_a_variable_frame_rate_clip_keeps_its_timestamps(detector, tmp_path):
    times = [0.0, 0.1, 0.15, 0.5, 0.55, 1.2]
    source = tmp_path / "vfr.mp4"
    with av.open(str(source), "w") as out:
        stream = out.add_stream("libx264", rate=10)
        stream.width, stream.height, stream.pix_fmt = 64, 64, "yuv420p"
        stream.codec_context.time_base = Fraction(1, 1000)
        for t in times:
            frame = av.VideoFrame.from_ndarray(np.full((64, 64, 3), int(t * 200), np.uint8), format="rgb24")
            frame.pts, frame.time_base = round(t * 1000), Fraction(1, 1000)
            out.mux(stream.encode(frame))
        out.mux(stream.encode(None))
    stats = run_video(detector, source, tmp_path / "out.mp4")
    _, stamps = frames_of(tmp_path / "out.mp4")
    assert stamps == pytest.approx(times, abs=1e-3)
    assert stats.seconds == pytest.approx(1.2 + 1 / stats.source_fps, abs=1e-3)


def test_stop_ends_a_run_within_a_frame(detector, clip, tmp_path):
    stop, seen = threading.Event(), []

    def on_detections(detections, index):
        seen.append(index)
        if index == 2:
            stop.set()
        return detections

    with pytest.raises(Cancelled):
        run_video(detector, clip, tmp_path / "out.mp4", on_detections=on_detections, stop=stop)
    assert seen == [0, 1, 2]
    assert not [t for t in threading.enumerate() if t.name.startswith("video-")]
